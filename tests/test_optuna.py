"""Optuna studies through ``lora-blackbox optuna``: the same space as NOMAD's, every trial a real
``lora-blackbox eval`` subprocess on the tiny model, failures as failed trials, resume, interruption."""

from __future__ import annotations

import json
import math
import os
import resource
import signal
import subprocess
import time
from importlib import resources
from pathlib import Path

import optuna
import psutil
import pytest
from optuna.trial import TrialState

from blackbox.experiment import load_experiment
from blackbox.record import read_records
from blackbox.space import HyperParams, SearchSpace
from tests.conftest import BLACKBOX


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
    assert distributions["learning_rate"] == optuna.distributions.FloatDistribution(-5, -2)


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


def _optuna(args: list[str], cwd: Path, **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*BLACKBOX, "optuna", *args], cwd=cwd, capture_output=True, text=True, timeout=600, check=False, **kwargs
    )


def _limit_memory() -> None:
    limit = 4 * 1024**3  # the rank-16,777,216 point cannot fit: out of memory in the evaluation
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


@pytest.fixture(scope="module")
def failed_then_resumed(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, tiny_data) -> dict:
    """A study whose first trial runs out of memory and whose second diverges, run to 3 trials, then resumed to 4."""
    from tests.conftest import TINY_EXPERIMENT

    tmp = tmp_path_factory.mktemp("optuna")
    experiment = tmp / "experiment.toml"
    experiment.write_text(
        TINY_EXPERIMENT.format(model=tiny_model, train=tiny_data[0], validation=tiny_data[1], records=tmp / "unused")
    )
    folder = tmp / "study"
    storage = f"sqlite:///{tmp / 'optuna.db'}"
    study = optuna.create_study(storage=storage, study_name="tiny")
    study.enqueue_trial({"lora_r": 4, "learning_rate": -2.0, "lora_dropout": 0.1})  # rank 16,777,216: OOM
    study.enqueue_trial({"lora_r": 2, "learning_rate": 36.0, "lora_dropout": 0.0})  # lr 1e36: diverges
    args = ["-e", str(experiment), "--storage", storage, "--study-name", "tiny", "--dir", str(folder)]
    args += ["--sampler", "random", "--seed", "3"]
    first = _optuna([*args, "--n-trials", "3"], tmp, preexec_fn=_limit_memory)
    first_trials = optuna.load_study(study_name="tiny", storage=storage).trials
    first_records = read_records(folder / "records.jsonl")
    resumed = _optuna([*args, "--n-trials", "4"], tmp)
    other_sampler = _optuna([*args, "--n-trials", "5", "--sampler", "tpe"], tmp)
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
def test_failures_are_failed_trials_and_records_match(failed_then_resumed: dict) -> None:
    first = failed_then_resumed["first"]
    assert first.returncode == 0, first.stderr[-3000:]
    summary = json.loads(first.stdout)  # stdout: one JSON object and nothing else
    assert summary["counted_trials"] == 3 and summary["states"] == {"FAIL": 1, "COMPLETE": 2}
    trials = failed_then_resumed["first_trials"]
    records = failed_then_resumed["first_records"]
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    assert [r["status"] for r in records] == ["OOM", "DIVERGED", "OK"]
    assert [t.user_attrs["run_id"] for t in trials] == [r["run_id"] for r in records]
    assert trials[0].user_attrs["status"] == "OOM" and "out of memory" in trials[0].user_attrs["error"]
    assert trials[1].value == math.inf  # diverged: a completed, very bad trial
    assert trials[2].value == records[2]["metrics"]["validation_loss"]
    assert records[2]["hparams"] == trials[2].user_attrs["hparams"]
    # The records' points are the trial's parameters, in the variables' order.
    assert records[2]["point"] == [trials[2].params[n] for n in ("lora_r", "learning_rate", "lora_dropout")]
    assert summary["best"]["run_id"] == records[2]["run_id"]
    assert "3/3 evaluations done" in first.stderr


@pytest.mark.slow
def test_resume_continues_to_the_total(failed_then_resumed: dict) -> None:
    resumed = failed_then_resumed["resumed"]
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming study 'tiny': 3 of 4 trials done" in resumed.stderr
    trials = optuna.load_study(study_name="tiny", storage=failed_then_resumed["storage"]).trials
    assert len(trials) == 4
    assert [t.user_attrs["run_id"] for t in trials[:3]] == [
        t.user_attrs["run_id"] for t in failed_then_resumed["first_trials"]
    ]
    records = read_records(failed_then_resumed["folder"] / "records.jsonl")
    assert len(records) == 4 and records[3]["run_id"] == trials[3].user_attrs["run_id"]
    # The resumed sampler is reseeded: it does not draw the random trial of the first session again.
    assert trials[3].params != trials[2].params
    # A different sampler cannot resume the study.
    other = failed_then_resumed["other_sampler"]
    assert other.returncode == 1 and "created with another sampler" in other.stderr


@pytest.mark.slow
def test_a_trial_that_cannot_run_stops_the_study(tmp_path: Path, tiny_experiment: Path) -> None:
    args = ["-e", str(tiny_experiment), "--set", f"model.name_or_path={tmp_path / 'missing'}", "--n-trials", "3"]
    result = _optuna([*args, "--dir", str(tmp_path / "study")], tmp_path)
    assert result.returncode == 1
    assert "could not run" in result.stderr and "run the same command again" in result.stderr
    [record] = read_records(tmp_path / "study" / "records.jsonl")
    assert record["status"] == "NOT_RUN"
    study = optuna.load_study(study_name="tiny-tpe", storage=f"sqlite:///{tmp_path / 'study' / 'optuna.db'}")
    assert study.user_attrs["not_counted_trials"] == [0]
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.WAITING]  # its point queued again


@pytest.mark.slow
def test_ctrl_c_records_the_running_trial_and_resume_runs_it_again(tmp_path: Path, tiny_experiment: Path) -> None:
    folder = tmp_path / "study"
    args = ["-e", str(tiny_experiment), "--set", "training.max_steps=60", "--dir", str(folder), "--sampler", "random"]
    process = subprocess.Popen(
        [*BLACKBOX, "optuna", *args, "--n-trials", "2"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    _wait_for_training(process, folder)
    os.killpg(process.pid, signal.SIGINT)  # Ctrl-C in the terminal
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-3000:]
    assert json.loads(stdout)["interrupted"] is True
    [record] = read_records(folder / "records.jsonl")
    assert record["status"] == "INTERRUPTED"
    storage = f"sqlite:///{folder / 'optuna.db'}"
    [trial] = optuna.load_study(study_name="tiny-random", storage=storage).get_trials(states=(TrialState.FAIL,))

    result = _optuna([*args, "--set", "training.max_steps=12", "--n-trials", "1"], tmp_path)
    assert result.returncode == 1 and "another fingerprint" in result.stderr  # other settings: refused
    result = _optuna([*args, "--n-trials", "1"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    trials = optuna.load_study(study_name="tiny-random", storage=storage).trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert trials[1].params == trial.params  # the interrupted point ran first
    assert json.loads(result.stdout)["counted_trials"] == 1


@pytest.mark.slow
def test_a_killed_evaluation_fails_its_trial_only(tmp_path: Path, tiny_experiment: Path) -> None:
    """The kernel's OOM killer (here: SIGKILL from the test) ends an evaluation without a record: the trial
    fails, a record says why, and the study goes on."""
    folder = tmp_path / "study"
    args = ["-e", str(tiny_experiment), "--set", "training.max_steps=20", "--dir", str(folder), "--sampler", "random"]
    process = subprocess.Popen(
        [*BLACKBOX, "optuna", *args, "--seed", "7", "--n-trials", "2"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for_training(process, folder)
    [evaluation] = psutil.Process(process.pid).children()
    evaluation.send_signal(signal.SIGKILL)
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr[-3000:]
    records = read_records(folder / "records.jsonl")
    assert records[0]["status"] == "ERROR" and records[1]["status"] in ("OK", "DIVERGED")
    assert "killed by SIGKILL" in records[0]["error"] and records[0]["hparams"] is not None
    trials = optuna.load_study(study_name="tiny-random", storage=f"sqlite:///{folder / 'optuna.db'}").trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert trials[0].user_attrs["run_id"] == records[0]["run_id"]
    assert json.loads(stdout)["counted_trials"] == 2


def _wait_for_training(process: subprocess.Popen[str], folder: Path) -> None:
    """Until an evaluation of the study logs its first training step."""
    deadline = time.monotonic() + 300
    logs = folder / "evals"
    while not (logs.exists() and any("step " in p.read_text() for p in logs.glob("*/eval.log"))):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.2)
