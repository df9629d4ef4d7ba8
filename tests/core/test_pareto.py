"""Fronts, hypervolumes and knees: against hand-computed values and a brute-force count."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from blackbox.core.pareto import (
    dominates,
    front_indices,
    hypervolume,
    hypervolume_share,
    ideal_point,
    knee,
    reference_point,
)

INF, NAN = math.inf, math.nan


def test_dominance_and_the_front() -> None:
    assert dominates((1, 2), (1, 3)) and not dominates((1, 3), (1, 3)) and not dominates((0, 4), (1, 3))
    values = [(3.0, 4.0), (1.0, 5.0), (3.0, 4.0), (2.0, 2.0), (NAN, 0.0), (INF, 0.0), (4.0, 1.0), (2.5, 2.5)]
    # Equal vectors both stay; a failed (nan) or diverged (inf) one is never on the front; (2.5, 2.5) and the
    # copies of (3, 4) are dominated by (2, 2).
    assert front_indices(values) == [1, 3, 6]
    assert front_indices([(1.0, 1.0), (1.0, 1.0)]) == [0, 1]
    assert front_indices([]) == []


def test_hypervolume_by_hand() -> None:
    assert hypervolume([(1, 2), (2, 1)], (3, 3)) == 3.0  # 2x1 + 1x1
    assert hypervolume([(1, 2), (2, 1), (2.5, 2.5)], (3, 3)) == 3.0  # a dominated point adds nothing
    assert hypervolume([(4, 0)], (3, 3)) == 0.0  # beyond the reference point
    assert hypervolume([(1,)], (3,)) == 2.0
    assert hypervolume([(1, 2, 1), (2, 1, 1)], (3, 3, 3)) == 6.0  # 3 (in 2-D) x depth 2
    assert hypervolume([(0, 0, 0, 0)], (1, 2, 3, 4)) == 24.0
    assert hypervolume_share([(1, 2), (2, 1)], ideal=(1, 1), reference=(3, 3)) == 0.75


@pytest.mark.parametrize("dimensions", [2, 3, 4])
def test_hypervolume_against_a_grid_count(dimensions: int) -> None:
    """On a grid of integers the volume is the number of unit cells that some point dominates."""
    rng = random.Random(dimensions)
    side = 6
    points = [tuple(float(rng.randrange(side)) for _ in range(dimensions)) for _ in range(9)]
    cells = sum(
        any(all(p[k] <= cell[k] for k in range(dimensions)) for p in points)
        for cell in itertools.product(range(side), repeat=dimensions)
    )
    assert hypervolume(points, (float(side),) * dimensions) == cells


def test_reference_and_ideal_points() -> None:
    values = [(1.0, 10.0), (3.0, 10.0), (NAN, 0.0), (2.0, INF)]
    assert ideal_point(values) == (1.0, 10.0)
    assert reference_point(values) == pytest.approx((3.2, 11.0))  # worst + 10% of the range (of the value: none)
    with pytest.raises(ValueError, match="no finite values"):
        reference_point([(NAN, 1.0)])


def test_the_knee_is_nearest_the_ideal_point_once_scaled() -> None:
    front = [(0.0, 10.0), (1.0, 2.0), (4.0, 1.0), (10.0, 0.0)]
    assert knee(front) == 1  # scaled: (0.1, 0.2) is the nearest to (0, 0)
    assert knee([(3.0, 5.0)]) == 0
    assert knee([(1.0, 7.0), (2.0, 7.0)]) == 0  # an objective that does not vary counts for nothing
    with pytest.raises(ValueError, match="empty"):
        knee([])
