import itertools
import math
from importlib import resources

import pytest

from blackbox.core.errors import PointError
from blackbox.core.experiment import load_experiment, shipped_experiments
from blackbox.core.space import HyperParams, SearchSpace


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


def test_settings_decode_to_their_own_types() -> None:
    s = space("demo_variants")
    x0 = s.decode(s.x0)
    assert x0.as_dict() == {
        "lora_r": 4,
        "lora_alpha": 8,  # 4 * sqrt(4)
        "lora_dropout": 0.05,
        "learning_rate": 10**-3.5,
        "lora": {},
        "model.target_modules": ["q_proj", "v_proj"],  # as written
        "training.epochs": 2,
    }
    assert x0.settings == {"lora": {}, "model.target_modules": ["q_proj", "v_proj"], "training.epochs": 2}
    upper = s.decode(tuple(v.upper for v in s.variables))
    assert math.isclose(upper.lora_alpha, 16 * math.sqrt(32))
    assert upper.settings == {"lora": {"use_rslora": True}, "model.target_modules": "all-linear", "training.epochs": 3}
    assert isinstance(upper.settings["training.epochs"], int)
    # The point's experiment: the settings applied and validated again.
    trained = s.experiment.with_settings(upper.settings)  # type: ignore[union-attr]
    assert trained.lora.use_rslora and trained.model.target_modules == "all-linear" and trained.training.epochs == 3
    assert trained.model.layers_to_transform == s.experiment.model.layers_to_transform  # type: ignore[union-attr]


@pytest.mark.parametrize("name", ["demo_variants", "lora_variants"])
def test_every_categorical_point_round_trips(name: str) -> None:
    s = space(name)
    choices = [i for i, v in enumerate(s.variables) if v.decode == "choice" or v.name == "training.epochs"]
    for indices in itertools.product(
        *[range(int(s.variables[i].lower), int(s.variables[i].upper) + 1) for i in choices]
    ):
        x = list(s.x0)
        for i, value in zip(choices, indices, strict=True):
            x[i] = float(value)
        assert s.encode(s.decode(tuple(x))) == tuple(x)


def test_binary_variables_are_booleans_and_bad_settings_fail_the_point(tmp_path) -> None:
    path = tmp_path / "e.toml"
    path.write_text(
        resources.files("blackbox").joinpath("experiments", "demo.toml").read_text()
        + '\n[[space]]\nname = "lora.use_dora"\ntype = "B"\nlower = 0\nupper = 1\nx0 = 0\n'
        + '\n[[space]]\nname = "training.warmup_ratio"\ntype = "R"\nlower = 0\nupper = 0.5\nx0 = 0\n'
    )
    s = SearchSpace.from_experiment(load_experiment(str(path)))
    assert s.decode((2, 2, -4, 1, 0.25)).settings == {"lora.use_dora": True, "training.warmup_ratio": 0.25}
    assert s.decode((2, 2, -4, 0, 0)).settings == {"lora.use_dora": False, "training.warmup_ratio": 0.0}
    with pytest.raises(PointError, match=r"not valid together.*warmup_ratio"):
        s.experiment.with_settings({"training.warmup_ratio": 2.0})  # type: ignore[union-attr]


def test_sqrt_multiple() -> None:
    s = space("lora_variants")
    hp = s.decode((5, 3, 1, -4, 3, 2, 1))
    assert (hp.lora_r, hp.lora_alpha) == (32, 3 * math.sqrt(32))
    assert hp.settings["lora"] == {"use_rslora": True}  # scaling alpha / sqrt(r) = 3 at every rank
