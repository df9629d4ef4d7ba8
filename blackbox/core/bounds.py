"""The best points of a study on a bound of its search space: the optimum may lie beyond it.

A solver cannot leave its box: when the best evaluations sit on a bound of a variable (the learning rate at its
largest value, the largest rank), a wider bound there may hold better points. The paper's experiment 2 ended so
(alpha 64, the largest ranks), and so did every demo run at its former learning-rate bound of 10^-2. The study
summary and ``lora-blackbox report`` say which variable, which bound, and how many of the best points sit on it.

Only variables whose bounds are ends of an order count: numbers, and choices among numbers (ranks, dropouts);
not booleans, nor choices among lists, strings or tables (LoRA variants), whose first and last values are ends of
nothing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from blackbox.core.errors import ConfigError
from blackbox.core.experiment import MULTIPLES, VariableConfig, read_snapshot
from blackbox.core.space import SearchSpace

TOP = 10
"""How many of the best points are looked at."""


@dataclass(frozen=True)
class OnBound:
    """A variable at one of its bounds in the best point: ``count`` of the ``top`` best points sit there too."""

    variable: str
    bound: Literal["lower", "upper"]
    coordinate: float  # NOMAD's value at that bound
    value: str  # what it decodes to, in words
    count: int
    top: int

    def describe(self) -> str:
        return (
            f"{self.variable} is at its {self.bound} bound ({self.value}) in {self.count} of the {self.top} best "
            "points, the best included"
        )

    def as_dict(self) -> dict[str, object]:
        return {
            "variable": self.variable,
            "bound": self.bound,
            "coordinate": self.coordinate,
            "value": self.value,
            "count": self.count,
            "top": self.top,
        }


def best_on_bounds(space: SearchSpace, ranked: Sequence[Sequence[float]], *, top: int = TOP) -> list[OnBound]:
    """The bounds on which the best of ``ranked`` (points in NOMAD's coordinates, best first) sits, each with how
    many of the ``top`` best points sit on it; empty when the best point is inside the box (or there is none)."""
    best = [tuple(point) for point in ranked[:top]]
    if not best:
        return []
    found = []
    for index, variable in enumerate(space.variables):
        if not _ordered(variable):
            continue
        ends: tuple[tuple[Literal["lower", "upper"], float], ...] = (
            ("lower", variable.lower),
            ("upper", variable.upper),
        )
        for bound, coordinate in ends:
            on = [_at(point[index], coordinate) for point in best]
            if on[0]:
                value = _decoded(variable, coordinate)
                found.append(OnBound(variable.name, bound, coordinate, value, sum(on), len(best)))
    return found


def study_on_bounds(study_dir: Path, fingerprint: str | None, ranked: Sequence[Sequence[float]]) -> list[OnBound]:
    """:func:`best_on_bounds` in the space of the experiment of ``fingerprint`` (its snapshot in the study folder:
    ``core.experiment.write_snapshot``); none when the folder keeps no snapshot (records of an older version)."""
    if fingerprint is None:
        return []
    try:
        experiment = read_snapshot(study_dir, fingerprint)
    except ConfigError:
        return []
    return best_on_bounds(SearchSpace.from_experiment(experiment), ranked)


def warning(found: Sequence[OnBound]) -> str | None:
    """One line for a study's summary and report, or None when the best point is inside the box."""
    if not found:
        return None
    where = "; ".join(hit.describe() for hit in found)
    return f"the best points sit on a bound of the search space: {where}. The optimum may lie beyond: widen it there"


def _ordered(variable: VariableConfig) -> bool:
    if variable.type == "B" or variable.lower == variable.upper:
        return False
    if variable.decode == "choice":
        return all(isinstance(v, int | float) and not isinstance(v, bool) for v in variable.values)
    return True


def _at(x: float, bound: float) -> bool:
    return math.isclose(x, bound, rel_tol=1e-9, abs_tol=1e-9)


def _decoded(variable: VariableConfig, coordinate: float) -> str:
    """What a bound means: ``10^-2 = 0.01``, ``rank 512``, ``k = 64 (x lora_r)``."""
    if variable.decode == "log10":
        return f"10^{coordinate:g} = {10**coordinate:g}"
    if variable.decode == "power_of_two_multiple":
        return f"2^{coordinate:g} x {variable.of}"
    if variable.decode in MULTIPLES:
        of = variable.of if variable.decode == "multiple" else f"sqrt({variable.of})"
        return f"{coordinate:g} x {of}"
    value = variable.decode_value(coordinate)
    shown = f"{value:g}" if isinstance(value, float) else str(value)
    return shown if variable.decode == "plain" else f"{coordinate:g}: {shown}"
