"""The best points on a bound of the search space (``blackbox.core.bounds``): which variable, which bound, how many."""

from __future__ import annotations

from blackbox.core.bounds import best_on_bounds, warning
from blackbox.core.experiment import VariableConfig, load_experiment
from blackbox.core.space import SearchSpace

# A space like the demo's: log2 of the rank 1..5, alpha = k x r with k 1..8, log10 of the learning rate -5..-2.
DEMO = SearchSpace(
    variables=(
        VariableConfig(name="lora_r", type="I", lower=1, upper=5, x0=2, decode="power_of_two"),
        VariableConfig(name="lora_alpha", type="I", lower=1, upper=8, x0=2, decode="multiple", of="lora_r"),
        VariableConfig(name="learning_rate", type="R", lower=-5, upper=-2, x0=-4.5, decode="log10"),
    ),
    fixed={"lora_dropout": 0.05},
)


def test_the_best_at_the_learning_rates_upper_bound() -> None:
    ranked = [(2, 4, -2.0), (3, 8, -2.0), (2, 2, -2.5), (1, 1, -2.0), (5, 3, -3.0)]
    [hit] = best_on_bounds(DEMO, ranked)
    assert (hit.variable, hit.bound, hit.coordinate, hit.count, hit.top) == ("learning_rate", "upper", -2.0, 3, 5)
    assert hit.value == "10^-2 = 0.01"
    line = warning([hit])
    assert line is not None and "learning_rate is at its upper bound (10^-2 = 0.01) in 3 of the 5 best points" in line


def test_every_bound_of_the_best_point_and_only_the_top_points() -> None:
    ranked = [(5, 1, -5.0), (5, 2, -3.0), *[(2, 2, -3.0)] * 10, (5, 1, -5.0)]  # the last is not among the 10 best
    hits = {(h.variable, h.bound): (h.count, h.top, h.value) for h in best_on_bounds(DEMO, ranked)}
    assert hits == {
        ("lora_r", "upper"): (2, 10, "5: 32"),
        ("lora_alpha", "lower"): (1, 10, "1 x lora_r"),
        ("learning_rate", "lower"): (1, 10, "10^-5 = 1e-05"),
    }


def test_nothing_when_the_best_point_is_inside() -> None:
    assert best_on_bounds(DEMO, [(2, 4, -3.0), (5, 8, -2.0)]) == []  # others on bounds, the best inside
    assert best_on_bounds(DEMO, []) == [] and warning([]) is None


def test_choices_among_numbers_have_bounds_and_unordered_choices_none() -> None:
    """The paper's rank and dropout are choices among numbers: their last values are ends. The LoRA variants and the
    target modules are choices among tables and lists: their last values are ends of nothing."""
    paper = SearchSpace.from_experiment(load_experiment("paper_exp2"))
    hits = {h.variable: h.value for h in best_on_bounds(paper, [tuple(v.upper for v in paper.variables)])}
    assert hits == {"lora_r": "8: 512", "lora_dropout": "6: 1", "lora_alpha": "64", "learning_rate": "10^-3 = 0.001"}
    variants = SearchSpace.from_experiment(load_experiment("lora_variants"))
    names = {h.variable for h in best_on_bounds(variants, [tuple(v.upper for v in variants.variables)])}
    assert names == {"lora_r", "lora_alpha", "lora_dropout", "learning_rate", "training.epochs"}


def test_every_decode_of_a_shipped_experiment_names_its_bounds() -> None:
    """Each shipped experiment's best point at every upper bound: each bound is named (the efficiency grid's alpha is
    the rank times a power of two: ``2^3 x lora_r``)."""
    from blackbox.core.experiment import shipped_experiments

    for name in shipped_experiments():
        space = SearchSpace.from_experiment(load_experiment(name))
        hits = best_on_bounds(space, [tuple(v.upper for v in space.variables)])
        assert all(h.value for h in hits), name
    efficiency = SearchSpace.from_experiment(load_experiment("efficiency"))
    hits = {h.variable: h.value for h in best_on_bounds(efficiency, [tuple(v.upper for v in efficiency.variables)])}
    assert hits == {"lora_r": "5: 32", "lora_alpha": "2^3 x lora_r", "learning_rate": "10^-1.5 = 0.0316228"}
