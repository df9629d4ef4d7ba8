"""One blackbox call, as NOMAD makes it: the lines of a point file in, one output line per point out, in order,
and how the call ends. What ``lora-blackbox eval`` prints and exits with is decided here (click-free).

Every non-blank line gets exactly one record and, when the call goes on, one output line; a blank line (a
point evaluated elsewhere) gets neither. The points run in this process one after the other (the model loads
once per call, every point gets a fresh, identically seeded adapter: :func:`evaluate_here`), or spread over
processes on this machine's devices or tasks on a Ray cluster (:class:`Spread`, :func:`evaluate_spread`).
What a point's end means for the call is the failure policy's (``blackbox.core.failures``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

from blackbox.core.early_stopping import Judge
from blackbox.core.errors import PointError, RecordsError
from blackbox.core.experiment import Experiment, experiment_reference
from blackbox.core.failures import NOT_RUN_STOPPING, Call, Status, call_after, not_run_reason
from blackbox.core.point import parse_point
from blackbox.core.record import EvalRecord, RecordStore, record_not_run
from blackbox.core.resume import answer_finished, finished_answers
from blackbox.core.stopping import stop_requested
from blackbox.runners import Runner, unsettled

if TYPE_CHECKING:
    from blackbox.training.objective import Evaluator


class PointEvaluator(Protocol):
    """Evaluates the points of one experiment in this process and records each (``training.objective.Evaluator``
    trains them; ``replay.objective.ReplayEvaluator`` answers them from a replay table)."""

    experiment: Experiment

    def evaluate_line(
        self, line: str, *, point_file: str | None = None, block_index: int | None = None, judge: Judge | None = None
    ) -> EvalRecord: ...


def make_evaluator(experiment: Experiment) -> PointEvaluator:
    """The evaluator of an experiment: from its replay table (``replay.table``), else by training.

    Raises:
        OptionError: the replay table is missing, damaged or built for another experiment.
    """
    if experiment.replay.table:
        from blackbox.replay.objective import ReplayEvaluator  # no torch: a replay answers in milliseconds

        return ReplayEvaluator(experiment)
    from blackbox.training.objective import Evaluator  # local: imports torch

    return Evaluator(experiment)


@dataclass(frozen=True)
class Answer:
    """What a call prints (its output lines, in order) and how it ends (``call``; ``error``: why, in one line).
    A call that does not go on prints nothing: NOMAD fails every point of a call that exits non-zero."""

    lines: tuple[str, ...]
    call: Call = Call.GOES_ON
    error: str | None = None

    @classmethod
    def ended(cls, call: Call, error: str | None) -> Answer:
        return cls((), call, error)


@dataclass(frozen=True)
class Spread:
    """How a call spreads its points: ``workers`` processes at once on this machine's devices, each evaluation
    over ``gpus_per_eval`` devices (torchrun ranks), or tasks on a Ray cluster (``backend="ray"``).
    ``experiment_ref`` and ``overrides``: how the evaluation processes load the experiment."""

    experiment_ref: str
    overrides: tuple[str, ...] = ()
    workers: int = 1
    gpus_per_eval: int = 1
    backend: Literal["local", "ray"] = "local"
    ray_address: str = "auto"

    def runner(self, experiment: Experiment) -> Runner | None:
        """The runner that spreads the points, or None to evaluate them in this process."""
        reference = experiment_reference(self.experiment_ref)  # evaluation processes run in other folders
        if self.backend == "ray":
            from blackbox.runners.ray_pool import RayRunner

            return RayRunner(reference, experiment, self.overrides, self.ray_address, gpus_per_eval=self.gpus_per_eval)
        if self.workers == 1 and self.gpus_per_eval == 1:
            return None
        from blackbox.runners.devices import discover, lease_dir
        from blackbox.runners.local import LocalRunner

        slots = discover(cpu_slots=self.workers * self.gpus_per_eval)
        return LocalRunner(reference, experiment, self.overrides, slots, self.workers, self.gpus_per_eval, lease_dir())


def declined(experiment: Experiment, lines: Sequence[str], point_file: str) -> Answer | None:
    """The answer of a call made while its study is stopping (``blackbox.core.stopping``): every point NOT_RUN,
    not counted, nothing started; None when the study is not stopping."""
    if not stop_requested():
        return None
    return Answer(tuple(record_not_run(experiment, list(lines), point_file, reason=NOT_RUN_STOPPING)))


def answer_call(
    experiment: Experiment, lines: Sequence[str], point_file: str, spread: Spread, *, judge: Judge | None = None
) -> Answer:
    """Answer the lines of one point file: ``lora-blackbox eval`` without its command line.

    A stopping study's call evaluates nothing; a resumed study's finished points are answered from their
    records (``blackbox.core.resume``) before torch is imported; the other points are evaluated, in their
    places. Under torchrun every rank evaluates the points together and rank 0 alone answers. ``judge``: who
    decides at the checkpoints of the points evaluated in this process (default: the experiment's ``[stopping]``
    rule); processes started for the others find their own.

    Raises:
        RecordsError: the records folder cannot be written (checked before anything is loaded).
        KeyboardInterrupt: this process was interrupted while the points ran elsewhere.
    """
    RecordStore.of(experiment).check_writable()  # before anything is loaded or trained
    answer = declined(experiment, lines, point_file)
    if answer is not None:
        return answer
    answered = finished_answers(experiment, lines) if answer_finished() else {}
    points = [i for i, line in enumerate(lines) if line.strip()]
    if all(i in answered for i in points):
        return Answer(tuple(answered[i] for i in points))
    left = ["" if i in answered else line for i, line in enumerate(lines)]
    if experiment.replay.table:
        return _replay_call(experiment, left, point_file, points, answered, judge=judge)

    from blackbox.training import distributed  # local: imports torch
    from blackbox.training.objective import Evaluator

    evaluator = Evaluator(experiment)
    runner = spread.runner(experiment)
    if runner is None:
        evaluated = evaluate_here(evaluator, left, point_file, judge=judge)
    else:
        evaluated = evaluate_spread(evaluator, runner, left, point_file)
    distributed.stop()
    if evaluated.call is not Call.GOES_ON:
        return evaluated
    if not evaluator.world.main:
        return Answer(())
    new = iter(evaluated.lines)
    return Answer(tuple(answered[i] if i in answered else next(new) for i in points))


def _replay_call(
    experiment: Experiment,
    lines: list[str],
    point_file: str,
    points: list[int],
    answered: dict[int, str],
    *,
    judge: Judge | None,
) -> Answer:
    """A call answered from the experiment's replay table, one point after the other in this process (as a real
    call spread over workers would not be: a replay's clock is sequential). Every point is checked to be on the
    table's grid before any is answered.

    Raises:
        OptionError: the table cannot answer this experiment, or a point is off its grid (exit status 2).
    """
    from blackbox.replay.objective import ReplayEvaluator

    replayer = ReplayEvaluator(experiment)
    replayer.check_lines(lines)
    evaluated = evaluate_here(replayer, lines, point_file, judge=judge)
    if evaluated.call is not Call.GOES_ON:
        return evaluated
    new = iter(evaluated.lines)
    return Answer(tuple(answered[i] if i in answered else next(new) for i in points))


def evaluate_here(
    evaluator: PointEvaluator, lines: list[str], point_file: str, *, judge: Judge | None = None
) -> Answer:
    """Each point in this process, one after the other (one model load for the block).

    A study that is stopping (``blackbox.core.stopping``) gets no new evaluation: the points not reached are
    answered NOT_RUN, and a point cut by the study's Ctrl-C is answered as the failure it is recorded as
    (INTERRUPTED, not counted), so that the call ends normally and NOMAD keeps its budget. A point whose end
    fails or interrupts the call (``failures.call_after``) ends it: the points not reached are recorded NOT_RUN.
    """
    experiment = evaluator.experiment
    outputs: list[str] = []
    for index, line in enumerate(lines):
        if not line.strip():
            continue  # a point evaluated elsewhere: no output line
        rest = lines[index + 1 :]
        if stop_requested():  # the study is stopping: this point and the rest are not evaluated
            outputs += record_not_run(
                experiment, lines[index:], point_file, reason=NOT_RUN_STOPPING, first_block_index=index
            )
            break
        try:
            record = evaluator.evaluate_line(line, point_file=point_file, block_index=index, judge=judge)
        except RecordsError as e:  # its record could not be written: nor can the others'
            reason = not_run_reason(Call.FAILS, str(e))
            record_not_run(experiment, rest, point_file, reason=reason, first_block_index=index + 1)
            return Answer.ended(Call.FAILS, str(e))
        stopping = stop_requested()
        call = call_after(record.status, stopping=stopping)
        if call is not Call.GOES_ON:
            reason = not_run_reason(call, record.error)
            record_not_run(experiment, rest, point_file, reason=reason, first_block_index=index + 1)
            return Answer.ended(call, record.error)
        outputs.append(record.output_line)
        if record.status is Status.INTERRUPTED:  # cut by the study's Ctrl-C: the rest is not evaluated
            outputs += record_not_run(
                experiment, rest, point_file, reason=NOT_RUN_STOPPING, first_block_index=index + 1
            )
            break
    return Answer(tuple(outputs))


def evaluate_spread(evaluator: Evaluator, runner: Runner, lines: list[str], point_file: str) -> Answer:
    """Valid points through ``runner`` (in parallel); invalid ones are answered here without starting anything.

    Each point is settled by the runner (``runners.settle``): it has exactly one record, its own or one written
    for it, and its output line is its record's. A point whose end fails or interrupts the call (an evaluation
    process that could not proceed, or was interrupted) ends it as it would in this process.
    """
    outputs: dict[int, str] = {}
    pending: list[tuple[int, str]] = []
    for index, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            evaluator.space.decode(parse_point(line))
        except PointError:
            outputs[index] = evaluator.evaluate_line(line, point_file=point_file, block_index=index).output_line
            continue
        pending.append((index, line))
    settled = runner.run([line for _, line in pending])
    failure = unsettled(settled)
    if failure is not None:
        return Answer.ended(failure.call, failure.record.error)
    for (index, _), point in zip(pending, settled, strict=True):
        outputs[index] = point.line
    return Answer(tuple(outputs[i] for i in sorted(outputs)))
