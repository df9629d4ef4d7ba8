"""Real NOMAD optimisations (the library embedded in PyNomadBBO) driving ``lora-blackbox eval`` on the tiny
model through ``run_nomad.sh``: records agree with NOMAD's files, Ctrl-C stops cleanly and resumes."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from blackbox.nomad import read_cache
from blackbox.record import read_records
from tests.conftest import BLACKBOX, REPO

pytestmark = pytest.mark.slow

STUDY_EXPERIMENT = """\
[study]
name = "tiny-study"
budget = {budget}
outputs = ["OBJ:validation_loss", "EXTRA_O:run_id"]

[[space]]
name = "lora_r"
type = "I"
lower = 1
upper = 4
x0 = 2
decode = "power_of_two"

[[space]]
name = "learning_rate"
type = "R"
lower = -4
upper = -1
x0 = -3.5
decode = "log10"

[hyperparameters]
lora_alpha = 16
lora_dropout = 0.0

[model]
name_or_path = "{model}"

[data]
train = "{train}"
validation = "{validation}"
max_length = 128

[training]
max_steps = {steps}
effective_batch_size = 16
micro_batch_size = 8
seed = 0
"""


def _study(
    tmp_path: Path,
    tiny_model: Path,
    tiny_data,
    *,
    budget: int,
    steps: int = 6,
    block_size: int = 1,
    container: str | None = None,
) -> Path:
    experiment = tmp_path / "study.toml"
    experiment.write_text(
        STUDY_EXPERIMENT.format(
            budget=budget, model=tiny_model, train=tiny_data[0], validation=tiny_data[1], steps=steps
        )
    )
    param = tmp_path / "study.txt"
    args = ["params", "-e", str(experiment), "--out", str(param), "--block-size", str(block_size)]
    args += ["--container", container] if container else []
    subprocess.run([*BLACKBOX, "-q", *args], check=True)
    return param


def _env() -> dict[str, str]:
    # No nomad binary: run_nomad.sh must fall back to the library embedded in PyNomadBBO.
    path = os.pathsep.join([str(Path(sys.executable).parent), "/usr/bin", "/bin"])
    env = {**os.environ, "PATH": path}
    env.pop("NOMAD_EXE", None)
    return env


def _run_nomad(param: Path, study_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(REPO / "run_nomad.sh"), str(param), str(study_dir)],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def _check_records_agree_with_nomad(study_dir: Path) -> tuple[list[dict], list]:
    records = read_records(study_dir / "records.jsonl")
    cache = read_cache(study_dir / "cache.txt")
    ok = [r for r in records if r["status"] == "OK"]
    ok_cache = [e for e in cache if e.ok]
    assert len(ok) == len(ok_cache) > 0
    by_run_id = {e.outputs[1]: e for e in ok_cache}  # EXTRA_O run_id ties each cache entry to its record
    for record in ok:
        entry = by_run_id[record["run_id"]]
        assert entry.point == tuple(record["point"])
        assert float(entry.outputs[0]) == record["metrics"]["validation_loss"]
    return records, cache


def test_a_nomad_study_end_to_end(tmp_path: Path, tiny_model: Path, tiny_data) -> None:
    param = _study(tmp_path, tiny_model, tiny_data, budget=6)
    study_dir = tmp_path / "runs" / "study"
    result = _run_nomad(param, study_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "embedded in PyNomadBBO" in result.stderr
    records, cache = _check_records_agree_with_nomad(study_dir)
    assert len(cache) == 6 and len(records) == 6
    stats = [line.split() for line in (study_dir / "stats.txt").read_text().splitlines() if line.strip()]
    assert len(stats) == 6  # one line per evaluation (DISPLAY_ALL_EVAL)
    best = min((r for r in records if r["status"] == "OK"), key=lambda r: r["metrics"]["validation_loss"])
    assert f"best objective: {best['outputs'][0]}" in result.stdout
    assert "hyperparameters: " + ", ".join(f"{k}={v}" for k, v in best["hparams"].items()) in result.stdout
    assert str(study_dir / "records.jsonl") in result.stdout
    # The same command again: the study is complete, nothing is evaluated again.
    again = _run_nomad(param, study_dir)
    assert again.returncode == 0
    assert len(read_records(study_dir / "records.jsonl")) == 6


def _wait_for_records(path: Path, count: int, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not (path.exists() and len(read_records(path)) >= count):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.2)


@pytest.mark.parametrize("signals", [1, 2], ids=["finish-running", "cut-running"])
def test_ctrl_c_then_resume(tmp_path: Path, tiny_model: Path, tiny_data, signals: int) -> None:
    budget = 7
    param = _study(tmp_path, tiny_model, tiny_data, budget=budget, steps=40)
    study_dir = tmp_path / "runs" / "study"
    process = subprocess.Popen(
        [str(REPO / "run_nomad.sh"), str(param), str(study_dir)],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    records_file = study_dir / "records.jsonl"
    _wait_for_records(records_file, 2, process)
    evals = study_dir / "evals"
    done = {p.name for p in evals.iterdir()}
    # Wait until the next evaluation is training, then press Ctrl-C (SIGINT to the terminal's process group).
    deadline = time.monotonic() + 120
    while not any(
        p.name not in done and "step " in (p / "eval.log").read_text()
        for p in evals.iterdir()
        if (p / "eval.log").exists()
    ):
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.1)
    for _ in range(signals):
        os.killpg(process.pid, signal.SIGINT)
        time.sleep(0.3)
    _stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 130, stderr[-3000:]
    first = read_records(records_file)
    statuses = [r["status"] for r in first]
    if signals == 1:
        assert "INTERRUPTED" not in statuses  # the running evaluation finished
    else:
        assert statuses[-1] == "INTERRUPTED"
    assert len(first) < budget
    first_cache = read_cache(study_dir / "cache.txt")  # written at the graceful stop
    assert {e.outputs[1] for e in first_cache if e.ok} == {r["run_id"] for r in first if r["status"] == "OK"}
    assert re.search(r"run the same command again to resume", stderr)

    result = _run_nomad(param, study_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    records, _cache = _check_records_agree_with_nomad(study_dir)
    ok_points = [tuple(r["point"]) for r in records if r["status"] == "OK"]
    assert len(ok_points) == len(set(ok_points))  # no finished evaluation was run again
    assert {r["run_id"] for r in first if r["status"] == "OK"} <= {r["run_id"] for r in records}  # none lost
    evaluated = [r for r in records if r["status"] != "INTERRUPTED"]
    assert len(evaluated) + (signals - 1) <= budget  # the budget counts across the restart
    assert len(records) > len(first)


def test_block_mode_end_to_end(tmp_path: Path, tiny_model: Path, tiny_data) -> None:
    param = _study(tmp_path, tiny_model, tiny_data, budget=8, block_size=4)
    text = param.read_text()
    assert "BB_MAX_BLOCK_SIZE 4" in text and "MEGA_SEARCH_POLL yes" in text
    study_dir = tmp_path / "runs" / "study"
    result = _run_nomad(param, study_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    records, _ = _check_records_agree_with_nomad(study_dir)
    by_call: dict[tuple, list[int]] = {}
    for r in records:
        by_call.setdefault((r["pid"], r["point_file"]), []).append(r["block_index"])
    assert max(len(v) for v in by_call.values()) > 1  # several points in one blackbox call
    assert all(v == list(range(len(v))) for v in by_call.values())  # in order, one line each
