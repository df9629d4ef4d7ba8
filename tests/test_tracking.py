"""MLflow tracking (``blackbox.tracking``), read back with ``MlflowClient``: against the study folder's own store
(``[tracking] mlflow = true``, MLflow's default SQLite store) and against a real ``mlflow server`` on 127.0.0.1
with a SQLite backend, started here. A NOMAD study (both NOMADs) and an Optuna study show up as parent runs with
one nested run per evaluation; a server that is down, or killed in the middle of a call, fails no evaluation."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.points import point_file
from tests.records import read_records

pytestmark = pytest.mark.slow

PARENT = "mlflow.parentRunId"
WARNING = "MLflow tracking at"


class MlflowServer:
    """``mlflow server`` on 127.0.0.1 with a SQLite backend and artifacts in ``folder``, in a session of its
    own (its workers are stopped with it)."""

    def __init__(self, folder: Path, wait_for: Callable[..., None]) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self.uri = f"http://127.0.0.1:{port}"
        folder.mkdir(parents=True, exist_ok=True)
        self.log = (folder / "server.log").open("w")
        command = [
            str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
            "--workers", "1", "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
            "--artifacts-destination", str(folder / "artifacts"),
        ]  # fmt: skip
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, env=env,
                                        start_new_session=True)  # fmt: skip
        wait_for(self.healthy, self.process, f"mlflow server to answer /health (its log: {folder / 'server.log'})")

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def kill(self) -> None:
        """SIGKILL: the server and its workers die at once, mid-request if need be."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=60)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=60)
        self.log.close()


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory, wait_for: Callable[..., None]) -> Iterator[MlflowServer]:
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"), wait_for)
    try:
        yield server
    finally:
        server.stop()


def _client(uri: str):  # (mlflow is imported by the tests that track)
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _runs(uri: str, experiment: str) -> tuple[list, list]:
    """The parent runs and the evaluations' runs of an MLflow experiment."""
    client = _client(uri)
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no MLflow experiment {experiment!r} at {uri}"
    runs = client.search_runs([found.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("lora_blackbox.parent") == "true"]
    children = [r for r in runs if PARENT in r.data.tags]
    assert len(parents) + len(children) == len(runs)
    return parents, children


def _check_evaluation_run(uri: str, run, record: dict, *, steps: int) -> None:
    """A child run holds its record: parameters, the loss curve, the record's numbers, tags and eval.log."""
    client = _client(uri)
    assert run.info.run_id == record["mlflow_run_id"]
    assert run.info.run_name == record["run_id"]
    assert record["status"] == "OK" and run.info.status == "FINISHED"  # failures: test_evaluations_that_did_not_finish
    params = run.data.params
    for name, value in record["hparams"].items():
        assert float(params[f"hparams.{name}"]) == value
    assert params["training.max_steps"] == str(steps)
    assert run.data.tags["status"] == record["status"]
    assert run.data.tags["lora_blackbox.run_id"] == record["run_id"]
    assert run.data.tags["point_line"] == " ".join(record["point_line"].split())
    assert run.data.tags["device"] == record["device"]
    assert run.data.metrics["validation_loss"] == record["metrics"]["validation_loss"]
    history = client.get_metric_history(run.info.run_id, "train_step_loss")
    assert [m.step for m in sorted(history, key=lambda m: m.step)] == list(range(1, steps + 1))
    mean = sum(m.value for m in history) / steps
    assert mean == pytest.approx(record["metrics"]["train_loss"], rel=1e-9)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"eval.log", "record.json"} <= artifacts
    log = Path(client.download_artifacts(run.info.run_id, "eval.log")).read_text()
    assert f"evaluation {record['run_id']}" in log and "validation loss" in log


def test_the_study_folders_own_store(tmp_path: Path, make_experiment, run_blackbox) -> None:
    """``[tracking] mlflow = true`` without a tracking URI: a SQLite store in the study folder. A call started
    without a driver (as by a hand-started NOMAD) makes the parent run and remembers it in the study folder;
    stdout carries the result lines only; the adapter is an artifact."""
    experiment = make_experiment(budget=2, steps=2)
    with experiment.open("a") as f:
        f.write("\n[tracking]\nmlflow = true\n")
    env = {"MLFLOW_TRACKING_URI": "", "LORA_BLACKBOX_MLFLOW_PARENT_RUN_ID": ""}
    points = point_file(tmp_path, "2 -3 0.1", "3 -2.5 0", name="points.txt")
    curve = ["--set", "validation.checkpoints=[0.5]"]  # a learning curve of one checkpoint, at step 1 of 2
    args = ["eval", "-e", str(experiment), "--set", "records.save_adapter=true", *curve, str(points)]
    result = run_blackbox(args, env=env)
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    lines = result.stdout.decode().splitlines()  # the result lines, nothing of mlflow's
    assert len(lines) == 2 and all(len(line.split()) == 3 for line in lines)
    study_dir = tmp_path / "runs"
    uri = f"sqlite:///{study_dir / 'mlflow.db'}"
    records = read_records(study_dir / "records.jsonl")
    parents, children = _runs(uri, "tiny")
    [parent] = parents
    assert json.loads((study_dir / "mlflow_parent.json").read_text())["run_id"] == parent.info.run_id
    assert parent.data.params["training.max_steps"] == "2"
    assert sorted(r.info.run_id for r in children) == sorted(r["mlflow_run_id"] for r in records)
    by_id = {r.info.run_id: r for r in children}
    for record in records:
        run = by_id[record["mlflow_run_id"]]
        assert run.data.tags[PARENT] == parent.info.run_id
        _check_evaluation_run(uri, run, record, steps=2)
        adapter = {a.path for a in _client(uri).list_artifacts(run.info.run_id, "adapter")}
        assert "adapter/adapter_model.safetensors" in adapter
        # The learning curve as a stepped metric.
        history = _client(uri).get_metric_history(run.info.run_id, "checkpoint_loss")
        assert [(m.step, m.value) for m in history] == [(p["step"], p["loss"]) for p in record["curve"]] != []
    # The parent follows the study: every objective, the best so far, and the best point.
    client = _client(uri)
    objectives = client.get_metric_history(parent.info.run_id, "objective")
    assert sorted(m.step for m in objectives) == [1, 2]
    best = min(records, key=lambda r: r["metrics"]["validation_loss"])
    parent = client.get_run(parent.info.run_id)
    assert parent.data.metrics["best_objective"] == best["metrics"]["validation_loss"]
    assert parent.data.tags["best.run_id"] == best["run_id"]
    assert (study_dir / "mlartifacts").is_dir()  # artifacts stay in the study folder too


def _study_runs(uri: str, experiment: str, study_dir: Path) -> tuple:
    """The parent run of a study folder and its evaluations' runs."""
    parents, children = _runs(uri, experiment)
    [parent] = [p for p in parents if p.data.tags["study_dir"] == str(study_dir.resolve())]
    return parent, [c for c in children if c.data.tags[PARENT] == parent.info.run_id]


# The real NOMAD binary only: BB_EXE, and so what is tracked, is the same with PyNomadBBO (tests/studies run both).
@pytest.mark.parametrize("nomad_env", ["binary"], indirect=True)
def test_a_nomad_study_on_a_tracking_server(
    tmp_path: Path, mlflow_server: MlflowServer, nomad_env, make_study, run_nomad
) -> None:
    """NOMAD calls ``lora-blackbox eval``; the driver made the parent run and handed its id down; every
    evaluation is a run nested in it. The same command again (a resume) goes on in the same parent run."""
    param = make_study(budget=2, steps=2)
    study_dir = tmp_path / "runs" / "study"
    env = {**nomad_env, "MLFLOW_TRACKING_URI": mlflow_server.uri}
    result = run_nomad(param, study_dir, env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert WARNING not in result.stderr
    again = run_nomad(param, study_dir, env)  # complete: nothing is evaluated, the parent is found again
    assert again.returncode == 0, again.stderr[-3000:]
    records = read_records(study_dir / "records.jsonl")
    assert len(records) == 2
    parent, children = _study_runs(mlflow_server.uri, "tiny-study", study_dir)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["solver"] == "nomad" and parent.data.params["nomad.budget"] == "2"
    assert "param.txt" in {a.path for a in _client(mlflow_server.uri).list_artifacts(parent.info.run_id)}
    by_id = {c.info.run_id: c for c in children}
    assert sorted(by_id) == sorted(r["mlflow_run_id"] for r in records)
    for record in records:
        assert by_id[record["mlflow_run_id"]].data.tags["solver"] == "nomad"
        _check_evaluation_run(mlflow_server.uri, by_id[record["mlflow_run_id"]], record, steps=2)
    best = min(records, key=lambda r: r["metrics"]["validation_loss"])
    assert parent.data.metrics["best_objective"] == best["metrics"]["validation_loss"]
    assert parent.data.tags["best.point"] == " ".join(repr(v) for v in best["point"])


def test_an_optuna_study_on_a_tracking_server(
    tmp_path: Path, mlflow_server: MlflowServer, make_experiment, blackbox_cmd
) -> None:
    """``lora-blackbox optuna --mlflow URI``: the same parent and nested runs; stdout stays the JSON summary."""
    experiment = make_experiment(budget=2, steps=2, name="tiny-optuna")
    study_dir = tmp_path / "study"
    command = [*blackbox_cmd, "optuna", "-e", str(experiment), "--n-trials", "2", "--in-process"]
    command += ["--dir", str(study_dir), "--mlflow", mlflow_server.uri]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "LORA_BLACKBOX_MLFLOW"))}
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)  # nothing but the summary on stdout
    records = read_records(study_dir / "records.jsonl")
    parent, children = _study_runs(mlflow_server.uri, "tiny-optuna", study_dir)
    assert parent.info.status == "FINISHED" and parent.data.tags["solver"] == "optuna-tpe"
    assert parent.data.params["optuna.sampler"] == "tpe"
    by_id = {c.info.run_id: c for c in children}
    assert sorted(by_id) == sorted(r["mlflow_run_id"] for r in records) and len(records) == 2
    for record in records:
        _check_evaluation_run(mlflow_server.uri, by_id[record["mlflow_run_id"]], record, steps=2)
    assert parent.data.tags["best.run_id"] == summary["best"]["run_id"]


def test_evaluations_that_did_not_finish_on_a_tracking_server(
    tmp_path: Path, mlflow_server: MlflowServer, make_experiment, blackbox_cmd, wait_for, training_started
) -> None:
    """The failure policy's MLflow statuses, as the server keeps them: an evaluation past its time limit (a counted
    failure) is a FAILED run, an interrupted one (Ctrl-C: not counted, it runs again) a KILLED run; each with its
    status and error tags and its eval.log."""
    # Both points would train for long: the first stops at its time limit, the second at its Ctrl-C (sent within
    # a poll of its first step, well inside the time limit).
    experiment = make_experiment(name="tiny-failures", steps=100_000)
    points = point_file(tmp_path, "2 -3 0.1", "3 -2.5 0", name="points.txt")
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server.uri, "LORA_BLACKBOX_MLFLOW_PARENT_RUN_ID": ""}
    records_file = tmp_path / "runs" / "records.jsonl"
    command = [*blackbox_cmd, "eval", "-e", str(experiment), "--set", "training.timeout_s=10"]
    command += ["--set", "training.log_every_steps=1", str(points)]
    with (tmp_path / "stderr.txt").open("w") as stderr:
        call = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=stderr, text=True)
        try:
            wait_for(records_file.exists, call, "the first point's record")
            [first] = read_records(records_file)
            wait_for(lambda: training_started(tmp_path / "runs", {first["run_id"]}), call, "the second training")
            call.send_signal(signal.SIGINT)
            out, _ = call.communicate(timeout=120)
        finally:
            if call.poll() is None:
                call.kill()
                call.wait(timeout=30)
    assert call.returncode == 130 and out == "", (tmp_path / "stderr.txt").read_text()[-3000:]
    records = read_records(records_file)
    assert [r["status"] for r in records] == ["TIMEOUT", "INTERRUPTED"]
    _, children = _runs(mlflow_server.uri, "tiny-failures")
    by_id = {c.info.run_id: c for c in children}
    client = _client(mlflow_server.uri)
    for record, expected in zip(records, ["FAILED", "KILLED"], strict=True):
        run = by_id[record["mlflow_run_id"]]
        assert run.info.status == expected, record["status"]
        assert run.data.tags["status"] == record["status"] and run.data.tags["error"] == record["error"][:5000]
        assert {"eval.log", "record.json"} <= {a.path for a in client.list_artifacts(run.info.run_id)}


def test_a_server_killed_in_the_middle_of_a_call(
    tmp_path: Path, tiny_experiment: Path, blackbox_cmd, wait_for, training_started
) -> None:
    """The tracking server dies while the first of two points trains: both points are evaluated and recorded
    as usual, the call prints its two lines and exits 0, and stderr has one warning about tracking."""
    server = MlflowServer(tmp_path / "server", wait_for)
    try:
        points = point_file(tmp_path, "2 -3 0.1", "3 -2.5 0", name="points.txt")
        env = {**os.environ, "MLFLOW_TRACKING_URI": server.uri, "LORA_BLACKBOX_MLFLOW_PARENT_RUN_ID": ""}
        stderr_file = tmp_path / "stderr.txt"
        with stderr_file.open("w") as stderr:
            call = subprocess.Popen(
                [*blackbox_cmd, "eval", "-e", str(tiny_experiment), "--set", "training.log_every_steps=1",
                 str(points)], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=stderr, text=True,
            )  # fmt: skip
            wait_for(lambda: training_started(tmp_path / "runs"), call, "the first point's training")
            server.kill()
            out, _ = call.communicate(timeout=600)
    finally:
        server.stop()
    assert call.returncode == 0
    lines = out.splitlines()
    assert len(lines) == 2 and all(len(line.split()) == 3 for line in lines)
    records = read_records(tmp_path / "runs" / "records.jsonl")
    assert [r["status"] for r in records] == ["OK", "OK"]
    assert [r["outputs"] for r in records] == [line.split() for line in lines]
    assert records[0]["mlflow_run_id"] and records[1]["mlflow_run_id"] is None  # tracked until the server died
    stderr_text = stderr_file.read_text()
    assert stderr_text.count(WARNING) == 1, stderr_text[-3000:]
