"""One call's block of points: evaluated one after the other in this process, or spread over runners.

Either way every non-blank line gets exactly one output line, in input order, and one record.
"""

from __future__ import annotations

from collections.abc import Iterator

from blackbox.errors import PointError, SetupError
from blackbox.failures import Call, Status
from blackbox.output import output_tokens
from blackbox.point import parse_point
from blackbox.record import record_not_run
from blackbox.runners import Runner, unsettled
from blackbox.stopping import STOPPING, stop_requested
from blackbox.training.objective import Evaluator


def evaluate_here(evaluator: Evaluator, lines: list[str], point_file: str) -> Iterator[str]:
    """Each point in this process (one model load for the block); yields output lines as points finish.

    A study that is stopping (``blackbox.stopping``) gets no new evaluation: the points not reached are
    answered NOT_RUN, and a point cut by the study's Ctrl-C is answered as the failure it is recorded as
    (INTERRUPTED, not counted), so that the call ends normally and NOMAD keeps its budget.

    Raises:
        SetupError: the model or data cannot be loaded (the points not reached are recorded NOT_RUN).
        KeyboardInterrupt: interrupted from outside a stopping study (the points not reached are recorded NOT_RUN).
    """
    experiment = evaluator.experiment
    for index, line in enumerate(lines):
        if not line.strip():
            continue  # a point evaluated elsewhere: no output line
        if stop_requested():  # the study is stopping: this point and the rest are not evaluated
            yield from record_not_run(experiment, lines[index:], point_file, reason=STOPPING, first_block_index=index)
            return
        try:
            record = evaluator.evaluate_line(line, point_file=point_file, block_index=index)
        except SetupError as e:
            record_not_run(
                experiment, lines[index + 1 :], point_file, reason=f"the call failed: {e}", first_block_index=index + 1
            )
            raise
        except KeyboardInterrupt:
            stopping = stop_requested()
            reason = STOPPING if stopping else "not evaluated: the call was interrupted"
            rest = record_not_run(
                experiment, lines[index + 1 :], point_file, reason=reason, first_block_index=index + 1
            )
            if not stopping:
                raise
            yield " ".join(output_tokens(experiment.study.outputs, Status.INTERRUPTED, {}))
            yield from rest
            return
        yield record.output_line


def evaluate_spread(evaluator: Evaluator, runner: Runner, lines: list[str], point_file: str) -> list[str]:
    """Valid points through ``runner`` (in parallel); invalid ones are answered here without starting anything.

    Each point is settled by the runner (``runners.settle``): it has exactly one record, its own or one written
    for it, and its output line is its record's. A point whose end fails the call (an evaluation process that
    could not proceed) fails it as it would in this process.

    Raises:
        SetupError: an evaluation process could not load the model or the data (the call fails, exit 1).
        KeyboardInterrupt: interrupted from outside a stopping study.
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
    if failure is not None and failure.call is Call.FAILS:
        raise SetupError(failure.record.get("error") or "an evaluation process could not proceed")
    if failure is not None:
        raise KeyboardInterrupt("an evaluation process was interrupted")
    for (index, _), point in zip(pending, settled, strict=True):
        outputs[index] = point.line
    return [outputs[i] for i in sorted(outputs)]
