"""One call's block of points: evaluated one after the other in this process, or spread over runners.

Either way every non-blank line gets exactly one output line, in input order, and one record.
"""

from __future__ import annotations

from collections.abc import Iterator

from blackbox.errors import PointError, SetupError
from blackbox.objective import Evaluator
from blackbox.output import output_tokens
from blackbox.point import parse_point
from blackbox.record import Status
from blackbox.runners import Runner


def evaluate_here(evaluator: Evaluator, lines: list[str], point_file: str) -> Iterator[str]:
    """Each point in this process (one model load for the block); yields output lines as points finish.

    Raises:
        SetupError: the model or data cannot be loaded (the points not reached are recorded NOT_RUN).
    """
    for index, line in enumerate(lines):
        if not line.strip():
            continue  # a point evaluated elsewhere: no output line
        try:
            record = evaluator.evaluate_line(line, point_file=point_file, block_index=index)
        except SetupError as e:
            for later, rest in enumerate(lines[index + 1 :], start=index + 1):
                if rest.strip():
                    evaluator.record_unrun(rest, Status.NOT_RUN, f"the call failed: {e}", point_file, later)
            raise
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
