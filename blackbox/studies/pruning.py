"""Optuna's pruners at the checkpoints of an evaluation: ``trial.report`` at every checkpoint, and the study's
pruner decides (``trial.should_prune``).

``lora-blackbox optuna --pruner median|successive-halving|hyperband|none`` creates its study with one of Optuna's
own pruners (:func:`make_pruner`). Each trial's evaluation gets a :class:`TrialJudge` (a ``core.early_stopping``
judge): in the driver's process with ``--in-process``, or, by default, in the ``lora-blackbox eval`` subprocess,
which reaches the same trial through the study's storage (an RDB, SQLite by default) with what the driver puts in
``$LORA_BLACKBOX_OPTUNA_TRIAL`` (:class:`TrialLink`): the storage, the study's name, the trial's id and the pruner.
Optuna's pruners are not kept in the storage: both processes make the same one from the pruner's name and the
experiment's ``[stopping] min_finished``. A pruned trial's training stops there; its record is STOPPED and the
driver tells the trial PRUNED.

Optuna is imported only when a trial is judged: ``lora-blackbox eval`` imports this module on every call.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Literal

from blackbox.core.curves import CurvePoint
from blackbox.core.early_stopping import Verdict
from blackbox.core.errors import OptionError, SetupError
from blackbox.core.experiment import Experiment

if TYPE_CHECKING:
    import optuna

Pruner = Literal["median", "successive-halving", "hyperband", "none"]
PRUNERS: tuple[Pruner, ...] = ("median", "successive-halving", "hyperband", "none")
ENV_OPTUNA_TRIAL = "LORA_BLACKBOX_OPTUNA_TRIAL"


def make_pruner(kind: Pruner, *, min_finished: int) -> optuna.pruners.BasePruner:
    """Optuna's own pruner, with its defaults but one: the median pruner waits for ``min_finished`` complete trials
    (``[stopping] min_finished``; Optuna's default is 5), as the experiment's median rule does.

    Raises:
        SetupError: an unknown pruner.
    """
    import optuna

    if kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=min_finished)
    if kind == "successive-halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner()
    if kind == "none":
        return optuna.pruners.NopPruner()
    raise SetupError(f"unknown pruner {kind!r}; known: {', '.join(PRUNERS)}")


def check_pruning(experiment: Experiment, kind: Pruner) -> None:
    """A pruner needs one objective, checkpoints, and a validation-loss objective (it compares the checkpoints'
    losses).

    Raises:
        OptionError: it cannot prune this experiment's trials.
    """
    if kind == "none":
        return
    if len(experiment.all_objectives) > 1:
        raise OptionError(
            f"--pruner {kind}: Optuna prunes trials of one objective only (Trial.report), and this study has "
            f"{len(experiment.all_objectives)}: use --pruner none"
        )
    if not experiment.validation.checkpoints:
        raise OptionError(
            f"--pruner {kind} decides at checkpoints: set [validation] checkpoints in the experiment (or "
            "--set 'validation.checkpoints=[0.25,0.5,0.75]')"
        )
    if experiment.objective.name != "validation_loss":
        raise OptionError(
            f"--pruner {kind} compares validation-loss curves, but the objective is {experiment.objective.describe()}"
        )


@dataclass(frozen=True)
class TrialLink:
    """How an evaluation process reaches the Optuna trial it evaluates."""

    storage: str
    study_name: str
    trial_id: int
    pruner: Pruner

    @contextlib.contextmanager
    def environment(self) -> Iterator[None]:
        """This process's environment names the trial while the block runs (for the subprocess it starts)."""
        saved = os.environ.get(ENV_OPTUNA_TRIAL)
        os.environ[ENV_OPTUNA_TRIAL] = json.dumps(asdict(self))
        try:
            yield
        finally:
            if saved is None:
                os.environ.pop(ENV_OPTUNA_TRIAL, None)
            else:
                os.environ[ENV_OPTUNA_TRIAL] = saved

    @classmethod
    def from_env(cls) -> TrialLink | None:
        """The trial this process evaluates, when an Optuna study started it.

        Raises:
            SetupError: the variable is set but holds no trial.
        """
        text = os.environ.get(ENV_OPTUNA_TRIAL)
        if not text:
            return None
        try:
            data = json.loads(text)
            return cls(str(data["storage"]), str(data["study_name"]), int(data["trial_id"]), data["pruner"])
        except (ValueError, KeyError, TypeError) as e:
            raise SetupError(f"${ENV_OPTUNA_TRIAL} does not name an Optuna trial: {text[:200]!r}") from e


class TrialJudge:
    """A judge (``core.early_stopping.Judge``) of one Optuna trial: reports each checkpoint's loss at its step and
    stops the training when the study's pruner prunes the trial."""

    def __init__(self, trial: optuna.Trial, pruner: Pruner) -> None:
        self.trial, self.pruner = trial, pruner

    def decide(self, curve: Sequence[CurvePoint]) -> Verdict | None:
        point = curve[-1]
        self.trial.report(point.loss, point.step)
        if not self.trial.should_prune():
            return None
        name = type(self.trial.study.pruner).__name__
        return Verdict(
            f"optuna:{self.pruner}",
            f"Optuna's {name} pruned trial {self.trial.number} at step {point.step} (checkpoint loss {point.loss:.6g})",
        )


def judge_from_env(experiment: Experiment) -> TrialJudge | None:
    """The judge of the Optuna trial that started this process (``$LORA_BLACKBOX_OPTUNA_TRIAL``), or None.

    Raises:
        SetupError: the trial cannot be reached in its storage.
    """
    link = TrialLink.from_env()
    if link is None:
        return None
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    pruner = make_pruner(link.pruner, min_finished=experiment.stopping.min_finished)
    try:
        # No sampler work here: the driver suggested the trial's parameters already.
        study = optuna.load_study(
            study_name=link.study_name, storage=link.storage, pruner=pruner, sampler=optuna.samplers.RandomSampler()
        )
        # Optuna has no public way to a running trial from another process: its Trial is made from the study and
        # the trial's id, as optuna's own integrations do (optuna/optuna#2987).
        trial = optuna.trial.Trial(study, link.trial_id)
    except (KeyError, ValueError, optuna.exceptions.OptunaError) as e:
        raise SetupError(f"cannot reach Optuna trial {link.trial_id} of {link.study_name!r}: {e}") from e
    return TrialJudge(trial, link.pruner)
