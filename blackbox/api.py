"""The public Python API: one experiment as a function from points or hyperparameters to results.

Example::

    from blackbox import Blackbox

    bb = Blackbox("demo", overrides=["training.max_steps=4"])
    result = bb.evaluate({"lora_r": 8, "lora_alpha": 16, "learning_rate": 1e-3})
    result.objective, result.status, result.timings["train_s"]
    result = bb.evaluate_point((3, 2, -3.0))  # the same point in NOMAD's coordinates

By default evaluations run in this process: the model and the data load once, on the first evaluation,
and every point gets a fresh, identically seeded LoRA adapter (``lora-blackbox eval`` does the same).
``isolate=True`` runs each evaluation as a ``lora-blackbox eval`` subprocess, exactly as NOMAD calls it:
a crash or an out-of-memory kill then fails that evaluation only. Either way every evaluation appends
its record to the experiment's ``records.dir``, and the result is read from that record.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from blackbox.core.early_stopping import Judge
from blackbox.core.errors import ConfigError, PointError
from blackbox.core.experiment import HPARAM_NAMES, Experiment, load_experiment
from blackbox.core.failures import Status, raise_if_call_ends
from blackbox.core.record import EvalRecord, RecordStore
from blackbox.core.space import HyperParams, SearchSpace

if TYPE_CHECKING:
    from pathlib import Path

    from blackbox.runners.call import PointEvaluator

__all__ = ["Blackbox", "Result"]


@dataclass(frozen=True)
class Result:
    """What one evaluation gave, read from its record.

    Attributes:
        status: ``OK``, or how it failed (``Status``).
        objective: the ``OBJ`` output: ``nan`` for a failed evaluation, ``inf`` for a diverged one
            (a valid, very bad point, as NOMAD reads it).
        extras: the other outputs of the line (``EXTRA_O``), by metric name; numbers as floats.
        constraints: the ``PB``/``EB`` outputs by constraint name (<= 0: satisfied; ``nan`` when failed).
        hparams: the decoded hyperparameters and settings (None for an invalid point).
        point: the point in the optimizer's coordinates (None when it could not be parsed).
        metrics: everything measured (losses, tokens, seconds, memory).
        timings: seconds per phase (``train_s``, ``validation_s``, ``total_s``, ...).
        run_id: the evaluation's id: its folder is ``<records.dir>/evals/<run_id>``.
        error: why it failed, or None.
        output_line: the line ``lora-blackbox eval`` prints for it.
        record: the whole record as written to ``records.jsonl`` (a dict).
        objectives: every ``OBJ`` output, in order: one per objective of a study of several (``objective`` is the
            first).
    """

    status: Status
    objective: float
    extras: dict[str, float | str]
    constraints: dict[str, float]
    hparams: dict[str, Any] | None
    point: tuple[float, ...] | None
    metrics: dict[str, Any]
    timings: dict[str, float]
    run_id: str
    error: str | None
    output_line: str
    record: dict[str, Any] = field(repr=False)
    objectives: tuple[float, ...] = ()

    @property
    def ok(self) -> bool:
        return self.status is Status.OK

    @property
    def failed(self) -> bool:
        """True when the objective is undefined (``nan``): NOMAD's EVAL_FAILED, Optuna's FAIL.
        A diverged evaluation is not failed: its objective is ``inf``."""
        return math.isnan(self.objective)

    @classmethod
    def from_record(cls, record: EvalRecord, outputs: Sequence[str] = ()) -> Result:
        """The result of a record, its outputs named by ``study.outputs`` (default: the record's own specs)."""
        tokens = list(record.outputs)
        outputs = outputs or record.output_specs
        objectives: list[float] = []
        extras: dict[str, float | str] = {}
        constraints: dict[str, float] = {}
        for spec, token in zip(outputs, tokens, strict=True):
            kind, _, metric = spec.partition(":")
            if kind == "OBJ":
                objectives.append(float(token))
            elif kind in ("PB", "EB"):
                constraints[metric] = float(token)
            elif kind == "EXTRA_O":
                extras[metric] = _number_or_text(token)
        return cls(
            status=record.status,
            objective=objectives[0] if objectives else math.nan,
            extras=extras,
            constraints=constraints,
            hparams=record.hparams,
            point=record.point,
            metrics=dict(record.metrics),
            timings=dict(record.timings),
            run_id=record.run_id,
            error=record.error,
            output_line=record.output_line,
            record=record.as_dict(),
            objectives=tuple(objectives),
        )


class Blackbox:
    """One experiment as a blackbox: evaluate points or hyperparameters, get :class:`Result` objects.

    Args:
        experiment: a shipped experiment's name, a TOML file, or a loaded :class:`Experiment`.
        overrides: ``KEY=VALUE`` strings with dotted keys, as ``--set`` (not with a loaded experiment).
        isolate: run each evaluation as a ``lora-blackbox eval`` subprocess instead of in this process.
        quiet: with ``isolate``, pass ``--quiet`` to the subprocesses (no training progress on stderr).

    Raises:
        ConfigError: the experiment or an override is invalid.
    """

    def __init__(
        self,
        experiment: str | os.PathLike[str] | Experiment,
        overrides: Sequence[str] = (),
        *,
        isolate: bool = False,
        quiet: bool = False,
    ) -> None:
        if isinstance(experiment, Experiment):
            if overrides:
                raise ConfigError("overrides apply to an experiment's name or file, not to a loaded Experiment")
            if isolate:
                raise ConfigError("isolate=True needs the experiment's name or file: the subprocess loads it")
            self.experiment, self._ref = experiment, None
        else:
            self._ref = os.fspath(experiment)
            self.experiment = load_experiment(self._ref, tuple(overrides))
        self.overrides = tuple(overrides)
        self.isolate = isolate
        self.quiet = quiet
        self.space = SearchSpace.from_experiment(self.experiment)
        self._evaluator: PointEvaluator | None = None

    @property
    def records_file(self) -> Path:
        """Where every evaluation appends its record."""
        return RecordStore.of(self.experiment).path

    def encode(self, hparams: Mapping[str, Any] | HyperParams) -> tuple[float, ...]:
        """The point of the search space for these hyperparameters.

        ``hparams`` names every tuned hyperparameter and every setting that is a variable, by its dotted key
        (``{"lora_r": 8, ..., "lora.use_dora": True}``); fixed hyperparameters may be left out (or given their value).

        Raises:
            PointError: an unknown or missing name, a fixed one with another value, or no point of the
                space decodes to these values.
        """
        given = hparams.as_dict() if isinstance(hparams, HyperParams) else dict(hparams)
        settings = [v.name for v in self.space.variables if v.is_setting]
        unknown = sorted(set(given) - set(HPARAM_NAMES) - set(settings))
        if unknown:
            raise PointError(f"unknown hyperparameters {unknown}; known: {[*HPARAM_NAMES, *settings]}")
        values = dict(self.space.fixed)
        for name, value in given.items():
            if name in self.space.fixed and not math.isclose(value, self.space.fixed[name], rel_tol=1e-9):
                raise PointError(f"{name} is fixed to {self.space.fixed[name]} in this experiment, got {value}")
            values[name] = value
        missing = [name for name in (*HPARAM_NAMES, *settings) if name not in values]
        if missing:
            raise PointError(f"missing hyperparameters {missing} (the search variables are {list(self.space.names)})")
        return self.space.encode(
            HyperParams(
                lora_r=int(values["lora_r"]),
                lora_alpha=values["lora_alpha"],
                lora_dropout=values["lora_dropout"],
                learning_rate=values["learning_rate"],
                settings={name: values[name] for name in settings},
            )
        )

    def evaluate(self, hparams: Mapping[str, Any] | HyperParams) -> Result:
        """Train and validate with these hyperparameters (encoded as a point of the space, see :meth:`encode`).

        Raises:
            PointError: the hyperparameters are not a point of the search space (nothing is recorded).
            SetupError: the model or the data cannot be loaded (in this process).
        """
        return self.evaluate_point(self.encode(hparams))

    def evaluate_point(self, point: Sequence[float]) -> Result:
        """Evaluate a point in the optimizer's coordinates (indices, exponents, multipliers), as NOMAD does.

        An invalid point is not an exception: it is recorded and gives a failed result (``INVALID_POINT``).

        Raises:
            SetupError: the model or the data cannot be loaded (recorded NOT_RUN first).
            KeyboardInterrupt: interrupted (recorded INTERRUPTED first).
        """
        return self.evaluate_line(" ".join(repr(float(x)) for x in point))

    def evaluate_line(self, line: str, *, point_file: str | None = None, block_index: int | None = None) -> Result:
        """Evaluate one line of a point file, as NOMAD writes it.

        Raises:
            SetupError: the model or the data cannot be loaded (recorded NOT_RUN first).
            KeyboardInterrupt: interrupted (recorded INTERRUPTED first).
        """
        result = self.run_line(line, point_file=point_file, block_index=block_index)
        raise_if_call_ends(result.status, result.error)  # the failure policy's end of a call, as an exception
        return result

    def run_line(
        self,
        line: str,
        *,
        point_file: str | None = None,
        block_index: int | None = None,
        judge: Judge | None = None,
    ) -> Result:
        """Evaluate one line of a point file and return its result, whatever ended it: a model that cannot load
        (NOT_RUN) or a Ctrl-C (INTERRUPTED) is a result too, for a driver that asks the failure policy
        (``failures.call_after``) what comes next, as ``lora-blackbox optuna`` does.

        ``judge`` decides at the checkpoints of an evaluation in this process (default: the experiment's
        ``[stopping]`` rule); a subprocess (``isolate``) finds its own, e.g. an Optuna trial named in its
        environment (``studies.pruning``).

        Raises:
            ValueError: a judge with ``isolate``.
        """
        if self.isolate and judge is not None:
            raise ValueError("a judge decides in this process: with isolate=True the subprocess finds its own")
        if self.isolate:
            from blackbox.runners.isolated import evaluate_in_subprocess

            assert self._ref is not None  # checked in __init__
            record = evaluate_in_subprocess(
                line,
                experiment_ref=self._ref,
                overrides=self.overrides,
                experiment=self.experiment,
                quiet=self.quiet,
            )
        else:
            record = self.evaluator.evaluate_line(line, point_file=point_file, block_index=block_index, judge=judge)
        return Result.from_record(record, self.experiment.study.outputs)

    def run_point(self, point: Sequence[float], *, judge: Judge | None = None) -> Result:
        """:meth:`run_line` of a point in the optimizer's coordinates."""
        return self.run_line(" ".join(repr(float(x)) for x in point), judge=judge)

    @property
    def evaluator(self) -> PointEvaluator:
        """The in-process evaluator (created on first use; the model loads on its first evaluation; with
        ``replay.table``, the table answers)."""
        if self._evaluator is None:
            from blackbox.runners.call import make_evaluator

            self._evaluator = make_evaluator(self.experiment)
        return self._evaluator


def _number_or_text(token: str) -> float | str:
    try:
        return float(token)
    except ValueError:
        return token
