"""Which models an assessment compares: the base model, evaluations of a study picked by rank or run id,
and adapter folders.

An evaluation's adapter is the ``adapter/`` folder of its run (the experiment's ``records.save_adapter``);
one without it can be retrained with its recorded hyperparameters and seed (:mod:`blackbox.assessment.retrain`).
Never imports torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from blackbox.core import pareto
from blackbox.core.errors import ConfigError
from blackbox.core.experiment import Experiment, read_snapshot
from blackbox.reports.load import Evaluation, Run, load_run

BASE = "base"
"""The label of the base model, without adapter: every assessment's reference."""


@dataclass(frozen=True)
class Candidate:
    """One model to assess: the base model (no adapter and no evaluation), an evaluation of a study, or an
    adapter folder."""

    label: str  # "base", "best", "worst", "top2", "run:<run id>", or the adapter folder's name
    adapter: Path | None  # the saved adapter; None for the base model, or an evaluation that saved none
    evaluation: Evaluation | None = None  # the study's evaluation it comes from
    experiment: Experiment | None = None  # the experiment that evaluation ran
    retrained_loss: float | None = None  # the validation loss of its retraining, when --retrain made its adapter

    @property
    def run_id(self) -> str | None:
        return self.evaluation.run_id if self.evaluation else None

    @property
    def objective(self) -> float | None:
        return self.evaluation.objective if self.evaluation else None

    @property
    def hparams(self) -> dict[str, Any] | None:
        return self.evaluation.hparams if self.evaluation else None

    def describe(self) -> str:
        if self.evaluation is None:
            return self.label if self.adapter is None else f"{self.label} ({self.adapter})"
        return f"{self.label} (run {self.run_id}, objective {self.objective:.6g})"


def select_from_study(
    study_dir: Path,
    *,
    top: int = 0,
    best: bool = False,
    worst: bool = False,
    run_ids: Sequence[str] = (),
    objective: str | None = None,
    front: bool = False,
    knee: bool = False,
) -> list[Candidate]:
    """The evaluations of a study folder (NOMAD or Optuna) picked by rank of objective or by run id, each once,
    best first, with the experiment it ran (kept in the study folder).

    Only finished evaluations at full fidelity with a finite objective are ranked. In a study of several objectives,
    ``objective`` names the one that ranks ``best``, ``worst`` and ``top`` (labels ``best:<objective>``, ...);
    ``front`` picks every non-dominated evaluation (``front1``, ``front2``, ... by the first objective) and ``knee``
    the front's knee (``knee``: :func:`blackbox.core.pareto.knee`). The labels say how each was chosen, and the
    files of ``downstream`` and ``answers`` keep them.

    Raises:
        SetupError: no records in ``study_dir``.
        ConfigError: an unknown run id or objective, a rank without an objective in a study of several, a knee in a
            study of one, or nothing to pick (no finished evaluation).
    """
    run = load_run(str(study_dir))
    index, suffix = _objective_index(run, study_dir, objective, ranks=bool(top or best or worst))
    ranked = sorted(
        (e for e in run.evaluations if e.values and math.isfinite(e.values[index])), key=lambda e: e.values[index]
    )
    picked: dict[str, tuple[str, Evaluation]] = {}

    def pick(label: str, evaluation: Evaluation) -> None:
        picked.setdefault(evaluation.run_id, (label, evaluation))

    if (top or best or worst or front or knee) and not ranked:
        raise ConfigError(f"{study_dir}: no finished evaluation to pick from")
    if knee and len(run.objectives) < 2:
        raise ConfigError(f"--knee chooses from the front of a study of several objectives; {study_dir} has one")
    if best:
        pick(f"best{suffix}", ranked[0])
    for rank, evaluation in enumerate(ranked[:top], start=1):
        pick(f"best{suffix}" if rank == 1 else f"top{rank}{suffix}", evaluation)
    if worst:
        pick(f"worst{suffix}", ranked[-1])
    non_dominated = sorted(run.front, key=lambda e: e.values)
    if knee and non_dominated:
        pick("knee", non_dominated[pareto.knee([e.values for e in non_dominated])])
    for number, evaluation in enumerate(non_dominated if front else [], start=1):
        pick(f"front{number}", evaluation)
    by_id = {e.run_id: e for e in run.evaluations}
    for run_id in run_ids:
        if run_id not in by_id:
            raise ConfigError(f"{study_dir}: no evaluation {run_id!r} in its records")
        pick(f"run:{run_id}", by_id[run_id])
    candidates = []
    for label, evaluation in picked.values():
        adapter = Path(evaluation.run_dir) / "adapter" if evaluation.run_dir else None
        experiment = read_snapshot(run.folder, evaluation.fingerprint) if evaluation.fingerprint else None
        candidates.append(Candidate(label, adapter if adapter and adapter.is_dir() else None, evaluation, experiment))
    return candidates


def _objective_index(run: Run, study_dir: Path, objective: str | None, *, ranks: bool) -> tuple[int, str]:
    """Which objective ranks a study's evaluations (its index in their values), and the suffix of the labels it
    gives (``:<objective>`` in a study of several).

    Raises:
        ConfigError: a study of several objectives without ``objective`` to rank by, or an unknown one.
    """
    names = [name.removeprefix("objective:") for name in run.objectives]
    if objective is None:
        if ranks and len(names) > 1:
            raise ConfigError(
                f"{study_dir} has {len(names)} objectives ({', '.join(names)}): say which one ranks --best, --worst "
                "and --top with --objective NAME, or choose --front or --knee"
            )
        return 0, ""
    wanted = objective.removeprefix("objective:")
    if wanted not in names:
        raise ConfigError(f"{study_dir} has no objective {objective!r}; its objectives: {', '.join(names) or '?'}")
    return names.index(wanted), f":{wanted}" if len(names) > 1 else ""


def experiment_of(
    candidates: Sequence[Candidate], given: Experiment | None = None, study_dir: Path | None = None
) -> Experiment:
    """The experiment whose base model, prompt template and device the chosen models run on: ``given``, else the
    one the candidates' evaluations ran (they must agree on the model and the template), else the one the
    records of ``study_dir`` name.

    Raises:
        ConfigError: no experiment anywhere, evaluations of different models or templates, or a study that ran
            several experiments.
    """
    if given is not None:
        return given
    experiments = [c.experiment for c in candidates if c.experiment is not None]
    if experiments:
        first = experiments[0]
        for other in experiments[1:]:
            if _base(other) != _base(first):
                raise ConfigError("the chosen evaluations ran different models or prompt templates: give -e")
        return first
    if study_dir is None:
        raise ConfigError("which base model? Give the experiment (-e) or a study folder whose evaluations ran one")
    run = load_run(str(study_dir))
    fingerprints = sorted({e.fingerprint for e in run.evaluations if e.fingerprint})
    if len(fingerprints) != 1:
        raise ConfigError(f"{study_dir} ran {len(fingerprints)} experiments: give one with --experiment")
    return read_snapshot(run.folder, fingerprints[0])


def _base(experiment: Experiment) -> tuple[Any, ...]:
    """What a chosen model is generated or scored with: the base model and the prompt."""
    return (
        experiment.model.name_or_path,
        experiment.model.revision,
        experiment.data.template,
        experiment.data.system_prompt,
    )


def adapter_folders(paths: Sequence[Path]) -> list[Candidate]:
    """Adapter folders given by path (peft's ``adapter_config.json`` inside), labelled by folder name.

    Raises:
        ConfigError: a path that holds no adapter.
    """
    candidates = []
    for path in paths:
        if not (path / "adapter_config.json").is_file():
            raise ConfigError(f"{path} is not a saved adapter (no adapter_config.json)")
        label = path.name if path.name != "adapter" else path.parent.name
        candidates.append(Candidate(label, path))
    return candidates
