"""Which earlier evaluations may seed a study: the same search space, evaluated with the same settings."""

from __future__ import annotations

from blackbox.core.experiment import load_experiment
from blackbox.core.warm_start import differences


def test_settings_that_change_no_result_do_not_refuse_a_warm_start() -> None:
    before = load_experiment("demo", ["training.fused_kernels=none"])  # a snapshot from before 'auto'
    now = load_experiment(
        "demo",
        [
            "validation.checkpoints=[0.25, 0.5]",
            "stopping.rule=median",
            "data.test=embedded:chitchat/test",  # a test split no evaluation of the study sees
            "study.budget=3",
            "records.dir=elsewhere",
        ],
    )
    assert differences(now, before) == []


def test_settings_that_change_the_result_refuse_it_and_say_which() -> None:
    demo = load_experiment("demo")
    assert differences(load_experiment("demo", ["training.max_steps=4"]), demo) == [
        "its evaluations ran with other settings: training.max_steps = 16 there, 4 here"
    ]
    assert differences(load_experiment("demo", ["training.fused_kernels=liger"]), demo) == [
        "its evaluations ran with other settings: training.fused_kernels = 'none' there, 'liger' here"
    ]
    [space] = differences(load_experiment("efficiency"), demo)
    assert space.startswith("the search spaces differ")


def test_a_study_of_other_objectives_is_refused_first() -> None:
    pareto = load_experiment("demo_pareto")
    one = load_experiment(
        "demo_pareto",
        ["objectives=[]", 'study.outputs=["OBJ:validation_loss","EXTRA_O:run_id","CNT_EVAL"]'],
    )
    assert differences(one, pareto) == [
        "its evaluations are of 2 objectives (validation_loss, trainable_params), this study's of one objective "
        "(validation_loss)"
    ]
    assert differences(pareto, pareto) == []
