"""Which Optuna sampler a study uses: TPE (Optuna's defaults, or set as NNI's), NSGA-II, random search or CMA-ES.

Optuna is imported only when a sampler is made. With several objectives TPE is Optuna's multi-objective TPE
(MOTPE) and NSGA-II its genetic algorithm; CMA-ES optimises one objective.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from blackbox.core.errors import OptionError, SetupError

if TYPE_CHECKING:
    import optuna

    from blackbox.api import Blackbox

Sampler = Literal["tpe", "tpe-nni", "nsga2", "random", "cmaes"]
SAMPLERS: tuple[Sampler, ...] = ("tpe", "tpe-nni", "nsga2", "random", "cmaes")

NSGA2_POPULATION = 10
"""NSGA-II's population: its first generation is random, like TPE's 10 start-up trials. Optuna's default, 50, would
leave a study of 40 evaluations (a tuning budget) random search from its first trial to its last."""


# NNI's TPE tuner as the reference study ran it (its nni/experiment.py: tuner "TPE" with optimize_mode alone, so NNI's
# TpeArguments defaults, nni/algorithms/hpo/tpe_tuner.py: a re-implementation of hyperopt's TPE) is Optuna's TPE with
# hyperopt's defaults (TPESampler.hyperopt_parameters), per parameter. Against Optuna's own defaults:
#   setting               Optuna's default                    NNI's (and tpe-nni's)
#   start-up trials       10                                  20 (n_startup_jobs)
#   good trials of n      min(ceil(0.1 n), 25)                min(ceil(0.25 sqrt(n)), 25) (gamma 0.25, split_history)
#   densities             multivariate (Optuna >= 4.9)        one per parameter
# and alike: 24 EI candidates, a prior of weight 1, sigmas clipped from below (hyperopt's "magic clip"), no endpoints.
# Not alike (docs/paper.md): NNI's linear_forgetting (25) weighs down the first trials of a history sorted by loss,
# not the oldest ones as Optuna's does, and NNI adds the prior weight to every category of a choice where Optuna
# spreads it over them. NNI's constant liar acts on concurrent trials only; these studies run one at a time, as theirs.
NNI_STARTUP_TRIALS = 20


def tpe_like_nni(seed: int, constraints_func: Callable[[Any], Any] | None = None) -> optuna.samplers.TPESampler:
    """Optuna's TPE set as NNI's TPE tuner with its defaults (the table above)."""
    import optuna

    with warnings.catch_warnings():
        # Optuna 4.9 deprecates these arguments (to be removed in 6.0, which the pin excludes); they still set TPE.
        warnings.simplefilter("ignore", FutureWarning)
        parameters = optuna.samplers.TPESampler.hyperopt_parameters()
        return optuna.samplers.TPESampler(
            **parameters, multivariate=False, seed=seed, constraints_func=constraints_func
        )


def make_sampler(
    kind: Sampler, seed: int, blackbox: Blackbox, *, startup_trials: int | None = None
) -> optuna.samplers.BaseSampler:
    """Optuna's TPE (its defaults: 10 random start-up trials, or ``startup_trials``; with several objectives,
    multi-objective TPE), TPE set
    as NNI's (``tpe-nni``: 20 random start-up trials and NNI's split of good and bad trials, the baseline of the
    reference study), NSGA-II (``nsga2``, for several objectives: a population of :data:`NSGA2_POPULATION`), random
    search, or CMA-ES from X0 (one objective only).

    The experiment's constraints guide TPE and NSGA-II (their ``constraints_func``); random search and CMA-ES do not
    take constraints: their trials record them, and the best trial is a feasible one all the same.

    Raises:
        OptionError: CMA-ES for a study of several objectives.
        SetupError: an unknown sampler.
    """
    import optuna

    constraints = _constraints if blackbox.experiment.constraints else None
    if kind == "tpe":
        startup = 10 if startup_trials is None else startup_trials  # Optuna's default
        return optuna.samplers.TPESampler(seed=seed, constraints_func=constraints, n_startup_trials=startup)
    if kind == "tpe-nni":
        return tpe_like_nni(seed, constraints)
    if kind == "nsga2":
        return optuna.samplers.NSGAIISampler(population_size=NSGA2_POPULATION, seed=seed, constraints_func=constraints)
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if kind == "cmaes":
        if len(blackbox.experiment.all_objectives) > 1:
            raise OptionError(
                "--sampler cmaes optimises one objective; this study has "
                f"{len(blackbox.experiment.all_objectives)}: use nsga2, tpe or random"
            )
        # Categorical variables (choices) are sampled independently of CMA-ES: they have no starting value.
        # The first starting point: CMA-ES has one mean.
        x0 = {v.name: v.starts[0] for v in blackbox.space.variables if v.decode != "choice"}
        return optuna.samplers.CmaEsSampler(x0=x0, seed=seed, warn_independent_sampling=False)
    raise SetupError(f"unknown sampler {kind!r}; known: {', '.join(SAMPLERS)}")


def _constraints(trial: optuna.trial.FrozenTrial) -> list[float]:
    return list(trial.user_attrs.get("constraints", [math.inf]))
