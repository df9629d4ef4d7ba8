"""Records of a study (and NOMAD's stats and cache files, when present) as rows for a report.

Never imports torch: a report is drawn on any machine from the files a study left.

Which records count: evaluations at full fidelity, in the order they finished (the records file's
order). Low-fidelity (surrogate) evaluations are kept apart, as in ``blackbox.studies.nomad_study``; INTERRUPTED,
KILLED and NOT_RUN records are listed as failures but not counted (a resumed study evaluates those points
again). An evaluation that started and left no record (killed with its study) is read as KILLED.
Failed evaluations count: they spent the budget. So do evaluations stopped early (STOPPED, by a stopping rule or an
Optuna pruner): they are shown apart, with their learning curves, and their objective here is undefined (the value
their solver received is no result of theirs: ``failures.value_of_stopped``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from blackbox.core.compute import Compute, compute_of
from blackbox.core.curves import CurvePoint, Stop
from blackbox.core.errors import ConfigError, SetupError
from blackbox.core.failures import Status
from blackbox.core.folders import CACHE_FILE, DOWNSTREAM_FILE, OPTUNA_STORAGE_FILE, PARAM_COPY, RECORDS_FILE, STATS_FILE
from blackbox.core.nomad import read_cache, read_outputs_and_budget
from blackbox.core.pareto import front_indices
from blackbox.core.record import EvalRecord, RecordStore


@dataclass(frozen=True)
class Evaluation:
    """One counted evaluation of a run."""

    number: int  # 1-based, in the order the evaluations finished
    status: str
    objective: float  # nan: failed; inf: diverged
    best_so_far: float  # nan until the first defined objective
    hours: float  # wall-clock hours of this evaluation (process start, loading, training, validation)
    cumulative_hours: float
    hparams: dict[str, Any] | None  # decoded: LoRA hyperparameters, and settings by dotted key
    point: tuple[float, ...] | None
    run_id: str
    device: str | None
    error: str | None
    feasible: bool  # every constraint (metrics ``constraint:<name>``, <= 0) satisfied; True without constraints
    run_dir: str | None  # its folder (eval.log, record.json, adapter/ when saved)
    fingerprint: str | None  # of the experiment it ran (experiments/<fingerprint>.json in the study folder)
    metrics: dict[str, Any]
    curve: tuple[CurvePoint, ...] = ()  # its learning curve ([validation] checkpoints)
    stopped: Stop | None = None  # where and why it was stopped early (status STOPPED)
    solver_value: float | None = None  # the objective its solver received (OBJ), when it printed one
    # Its value of each objective as the solver minimised it (a study of several: one per OBJ output), its own
    # result's: inf when diverged, nan when failed or stopped.
    values: tuple[float, ...] = ()


@dataclass(frozen=True)
class NomadFiles:
    """What NOMAD's own files say, to cross-check the records."""

    cache_entries: int
    cache_ok: int
    cache_best: float | None
    stats_lines: int  # one per evaluation (DISPLAY_ALL_EVAL), over all stats files of the study


@dataclass(frozen=True)
class Run:
    label: str
    folder: Path
    solver: str  # NOMAD, Optuna, or "" when the folder does not say
    evaluations: tuple[Evaluation, ...]
    not_counted: tuple[EvalRecord, ...]  # INTERRUPTED, KILLED and NOT_RUN records
    low_fidelity: int
    nomad: NomadFiles | None
    compute: Compute | None = None  # what every record of the folder cost (low-fidelity ones and failures too)
    objectives: tuple[str, ...] = ()  # what the OBJ outputs print (objective:validation_loss, ...), in order

    @property
    def front(self) -> tuple[Evaluation, ...]:
        """The feasible evaluations that no other dominates (several objectives; all minimised, as the solver saw
        them), in the order they finished."""
        feasible = [e for e in self.evaluations if e.feasible and e.values]
        return tuple(feasible[i] for i in front_indices([e.values for e in feasible]))

    @property
    def best(self) -> Evaluation | None:
        """The feasible evaluation of lowest objective."""
        defined = [e for e in self.evaluations if not math.isnan(e.objective) and e.feasible]
        return min(defined, key=lambda e: e.objective, default=None)

    @property
    def infeasible(self) -> int:
        """Finished evaluations that violate a constraint."""
        return sum(not e.feasible for e in self.evaluations)

    def best_after(self, count: int) -> float | None:
        """The best objective among the first ``count`` evaluations; None when the run has fewer."""
        if len(self.evaluations) < count:
            return None
        value = self.evaluations[count - 1].best_so_far
        return None if math.isnan(value) else value

    @property
    def stopped(self) -> tuple[Evaluation, ...]:
        """The evaluations stopped early (counted, shown apart)."""
        return tuple(e for e in self.evaluations if e.stopped is not None)

    @property
    def statuses(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for status in [e.status for e in self.evaluations] + [r.status.value for r in self.not_counted]:
            counts[status] = counts.get(status, 0) + 1
        return counts


def load_downstream(folder: Path) -> list[dict[str, Any]]:
    """The benchmark scores of a study folder (``downstream.jsonl``), the latest of each model and benchmark."""
    path = folder / DOWNSTREAM_FILE
    if not path.is_file():
        return []
    latest: dict[tuple[str | None, str, str], dict[str, Any]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            latest[(row.get("run_id"), row["label"] if row.get("run_id") is None else "", row["key"])] = row
    return list(latest.values())


def parse_spec(spec: str) -> tuple[str | None, Path]:
    """``LABEL=PATH`` or ``PATH``."""
    label, sep, path = spec.partition("=")
    if sep and label and not Path(spec).exists():
        return label, Path(path)
    return None, Path(spec)


def load_run(spec: str, *, objective: str | None = None) -> Run:
    """Read a run: a records.jsonl file or a study folder holding one, optionally labelled (``LABEL=PATH``).

    ``objective``: the metric that was minimised; by default what the solver saw (the metric ``objective`` of
    records that have it: a benchmark score, negated when maximised), else the validation loss.

    Raises:
        SetupError: no records file there.
        ConfigError: a successful record has no metric ``objective``.
    """
    label, path = parse_spec(spec)
    records_file = path / RECORDS_FILE if path.is_dir() else path
    if not records_file.is_file():
        raise SetupError(f"no records in {path}: expected a {RECORDS_FILE} file or a study folder holding one")
    folder = records_file.parent
    store = RecordStore(folder)
    # An evaluation killed with its study, not recorded yet (its driver records it when the study resumes).
    records = store.records() + store.unfinished()
    full = [r for r in records if r.full_fidelity]
    evaluations = _evaluations([r for r in full if r.counted], objective)
    specs = next((r.output_specs for r in records if r.output_specs), ())
    return Run(
        label=label or folder.name,
        folder=folder,
        solver=_solver(folder),
        evaluations=tuple(evaluations),
        not_counted=tuple(r for r in full if not r.counted),
        low_fidelity=len(records) - len(full),
        nomad=_nomad_files(folder),
        compute=compute_of(records),
        objectives=tuple(spec.partition(":")[2] for spec in specs if spec.startswith("OBJ:")),
    )


def _evaluations(records: list[EvalRecord], objective: str | None) -> list[Evaluation]:
    rows = []
    best = math.nan
    cumulative = 0.0
    for number, record in enumerate(records, start=1):
        value = _objective(record, objective)
        metrics = record.metrics
        feasible = all(v <= 0 for k, v in metrics.items() if k.startswith("constraint:") and v is not None)
        if not math.isnan(value) and feasible and (math.isnan(best) or value < best):
            best = value
        hours = record.compute_seconds / 3600
        cumulative += hours
        rows.append(
            Evaluation(
                number=number,
                status=record.status.value,
                objective=value,
                best_so_far=best,
                hours=hours,
                cumulative_hours=cumulative,
                hparams=record.hparams,
                point=record.point,
                run_id=record.run_id,
                device=record.device,
                error=record.error,
                feasible=feasible,
                run_dir=record.run_dir,
                fingerprint=record.fingerprint or None,
                metrics=metrics,
                curve=record.curve,
                stopped=record.stopped,
                solver_value=record.output("OBJ"),
                values=_values(record),
            )
        )
    return rows


def _objective(record: EvalRecord, metric: str | None) -> float:
    """The metric of an OK record; inf for a diverged one (as the blackbox prints it); nan otherwise."""
    if record.status.value == "DIVERGED":
        return math.inf
    if record.status.value != "OK":
        return math.nan
    metrics = record.metrics
    if metric is None:
        metric = "objective" if "objective" in metrics else "validation_loss"
    if metric not in metrics:
        known = sorted(k for k, v in metrics.items() if isinstance(v, int | float))
        raise ConfigError(f"record {record.run_id} has no metric {metric!r}; it has {known}")
    return float(metrics[metric])


def _values(record: EvalRecord) -> tuple[float, ...]:
    """Its objectives as the solver minimised them, when they are its own result (OK, DIVERGED: inf); nan else."""
    values = record.objective_values()
    return values if record.status in (Status.OK, Status.DIVERGED) else tuple(math.nan for _ in values)


def _solver(folder: Path) -> str:
    if (folder / PARAM_COPY).exists() or (folder / CACHE_FILE).exists():
        return "NOMAD"
    if (folder / OPTUNA_STORAGE_FILE).exists():
        return "Optuna"
    return ""


def _nomad_files(folder: Path) -> NomadFiles | None:
    cache = folder / CACHE_FILE
    stats = [folder / STATS_FILE, *sorted(folder.glob("stats.*.txt"))]
    if not cache.exists() and not any(p.exists() for p in stats):
        return None
    entries = read_cache(cache) if cache.exists() else []
    ok = [e for e in entries if e.ok]
    param = folder / PARAM_COPY
    outputs = read_outputs_and_budget(param)[0] if param.exists() else []
    index = outputs.index("OBJ") if "OBJ" in outputs else 0
    best = min((float(e.outputs[index]) for e in ok), default=None)
    stats_lines = sum(len([ln for ln in p.read_text().splitlines() if ln.strip()]) for p in stats if p.exists())
    return NomadFiles(cache_entries=len(entries), cache_ok=len(ok), cache_best=best, stats_lines=stats_lines)
