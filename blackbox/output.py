"""The output line NOMAD reads: values in BB_OUTPUT_TYPE order, separated by single spaces.

A failed point prints ``nan`` for every value (NOMAD: EVAL_FAILED). A diverged run prints ``inf`` as
objective (a valid, very bad point) and as constraints (infeasible), and whatever extra values it
has. ``CNT_EVAL`` is 1 for a finished
evaluation and 0 for one that was interrupted or never ran, which NOMAD then leaves out of its budget.
"""

from __future__ import annotations

import math
from typing import Any

from blackbox.failures import Status


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
        elif status is Status.DIVERGED:
            value = math.inf if kind in ("OBJ", "PB", "EB") else metrics.get(metric, math.nan)
        else:
            value = math.nan
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
