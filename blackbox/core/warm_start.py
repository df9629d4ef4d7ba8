"""Warm starts: the finished evaluations of earlier studies of the same search space seed a new study.

``lora-blackbox study --warm-start DIR`` (NOMAD: the evaluations go into NOMAD's cache file, so that NOMAD answers
them without calling the blackbox, and the best of them become starting points) and ``lora-blackbox optuna
--warm-start DIR`` (Optuna: ``study.add_trials``) read the earlier study folders here. An earlier evaluation seeds
the new study only when it is of the same search space (the variables and the fixed hyperparameters; starting
points may differ) and was evaluated with the same settings (model, data, training, validation, fidelity, objective,
constraints); the study's name, budget, seed and outputs may differ, and so may its checkpoints and stopping rule.
A folder whose evaluations are of another space or other settings is refused with one line that says what
differs. Each evaluation's experiment is the snapshot its study folder keeps (``experiments/<fingerprint>.json``).

Which evaluations: those with a value (OK, DIVERGED) and those stopped early (STOPPED: their value never beats the
incumbent's, which is among them); failures are left out (an out-of-memory point may fit another machine).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from blackbox.core.errors import ConfigError, OptionError
from blackbox.core.experiment import Experiment, read_snapshot
from blackbox.core.failures import Status
from blackbox.core.pareto import front_indices
from blackbox.core.record import EvalRecord, RecordStore

logger = logging.getLogger(__name__)

# What decides an evaluation's result, besides the search space: these sections must be equal, each as the
# fingerprint sees it (Experiment.result_settings: without the keys that change no result, e.g. checkpoints).
_EVALUATION_SECTIONS = (
    "model",
    "lora",
    "data",
    "training",
    "validation",
    "fidelity",
    "objective",
    "objectives",
    "constraints",
)


def earlier_evaluations(experiment: Experiment, study_dirs: Sequence[Path]) -> list[EvalRecord]:
    """The evaluations of ``study_dirs`` that seed a study of ``experiment``, one per point (the last one of a
    point wins), in the order they were recorded.

    Raises:
        OptionError: a folder holds no records or no such evaluation, or its evaluations are of another search
            space or were evaluated with other settings (the message says what differs).
    """
    found: dict[tuple[float, ...], EvalRecord] = {}
    for folder in study_dirs:
        store = RecordStore(folder)
        if not store.exists():
            raise OptionError(f"--warm-start {folder}: no records there ({store.path})")
        records = [r for r in store.records() if r.point and _seeds(r)]
        if not records:
            raise OptionError(f"--warm-start {folder}: no finished evaluation to start from")
        compatible = set()
        problems: list[str] = []
        for fingerprint in dict.fromkeys(r.fingerprint for r in records):
            try:
                snapshot = read_snapshot(folder, fingerprint)
            except ConfigError as e:  # records of an older version: their experiment is unknown
                problems.append(f"its evaluations' experiment {fingerprint} is unknown ({e})")
                continue
            differ = differences(experiment, snapshot)
            if differ:
                problems += differ
            else:
                compatible.add(fingerprint)
        if not compatible:
            raise OptionError(f"--warm-start {folder}: refused, {problems[0]}")
        kept = [r for r in records if r.fingerprint in compatible]
        logger.info("warm start: %d finished evaluation(s) of %s", len(kept), folder)
        for record in kept:
            assert record.point is not None
            found[record.point] = record
    return list(found.values())


def differences(new: Experiment, old: Experiment) -> list[str]:
    """Why evaluations of ``old`` cannot seed a study of ``new``: empty when they can. The search space first."""
    new_objectives, old_objectives = _objectives(new), _objectives(old)
    if new_objectives != old_objectives:
        return [f"its evaluations are of {old_objectives}, this study's of {new_objectives}"]
    new_space, old_space = _space(new), _space(old)
    if new_space != old_space:
        return [f"the search spaces differ: {_describe_space(old_space)} there, {_describe_space(new_space)} here"]
    new_values, old_values = _evaluation_settings(new), _evaluation_settings(old)
    changed = sorted(k for k in new_values.keys() | old_values.keys() if new_values.get(k) != old_values.get(k))
    return [
        f"its evaluations ran with other settings: {k} = {old_values.get(k)!r} there, {new_values.get(k)!r} here"
        for k in changed
    ]


def best_points(records: Sequence[EvalRecord], count: int) -> list[tuple[float, ...]]:
    """The points of the ``count`` best finished evaluations (OK; feasible ones first, then, with several objectives,
    the non-dominated ones, then by the first objective)."""
    ok = [r for r in records if r.status is Status.OK and r.point and _objective(r) is not None]
    front = {id(ok[i]) for i in front_indices([r.objective_values() for r in ok])}
    ok.sort(key=lambda r: (not _feasible(r), id(r) not in front, _objective(r)))
    return [r.point for r in ok[:count] if r.point is not None]


def _seeds(record: EvalRecord) -> bool:
    return (record.status.finished or record.status is Status.STOPPED) and record.full_fidelity


def _objective(record: EvalRecord) -> float | None:
    value = record.output("OBJ")
    return None if value is None or math.isnan(value) else value


def _feasible(record: EvalRecord) -> bool:
    return all(v <= 0 for k, v in record.metrics.items() if k.startswith("constraint:") and v is not None)


def _objectives(experiment: Experiment) -> str:
    """What a study optimises, in words: ``one objective (validation_loss)``, ``2 objectives (validation_loss,
    trainable_params)``."""
    keys = [o.key for o in experiment.all_objectives]
    return f"{'one objective' if len(keys) == 1 else f'{len(keys)} objectives'} ({', '.join(keys)})"


def _space(experiment: Experiment) -> dict[str, Any]:
    """The search space as it decides what a point is: the variables (starting points left out) and the fixed
    hyperparameters."""
    return {
        "variables": [v.model_dump(mode="json", exclude={"x0"}) for v in experiment.space],
        "fixed": experiment.hyperparameters.model_dump(mode="json"),
    }


def _describe_space(space: dict[str, Any]) -> str:
    variables = ", ".join(
        f"{v['name']} in [{v['lower']:g}, {v['upper']:g}] ({v['decode']})" for v in space["variables"]
    )
    fixed = ", ".join(f"{k}={v}" for k, v in space["fixed"].items() if v is not None)
    return f"({variables}{'; ' + fixed if fixed else ''})"


def _evaluation_settings(experiment: Experiment) -> dict[str, Any]:
    """The settings that decide an evaluation's result, flat (``training.max_steps``: 16)."""
    settings = experiment.result_settings()
    flat: dict[str, Any] = {}
    for section in _EVALUATION_SECTIONS:
        values = settings.get(section)
        if isinstance(values, dict):
            flat |= {f"{section}.{k}": v for k, v in values.items()}
        else:
            flat[section] = values
    return flat
