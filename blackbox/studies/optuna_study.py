"""An Optuna study over an experiment's search space, evaluated through the same code path as NOMAD's.

Each trial suggests every search variable (:meth:`SearchSpace.suggest`: a choice as a categorical over its
values, exponents and multipliers as integers, log10 learning rates as reals), the point is kept in NOMAD's
coordinates (a choice by its index), and it is evaluated by
:class:`blackbox.api.Blackbox`: by default in a ``lora-blackbox eval`` subprocess, exactly as NOMAD's
BB_EXE, so that a crash or an out-of-memory kill fails one trial, not the study. Records go to the
study folder as for NOMAD. Optuna is imported only here.

Outcomes: an undefined objective (``nan``: invalid point, OOM, error, timeout) is a FAILED trial;
a diverged run (``inf``) is a COMPLETE, very bad trial, as NOMAD reads it. A trial that could not run
(the model or data cannot be loaded) fails and stops the study; an interrupted trial (Ctrl-C) is
failed and the study stops. Neither counts toward ``--n-trials``, and their points are queued to
run first when the study resumes.

Resume: the same storage and study name continue the study. ``n_trials`` is the total of counted
trials (completed and failed); a resumed study runs only the missing ones. The sampler's seed is
the study seed plus the number of trials already in the study, so that a resumed random sampler does
not repeat the points it drew before (an uninterrupted study is reproducible from its seed).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from blackbox.api import Blackbox, Result
from blackbox.core.errors import SetupError
from blackbox.core.experiment import RecordsConfig
from blackbox.core.extras import require
from blackbox.core.failures import Call, call_after, trial_state
from blackbox.core.folders import OPTUNA_STORAGE_FILE
from blackbox.core.progress import format_duration
from blackbox.studies.guard import holding_lock
from blackbox.tracking import start_study

if TYPE_CHECKING:
    import optuna

logger = logging.getLogger(__name__)

Sampler = Literal["tpe", "random", "cmaes"]
SAMPLERS: tuple[Sampler, ...] = ("tpe", "random", "cmaes")
# Study attributes: what the study was created with (checked on resume), and trials that do not count.
_ATTR_IDENTITY = "lora_blackbox"
_ATTR_NOT_COUNTED = "not_counted_trials"


@dataclass(frozen=True)
class OptunaSummary:
    """Where a study stands; ``as_json`` is what ``lora-blackbox optuna`` prints on stdout."""

    study_name: str
    storage: str
    records_file: Path
    n_trials: int
    counted: int
    states: dict[str, int]
    best: dict[str, Any] | None
    interrupted: bool

    def as_json(self) -> str:
        return json.dumps(
            {
                "study_name": self.study_name,
                "storage": self.storage,
                "records": str(self.records_file),
                "n_trials": self.n_trials,
                "counted_trials": self.counted,
                "states": self.states,
                "best": self.best,
                "interrupted": self.interrupted,
            }
        )


def default_storage(study_dir: Path) -> str:
    """SQLite in the study folder."""
    return f"sqlite:///{(study_dir / OPTUNA_STORAGE_FILE).resolve()}"


def make_sampler(kind: Sampler, seed: int, blackbox: Blackbox) -> optuna.samplers.BaseSampler:
    """Optuna's TPE (its defaults: 10 random start-up trials), random search, or CMA-ES from X0.

    The experiment's constraints guide TPE (its ``constraints_func``); random search and CMA-ES do not take
    constraints: their trials record them, and the best trial is a feasible one all the same (:func:`best_trial`).
    """
    import optuna

    if kind == "tpe":
        constrained = bool(blackbox.experiment.constraints)
        return optuna.samplers.TPESampler(seed=seed, constraints_func=_constraints if constrained else None)
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if kind == "cmaes":
        # Categorical variables (choices) are sampled independently of CMA-ES: they have no starting value.
        x0 = {v.name: v.x0 for v in blackbox.space.variables if v.decode != "choice"}
        return optuna.samplers.CmaEsSampler(x0=x0, seed=seed, warn_independent_sampling=False)
    raise SetupError(f"unknown sampler {kind!r}; known: {', '.join(SAMPLERS)}")


def run_optuna(
    blackbox: Blackbox,
    *,
    n_trials: int,
    sampler: Sampler,
    seed: int,
    storage: str,
    study_name: str,
    mlflow_uri: str | None = None,
) -> OptunaSummary:
    """Run or resume the study until it holds ``n_trials`` counted trials.

    With tracking on (``mlflow_uri``, ``$MLFLOW_TRACKING_URI`` or the experiment's ``[tracking]``), the study
    is a parent run in MLflow (one per study folder, reused on resume) and every trial's evaluation a run
    nested in it, logged by the evaluation itself as in a NOMAD study (``blackbox.tracking``).

    Returns:
        Where the study stands; ``interrupted`` when Ctrl-C stopped it (the running trial was recorded,
        failed and left out of the count; it runs first when the study resumes).

    Raises:
        SetupError: the storage holds a study of another experiment or sampler, another study runs in the
            records folder, or a trial could not run.
    """
    require("optuna", *(("cmaes",) if sampler == "cmaes" else ()), purpose="lora-blackbox optuna")
    import optuna

    logger.info("Optuna study folder %s; storage %s", blackbox.experiment.records_dir, storage)

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # progress is ours, on the package's logger
    folder = blackbox.experiment.records_dir
    # One study per folder, as for NOMAD: another process's running trials would look stale to this one.
    with holding_lock(folder):
        study = optuna.create_study(storage=storage, study_name=study_name, direction="minimize", load_if_exists=True)
        _check_identity(study, blackbox, sampler, seed)
        _fail_stale_trials(study)
        study.sampler = make_sampler(sampler, seed + len(study.trials), blackbox)
        done = _counted(study)
        if done:
            logger.info("resuming study %r: %d of %d trials done", study_name, done, n_trials)
        progress = _Progress(n_trials, done)
        interrupted = False
        settings = {"optuna.sampler": sampler, "optuna.seed": seed, "optuna.study_name": study_name}
        tracking = start_study(
            blackbox.experiment, folder, solver=f"optuna-{sampler}", settings=settings, uri=mlflow_uri
        )
        with tracking.environment() if tracking else contextlib.nullcontext():
            try:
                done, interrupted = _run_trials(study, blackbox, n_trials, done, progress)
            finally:
                if tracking is not None:
                    tracking.end(interrupted=interrupted or done < n_trials)
        return summary_of(study, storage, blackbox, n_trials, interrupted=interrupted)


def _run_trials(
    study: optuna.Study, blackbox: Blackbox, n_trials: int, done: int, progress: _Progress
) -> tuple[int, bool]:
    """Ask, evaluate and tell trials until ``n_trials`` are counted; returns (counted, interrupted).

    Raises:
        SetupError: a trial could not run (the study stops; the trial is not counted).
    """
    interrupted = False
    while done < n_trials:
        trial = study.ask()
        point = blackbox.space.suggest(trial)
        result = blackbox.run_point(point)
        # The failure policy decides (blackbox.core.failures): an interrupted trial, or one that could not run, ends
        # the study (not counted, and run first at the resume); any other end is the trial's own.
        call = call_after(result.status, stopping=False)
        if call is Call.INTERRUPTED:
            _tell_not_counted(study, trial, result.status.value)
            interrupted = True
            break
        if call is Call.FAILS:
            _tell_not_counted(study, trial, result.status.value)
            raise SetupError(
                f"trial {trial.number} could not run: {result.error}. Fix the cause and run the same command "
                "again: the study resumes with this point."
            )
        _tell(study, trial, result)
        done += 1
        progress.log(trial.number, result, _best_value(study))
    return done, interrupted


def _constraints(trial: optuna.trial.FrozenTrial) -> list[float]:
    return list(trial.user_attrs.get("constraints", [math.inf]))


def summary_of(
    study: optuna.Study, storage: str, blackbox: Blackbox, n_trials: int, *, interrupted: bool = False
) -> OptunaSummary:
    states: dict[str, int] = {}
    for t in study.trials:
        states[t.state.name] = states.get(t.state.name, 0) + 1
    best = None
    trial = best_trial(study)
    if trial is not None:
        best = {
            "trial": trial.number,
            "value": trial.value,
            "params": trial.params,
            "hparams": trial.user_attrs.get("hparams"),
            "run_id": trial.user_attrs.get("run_id"),
        }
    return OptunaSummary(
        study_name=study.study_name,
        storage=storage,
        records_file=blackbox.records_file,
        n_trials=n_trials,
        counted=_counted(study),
        states=states,
        best=best,
        interrupted=interrupted,
    )


def _tell(study: optuna.Study, trial: optuna.Trial, result: Result) -> None:
    from optuna.trial import TrialState

    trial.set_user_attr("run_id", result.run_id)
    trial.set_user_attr("status", result.status.value)
    trial.set_user_attr("hparams", result.hparams)
    trial.set_user_attr("point", list(result.point) if result.point is not None else None)
    if result.error:
        trial.set_user_attr("error", result.error[:1000])
    trial.set_user_attr("extras", {k: v for k, v in result.extras.items() if k != "run_id"})
    # <= 0: satisfied, as NOMAD reads them; a failed evaluation's (nan) are unknown: taken as violated.
    trial.set_user_attr("constraints", [math.inf if math.isnan(v) else v for v in result.constraints.values()])
    state = trial_state(result.status)
    if state == "complete":
        study.tell(trial, result.objective)  # inf (diverged) is a valid, very bad value
    elif state == "fail":
        study.tell(trial, state=TrialState.FAIL)
    else:
        _tell_not_counted(study, trial, result.status.value)


def _tell_not_counted(study: optuna.Study, trial: optuna.Trial, why: str) -> None:
    """Fail a trial that did not really run, keep it out of the count, and queue its point for the resume."""
    from optuna.trial import TrialState

    params = trial.params
    trial.set_user_attr("status", why)
    study.tell(trial, state=TrialState.FAIL)
    _not_count(study, trial.number, params)


def _not_count(study: optuna.Study, number: int, params: dict[str, Any]) -> None:
    numbers = list(study.user_attrs.get(_ATTR_NOT_COUNTED, []))
    study.set_user_attr(_ATTR_NOT_COUNTED, sorted({*numbers, number}))
    if params:
        study.enqueue_trial(params)


def _fail_stale_trials(study: optuna.Study) -> None:
    """Trials left RUNNING by a process that was killed: failed, not counted, their points queued again.

    (One ``lora-blackbox optuna`` process per study folder: :func:`run_optuna` holds its lock.)
    """
    from optuna.trial import TrialState

    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        logger.warning("trial %d was left running by a killed process: it will run again", trial.number)
        study.tell(trial.number, state=TrialState.FAIL)
        _not_count(study, trial.number, trial.params)


def _counted(study: optuna.Study) -> int:
    from optuna.trial import TrialState

    not_counted = set(study.user_attrs.get(_ATTR_NOT_COUNTED, []))
    finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL))
    return sum(t.number not in not_counted for t in finished)


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """The complete trial of lowest value among those that satisfy every constraint (all, when there are none)."""
    from optuna.trial import TrialState

    trials = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.value is not None and all(v <= 0 for v in t.user_attrs.get("constraints", []))
    ]
    return min(trials, key=lambda t: t.value, default=None)  # type: ignore[arg-type,return-value]


def _best_value(study: optuna.Study) -> float | None:
    trial = best_trial(study)
    return trial.value if trial is not None else None


def _check_identity(study: optuna.Study, blackbox: Blackbox, sampler: Sampler, seed: int) -> None:
    """A new study remembers its experiment, space and sampler; a resumed one must match them."""
    experiment = blackbox.experiment
    identity = {
        # records.dir may differ between machines; everything that changes the objective may not.
        "fingerprint": experiment.model_copy(update={"records": RecordsConfig()}).fingerprint(),
        "experiment": experiment.study.name,
        "space": [v.model_dump(mode="json") for v in blackbox.space.variables],  # as the storage returns it
        "sampler": sampler,
        "seed": seed,
    }
    choices = [v.name for v in blackbox.space.variables if v.decode == "choice"]
    if choices:
        # Sampled as categorical values: a study that sampled them as integer indices (older versions) differs.
        identity["categorical"] = choices
    stored = study.user_attrs.get(_ATTR_IDENTITY)
    if stored is None:
        # Queued (WAITING) trials are welcome, e.g. known points enqueued with study.enqueue_trial.
        if any(t.state.is_finished() or t.state.name == "RUNNING" for t in study.trials):
            raise SetupError(f"study {study.study_name!r} holds trials that lora-blackbox did not make")
        study.set_user_attr(_ATTR_IDENTITY, identity)
        return
    changed = [k for k in identity if stored.get(k) != identity[k]]
    if changed:
        was = [f"{k} {stored.get(k)!r}, now {identity[k]!r}" for k in changed if k in ("experiment", "sampler", "seed")]
        raise SetupError(
            f"study {study.study_name!r} was created with another {', '.join(changed)}"
            + (f" ({'; '.join(was)})" if was else "")
            + ": resuming it would mix two studies. Use another --study-name or storage."
        )


class _Progress:
    """Evaluations done / budget, the best value and an ETA on stderr (the package's logger: --quiet hides it)."""

    def __init__(self, n_trials: int, done: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.n_trials, self.done, self.clock = n_trials, done, clock
        self.run_here = 0
        self.started = clock()

    def log(self, number: int, result: Result, best: float | None) -> None:
        self.done += 1
        self.run_here += 1
        eta = (self.clock() - self.started) / self.run_here * (self.n_trials - self.done)
        value = "failed" if result.failed else f"{result.objective:.6g}"
        logger.info(
            "trial %d: %s %s -> %s | %d/%d evaluations done, best %s, ETA %s",
            number,
            result.status.value,
            json.dumps(result.hparams),
            value if not result.error else f"{value} ({result.error[:120]})",
            self.done,
            self.n_trials,
            "-" if best is None or math.isnan(best) else f"{best:.6g}",
            format_duration(eta),
        )
