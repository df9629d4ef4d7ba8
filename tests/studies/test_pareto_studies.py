"""Studies of two objectives on the tiny model, end to end, one per path: NOMAD's DMultiMads (the 4.5.1 binary and
PyNomadBBO) and Optuna's NSGA-II, each interrupted, killed with kill -9 and resumed, then reported and chosen from.
Each checks: no finished evaluation trained twice, the budget kept, the fronts of the records, of the solver and of
the report the same."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import optuna
import psutil
import pytest
from click.testing import CliRunner

from blackbox.assessment.selection import select_from_study
from blackbox.cli import main
from blackbox.core.pareto import front_indices
from blackbox.training.testing import write_benchmark_tasks
from tests.processes import study_processes
from tests.records import read_records, recorded_run_ids

pytestmark = pytest.mark.slow

LOSS_AND_SIZE = """
[[objectives]]
name = "validation_loss"

[[objectives]]
name = "trainable_params"
"""
LOSS_AND_SIZE_OUTPUTS = (
    '["OBJ:objective:validation_loss", "OBJ:objective:trainable_params", "EXTRA_O:run_id", "CNT_EVAL"]'
)


def _front_run_ids(records: list[dict], names: list[str], feasible: Callable[[dict], bool] = lambda r: True) -> set:
    """The run ids of the non-dominated OK records, every objective as the solver minimised it (its metric)."""
    ok = [r for r in records if r["status"] == "OK" and feasible(r)]
    values = [tuple(r["metrics"][f"objective:{name}"] for name in names) for r in ok]
    return {ok[i]["run_id"] for i in front_indices(values)}


def _start(command: list[str], folder: Path, name: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """A study in a session of its own, its stdout and stderr in files (``name.out``, ``name.err``)."""
    with (folder / f"{name}.out").open("w") as out, (folder / f"{name}.err").open("w") as err:
        return subprocess.Popen(command, env=env, stdout=out, stderr=err, start_new_session=True)


def _kill_9(process: subprocess.Popen, study_dir: Path, wait_for) -> None:
    """kill -9 of a study: its driver's session and every process in its folder (NOMAD, the evaluation) at once."""
    os.killpg(process.pid, signal.SIGKILL)
    for leftover in study_processes(study_dir):
        with contextlib.suppress(psutil.Error):
            leftover.kill()
    process.wait()
    wait_for(lambda: not study_processes(study_dir), None, "the study's processes to end", 10)


def test_a_nomad_study_of_two_objectives_stops_resumes_and_reports_its_front(
    tmp_path: Path, repo: Path, nomad_env, write_tiny_experiment, blackbox_cmd, run_nomad, wait_for, training_started
) -> None:
    """Ctrl-C while the second evaluation trains (it finishes, DMultiMads stops: it has no hot restart), kill -9
    while the third trains, then the same command: NOMAD replays from X0, the records answer the finished points,
    and the study ends at its budget with NOMAD's front the records'."""
    budget = 3
    experiment = write_tiny_experiment(
        tmp_path / "e.toml",
        space="rank_lr",
        name="tiny-pareto",
        budget=budget,
        steps=16,
        outputs=LOSS_AND_SIZE_OUTPUTS,
        records=tmp_path / "runs",
    )
    experiment.write_text(experiment.read_text() + LOSS_AND_SIZE)
    param = tmp_path / "study.txt"
    subprocess.run(
        [
            *blackbox_cmd,
            "-q",
            "params",
            "-e",
            str(experiment),
            "--set",
            "training.log_every_steps=1",
            "--out",
            str(param),
        ],
        check=True,
    )
    study_dir = (tmp_path / "study").resolve()
    records_file = study_dir / "records.jsonl"
    command = [str(repo / "run_nomad.sh"), str(param), str(study_dir)]

    def trains_next(process: subprocess.Popen, after: int) -> None:
        def finished() -> bool:
            return records_file.exists() and sum(r["status"] == "OK" for r in read_records(records_file)) >= after

        # (A loaded 2-core machine took 4 minutes for the first of these evaluations: process start, model, data.)
        wait_for(finished, process, f"{after} finished evaluation(s)", 600)
        done = recorded_run_ids(study_dir)
        wait_for(lambda: training_started(study_dir, not_in=done), process, "the next evaluation to train", 600)

    process = _start(command, tmp_path, "first", nomad_env)
    try:
        trains_next(process, 1)
        os.killpg(process.pid, signal.SIGINT)
        process.wait(timeout=120)
    finally:
        if process.poll() is None:
            _kill_9(process, study_dir, wait_for)
    assert process.returncode == 130, (tmp_path / "first.err").read_text()[-3000:]
    first = [r for r in read_records(records_file) if r["status"] != "NOT_RUN"]
    assert [r["status"] for r in first] == ["OK", "OK"]  # the running evaluation finished

    process = _start(command, tmp_path, "second", nomad_env)
    try:
        trains_next(process, 2)  # its first two calls are answered from the records: the third point trains
    finally:
        _kill_9(process, study_dir, wait_for)

    result = run_nomad(param, study_dir, nomad_env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "1 evaluation(s) of an earlier run were killed" in result.stderr
    assert result.stderr.count("answered from its record") == 2  # NOMAD asked for both again, from X0
    records = read_records(records_file)
    ok = [r for r in records if r["status"] == "OK"]
    assert len(ok) == budget and len({tuple(r["point"]) for r in ok}) == budget  # none trained twice
    assert {r["run_id"] for r in first} <= {r["run_id"] for r in ok}
    names = ("objective:validation_loss", "objective:trainable_params")
    assert all(r["outputs"][:2] == [repr(r["metrics"][name]) for name in names] for r in ok)  # what NOMAD read
    front = _front_run_ids(records, ["validation_loss", "trainable_params"])
    assert f"front: {len(front)} non-dominated evaluation(s) in the records" in result.stdout
    assert all(f"run {run_id})" in result.stdout for run_id in front)
    assert f"NOMAD's front: {len(front)} point(s), the same as the records'" in result.stdout

    report = subprocess.run([*blackbox_cmd, "report", str(study_dir)], capture_output=True, text=True, check=False)
    assert report.returncode == 0, report.stderr
    summary = json.loads((study_dir / "report" / "summary.json").read_text())
    assert [o["metric"] for o in summary["objectives"]] == ["validation_loss", "trainable_params"]
    [run] = summary["runs"]
    assert {p["run_id"] for p in run["front"]} == front
    assert len(run["hypervolume"]) == budget and 0 < run["hypervolume"][-1] <= 1
    assert run["hypervolume"] == sorted(run["hypervolume"])  # a front only grows
    assert (study_dir / "report" / "pareto_front.png").stat().st_size > 0
    assert 'id="front"' in (study_dir / "report" / "report.html").read_text()

    # Choosing from the front: every non-dominated point, the knee, the best of a named objective.
    chosen = {c.label: c.run_id for c in select_from_study(study_dir, front=True)}
    assert set(chosen.values()) == front and set(chosen) == {f"front{n}" for n in range(1, len(front) + 1)}
    [knee] = select_from_study(study_dir, knee=True)
    assert knee.label == "knee" and knee.run_id in front
    [smallest] = select_from_study(study_dir, best=True, objective="trainable_params")
    assert smallest.label == "best:trainable_params"
    assert smallest.evaluation.values[1] == min(r["metrics"]["trainable_params"] for r in ok)
    refused = CliRunner().invoke(main, ["downstream", str(study_dir), "--best"])
    assert refused.exit_code == 2 and "--objective NAME, or choose --front or --knee" in refused.stderr

    # The same folder with the objectives in another order: refused in one line, nothing run.
    swapped = tmp_path / "swapped.toml"
    swapped.write_text(
        experiment.read_text()
        .replace('"OBJ:objective:validation_loss", "OBJ:objective:trainable_params"', "OBJ_PAIR")
        .replace("OBJ_PAIR", '"OBJ:objective:trainable_params", "OBJ:objective:validation_loss"')
        .replace('name = "validation_loss"\n\n[[objectives]]\nname = "trainable_params"', "SWAP")
        .replace("SWAP", 'name = "trainable_params"\n\n[[objectives]]\nname = "validation_loss"')
    )
    subprocess.run([*blackbox_cmd, "-q", "params", "-e", str(swapped), "--out", str(param)], check=True)
    again = run_nomad(param, study_dir, nomad_env)
    assert again.returncode == 2, again.stderr[-3000:]
    assert "holds a study of 2 objectives (validation_loss, trainable_params)" in again.stderr
    assert "one of 2 objectives (trainable_params, validation_loss)" in again.stderr
    assert read_records(records_file) == records


@pytest.fixture(scope="module")
def tasks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_benchmark_tasks(tmp_path_factory.mktemp("tasks"))


LOSS_AND_SCORE = """
[[objectives]]
name = "validation_loss"

[[objectives]]
name = "benchmark"
direction = "maximize"

[objectives.benchmark]
task = "tiny_mc"
metric = "acc"
include_path = "{tasks}"

[[constraints]]
name = "no_forgetting"
type = "PB"
at_least = 0.0
relative_to_base = true

[constraints.benchmark]
task = "tiny_gen"
metric = "exact_match"
include_path = "{tasks}"
"""
LOSS_AND_SCORE_OUTPUTS = (
    '["OBJ:objective:validation_loss", "OBJ:objective:benchmark:tiny_mc:acc", "PB:no_forgetting", "EXTRA_O:run_id", '
    '"CNT_EVAL"]'
)


def test_an_optuna_study_of_two_objectives_and_a_constraint_resumes_after_kill_9(
    tmp_path: Path, tasks: Path, write_tiny_experiment, blackbox_cmd, wait_for, training_started
) -> None:
    """NSGA-II on the validation loss and a benchmark score (maximised) under a forgetting constraint, in process;
    kill -9 while the second trial trains; the same command runs the killed point first and ends with 3 counted
    trials, whose values are the records' and whose front is the summary's and the report's."""
    experiment = write_tiny_experiment(
        tmp_path / "e.toml",
        space="rank_lr",
        name="tiny-pareto",
        budget=3,
        steps=16,
        outputs=LOSS_AND_SCORE_OUTPUTS,
        records=tmp_path / "runs",
    )
    experiment.write_text(experiment.read_text() + LOSS_AND_SCORE.format(tasks=tasks))
    study_dir = (tmp_path / "study").resolve()
    command = [*blackbox_cmd, "optuna", "-e", str(experiment), "--n-trials", "3", "--sampler", "nsga2"]
    command += ["--in-process", "--dir", str(study_dir), "--set", "training.log_every_steps=1"]
    process = _start(command, tmp_path, "first")
    try:
        records_file = study_dir / "records.jsonl"
        wait_for(lambda: records_file.exists() and len(read_records(records_file)) >= 1, process, "a trial")
        done = recorded_run_ids(study_dir)
        wait_for(lambda: training_started(study_dir, not_in=done), process, "the second trial to train")
    finally:
        _kill_9(process, study_dir, wait_for)
    first = read_records(records_file)

    result = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    # (the second trial, trial 1, unless it finished in the moment before the kill)
    assert f"trial {len(first)} was left running by a killed process: it will run again" in result.stderr
    summary = json.loads(result.stdout)
    assert summary["counted_trials"] == 3 and summary["best"] is None
    assert summary["objectives"] == ["validation_loss", "benchmark:tiny_mc:acc"]
    records = {r["run_id"]: r for r in read_records(records_file)}
    ok = [r for r in records.values() if r["status"] == "OK"]
    assert len(ok) == 3 and len({tuple(r["point"]) for r in ok}) == 3
    assert first[0]["run_id"] in records  # kept
    study = optuna.load_study(study_name=summary["study_name"], storage=summary["storage"])
    assert len(study.directions) == 2
    for trial in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)):
        metrics = records[trial.user_attrs["run_id"]]["metrics"]
        assert trial.values == [metrics["validation_loss"], -metrics["benchmark:tiny_mc:acc"]]
        assert trial.user_attrs["constraints"] == [metrics["constraint:no_forgetting"]]
    front = _front_run_ids(
        list(records.values()),
        ["validation_loss", "benchmark:tiny_mc:acc"],
        feasible=lambda r: r["metrics"]["constraint:no_forgetting"] <= 0,
    )
    assert {t["run_id"] for t in summary["front"]} == front

    report = subprocess.run([*blackbox_cmd, "report", str(study_dir)], capture_output=True, text=True, check=False)
    assert report.returncode == 0, report.stderr
    [run] = json.loads((study_dir / "report" / "summary.json").read_text())["runs"]
    assert {p["run_id"] for p in run["front"]} == front
    for point in run["front"]:  # the score as measured, not as the solver minimised it
        assert point["values"]["benchmark:tiny_mc:acc"] == records[point["run_id"]]["metrics"]["benchmark:tiny_mc:acc"]
    assert "benchmark:tiny_mc:acc (maximised)" in (study_dir / "report" / "report.html").read_text()

    # Resumed with one objective instead of two: refused in one line (exit 2), nothing run.
    one = tmp_path / "one.toml"
    text = experiment.read_text().replace(LOSS_AND_SCORE.format(tasks=tasks), "")
    one.write_text(text.replace(LOSS_AND_SCORE_OUTPUTS, '["OBJ:validation_loss", "EXTRA_O:run_id", "CNT_EVAL"]'))
    refused = subprocess.run(
        [*blackbox_cmd, "optuna", "-e", str(one), "--n-trials", "4", "--sampler", "nsga2", "--dir", str(study_dir)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert refused.returncode == 2, refused.stderr
    assert "optimises 2 objectives (validation_loss, benchmark:tiny_mc:acc), the experiment one objective" in (
        refused.stderr
    )
    assert len(read_records(records_file)) == len(records)
