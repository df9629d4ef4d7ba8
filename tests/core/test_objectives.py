"""Experiments of several objectives: what ``[[objectives]]`` accepts and refuses, the values a record holds and the
line prints, and the values that fail a point."""

from __future__ import annotations

import math
from typing import Any

import pytest
from pydantic import ValidationError

from blackbox.core.errors import ConfigError, EvaluationError
from blackbox.core.experiment import Experiment, load_experiment
from blackbox.core.failures import Status, status_of
from blackbox.core.objectives import objective_metrics
from blackbox.core.output import output_tokens

TWO = ["OBJ:objective:validation_loss", "OBJ:objective:benchmark:tiny_mc:acc", "CNT_EVAL"]
LOSS_AND_SCORE = [
    {"name": "validation_loss"},
    {"name": "benchmark", "direction": "maximize", "benchmark": {"task": "tiny_mc", "metric": "acc"}},
]


def _study(outputs: list[str], **sections: Any) -> dict[str, Any]:
    return {
        "study": {"name": "p", "budget": 5, "outputs": outputs},
        "space": [{"name": "learning_rate", "type": "R", "lower": -5, "upper": -3, "x0": -4, "decode": "log10"}],
        "hyperparameters": {"lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.0},
        "model": {"name_or_path": "m"},
        "data": {"train": ["t.jsonl"]},
        **sections,
    }


def _problems(outputs: list[str], **sections: Any) -> str:
    with pytest.raises(ValidationError) as raised:
        Experiment.model_validate(_study(outputs, **sections))
    return str(raised.value)


def test_two_objectives_print_what_the_solver_minimises_of_each() -> None:
    experiment = Experiment.model_validate(_study(TWO, objectives=LOSS_AND_SCORE))
    assert [o.key for o in experiment.all_objectives] == ["validation_loss", "benchmark:tiny_mc:acc"]
    assert [b.key for b in experiment.benchmarks] == ["benchmark:tiny_mc:acc"]  # scored by every evaluation
    metrics = {"validation_loss": 2.5, "benchmark:tiny_mc:acc": 0.625}
    metrics |= objective_metrics(experiment.all_objectives, metrics)
    assert metrics["objective:benchmark:tiny_mc:acc"] == -0.625  # maximised: negated, as NOMAD minimises
    assert (
        metrics["objective"] == metrics["objective:validation_loss"] == 2.5
    )  # the first: what one-objective code reads
    assert output_tokens(experiment.study.outputs, Status.OK, metrics) == ("2.5", "-0.625", "1")
    # A diverged point is worse than any other on every objective (dominated by all); a failed one fails.
    assert output_tokens(experiment.study.outputs, Status.DIVERGED, metrics) == ("inf", "inf", "1")
    assert output_tokens(experiment.study.outputs, Status.ERROR, {}) == ("nan", "nan", "1")
    # A study of one objective keeps its fingerprint: [[objectives]] enters it only when given.
    one = Experiment.model_validate(_study(["OBJ:validation_loss"]))
    assert "objectives" not in one.result_settings() and "objectives" in experiment.result_settings()


def test_an_objective_that_is_not_a_finite_number_fails_its_point() -> None:
    experiment = Experiment.model_validate(_study(TWO, objectives=LOSS_AND_SCORE))
    with pytest.raises(EvaluationError, match=r"not a finite number: benchmark:tiny_mc:acc = nan") as raised:
        objective_metrics(experiment.all_objectives, {"validation_loss": 2.5, "benchmark:tiny_mc:acc": math.nan})
    assert status_of(raised.value) is Status.ERROR  # a failed point (nan line, counted): the study goes on
    with pytest.raises(EvaluationError, match="-inf"):
        objective_metrics(experiment.all_objectives, {"validation_loss": 2.5, "benchmark:tiny_mc:acc": math.inf})


@pytest.mark.parametrize(
    ("outputs", "sections", "problem"),
    [
        (TWO[1::-1], {"objectives": LOSS_AND_SCORE}, "in the order of [[objectives]]"),
        (TWO[:1], {"objectives": LOSS_AND_SCORE}, "prints each objective"),
        (["OBJ:validation_loss"], {"objectives": LOSS_AND_SCORE[:1]}, "names 2 to 4 objectives, got 1"),
        (TWO, {"objectives": [*LOSS_AND_SCORE, LOSS_AND_SCORE[0]]}, "objectives named twice: ['validation_loss']"),
        (
            TWO,
            {"objectives": LOSS_AND_SCORE, "objective": {"name": "benchmark", "benchmark": {"task": "x"}}},
            "give the objectives in [[objectives]] only",
        ),
        (["OBJ:validation_loss", "OBJ:train_loss"], {}, "exactly one OBJ output is needed"),
        (["OBJ:objective"], {"objective": {"name": "trainable_params"}}, "give it beside a quality"),
        (
            ["OBJ:objective:validation_loss", "OBJ:objective:train_seconds"],
            {"objectives": [{"name": "validation_loss"}, {"name": "train_seconds", "direction": "maximize"}]},
            "train_seconds is a cost: it is minimised",
        ),
        (
            TWO,
            {
                "objectives": LOSS_AND_SCORE,
                "validation": {"checkpoints": [0.5]},
                "stopping": {"rule": "median"},
            },
            "no rule stops its training: use rule = 'none'",
        ),
    ],
    ids=["order", "missing", "one", "twice", "both-sections", "two-obj-alone", "cost-alone", "maximised-cost", "stop"],
)
def test_what_several_objectives_refuse(outputs: list[str], sections: dict[str, Any], problem: str) -> None:
    assert problem in _problems(outputs, **sections)


def test_the_shipped_studies_of_several_objectives() -> None:
    demo = load_experiment("demo_pareto")
    assert [o.key for o in demo.all_objectives] == ["validation_loss", "trainable_params"]
    paper = load_experiment("paper_exp3_pareto")
    assert [o.describe() for o in paper.all_objectives] == [
        "validation_loss, minimised",
        "benchmark:instructeval_mmlu:exact_match, maximised (the solver minimises its negation)",
    ]
    # paper_exp3's space and settings: only what the study measures differs.
    exp3 = load_experiment("paper_exp3")
    assert paper.space == exp3.space and paper.training == exp3.training and paper.data == exp3.data
    # The documented switch of the demo's second objective to the training seconds.
    swapped = load_experiment(
        "demo_pareto",
        [
            'objectives=[{name="validation_loss"},{name="train_seconds"}]',
            'study.outputs=["OBJ:objective:validation_loss","OBJ:objective:train_seconds","EXTRA_O:run_id","CNT_EVAL"]',
        ],
    )
    assert [o.key for o in swapped.all_objectives] == ["validation_loss", "train_seconds"]
    with pytest.raises(ConfigError, match="in the order of"):
        load_experiment("demo_pareto", ['objectives=[{name="validation_loss"},{name="train_seconds"}]'])


EXPERIMENT_FILE = """
[study]
name = "p"
budget = 5
outputs = ["OBJ:objective:validation_loss", "OBJ:objective:benchmark:tiny_mc:acc"]

[[space]]
name = "learning_rate"
type = "R"
lower = -5
upper = -3
x0 = -4
decode = "log10"

[hyperparameters]
lora_r = 4
lora_alpha = 8
lora_dropout = 0.0

[model]
name_or_path = "m"

[data]
train = "t.jsonl"

[[objectives]]
name = "validation_loss"

[[objectives]]
name = "benchmark"
direction = "maximize"
benchmark = { task = "tiny_mc", metric = "acc", include_path = "tasks" }
"""


def test_a_benchmark_objective_finds_its_tasks_beside_the_experiment_file(tmp_path) -> None:
    (tmp_path / "e.toml").write_text(EXPERIMENT_FILE)
    [benchmark] = load_experiment(str(tmp_path / "e.toml")).benchmarks
    assert benchmark.include_path == str(tmp_path / "tasks")
