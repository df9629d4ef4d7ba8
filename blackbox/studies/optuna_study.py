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

Pruning (``--pruner``, ``studies.pruning``): every checkpoint of a trial's training (``[validation] checkpoints``)
is reported to the trial, and Optuna's pruner may stop it there: the trial is PRUNED (it counts toward
``--n-trials``) and its record STOPPED, as a NOMAD point stopped by the experiment's ``[stopping]`` rule. In an
Optuna study the pruner decides, not that rule.

Warm start (``--warm-start STUDY_DIR``, ``core.warm_start``): a new study gets the finished evaluations of earlier
studies of the same search space as trials (``study.add_trials``: complete, or pruned for stopped ones, with their
learning curves as intermediate values); they guide the sampler and the pruner from the first trial, and do not
count toward ``--n-trials``.

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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from blackbox.api import Blackbox, Result
from blackbox.core.bounds import OnBound, best_on_bounds
from blackbox.core.compute import Compute, compute_of
from blackbox.core.errors import OptionError, SetupError
from blackbox.core.experiment import RecordsConfig
from blackbox.core.extras import require
from blackbox.core.failures import Call, call_after, constraint_of, trial_state, unrecorded_status
from blackbox.core.folders import OPTUNA_STORAGE_FILE
from blackbox.core.pareto import front_indices
from blackbox.core.progress import format_duration
from blackbox.core.record import RecordStore
from blackbox.core.space import Categorical
from blackbox.core.warm_start import earlier_evaluations
from blackbox.studies.guard import holding_lock
from blackbox.studies.pruning import Pruner, TrialJudge, TrialLink, check_pruning, make_pruner
from blackbox.studies.samplers import SAMPLERS, Sampler, make_sampler, tpe_like_nni
from blackbox.tracking import start_study

if TYPE_CHECKING:
    import optuna

__all__ = ["SAMPLERS", "Sampler", "best_trial", "front_trials", "make_sampler", "run_optuna", "tpe_like_nni"]

logger = logging.getLogger(__name__)

# Study attributes: what the study was created with (checked on resume), and trials that do not count.
_ATTR_IDENTITY = "lora_blackbox"
_ATTR_NOT_COUNTED = "not_counted_trials"
_ATTR_WARM_START = "warm_start"  # a trial's: the study folder of the earlier evaluation it holds


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
    compute: Compute | None = None  # what its evaluations cost (wall-clock seconds of the device, tokens)
    front: list[dict[str, Any]] | None = None  # with several objectives: the non-dominated trials (best is None)
    objectives: tuple[str, ...] = ()  # with several objectives: their names, in the order of each trial's values
    on_bounds: tuple[OnBound, ...] = ()  # the best trial's variables at a bound of the space (core.bounds)

    def as_json(self) -> str:
        several = {"objectives": list(self.objectives), "front": self.front} if self.front is not None else {}
        return json.dumps(
            {
                "study_name": self.study_name,
                "storage": self.storage,
                "records": str(self.records_file),
                "n_trials": self.n_trials,
                "counted_trials": self.counted,
                "states": self.states,
                "best": self.best,
                **several,
                "interrupted": self.interrupted,
                "compute": None if self.compute is None else self.compute.as_dict(),
                "on_bounds": [hit.as_dict() for hit in self.on_bounds],
            }
        )


def default_storage(study_dir: Path) -> str:
    """SQLite in the study folder."""
    return f"sqlite:///{(study_dir / OPTUNA_STORAGE_FILE).resolve()}"


def require_sampler(sampler: Sampler) -> None:
    """Check that Optuna and the sampler's own package (CMA-ES's ``cmaes``) are installed.

    Raises:
        SetupError: one is missing (the line names the install command).
    """
    require("optuna", *(("cmaes",) if sampler == "cmaes" else ()), purpose="lora-blackbox optuna")


def run_optuna(
    blackbox: Blackbox,
    *,
    n_trials: int,
    sampler: Sampler,
    seed: int,
    storage: str,
    study_name: str,
    mlflow_uri: str | None = None,
    pruner: Pruner = "none",
    warm_start_from: Sequence[Path] = (),
    startup_trials: int | None = None,
) -> OptunaSummary:
    """Run or resume the study until it holds ``n_trials`` counted trials; with ``pruner``, Optuna's pruner stops
    trials at their checkpoints (``studies.pruning``); ``warm_start_from``: earlier study folders whose finished
    evaluations become trials of a new study (:func:`warm_start`); ``startup_trials``: TPE's random start-up trials
    (default: Optuna's 10).

    With tracking on (``mlflow_uri``, ``$MLFLOW_TRACKING_URI`` or the experiment's ``[tracking]``), the study
    is a parent run in MLflow (one per study folder, reused on resume) and every trial's evaluation a run
    nested in it, logged by the evaluation itself as in a NOMAD study (``blackbox.tracking``).

    Returns:
        Where the study stands; ``interrupted`` when Ctrl-C stopped it (the running trial was recorded,
        failed and left out of the count; it runs first when the study resumes).

    Raises:
        SetupError: the storage holds a study of another experiment or sampler, another study runs in the
            records folder, or a trial could not run.
        OptionError: the pruner cannot prune this experiment, or a warm start from another search space.
    """
    require_sampler(sampler)
    import optuna

    logger.info("Optuna study folder %s; storage %s", blackbox.experiment.records_dir, storage)

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # progress is ours, on the package's logger
    check_pruning(blackbox.experiment, pruner)
    folder = blackbox.experiment.records_dir
    # One study per folder, as for NOMAD: another process's running trials would look stale to this one.
    with holding_lock(folder):
        min_finished = blackbox.experiment.stopping.min_finished
        study = optuna.create_study(
            storage=storage,
            study_name=study_name,
            # Every objective as NOMAD minimises it (a maximised score negated), as the records hold it.
            directions=["minimize"] * len(blackbox.experiment.all_objectives),
            load_if_exists=True,
            pruner=make_pruner(pruner, min_finished=min_finished),
        )
        _check_identity(study, blackbox, sampler, seed, pruner=pruner)
        _fail_stale_trials(study)
        if warm_start_from:
            warm_start(study, blackbox, warm_start_from)
        study.sampler = make_sampler(sampler, seed + len(study.trials), blackbox, startup_trials=startup_trials)
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
                link = partial(TrialLink, storage, study_name, pruner=pruner)
                done, interrupted = _run_trials(study, blackbox, n_trials, done, progress, link)
            finally:
                if tracking is not None:
                    tracking.end(interrupted=interrupted or done < n_trials)
        return summary_of(study, storage, blackbox, n_trials, interrupted=interrupted)


def _run_trials(
    study: optuna.Study,
    blackbox: Blackbox,
    n_trials: int,
    done: int,
    progress: _Progress,
    link: Callable[[int], TrialLink],
) -> tuple[int, bool]:
    """Ask, evaluate and tell trials until ``n_trials`` are counted; returns (counted, interrupted). ``link``: how
    an evaluation reaches its trial (by the trial's id), to report its checkpoints and be pruned.

    Raises:
        SetupError: a trial could not run (the study stops; the trial is not counted).
    """
    interrupted = False
    while done < n_trials:
        trial = study.ask()
        point = blackbox.space.suggest(trial)
        trial_link = link(trial._trial_id)  # Optuna keeps a trial's storage id private; its number is not the id
        if blackbox.isolate:  # the eval subprocess reaches the trial through the storage (studies.pruning)
            with trial_link.environment():
                result = blackbox.run_point(point)
        else:
            result = blackbox.run_point(point, judge=TrialJudge(trial, trial_link.pruner))
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
        progress.log(trial.number, result, _standing(study))
    return done, interrupted


def summary_of(
    study: optuna.Study, storage: str, blackbox: Blackbox, n_trials: int, *, interrupted: bool = False
) -> OptunaSummary:
    states: dict[str, int] = {}
    for t in study.trials:
        states[t.state.name] = states.get(t.state.name, 0) + 1
    best, front = None, None
    trial = best_trial(study) if len(study.directions) == 1 else None
    if trial is not None:
        best = {"trial": trial.number, "value": trial.value, **_described(trial)}
    if len(study.directions) > 1:
        front = [{"trial": t.number, "values": t.values, **_described(t)} for t in front_trials(study)]
    return OptunaSummary(
        study_name=study.study_name,
        storage=storage,
        records_file=blackbox.records_file,
        n_trials=n_trials,
        counted=_counted(study),
        states=states,
        best=best,
        interrupted=interrupted,
        compute=compute_of(RecordStore(blackbox.records_file.parent).records()),
        front=front,
        objectives=tuple(o.key for o in blackbox.experiment.all_objectives) if front is not None else (),
        on_bounds=()
        if front is not None
        else tuple(best_on_bounds(blackbox.space, [t.user_attrs["point"] for t in _ranked(study)])),
    )


def _described(trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    return {
        "params": trial.params,
        "hparams": trial.user_attrs.get("hparams"),
        "run_id": trial.user_attrs.get("run_id"),
    }


def _tell(study: optuna.Study, trial: optuna.Trial, result: Result) -> None:
    from optuna.trial import TrialState

    trial.set_user_attr("run_id", result.run_id)
    trial.set_user_attr("status", result.status.value)
    trial.set_user_attr("hparams", result.hparams)
    trial.set_user_attr("point", list(result.point) if result.point is not None else None)
    if result.error:
        trial.set_user_attr("error", result.error[:1000])
    trial.set_user_attr("extras", {k: v for k, v in result.extras.items() if k != "run_id"})
    # <= 0: satisfied, as NOMAD reads them; a failed evaluation's (nan) are unknown (the failure policy's).
    trial.set_user_attr("constraints", [constraint_of(v) for v in result.constraints.values()])
    stopped = result.record.get("stopped")
    if stopped:
        trial.set_user_attr("stopped", stopped)
    state = trial_state(result.status)
    if state == "complete":  # inf (diverged) is a valid, very bad value
        study.tell(trial, result.objectives if len(result.objectives) > 1 else result.objective)
    elif state == "pruned":  # its last reported checkpoint loss becomes its value, as Optuna does
        study.tell(trial, state=TrialState.PRUNED)
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
    """Trials left RUNNING by a process that was killed: their evaluations were killed with the study (the failure
    policy's KILLED), so they fail, uncounted, and their points are queued again.

    (One ``lora-blackbox optuna`` process per study folder: :func:`run_optuna` holds its lock.)
    """
    from optuna.trial import TrialState

    state = trial_state(unrecorded_status(solver_exit=None))
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        logger.warning("trial %d was left running by a killed process: it will run again", trial.number)
        study.tell(trial.number, state=TrialState.FAIL)
        if state == "not_counted":
            _not_count(study, trial.number, trial.params)


def _counted(study: optuna.Study) -> int:
    """The trials that spent the study's budget: complete, pruned and failed, but for those that did not really run
    and the earlier evaluations of a warm start."""
    from optuna.trial import TrialState

    not_counted = set(study.user_attrs.get(_ATTR_NOT_COUNTED, []))
    finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL))
    return sum(t.number not in not_counted and _ATTR_WARM_START not in t.user_attrs for t in finished)


def warm_start(study: optuna.Study, blackbox: Blackbox, sources: Sequence[Path]) -> None:
    """Add the finished evaluations of earlier studies of the same search space (``core.warm_start``) to a new
    study as trials: complete (their objective), or pruned (stopped early), with their learning curves as
    intermediate values and their records' ids. A study that holds trials already is refused, but for the same
    command again (its warm-start trials are there).

    Raises:
        OptionError: the study holds trials of its own, or an earlier study is of another space or other settings.
    """
    import optuna
    from optuna.trial import TrialState

    if any(_ATTR_WARM_START in t.user_attrs for t in study.trials):
        logger.info("the study was warm-started when it began: resuming it")
        return
    if study.trials:
        raise OptionError(
            f"--warm-start seeds a new study, and {study.study_name!r} holds {len(study.trials)} trial(s) already: "
            "use another --study-name or --dir"
        )
    records = earlier_evaluations(blackbox.experiment, sources)
    trials = []
    for record in records:
        assert record.point is not None
        replay = _Replay(record.point, blackbox.space.lower)
        blackbox.space.suggest(replay)
        state = trial_state(record.status)  # a finished evaluation's: complete, or pruned when it was stopped
        values = record.objective_values()  # one per objective (a warm start's sources have the same objectives)
        curve = {p.step: p.loss for p in record.curve}
        trials.append(
            optuna.trial.create_trial(
                state=TrialState.COMPLETE if state == "complete" else TrialState.PRUNED,
                values=list(values) if state == "complete" else None,
                params=replay.params,
                distributions=replay.distributions(),
                intermediate_values=curve,
                user_attrs={
                    _ATTR_WARM_START: str(Path(record.run_dir).parent.parent) if record.run_dir else "",
                    "run_id": record.run_id,
                    "status": record.status.value,
                    "hparams": record.hparams,
                    "point": list(record.point),
                    "constraints": [v for k, v in record.metrics.items() if k.startswith("constraint:")],
                },
            )
        )
    study.add_trials(trials)
    logger.info("warm start: %d earlier evaluations added to the study (not counted)", len(trials))


class _Replay:
    """A trial (``core.space.Trial``) that answers :meth:`SearchSpace.suggest` with a known point's values and keeps
    what it was asked: the parameters and distributions Optuna's own trial would have for that point."""

    def __init__(self, point: tuple[float, ...], lower: tuple[float, ...]) -> None:
        self.values = iter(zip(point, lower, strict=True))  # a choice's coordinate is its index from its lower bound
        self.params: dict[str, Any] = {}
        self.asked: dict[str, tuple[str, tuple[Any, ...], float | None]] = {}

    def suggest_int(self, name: str, low: int, high: int) -> int:
        self.asked[name] = ("int", (low, high), None)
        self.params[name] = int(next(self.values)[0])
        return int(self.params[name])

    def suggest_float(self, name: str, low: float, high: float, *, step: float | None = None) -> float:
        self.asked[name] = ("float", (low, high), step)
        self.params[name] = float(next(self.values)[0])
        return float(self.params[name])

    def suggest_categorical(self, name: str, choices: Sequence[Categorical]) -> Categorical:
        self.asked[name] = ("categorical", tuple(choices), None)
        x, lower = next(self.values)
        picked = choices[int(x) - int(lower)]
        self.params[name] = picked
        return picked

    def distributions(self) -> dict[str, optuna.distributions.BaseDistribution]:
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        made: dict[str, optuna.distributions.BaseDistribution] = {}
        for name, (kind, bounds, step) in self.asked.items():
            if kind == "int":
                made[name] = IntDistribution(int(bounds[0]), int(bounds[1]))
            elif kind == "float":
                made[name] = FloatDistribution(float(bounds[0]), float(bounds[1]), step=step)
            else:
                made[name] = CategoricalDistribution(bounds)
        return made


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """The complete trial of lowest value among those that satisfy every constraint (all, when there are none)."""
    trials = _feasible(study)
    return min(trials, key=lambda t: t.value, default=None)  # type: ignore[arg-type,return-value]


def _feasible(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The complete trials that satisfy every constraint."""
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return [t for t in complete if t.value is not None and all(v <= 0 for v in t.user_attrs.get("constraints", []))]


def _ranked(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The feasible complete trials with a finite value and a point, best first."""
    trials = [t for t in _feasible(study) if math.isfinite(t.value or math.inf) and t.user_attrs.get("point")]
    return sorted(trials, key=lambda t: float(t.value or 0.0))


def front_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The non-dominated complete trials of a study of several objectives among those that satisfy every
    constraint, in the order they ran."""
    from optuna.trial import TrialState

    trials = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.values is not None and all(v <= 0 for v in t.user_attrs.get("constraints", []))
    ]
    return [trials[i] for i in front_indices([t.values for t in trials])]


def _standing(study: optuna.Study) -> str:
    """Where the study stands, for its progress line: its best value, or the size of its front."""
    if len(study.directions) > 1:
        return f"front of {len(front_trials(study))}"
    trial = best_trial(study)
    value = trial.value if trial is not None else None
    return "best -" if value is None or math.isnan(value) else f"best {value:.6g}"


def _check_identity(
    study: optuna.Study, blackbox: Blackbox, sampler: Sampler, seed: int, *, pruner: Pruner = "none"
) -> None:
    """A new study remembers its experiment, space, sampler and pruner; a resumed one must match them."""
    experiment = blackbox.experiment
    identity = {
        # records.dir may differ between machines; everything that changes the objective may not.
        "fingerprint": experiment.model_copy(update={"records": RecordsConfig()}).fingerprint(),
        "experiment": experiment.study.name,
        "space": [v.model_dump(mode="json") for v in blackbox.space.variables],  # as the storage returns it
        "sampler": sampler,
        "seed": seed,
    }
    if pruner != "none":  # (studies from before pruners have none)
        identity["pruner"] = pruner
    if len(experiment.all_objectives) > 1:  # (a study of one objective has none, as before)
        identity["objectives"] = [o.key for o in experiment.all_objectives]
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
    if stored.get("objectives") != identity.get("objectives"):

        def described(objectives: Any) -> str:
            return f"{len(objectives)} objectives ({', '.join(objectives)})" if objectives else "one objective"

        raise OptionError(
            f"study {study.study_name!r} optimises {described(stored.get('objectives'))}, the experiment "
            f"{described(identity.get('objectives'))}: resuming it would mix two studies. Use another --study-name "
            "or --dir."
        )
    keys = [*identity, *(k for k in stored if k not in identity)]  # a pruner the study had and this run has not
    changed = [k for k in keys if stored.get(k) != identity.get(k)]
    if changed:
        shown = ("experiment", "sampler", "seed", "pruner")
        was = [f"{k} {stored.get(k)!r}, now {identity.get(k)!r}" for k in sorted(changed) if k in shown]
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

    def log(self, number: int, result: Result, standing: str) -> None:
        self.done += 1
        self.run_here += 1
        eta = (self.clock() - self.started) / self.run_here * (self.n_trials - self.done)
        value = "failed" if result.failed else " ".join(f"{v:.6g}" for v in result.objectives or [result.objective])
        logger.info(
            "trial %d: %s %s -> %s | %d/%d evaluations done, %s, ETA %s",
            number,
            result.status.value,
            json.dumps(result.hparams),
            value if not result.error else f"{value} ({result.error[:120]})",
            self.done,
            self.n_trials,
            standing,
            format_duration(eta),
        )
