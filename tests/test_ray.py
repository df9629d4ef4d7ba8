"""A block through a real Ray cluster on 127.0.0.1 with CPU workers, including a worker killed mid-task.

Each scenario runs in a network namespace of its own that has nothing but loopback (``unshare -n``), so
the cluster and the blackbox provably talk to no other address.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from blackbox.record import read_records
from tests.conftest import BLACKBOX, REPO

pytestmark = pytest.mark.slow

SCENARIO = """
import json, os, signal, subprocess, sys, time
from pathlib import Path
import psutil

tmp, experiment, points, kill = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4] == "kill"
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "TMPDIR": str(tmp)}
ray = str(Path(sys.executable).parent / "ray")
subprocess.run([ray, "start", "--head", "--node-ip-address=127.0.0.1", "--port=6399", "--num-cpus=2",
                "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={tmp}/ray"],
               check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
try:
    command = [*json.loads(sys.argv[5]), "eval", "-e", experiment, "--backend", "ray",
               "--ray-address", "127.0.0.1:6399", points]
    call = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    killed = None
    while kill and killed is None and call.poll() is None:
        for log in (tmp / "lora-blackbox-ray").glob("*/evals/*/eval.log"):
            if "step " in log.read_text():
                point_file = str(log.parent.parent.parent / "point.txt")
                for p in psutil.process_iter():
                    try:
                        if point_file in p.cmdline():
                            killed = p.parent().pid  # the Ray worker running the task
                            os.kill(killed, signal.SIGKILL)
                    except psutil.Error:
                        pass
        time.sleep(0.2)
    out, err = call.communicate(timeout=600)
    (tmp / "result.json").write_text(json.dumps({"rc": call.returncode, "stdout": out.decode(),
                                                 "stderr": err.decode()[-5000:], "killed": killed}))
finally:
    subprocess.run([ray, "stop", "--force"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
"""


def _scenario(tiny_experiment: Path, points: str, *, kill: bool) -> dict:
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare (util-linux) for a loopback-only network namespace")
    # Ray's unix sockets need a short path.
    tmp = Path(tempfile.mkdtemp(prefix="lbxray", dir="/tmp"))
    try:
        (tmp / "points.txt").write_text(points)
        probe = subprocess.run(["unshare", "-n", "true"], capture_output=True, check=False)
        if probe.returncode != 0:
            pytest.skip(f"cannot make a network namespace here: {probe.stderr.decode().strip()}")
        subprocess.run(
            [
                "unshare",
                "-n",
                sys.executable,
                "-c",
                textwrap.dedent(SCENARIO),
                str(tmp),
                str(tiny_experiment),
                str(tmp / "points.txt"),
                "kill" if kill else "keep",
                json.dumps(BLACKBOX),
            ],
            check=True,
            timeout=900,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        return json.loads((tmp / "result.json").read_text())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_a_block_through_a_ray_cluster(tiny_experiment: Path) -> None:
    result = _scenario(tiny_experiment, "2 -2 0\n\n3 -2.5 0\n9 -2 0\n", kill=False)
    assert result["rc"] == 0, result["stderr"]
    first, second, invalid = result["stdout"].splitlines()
    assert invalid == "nan nan nan"
    records = read_records(tiny_experiment.parent / "runs" / "records.jsonl")
    by_line = {r["point_line"]: r for r in records}
    assert by_line["9 -2 0"]["status"] == "INVALID_POINT"
    for line, point in ((first, "2 -2 0"), (second, "3 -2.5 0")):
        record = by_line[point]
        assert record["status"] == "OK" and record["ray_host"]
        assert line.split() == record["outputs"]  # the head holds the worker's record


def test_a_killed_worker_is_retried_and_the_point_still_succeeds(tiny_experiment: Path) -> None:
    result = _scenario(tiny_experiment, "2 -2 0\n", kill=True)
    assert result["killed"], "no worker was killed"
    assert result["rc"] == 0, result["stderr"]
    [line] = result["stdout"].splitlines()
    [record] = read_records(tiny_experiment.parent / "runs" / "records.jsonl")
    assert record["status"] == "OK" and line.split() == record["outputs"]
