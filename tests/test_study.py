"""Real NOMAD optimisations driving ``lora-blackbox eval`` on the tiny model through ``run_nomad.sh``, with both
NOMADs (the 4.5.1 binary and PyNomadBBO, the NOMAD library): records agree with NOMAD's files, Ctrl-C
stops cleanly and resumes, a failed starting point ends the study with its error."""

from __future__ import annotations

import os
import re
import signal
import subprocess
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
outputs = ["OBJ:validation_loss", "EXTRA_O:run_id", "CNT_EVAL"]

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
# fp32 on every CPU: bf16 autocast makes a model this small slower, even where bf16 is native
autocast = "none"
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
    extra: tuple[str, ...] | list[str] = (),
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
    args += [word for item in extra for word in ("--set", item)]
    subprocess.run([*BLACKBOX, "-q", *args], check=True)
    return param


def _run_nomad(param: Path, study_dir: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(REPO / "run_nomad.sh"), str(param), str(study_dir)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def _which_nomad(stderr: str, env: dict[str, str]) -> None:
    """The study ran with the NOMAD the test asked for."""
    expected = f"NOMAD: {env['NOMAD_EXE']}" if "NOMAD_EXE" in env else "NOMAD: PyNomadBBO 4.6.0 (the NOMAD library)"
    assert expected in stderr


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


def test_a_nomad_study_end_to_end(tmp_path: Path, tiny_model: Path, tiny_data, nomad_env) -> None:
    param = _study(tmp_path, tiny_model, tiny_data, budget=4)
    study_dir = tmp_path / "runs" / "study"
    result = _run_nomad(param, study_dir, nomad_env)
    assert result.returncode == 0, result.stderr[-3000:]
    _which_nomad(result.stderr, nomad_env)
    records, cache = _check_records_agree_with_nomad(study_dir)
    assert len(cache) == 4 and len(records) == 4
    stats = [line.split() for line in (study_dir / "stats.txt").read_text().splitlines() if line.strip()]
    assert len(stats) == 4  # one line per evaluation (DISPLAY_ALL_EVAL)
    best = min((r for r in records if r["status"] == "OK"), key=lambda r: r["metrics"]["validation_loss"])
    assert f"best objective: {best['outputs'][0]}" in result.stdout
    assert "hyperparameters: " + ", ".join(f"{k}={v}" for k, v in best["hparams"].items()) in result.stdout
    assert str(study_dir / "records.jsonl") in result.stdout
    # The same command again: the study is complete, nothing is evaluated again.
    again = _run_nomad(param, study_dir, nomad_env)
    assert again.returncode == 0
    assert len(read_records(study_dir / "records.jsonl")) == 4


def _wait_for_records(path: Path, count: int, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not (path.exists() and len(read_records(path)) >= count):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.2)


def _wait_for(condition, process: subprocess.Popen, what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"the study ended while waiting for {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@pytest.mark.parametrize(
    ("nomad_env", "signals", "after"),
    [("binary", 1, 1), ("pynomad", 2, 1), ("binary", 2, 0), ("pynomad", 2, 0)],
    ids=["binary-finish-running", "pynomad-cut-running", "binary-cut-first", "pynomad-cut-first"],
    indirect=["nomad_env"],
)
def test_ctrl_c_then_resume(tmp_path: Path, tiny_model: Path, tiny_data, nomad_env, signals: int, after: int) -> None:
    """Ctrl-C (SIGINT to the terminal's process group) while an evaluation trains, once or twice, then the same
    command again. Cutting the first evaluation makes NOMAD crash writing its hot-restart file (its defect):
    the study still ends as an interrupted one, and the rerun completes it."""
    budget = 4
    # Long enough that both Ctrl-Cs land while it trains; logged from the first step on.
    param = _study(tmp_path, tiny_model, tiny_data, budget=budget, steps=100, extra=["training.log_every_steps=1"])
    study_dir = tmp_path / "runs" / "study"
    stderr_file = tmp_path / "stderr.txt"
    with stderr_file.open("w") as stderr:
        process = subprocess.Popen(
            [str(REPO / "run_nomad.sh"), str(param), str(study_dir)],
            env=nomad_env,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            start_new_session=True,
        )
    try:
        records_file = study_dir / "records.jsonl"
        _wait_for(lambda: len(read_records(records_file)) >= after if records_file.exists() else after == 0,
                  process, f"{after} records")  # fmt: skip
        evals = study_dir / "evals"
        done = {p.name for p in evals.iterdir()} if evals.exists() else set()

        def next_one_trains() -> bool:
            logs = [p / "eval.log" for p in evals.glob("*") if p.name not in done]
            return any(log.exists() and "step " in log.read_text() for log in logs)

        _wait_for(next_one_trains, process, "the next evaluation to train")
        os.killpg(process.pid, signal.SIGINT)
        if signals == 2:
            _wait_for(lambda: "run_nomad: stopping" in stderr_file.read_text(), process, "the first Ctrl-C")
            os.killpg(process.pid, signal.SIGINT)
        process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    stderr_text = stderr_file.read_text()
    assert process.returncode == 130, stderr_text[-3000:]
    assert "status -11" not in stderr_text and "exited with status" not in stderr_text
    assert "run the same command again to resume" in stderr_text
    first = read_records(records_file)
    # After the first Ctrl-C no evaluation starts: NOMAD's remaining queue is declined (NOT_RUN, not counted).
    evaluated = [r["status"] for r in first if r["status"] != "NOT_RUN"]
    declined = [r for r in first if r["status"] == "NOT_RUN"]
    assert all(r["error"].startswith("not evaluated: the study is stopping") for r in declined)
    if signals == 1:
        assert evaluated == ["OK"] * (after + 1)  # the running evaluation finished
    else:
        assert evaluated == ["OK"] * after + ["INTERRUPTED"]
    if after:  # NOMAD stopped gracefully: its cache holds the finished evaluations
        first_cache = read_cache(study_dir / "cache.txt")
        assert {e.outputs[1] for e in first_cache if e.ok} == {r["run_id"] for r in first if r["status"] == "OK"}
    else:  # NOMAD crashed before its first iteration: what it left is cleaned up, nothing else is lost
        assert "crashed (SIGSEGV) writing its hot-restart file" in stderr_text
        assert not (study_dir / "hotrestart.txt").exists()

    result = _run_nomad(param, study_dir, nomad_env)
    assert result.returncode == 0, result.stderr[-3000:]
    _which_nomad(result.stderr, nomad_env)
    records, _cache = _check_records_agree_with_nomad(study_dir)
    ok_points = [tuple(r["point"]) for r in records if r["status"] == "OK"]
    assert len(ok_points) == len(set(ok_points))  # no finished evaluation was run again
    assert {r["run_id"] for r in first if r["status"] == "OK"} <= {r["run_id"] for r in records}  # none lost
    # The budget counts finished evaluations across the restart: cut and declined ones are not counted (CNT_EVAL 0).
    assert len([r for r in records if r["status"] not in ("INTERRUPTED", "NOT_RUN")]) == budget


def test_a_failed_starting_point_ends_the_study_with_its_error(
    tmp_path: Path, tiny_model: Path, tiny_data, nomad_env
) -> None:
    """X0 fails (here: the model folder is missing): NOMAD stops before its first iteration and crashes writing
    its hot-restart file; the study ends with exit status 1 and the point's recorded error, and a rerun
    evaluates X0 again instead of failing on what the crash left."""
    param = _study(tmp_path, tiny_model, tiny_data, budget=4, extra=[f"model.name_or_path={tmp_path}/gone"])
    study_dir = tmp_path / "runs" / "study"
    for attempt in (1, 2):
        result = _run_nomad(param, study_dir, nomad_env)
        assert result.returncode == 1, result.stderr[-3000:]
        _which_nomad(result.stderr, nomad_env)
        assert "status -11" not in result.stderr and "exited with status" not in result.stderr
        assert re.search(r"the starting point failed.*X0 \(2 -3.5\) -> NOT_RUN: cannot load .*gone", result.stderr)
        records = read_records(study_dir / "records.jsonl")
        assert [r["status"] for r in records] == ["NOT_RUN"] * attempt  # evaluated again, one record each


def test_block_mode_end_to_end(tmp_path: Path, tiny_model: Path, tiny_data, nomad_env) -> None:
    param = _study(tmp_path, tiny_model, tiny_data, budget=8, block_size=4)
    text = param.read_text()
    assert "BB_MAX_BLOCK_SIZE 4" in text and "MEGA_SEARCH_POLL yes" in text
    study_dir = tmp_path / "runs" / "study"
    result = _run_nomad(param, study_dir, nomad_env)
    assert result.returncode == 0, result.stderr[-3000:]
    records, _ = _check_records_agree_with_nomad(study_dir)
    by_call: dict[tuple, list[int]] = {}
    for r in records:
        by_call.setdefault((r["pid"], r["point_file"]), []).append(r["block_index"])
    assert max(len(v) for v in by_call.values()) > 1  # several points in one blackbox call
    assert all(v == list(range(len(v))) for v in by_call.values())  # in order, one line each
