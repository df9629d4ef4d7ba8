"""Ways to run the evaluations of a block: in this process (``block.evaluate_here`` on a
``training.objective.Evaluator``), a subprocess per point (``isolated``), parallel processes on this
machine's devices (``local``), tasks on a Ray cluster (``ray_pool``), or the whole call in a container
(``container``).

Every evaluation process is the same command (:func:`eval_argv`, NOMAD's BB_EXE). When one ends, the
process that started it settles the point (:func:`settle`): it finds the record the evaluation wrote,
writes one when there is none (a process killed by the out-of-memory killer writes nothing), and asks the
failure policy (``blackbox.core.failures``) what the point's end means for the call.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from blackbox.core.errors import PointError
from blackbox.core.experiment import Experiment
from blackbox.core.failures import Call, Status, call_after, describe_exit, process_status
from blackbox.core.point import PointSource, parse_point, shorten
from blackbox.core.record import EvalRecord, RecordStore, build_record
from blackbox.core.space import SearchSpace
from blackbox.core.stopping import stop_requested

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Settled:
    """A point evaluated by another process, accounted for: its record (the evaluation's own, or the one
    written for it), and what its end means for the whole call (``failures.call_after``)."""

    record: EvalRecord
    call: Call

    @property
    def line(self) -> str:
        """The point's output line, from its record (the record is the truth; stdout only carries it)."""
        return self.record.output_line

    @property
    def status(self) -> Status:
        return self.record.status


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
    records: Sequence[EvalRecord] | None = None,
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
        launcher: the process was torchrun, not ``eval`` itself (``failures.process_status``).
        lost: why the process's end is unknown (a lost Ray worker), for the record written instead.
        seconds: how long the process ran (in a missing record).
    """
    store = RecordStore.of(experiment)
    if records is None:
        found = store.find(point_file=point_file, block_index=block_index)
    else:
        found = records[-1] if records else None
    status = process_status(returncode, found.status if found else None, launcher=launcher, lost=lost is not None)
    if found is not None:
        return Settled(found, call_after(status, stopping=stop_requested()))
    error = lost or f"the evaluation process {describe_exit(returncode)} and wrote no record"
    logger.error("point %s: %s", shorten(repr(line.strip())), error)
    values: tuple[float, ...] | None = None
    hparams = None
    with contextlib.suppress(PointError):  # an invalid point keeps only its line
        values = parse_point(line)
        hparams = SearchSpace.from_experiment(experiment).decode(values).as_dict()
    # The evaluation's run folder, when it got as far as starting one: its record goes there too, so that the
    # folder is not taken for an evaluation killed with its study (RecordStore.unfinished).
    started = [
        marker
        for marker in (store.unfinished(alive=False) if records is None else [])
        if marker.point_file == point_file and marker.block_index == block_index
    ]
    run_id = started[-1].run_id if started else None
    record = build_record(
        experiment,
        status,
        PointSource(line, values, point_file, block_index),
        run_id=run_id,
        error=error,
        hparams=hparams,
        metrics={"total_seconds": seconds},
        timings={"total_s": seconds},
        run_dir=str(store.run_dir(run_id)) if run_id else None,
    )
    if run_id is not None:
        store.write_run_record(record)
    store.append(record)
    return Settled(record, call_after(status, stopping=stop_requested()))


def unsettled(settled: Sequence[Settled]) -> Settled | None:
    """The first point whose end fails or interrupts the call (None: the call goes on)."""
    return next((s for s in settled if s.call is not Call.GOES_ON), None)
