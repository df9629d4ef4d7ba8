"""What MLflow tracking costs an evaluation: the tracker's calls alone (no training), against a real
``mlflow server`` on 127.0.0.1 (SQLite backend) and against the study folder's own SQLite store, and what a
server that is down costs (the one failed attempt of a call).

Per store: the one-time cost of a call (its first start: connecting, the MLflow experiment and the parent
run; importing mlflow is measured apart), then per evaluation the start (a run with its parameters) and the
finish (the record's metrics, a loss curve of ``--steps`` points, tags, eval.log and record.json, the parent's
objective and best point).

    python benchmarks/tracking_overhead.py [--evaluations 5] [--steps 100] [--json out.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from blackbox.core.experiment import METRIC_NAMES, load_experiment
from blackbox.core.failures import Status
from blackbox.core.point import PointSource
from blackbox.core.record import RecordStore, build_record, new_run_id
from blackbox.tracking import Tracker


def start_server(folder: Path) -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
               "--workers", "1", "--backend-store-uri", f"sqlite:///{folder / 'server.db'}",
               "--artifacts-destination", str(folder / "server-artifacts")]  # fmt: skip
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                               start_new_session=True)  # fmt: skip
    uri = f"http://127.0.0.1:{port}"
    while True:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2):
                return process, uri
        except OSError:
            if process.poll() is not None:
                raise SystemExit("mlflow server did not start") from None
            time.sleep(0.2)


def measure(uri: str, study_dir: Path, evaluations: int, steps: int) -> dict[str, float | list[float]]:
    experiment = load_experiment("demo", [f"records.dir={study_dir}"])
    tracker = Tracker.for_experiment(experiment, uri=uri)
    assert tracker is not None
    starts, finishes = [], []
    for _ in range(evaluations):
        run_id = new_run_id()
        run_dir = study_dir / "evals" / run_id
        run_dir.mkdir(parents=True)
        (run_dir / "eval.log").write_text("x" * 20_000)
        started = time.perf_counter()
        mlflow_run_id = tracker.start_evaluation(run_id, {"lora_r": 8.0, "learning_rate": 1e-4}, point_line="2 -4 1")
        starts.append(time.perf_counter() - started)
        metrics = {name: 1.0 for name in METRIC_NAMES if name != "run_id"}
        metrics |= {"fidelity_train": 1.0, "fidelity_validation": 1.0}
        record = build_record(
            experiment, Status.OK, PointSource("2 -4 1", (2.0, -4.0, 1.0)), run_id=run_id, metrics=metrics,
            hparams={"lora_r": 8.0}, run_dir=str(run_dir), mlflow_run_id=mlflow_run_id,
        )  # fmt: skip
        RecordStore(study_dir).append(record)
        (run_dir / "record.json").write_text(record.to_json())
        started = time.perf_counter()
        tracker.finish_evaluation(record, step_losses=[1.0 / (i + 1) for i in range(steps)])
        finishes.append(time.perf_counter() - started)
        if tracker.disabled:
            break
    # The first start also connects and finds or makes the MLflow experiment and the parent run.
    return {"setup_s": starts.pop(0), "start_s": starts, "finish_s": finishes[1:], "disabled": float(tracker.disabled)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--evaluations", type=int, default=5)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    started = time.perf_counter()
    import mlflow  # the one-time import, measured apart

    import_s = time.perf_counter() - started
    results: dict[str, object] = {"machine": platform.node(), "cpus": os.cpu_count(), "mlflow": mlflow.__version__,
                                  "import_mlflow_s": import_s}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        server, uri = start_server(folder)
        try:
            results["server"] = measure(uri, folder / "server-study", args.evaluations, args.steps)
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait()
        local = f"sqlite:///{folder / 'local-study' / 'mlflow.db'}"
        (folder / "local-study").mkdir()
        results["local_sqlite"] = measure(local, folder / "local-study", args.evaluations, args.steps)
        started = time.perf_counter()
        results["server_down"] = measure(uri, folder / "down-study", 1, args.steps)  # the server is gone now
        results["server_down"]["whole_call_s"] = time.perf_counter() - started
    for name in ("server", "local_sqlite", "server_down"):
        part = results[name]
        assert isinstance(part, dict)
        per_eval = [a + b for a, b in zip(part["start_s"], part["finish_s"], strict=False)] or [0.0]
        print(f"{name:13s} setup {part['setup_s']:.2f} s, per evaluation {statistics.median(per_eval):.3f} s "
              f"(start {statistics.median(part['start_s'] or [0]):.3f} s, finish "
              f"{statistics.median(part['finish_s'] or [0]):.3f} s)")  # fmt: skip
    print(f"import mlflow {import_s:.2f} s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=lambda o: dataclasses.asdict(o)))


if __name__ == "__main__":
    main()
