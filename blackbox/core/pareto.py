"""Pareto fronts of studies with several objectives, every objective minimised (as the solver saw it: a maximised
score negated): dominance, the non-dominated points, their hypervolume and their knee.

Pure arithmetic on tuples of floats, for the study drivers, the reports and the choice of models alike.

Example::

    values = [(3.1, 4096.0), (3.4, 1024.0), (3.5, 4096.0)]
    front_indices(values)                                     # [0, 1]: the third is dominated by the first
    hypervolume([values[0], values[1]], reference=(4.0, 8192.0))
    knee([values[0], values[1]])                              # the index, in that list, of its knee
"""

from __future__ import annotations

import math
from collections.abc import Sequence

Vector = Sequence[float]


def dominates(a: Vector, b: Vector) -> bool:
    """Whether ``a`` is at least as good as ``b`` on every objective and better on one (all minimised)."""
    return all(x <= y for x, y in zip(a, b, strict=True)) and any(x < y for x, y in zip(a, b, strict=True))


def front_indices(values: Sequence[Vector]) -> list[int]:
    """The indices of the non-dominated vectors among those whose values are all finite, in their order. Equal
    vectors do not dominate each other: both stay."""
    finite = [i for i, v in enumerate(values) if all(math.isfinite(x) for x in v)]
    return [i for i in finite if not any(dominates(values[j], values[i]) for j in finite if j != i)]


def reference_point(values: Sequence[Vector], *, margin: float = 0.1) -> tuple[float, ...]:
    """A hypervolume reference point for ``values`` (their finite ones): on each objective the worst value plus
    ``margin`` of the range (of the worst value's size when the range is 0; 1 when that is 0 too), so that every
    finite point, the worst included, adds volume.

    Raises:
        ValueError: no vector has finite values.
    """
    finite = [v for v in values if all(math.isfinite(x) for x in v)]
    if not finite:
        raise ValueError("no finite values: no reference point")
    reference = []
    for column in zip(*finite, strict=True):
        low, high = min(column), max(column)
        spread = (high - low) or abs(high) or 1.0
        reference.append(high + margin * spread)
    return tuple(reference)


def ideal_point(values: Sequence[Vector]) -> tuple[float, ...]:
    """The best value of each objective over the finite vectors of ``values``.

    Raises:
        ValueError: no vector has finite values.
    """
    finite = [v for v in values if all(math.isfinite(x) for x in v)]
    if not finite:
        raise ValueError("no finite values: no ideal point")
    return tuple(min(column) for column in zip(*finite, strict=True))


def hypervolume(points: Sequence[Vector], reference: Vector) -> float:
    """The volume dominated by ``points`` and bounded by ``reference`` (exact; points not better than the reference
    on every objective add nothing). Slices along the last objective, down to a sweep in two dimensions: fast for the
    fronts of a study (tens of points, 2 to 4 objectives)."""
    inside = [tuple(p) for p in points if all(x < r for x, r in zip(p, reference, strict=True))]
    return _volume(inside, tuple(reference))


def _volume(points: list[tuple[float, ...]], reference: tuple[float, ...]) -> float:
    if not points:
        return 0.0
    points = [points[i] for i in front_indices(points)]
    if len(reference) == 1:
        return reference[0] - min(p[0] for p in points)
    if len(reference) == 2:
        area, previous_y = 0.0, reference[1]
        for x, y in sorted(points):  # x rising, y falling along a front
            if y < previous_y:
                area += (reference[0] - x) * (previous_y - y)
                previous_y = y
        return area
    ordered = sorted(points, key=lambda p: p[-1])
    volume = 0.0
    for i, point in enumerate(ordered):
        upper = ordered[i + 1][-1] if i + 1 < len(ordered) else reference[-1]
        if upper > point[-1]:
            volume += (upper - point[-1]) * _volume([p[:-1] for p in ordered[: i + 1]], reference[:-1])
    return volume


def hypervolume_share(points: Sequence[Vector], *, ideal: Vector, reference: Vector) -> float:
    """The hypervolume of ``points`` as a share of the box between ``ideal`` and ``reference`` (0 to 1): the same
    number whatever the units of the objectives."""
    box = math.prod(r - i for r, i in zip(reference, ideal, strict=True))
    return hypervolume(points, reference) / box if box > 0 else 0.0


def knee(front: Sequence[Vector]) -> int:
    """The index of the knee of a front: the point nearest the ideal point once each objective is scaled to [0, 1]
    over the front (an objective that does not vary counts 0). With two objectives, the point where giving up a
    little of one buys the most of the other.

    Raises:
        ValueError: an empty front.
    """
    if not front:
        raise ValueError("an empty front has no knee")
    lows = [min(column) for column in zip(*front, strict=True)]
    highs = [max(column) for column in zip(*front, strict=True)]

    def distance(point: Vector) -> float:
        scaled = [(x - lo) / (hi - lo) if hi > lo else 0.0 for x, lo, hi in zip(point, lows, highs, strict=True)]
        return math.hypot(*scaled)

    return min(range(len(front)), key=lambda i: distance(front[i]))
