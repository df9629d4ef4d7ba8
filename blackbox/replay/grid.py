"""The grid of a search space: every point a solver can ask, when every variable takes finitely many values."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator

from blackbox.core.errors import ConfigError
from blackbox.core.space import SearchSpace


def levels(space: SearchSpace) -> list[tuple[float, ...]]:
    """The values each variable takes on the grid, in NOMAD's coordinates: every integer between the bounds (an
    ``I`` or ``B`` variable, a choice's indices), or every multiple of the granularity (an ``R`` variable).

    Raises:
        ConfigError: an ``R`` variable without a granularity (it takes infinitely many values).
    """
    result = []
    for var in space.variables:
        if var.type in ("I", "B"):
            result.append(tuple(float(x) for x in range(int(var.lower), int(var.upper) + 1)))
        elif var.granularity:
            first = math.ceil(var.lower / var.granularity - 1e-9)
            last = math.floor(var.upper / var.granularity + 1e-9)
            result.append(tuple(k * var.granularity + 0.0 for k in range(first, last + 1)))
        else:
            raise ConfigError(
                f"variable {var.name} is real without a granularity: a replay needs a grid (give it a granularity)"
            )
    return result


def grid_points(space: SearchSpace) -> Iterator[tuple[float, ...]]:
    """Every point of the grid, checked (:meth:`SearchSpace.check`: as a solver's point would be)."""
    for point in itertools.product(*levels(space)):
        yield space.check(point)


def nearest(space: SearchSpace, point: tuple[float, ...]) -> tuple[float, ...]:
    """The grid point nearest to ``point``, variable by variable (a point's coordinates clipped to the bounds)."""
    return space.check(
        tuple(min(values, key=lambda v: abs(v - x)) for values, x in zip(levels(space), point, strict=True))
    )
