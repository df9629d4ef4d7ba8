"""One replayed evaluation: point -> the table's row -> its learning curve, judged at the checkpoints -> record.

:class:`ReplayEvaluator` is what ``lora-blackbox eval`` evaluates with when the experiment sets ``replay.table``
(``runners.call.make_evaluator``): the same interface as ``training.objective.Evaluator`` and the same records,
without torch. A point's learning curve is the table's at the experiment's checkpoints; at each of them the judge
(the experiment's ``[stopping]`` rule over the study's records, or an Optuna trial's pruner) decides as it would
during a real training; a stopped point is recorded STOPPED with the value a real one gets
(``failures.value_of_stopped``).

Its timings are the table's measured seconds, as the real evaluation would have spent them in this call: the
start-up and the loading for the first point of the process only (the model loads once per call), the training
up to the checkpoint where it stopped, the checkpoints this experiment measures (none without ``[validation]
checkpoints``), the final validation of a point that ran to its end. ``metrics.replay_clock_s`` is the study's
simulated clock after it: the compute seconds of every record of the folder, one evaluation after the other.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from blackbox.core.curves import CurvePoint, Stop
from blackbox.core.early_stopping import Judge, StudyRule, incumbent_objective
from blackbox.core.errors import PointError
from blackbox.core.experiment import Experiment, write_snapshot
from blackbox.core.failures import Status, value_of_stopped
from blackbox.core.objectives import objective_metrics
from blackbox.core.point import PointSource, parse_point, shorten
from blackbox.core.record import EvalRecord, RecordStore, build_record, new_run_id, now
from blackbox.core.space import SearchSpace
from blackbox.replay.table import LOAD_PHASES, ReplayTable, Row, curve_of, read_table

logger = logging.getLogger(__name__)

_MEASURED = (*LOAD_PHASES, "train_s", "checkpoint_s", "validation_s")


class ReplayEvaluator:
    """Answers the points of ``experiment``'s grid from its ``replay.table`` (a ``runners.call.PointEvaluator``).

    Example::

        table = "replay.table=benchmarks/results/replay/efficiency.csv"
        replayer = ReplayEvaluator(load_experiment("efficiency", [table]))
        record = replayer.evaluate_line("3 1 -2.5")
        record.metrics["validation_loss"], record.metrics["replay_clock_s"]

    Raises:
        OptionError: the table is missing, damaged, or built for another experiment (exit status 2).
    """

    def __init__(self, experiment: Experiment) -> None:
        self.experiment = experiment
        self.space = SearchSpace.from_experiment(experiment)
        self.store = RecordStore.of(experiment)
        self.table: ReplayTable = read_table(Path(experiment.replay.table))
        self.table.check(experiment)
        ok = [row for row in self.table.grid.values() if row.status is Status.OK]
        self._total_steps = int(ok[0].metrics["train_steps"]) if ok else 0
        self._checkpoint_rows = int(ok[0].metrics.get("checkpoint_rows") or 0) if ok else 0
        self._first = True  # the first evaluation of this process pays the start-up and the loading
        self._snapshot_written = False

    def check_lines(self, lines: Sequence[str]) -> None:
        """Check that every valid point of a call is on the table's grid, before anything is answered.

        Raises:
            OptionError: a point is not (the message names the nearest grid point).
        """
        for line in lines:
            if not line.strip():
                continue
            try:
                point = self.space.check(parse_point(line))
            except PointError:
                continue  # an invalid point fails alone (INVALID_POINT), as in a real call
            self.table.row(point, self.space)

    def evaluate_line(
        self, line: str, *, point_file: str | None = None, block_index: int | None = None, judge: Judge | None = None
    ) -> EvalRecord:
        """Replay one non-blank line of a point file and return its record (written to the records folder).

        Raises:
            OptionError: the point is not on the table's grid.
            RecordsError: the record cannot be written.
        """
        source = PointSource(line=line, file=point_file, block_index=block_index)
        try:
            values = parse_point(line)
            hparams = self.space.decode(values)
            point = self.space.check(values)
        except PointError as e:
            logger.error("point %s (%s) is invalid: %s", source.label, shorten(repr(line.strip())), e)
            return self._write(build_record(self.experiment, Status.INVALID_POINT, source, error=str(e)))
        row = self.table.row(point, self.space)
        source = PointSource(line, values, point_file, block_index)
        started_at = now()
        status, metrics, timings, curve, stop = self._replay(row, judge)
        metrics["replay_row"] = row.run_id
        clock = sum(r.compute_seconds for r in self.store.records()) + timings.get("startup_s", 0.0)
        metrics["replay_clock_s"] = clock + timings["total_s"]
        record = build_record(
            self.experiment,
            status,
            source,
            run_id=new_run_id(),
            error=_error(row) if status not in (Status.OK, Status.STOPPED) else None,
            hparams=hparams.as_dict(),
            metrics=metrics,
            timings=timings,
            started_at=started_at,
            curve=curve,
            stopped=stop,
            device=f"replay of {row.run_id}",
        )
        if not self._snapshot_written:
            write_snapshot(self.experiment)  # warm starts and reports read the experiment of a records folder
            self._snapshot_written = True
        logger.info("point %s replayed from %s: %s", source.label, row.run_id, _describe(record))
        return self._write(record)

    def _write(self, record: EvalRecord) -> EvalRecord:
        self.store.append(record)
        return record

    def _replay(
        self, row: Row, judge: Judge | None
    ) -> tuple[Status, dict[str, Any], dict[str, float], tuple[CurvePoint, ...], Stop | None]:
        """What the real evaluation of ``row`` would have done here: its status, metrics, timings, curve and stop."""
        experiment = self.experiment
        fractions = experiment.validation.checkpoints
        if judge is None and experiment.stopping.rule != "none" and fractions:
            judge = StudyRule(experiment, checkpoint_rows=self._checkpoint_rows, store=self.store)
        timings = self._fixed_timings(row)
        measured = [p for p in curve_of(row, fractions, self.table.checkpoints)]
        curve: list[CurvePoint] = []
        for point in measured:
            curve.append(point)
            verdict = judge.decide(curve) if judge is not None else None
            if verdict is not None:
                stop = Stop(point.step, self._total_steps, verdict.rule, verdict.reason)
                return Status.STOPPED, self._stopped(row, curve, timings), timings, tuple(curve), stop
        checkpoint_s = math.fsum(p.seconds or 0.0 for p in curve)
        metrics = {k: v for k, v in row.metrics.items() if not k.startswith("checkpoint")}
        if fractions:
            metrics |= {"checkpoint_rows": self._checkpoint_rows, "checkpoint_seconds": checkpoint_s}
        if row.status is Status.OK:
            timings |= {k: row.timings[k] for k in ("train_s", "validation_s") if k in row.timings}
            if fractions:
                timings["checkpoint_s"] = checkpoint_s
            metrics |= objective_metrics(experiment.all_objectives, metrics)  # several objectives: each one's
        timings["total_s"] = math.fsum(timings.get(k, 0.0) for k in _MEASURED) + _overhead(row)
        if row.status is not Status.OK:  # a failure ended it (DIVERGED, OOM, ...): what it cost, as measured
            timings["total_s"] = row.timings.get("total_s", 0.0) - _load(row.timings) + _load(timings)
        metrics["total_seconds"] = timings["total_s"]
        return row.status, metrics, timings, tuple(curve), None

    def _fixed_timings(self, row: Row) -> dict[str, float]:
        """The start-up and the loading, paid by the first evaluation of this process only."""
        if not self._first:
            return {}
        self._first = False
        return {k: row.timings[k] for k in ("startup_s", *LOAD_PHASES) if k in row.timings}

    def _stopped(self, row: Row, curve: list[CurvePoint], timings: dict[str, float]) -> dict[str, Any]:
        """The metrics of a training stopped at the last point of ``curve`` (``timings`` completed in place)."""
        last = curve[-1]
        checkpoint_s = math.fsum(p.seconds or 0.0 for p in curve)
        timings |= {"train_s": last.train_seconds or 0.0, "checkpoint_s": checkpoint_s}
        timings["total_s"] = math.fsum(timings.get(k, 0.0) for k in _MEASURED) + _overhead(row)
        incumbent = incumbent_objective(self.store.records(), self.experiment.fingerprint())
        kept = ("trainable_params", "precision")
        return {
            **{k: row.metrics[k] for k in kept if k in row.metrics},
            "train_steps": last.step,
            "train_tokens": last.train_tokens,
            "train_seconds": timings["train_s"],
            "checkpoint_rows": self._checkpoint_rows,
            "checkpoint_seconds": checkpoint_s,
            "objective": value_of_stopped(last.loss, incumbent),
            "total_seconds": timings["total_s"],
        }


def _load(timings: dict[str, float]) -> float:
    return math.fsum(timings.get(k, 0.0) for k in LOAD_PHASES)


def _overhead(row: Row) -> float:
    """What the row's evaluation spent besides the measured phases (its adapter's set-up, writing its record)."""
    if row.status is not Status.OK:
        return 0.0
    return max(0.0, row.timings.get("total_s", 0.0) - math.fsum(row.timings.get(k, 0.0) for k in _MEASURED))


def _error(row: Row) -> str:
    return f"replayed: the real evaluation {row.run_id} ended {row.status.value}"


def _describe(record: EvalRecord) -> str:
    objective = record.metrics.get("objective")
    value = f"{objective:.6g}" if isinstance(objective, float) else "-"
    return f"{record.status.value}, objective {value}, {record.compute_seconds:.1f} s"
