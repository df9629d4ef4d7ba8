"""Optuna's samplers and pruners for a study of several objectives: what is made, what is refused."""

from __future__ import annotations

import optuna
import pytest

from blackbox.api import Blackbox
from blackbox.core.errors import OptionError
from blackbox.core.experiment import load_experiment
from blackbox.studies.pruning import check_pruning
from blackbox.studies.samplers import NSGA2_POPULATION, make_sampler


def test_several_objectives_get_nsga2_or_multi_objective_tpe_and_no_cmaes() -> None:
    blackbox = Blackbox("demo_pareto")
    nsga2 = make_sampler("nsga2", 3, blackbox)
    assert isinstance(nsga2, optuna.samplers.NSGAIISampler) and nsga2._population_size == NSGA2_POPULATION
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=make_sampler("tpe", 3, blackbox))
    trial = study.ask()
    blackbox.space.suggest(trial)
    study.tell(trial, [2.5, 4096.0])  # a multi-objective TPE study takes both values
    assert study.best_trials[0].values == [2.5, 4096.0]
    with pytest.raises(OptionError, match="cmaes optimises one objective; this study has 2: use nsga2, tpe or random"):
        make_sampler("cmaes", 3, blackbox)


def test_pruners_are_refused_with_several_objectives() -> None:
    experiment = load_experiment("demo_pareto", ["validation.checkpoints=[0.5]"])
    with pytest.raises(OptionError, match=r"prunes trials of one objective only.*has 2: use --pruner none"):
        check_pruning(experiment, "median")
    check_pruning(experiment, "none")
