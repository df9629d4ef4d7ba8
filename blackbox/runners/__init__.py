"""Ways to run the evaluations of a block: in this process (``block.evaluate_here`` on a
``training.objective.Evaluator``), a subprocess per point (``isolated``), parallel processes on this
machine's devices (``local``), tasks on a Ray cluster (``ray_pool``), or the whole call in a container
(``container``).

Every evaluation process is the same command (:func:`eval_argv`, NOMAD's BB_EXE). When one ends, the
process that started it settles the point (:func:`settle`): it finds the record the evaluation wrote,
writes one when there is none (a process killed by the out-of-memory killer writes nothing), and asks the
failure policy (``blackbox.failures``) what the point's end means for the call.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from blackbox.errors import PointError
from blackbox.experiment import Experiment
from blackbox.failures import Call, Status, call_after, describe_exit, process_status
from blackbox.files import write_text_atomic
from blackbox.folders import RECORDS_FILE
from blackbox.point import PointSource, parse_point, shorten
from blackbox.record import append_record, build_record, find_record, killed_evaluations, writing_records
from blackbox.space import SearchSpace
from blackbox.stopping import stop_requested

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Settled:
    """A point evaluated by another process, accounted for: its record (the evaluation's own, or the one
    written for it), and what its end means for the whole call (``failures.call_after``)."""

    record: dict[str, Any]
    call: Call

    @property
    def line(self) -> str:
        """The point's output line, from its record (the record is the truth; stdout only carries it)."""
        return " ".join(self.record["outputs"])

    @property
    def status(self) -> Status:
        return Status(self.record["status"])


class Runner(Protocol):
    def run(self, lines: Sequence[str]) -> list[Settled]: ...


def eval_argv(experiment_ref: str, overrides: Sequence[str], point_file: str, *, gpus_per_eval: int = 1) -> list[str]:
    """The command that evaluates a point file in a process of its own, as NOMAD's BB_EXE would.

    With ``gpus_per_eval`` > 1 the evaluation is data-parallel: torchrun starts that many ranks (one per GPU,
    or gloo processes on a CPU host) and rank 0 records and prints the result line.
    """
    sets = [word for item in overrides for word in ("--set", item)]
    blackbox = ["-m", "blackbox.cli", "eval", "--experiment", experiment_ref, *sets, point_file]
    if gpus_per_eval == 1:
        return [sys.executable, *blackbox]
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={gpus_per_eval}"]
    return [sys.executable, *launcher, *blackbox]


def settle(
    experiment: Experiment,
    *,
    line: str,
    point_file: str,
    block_index: int | None,
    returncode: int,
    records: Sequence[dict[str, Any]] | None = None,
    launcher: bool = False,
    lost: str | None = None,
    seconds: float = 0.0,
) -> Settled:
    """Account for one point evaluated by a process that ended with ``returncode``.

    Args:
        experiment: the experiment the process evaluated (for a missing record).
        line, point_file, block_index: the point as the process was given it; its record is found by them.
        records: the records the process returned for this point (a Ray worker's); default: look in the
            experiment's records file, which the process appends to.
        launcher: the process was torchrun, not ``eval`` itself: its exit status 1 means "a rank failed",
            not "could not proceed".
        lost: why the process's end is unknown (a lost Ray worker), for the record written instead.
        seconds: how long the process ran (in a missing record).
    """
    records_dir = experiment.records_dir.resolve()
    records_file = records_dir / RECORDS_FILE
    if records is None:
        found = find_record(records_file, point_file=point_file, block_index=block_index)
    else:
        found = records[-1] if records else None
    if found is not None:
        status = process_status(returncode, Status(found["status"]))
        return Settled(found, call_after(status, stopping=stop_requested()))
    status = Status.ERROR if (launcher and returncode == 1) or lost else process_status(returncode, None)
    error = lost or f"the evaluation process {describe_exit(returncode)} and wrote no record"
    logger.error("point %s: %s", shorten(repr(line.strip())), error)
    values: tuple[float, ...] | None = None
    hparams = None
    with contextlib.suppress(PointError):  # an invalid point keeps only its line
        values = parse_point(line)
        hparams = SearchSpace.from_experiment(experiment).decode(values).as_dict()
    # The evaluation's run folder, when it got as far as starting one: its record goes there too, so that the
    # folder is not taken for an evaluation killed with its study (record.killed_evaluations).
    started = [
        (run_dir, marker)
        for run_dir, marker in (killed_evaluations(records_dir, alive=False) if records is None else [])
        if marker.get("point_file") == point_file and marker.get("block_index") == block_index
    ]
    run_dir = started[-1][0] if started else None
    record = build_record(
        experiment,
        status,
        PointSource(line, values, point_file, block_index),
        run_id=run_dir.name if run_dir else None,
        error=error,
        hparams=hparams,
        metrics={"total_seconds": seconds},
        timings={"total_s": seconds},
        run_dir=str(run_dir) if run_dir else None,
    )
    if run_dir is not None:
        with writing_records(records_dir):
            write_text_atomic(run_dir / "record.json", record.to_json())
    append_record(records_file, record)
    return Settled(record.as_dict(), call_after(status, stopping=stop_requested()))


def unsettled(settled: Sequence[Settled]) -> Settled | None:
    """The first point whose end fails or interrupts the call (None: the call goes on)."""
    return next((s for s in settled if s.call is not Call.GOES_ON), None)
