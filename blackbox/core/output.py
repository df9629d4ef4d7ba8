"""The output line NOMAD reads: values in BB_OUTPUT_TYPE order, separated by single spaces.

The values of a point that did not finish OK, and whether it counts (``CNT_EVAL``), are the failure policy's
(``blackbox.core.failures``): ``nan`` for a failed point (NOMAD: EVAL_FAILED), ``inf`` as the objective and
constraints of a diverged run (a valid, very bad, infeasible point), for a run stopped early the objective it was
given when it stopped (``failures.value_of_stopped``), and the extra outputs a diverged or stopped run measured
(``failures.value_of_extra``).
"""

from __future__ import annotations

from typing import Any

from blackbox.core.failures import Status, value_of_extra, value_of_failure


def output_tokens(specs: tuple[str, ...], status: Status, metrics: dict[str, Any]) -> tuple[str, ...]:
    """One token per ``TYPE:METRIC`` spec of ``study.outputs``."""
    tokens = []
    for spec in specs:
        kind, _, metric = spec.partition(":")
        value: Any
        if kind == "CNT_EVAL":
            value = int(status.counted)
        elif status is Status.OK:
            value = metrics[f"constraint:{metric}" if kind in ("PB", "EB") else metric]
        elif status is Status.STOPPED and kind == "OBJ":
            value = metrics["objective"]  # the failure policy's value_of_stopped, decided when it stopped
        elif kind == "EXTRA_O":
            value = value_of_extra(status, metrics.get(metric))  # the failure policy's (blackbox.core.failures)
        else:
            value = value_of_failure(status, kind)  # the failure policy's (blackbox.core.failures)
        tokens.append(_token(value))
    return tuple(tokens)


def _token(value: Any) -> str:
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)  # shortest text that reads back as the same double: 0.87, inf, nan
    text = str(value)
    return "".join(text.split()) or "-"  # EXTRA_O tokens must not contain spaces
