"""Optuna studies through ``lora-blackbox optuna``: the same space as NOMAD's, every trial a real
``lora-blackbox eval`` subprocess on the tiny model, failures as failed trials, resume, interruption."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from blackbox.core.experiment import load_experiment
from blackbox.core.space import HyperParams, SearchSpace, categorical
from tests.records import read_records


def test_a_trial_suggests_nomads_coordinates() -> None:
    space = SearchSpace.from_experiment(load_experiment("demo"))
    point = space.suggest(optuna.trial.FixedTrial({"lora_r": 3, "lora_alpha": 2, "learning_rate": -3.0}))
    assert point == (3.0, 2.0, -3.0)
    assert space.decode(point) == HyperParams(lora_r=8, lora_alpha=16, lora_dropout=0.05, learning_rate=1e-3)
    # The distributions Optuna sees: integer bounds for indices and multipliers, the exponent as a real.
    study = optuna.create_study()
    trial = study.ask()
    space.suggest(trial)
    distributions = study.trials[0].distributions
    assert distributions["lora_r"] == optuna.distributions.IntDistribution(1, 5)
    assert distributions["lora_alpha"] == optuna.distributions.IntDistribution(1, 8)
    assert distributions["learning_rate"] == optuna.distributions.FloatDistribution(-5, -1.5)


def test_a_granularity_becomes_a_step(tmp_path: Path) -> None:
    text = resources.files("blackbox").joinpath("experiments", "demo.toml")
    experiment = tmp_path / "e.toml"
    experiment.write_text(text.read_text().replace('decode = "log10"', 'decode = "log10"\ngranularity = 0.25'))
    space = SearchSpace.from_experiment(load_experiment(str(experiment)))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(5):
        point = space.suggest(study.ask())
        assert point[2] * 4 == round(point[2] * 4)
    assert study.trials[0].distributions["learning_rate"].step == 0.25


def test_choices_are_categorical_values_and_points_keep_nomads_indices() -> None:
    """Optuna samples the values of a choice (JSON text for lists and tables), the point holds NOMAD's index."""
    space = SearchSpace.from_experiment(load_experiment("demo_variants"))
    params = {"lora_r": 3, "lora_alpha": 2, "learning_rate": -3.0, "lora": '{"use_dora": true}'}
    params |= {"model.target_modules": "all-linear", "training.epochs": 1}
    point = space.suggest(optuna.trial.FixedTrial(params))
    assert point == (3.0, 2.0, -3.0, 2.0, 3.0, 1.0)
    assert space.decode(point).settings == {
        "lora": {"use_dora": True},
        "model.target_modules": "all-linear",
        "training.epochs": 1,
    }
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(8):
        trial = study.ask()
        point = space.suggest(trial)
        # The index in the point is the value Optuna sampled.
        assert categorical(space.decode(point).settings["model.target_modules"]) == trial.params["model.target_modules"]
        study.tell(trial, 1.0)
    distributions = study.trials[0].distributions
    assert distributions["model.target_modules"] == optuna.distributions.CategoricalDistribution(
        ['["q_proj", "v_proj"]', "attention", "all-linear"]
    )
    assert distributions["lora"].choices == ("{}", '{"use_dora": true}', '{"use_rslora": true}')
    assert distributions["training.epochs"] == optuna.distributions.IntDistribution(1, 3)
    # A choice of numbers (the paper's ranks) is categorical too.
    paper = SearchSpace.from_experiment(load_experiment("paper_exp1"))
    trial = optuna.create_study().ask()
    paper.suggest(trial)
    assert trial.distributions["lora_r"] == optuna.distributions.CategoricalDistribution(
        [4.0, 8.0, 16.0, 32.0, 64.0, 128.0]
    )


def test_resuming_checks_that_choices_were_categorical(tmp_path: Path) -> None:
    from blackbox.api import Blackbox
    from blackbox.core.errors import SetupError
    from blackbox.studies.optuna_study import _check_identity

    blackbox = Blackbox("demo_variants", [f"records.dir={tmp_path}"])
    study = optuna.create_study()
    _check_identity(study, blackbox, "tpe", 0)
    assert study.user_attrs["lora_blackbox"]["categorical"] == ["lora", "model.target_modules"]
    _check_identity(study, blackbox, "tpe", 0)  # the same study resumes
    older = {k: v for k, v in study.user_attrs["lora_blackbox"].items() if k != "categorical"}
    study.set_user_attr("lora_blackbox", older)  # a study that sampled indices
    with pytest.raises(SetupError, match="another categorical"):
        _check_identity(study, blackbox, "tpe", 0)


@pytest.fixture(scope="session")
def run_optuna(blackbox_cmd: list[str]) -> Callable[..., subprocess.CompletedProcess[str]]:
    """``lora-blackbox optuna ARGS`` in ``cwd``, as a user runs it."""

    def run(args: list[str], cwd: Path, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        command = [*blackbox_cmd, "optuna", *args]
        return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600, check=False, **kwargs)

    return run


@pytest.fixture(scope="module")
def run_then_resumed(tmp_path_factory: pytest.TempPathFactory, write_tiny_experiment, run_optuna) -> dict:
    """A random-search study run to 2 trials, then resumed to 3, then asked to resume with another sampler.
    (How failed evaluations become trial states: tests/test_failures.py.)"""
    tmp = tmp_path_factory.mktemp("optuna")
    experiment = write_tiny_experiment(tmp / "experiment.toml", records=tmp / "unused")
    folder = tmp / "study"
    storage = f"sqlite:///{tmp / 'optuna.db'}"
    args = ["-e", str(experiment), "--storage", storage, "--study-name", "tiny", "--dir", str(folder)]
    # Seed 34: the first two trials neither draw the rank that cannot fit nor a diverging learning rate.
    args += ["--sampler", "random", "--seed", "34"]
    first = run_optuna([*args, "--n-trials", "2"], tmp)
    first_trials = optuna.load_study(study_name="tiny", storage=storage).trials
    first_records = read_records(folder / "records.jsonl")
    resumed = run_optuna([*args, "--n-trials", "3"], tmp)
    other_sampler = run_optuna([*args, "--n-trials", "4", "--sampler", "tpe"], tmp)
    return {
        "first": first,
        "first_trials": first_trials,
        "first_records": first_records,
        "resumed": resumed,
        "other_sampler": other_sampler,
        "storage": storage,
        "folder": folder,
    }


@pytest.mark.slow
@pytest.mark.xdist_group("run-then-resumed")  # its module fixture runs once, on one worker
def test_trials_and_records_match(run_then_resumed: dict) -> None:
    first = run_then_resumed["first"]
    assert first.returncode == 0, first.stderr[-3000:]
    summary = json.loads(first.stdout)  # stdout: one JSON object and nothing else
    assert summary["counted_trials"] == 2 and summary["states"] == {"COMPLETE": 2}
    trials = run_then_resumed["first_trials"]
    records = run_then_resumed["first_records"]
    assert [r["status"] for r in records] == ["OK", "OK"]
    assert [t.user_attrs["run_id"] for t in trials] == [r["run_id"] for r in records]
    for trial, record in zip(trials, records, strict=True):
        assert trial.value == record["metrics"]["validation_loss"]
        assert record["hparams"] == trial.user_attrs["hparams"]
        # The records' points are the trial's parameters in NOMAD's coordinates, in the variables' order: the rank
        # (a choice, sampled as a categorical value) by its index among the values of tests/assets/spaces.
        rank = [4, 8, 16, 16777216].index(trial.params["lora_r"]) + 1
        assert record["point"] == [rank, trial.params["learning_rate"], trial.params["lora_dropout"]]
        assert record["hparams"]["lora_r"] == trial.params["lora_r"]
    best = min(records, key=lambda r: r["metrics"]["validation_loss"])
    assert summary["best"]["run_id"] == best["run_id"]
    assert "2/2 evaluations done" in first.stderr


@pytest.mark.slow
@pytest.mark.xdist_group("run-then-resumed")  # its module fixture runs once, on one worker
def test_resume_continues_to_the_total(run_then_resumed: dict) -> None:
    resumed = run_then_resumed["resumed"]
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming study 'tiny': 2 of 3 trials done" in resumed.stderr
    trials = optuna.load_study(study_name="tiny", storage=run_then_resumed["storage"]).trials
    assert len(trials) == 3
    assert [t.user_attrs["run_id"] for t in trials[:2]] == [
        t.user_attrs["run_id"] for t in run_then_resumed["first_trials"]
    ]
    records = read_records(run_then_resumed["folder"] / "records.jsonl")
    assert len(records) == 3 and records[2]["run_id"] == trials[2].user_attrs["run_id"]
    # The resumed sampler is reseeded: it does not draw the trials of the first session again.
    assert trials[2].params not in (trials[0].params, trials[1].params)
    # A different sampler cannot resume the study.
    other = run_then_resumed["other_sampler"]
    assert other.returncode == 1 and "created with another sampler" in other.stderr


@pytest.mark.slow
def test_a_trial_that_cannot_run_stops_the_study(tmp_path: Path, tiny_experiment: Path, run_optuna) -> None:
    args = ["-e", str(tiny_experiment), "--set", f"model.name_or_path={tmp_path / 'missing'}", "--n-trials", "3"]
    result = run_optuna([*args, "--dir", str(tmp_path / "study")], tmp_path)
    assert result.returncode == 1
    assert "could not run" in result.stderr and "run the same command again" in result.stderr
    [record] = read_records(tmp_path / "study" / "records.jsonl")
    assert record["status"] == "NOT_RUN"
    study = optuna.load_study(study_name="tiny-tpe", storage=f"sqlite:///{tmp_path / 'study' / 'optuna.db'}")
    assert study.user_attrs["not_counted_trials"] == [0]
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.WAITING]  # its point queued again


@pytest.mark.slow
def test_a_busy_folder_and_ctrl_c_then_resume_runs_the_interrupted_trial_first(
    tmp_path: Path, tiny_experiment: Path, blackbox_cmd, run_optuna, wait_for, training_started
) -> None:
    folder = tmp_path / "study"
    # Long enough that the trial still trains while the second process starts, is refused and exits (60 steps were
    # over before that on one thread per xdist worker); Ctrl-C ends it early, and the resumed trial takes ~30 s.
    args = ["-e", str(tiny_experiment), "--set", "training.max_steps=400", "--dir", str(folder), "--sampler", "random"]
    process = subprocess.Popen(
        [*blackbox_cmd, "optuna", *args, "--n-trials", "2"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    wait_for(lambda: training_started(folder), process, "training")
    # One study per folder: a second process is refused and leaves the running trial alone.
    second = run_optuna([*args, "--n-trials", "2"], tmp_path)
    assert second.returncode == 1 and f"another study is running in {folder.resolve()}" in second.stderr
    running = optuna.load_study(study_name="tiny-random", storage=f"sqlite:///{folder / 'optuna.db'}").trials
    assert [t.state for t in running] == [TrialState.RUNNING]
    os.killpg(process.pid, signal.SIGINT)  # Ctrl-C in the terminal
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-3000:]
    assert json.loads(stdout)["interrupted"] is True
    [record] = read_records(folder / "records.jsonl")
    assert record["status"] == "INTERRUPTED"
    storage = f"sqlite:///{folder / 'optuna.db'}"
    [trial] = optuna.load_study(study_name="tiny-random", storage=storage).get_trials(states=(TrialState.FAIL,))

    result = run_optuna([*args, "--set", "training.max_steps=12", "--n-trials", "1"], tmp_path)
    assert result.returncode == 1 and "another fingerprint" in result.stderr  # other settings: refused
    result = run_optuna([*args, "--n-trials", "1"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    trials = optuna.load_study(study_name="tiny-random", storage=storage).trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert trials[1].params == trial.params  # the interrupted point ran first
    assert json.loads(result.stdout)["counted_trials"] == 1


def test_tpe_set_as_nnis_draws_its_first_20_points_at_random() -> None:
    """--sampler tpe-nni (the reference study's baseline, NNI's TPE): 20 random start-up trials, where Optuna's TPE
    has 10; the start-up points are those of RandomSampler with the same seed."""
    from blackbox.studies.optuna_study import tpe_like_nni

    space = SearchSpace.from_experiment(load_experiment("paper_exp2"))

    def points(sampler: optuna.samplers.BaseSampler) -> list[tuple[float, ...]]:
        study = optuna.create_study(sampler=sampler)
        found = []
        for _ in range(22):
            trial = study.ask()
            point = space.suggest(trial)
            found.append(point)
            study.tell(trial, sum((x - 2) ** 2 for x in point))  # a cheap objective: TPE moves towards it
        return found

    random_points = points(optuna.samplers.RandomSampler(seed=3))
    nni = points(tpe_like_nni(3))
    optuna_tpe = points(optuna.samplers.TPESampler(seed=3, multivariate=False))
    assert nni[:20] == random_points[:20] and nni[20:] != random_points[20:]
    assert optuna_tpe[:10] == random_points[:10] and optuna_tpe[10:20] != random_points[10:20]


def test_a_warm_start_trial_holds_what_optunas_own_trial_would_for_its_point() -> None:
    """An earlier evaluation becomes a trial with the parameters and distributions that ``SearchSpace.suggest``
    asks Optuna for (choices as categorical values, NOMAD's index kept in the point)."""
    from blackbox.studies.optuna_study import _Replay

    space = SearchSpace.from_experiment(load_experiment("demo_variants"))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(4):
        trial = study.ask()
        point = space.suggest(trial)
        replay = _Replay(point, space.lower)
        assert space.suggest(replay) == point
        assert replay.params == trial.params and replay.distributions() == trial.distributions
        study.tell(trial, 1.0)


def test_the_summary_says_where_the_best_trials_sit_on_a_bound() -> None:
    """The best feasible trials (an infeasible one at the bound does not count), on the demo's learning-rate bound."""
    from blackbox.api import Blackbox
    from blackbox.studies.optuna_study import summary_of

    blackbox = Blackbox("demo")
    study = optuna.create_study()
    for value, point, constraints in [
        (4.5, (1.0, 1.0, -1.5), [-1.0]),
        (4.2, (2.0, 4.0, -1.5), [0.0]),
        (4.1, (5.0, 8.0, -1.5), [0.5]),  # the lowest value, infeasible
        (4.4, (2.0, 2.0, -3.0), []),
    ]:
        attrs = {"point": list(point), "constraints": constraints}
        study.add_trial(optuna.trial.create_trial(value=value, user_attrs=attrs))
    summary = summary_of(study, "memory", blackbox, n_trials=4)
    assert summary.best is not None and summary.best["value"] == 4.2
    [hit] = json.loads(summary.as_json())["on_bounds"]
    assert (hit["variable"], hit["bound"], hit["count"], hit["top"]) == ("learning_rate", "upper", 2, 3)


def test_pruners_and_how_an_evaluation_reaches_its_trial(monkeypatch: pytest.MonkeyPatch) -> None:
    from blackbox.core.errors import OptionError, SetupError
    from blackbox.studies.pruning import ENV_OPTUNA_TRIAL, TrialLink, check_pruning, make_pruner

    median = make_pruner("median", min_finished=2)
    assert isinstance(median, optuna.pruners.MedianPruner) and median._n_startup_trials == 2
    assert isinstance(make_pruner("successive-halving", min_finished=2), optuna.pruners.SuccessiveHalvingPruner)
    assert isinstance(make_pruner("hyperband", min_finished=2), optuna.pruners.HyperbandPruner)
    assert isinstance(make_pruner("none", min_finished=2), optuna.pruners.NopPruner)
    with pytest.raises(OptionError, match="decides at checkpoints"):
        check_pruning(load_experiment("demo"), "median")
    check_pruning(load_experiment("demo", ["validation.checkpoints=[0.5]"]), "hyperband")
    check_pruning(load_experiment("demo"), "none")
    link = TrialLink("sqlite:///x.db", "s", 7, "hyperband")
    monkeypatch.delenv(ENV_OPTUNA_TRIAL, raising=False)
    assert TrialLink.from_env() is None
    with link.environment():
        assert TrialLink.from_env() == link
    assert TrialLink.from_env() is None
    monkeypatch.setenv(ENV_OPTUNA_TRIAL, "{not json")
    with pytest.raises(SetupError, match="does not name an Optuna trial"):
        TrialLink.from_env()
