import itertools
import math

import pytest

from blackbox.errors import PointError
from blackbox.experiment import load_experiment, shipped_experiments
from blackbox.space import HyperParams, SearchSpace


def space(name: str) -> SearchSpace:
    return SearchSpace.from_experiment(load_experiment(name))


def test_paper_exp1_x0() -> None:
    hp = space("paper_exp1").decode((2, 5, 32, -5))
    assert hp == HyperParams(lora_r=8, lora_alpha=32, lora_dropout=0.1, learning_rate=1e-5)


def test_paper_exp3_x0() -> None:
    hp = space("paper_exp3").decode((2, 8, 1))
    assert (hp.lora_r, hp.lora_alpha, hp.lora_dropout) == (8, 64, 0.0)
    assert math.isclose(hp.learning_rate, 10**-3.5)


def test_paper_exp2_ranks_reach_512() -> None:
    s = space("paper_exp2")
    assert s.decode((8, 1, 64, -3.32)).lora_r == 512
    assert s.decode((8, 1, 64, -3.32)).lora_dropout == 0.0


@pytest.mark.parametrize("name", shipped_experiments())
def test_x0_decodes_and_encode_inverts_decode(name: str) -> None:
    s = space(name)
    assert s.encode(s.decode(s.x0)) == s.x0


@pytest.mark.parametrize("name", ["paper_exp3"])
def test_every_integer_point_round_trips(name: str) -> None:
    s = space(name)
    grids = [range(int(v.lower), int(v.upper) + 1) for v in s.variables]
    for point in itertools.product(*grids):
        x = tuple(float(v) for v in point)
        assert s.encode(s.decode(x)) == x


@pytest.mark.parametrize(
    ("point", "reason"),
    [
        ((2.5, 8, 1), "integer variable"),
        ((0, 8, 1), "out of bounds"),
        ((2, 65, 1), "out of bounds"),
        ((2, 8), "expected 3 values"),
        ((2, 8, 1, 1), "expected 3 values"),
    ],
)
def test_invalid_points(point: tuple[float, ...], reason: str) -> None:
    with pytest.raises(PointError, match=reason):
        space("paper_exp3").decode(point)


def test_integers_written_by_nomad_in_scientific_notation_are_integral() -> None:
    s = space("paper_exp1")
    assert s.decode((2.00000, 5, 3.20000e01, -5)).lora_alpha == 32


def test_reals_snap_to_bounds_within_rounding() -> None:
    s = space("paper_exp1")
    assert s.decode((2, 5, 32, -3.00000000000000001)).learning_rate == 1e-3
    with pytest.raises(PointError):
        s.decode((2, 5, 32, -2.9999))
