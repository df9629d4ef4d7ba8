"""One call's block of points: evaluated one after the other in this process, or spread over runners.

Either way every non-blank line gets exactly one output line, in input order, and one record.
"""

from __future__ import annotations

from collections.abc import Iterator

from blackbox.errors import PointError, SetupError
from blackbox.failures import Status
from blackbox.objective import Evaluator
from blackbox.output import output_tokens
from blackbox.point import parse_point
from blackbox.record import record_not_run
from blackbox.runners import Runner
from blackbox.stopping import STOPPING, stop_requested


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
            yield from record_not_run(experiment, lines[index:], point_file, reason=STOPPING, first_index=index)
            return
        try:
            record = evaluator.evaluate_line(line, point_file=point_file, block_index=index)
        except SetupError as e:
            record_not_run(
                experiment, lines[index + 1 :], point_file, reason=f"the call failed: {e}", first_index=index + 1
            )
            raise
        except KeyboardInterrupt:
            stopping = stop_requested()
            reason = STOPPING if stopping else "not evaluated: the call was interrupted"
            rest = record_not_run(experiment, lines[index + 1 :], point_file, reason=reason, first_index=index + 1)
            if not stopping:
                raise
            yield " ".join(output_tokens(experiment.study.outputs, Status.INTERRUPTED, {}))
            yield from rest
            return
        yield record.output_line


def evaluate_spread(evaluator: Evaluator, runner: Runner, lines: list[str], point_file: str) -> list[str]:
    """Valid points through ``runner`` (in parallel); invalid ones are answered here without starting anything."""
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
    outcomes = runner.run([line for _, line in pending])
    failed = " ".join(output_tokens(evaluator.experiment.study.outputs, Status.ERROR, {}))
    for (index, line), outcome in zip(pending, outcomes, strict=True):
        if outcome.line is None:
            # The evaluation process died without its result (killed, lost worker): record it here.
            evaluator.record_unrun(line, Status.ERROR, outcome.error or "no result", point_file, index)
            outputs[index] = failed
        else:
            outputs[index] = outcome.line
    return [outputs[i] for i in sorted(outputs)]
