"""Real NOMAD optimisations driving ``lora-blackbox eval`` on the tiny model through ``run_nomad.sh``, with both
NOMADs (the 4.5.1 binary and PyNomadBBO, the NOMAD library): records agree with NOMAD's files, Ctrl-C
stops cleanly and resumes, a failed starting point ends the study with its error."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest

from blackbox.core.nomad import read_cache
from tests.records import read_records, recorded_run_ids

pytestmark = pytest.mark.slow


def test_a_nomad_study_end_to_end(
    tmp_path: Path, nomad_env, make_study, run_nomad, records_agree_with_nomad, ran_with_nomad
) -> None:
    param = make_study(budget=4)
    study_dir = tmp_path / "runs" / "study"
    result = run_nomad(param, study_dir, nomad_env)
    assert result.returncode == 0, result.stderr[-3000:]
    ran_with_nomad(result.stderr, nomad_env)
    records, cache = records_agree_with_nomad(study_dir)
    assert len(cache) == 4 and len(records) == 4
    stats = [line.split() for line in (study_dir / "stats.txt").read_text().splitlines() if line.strip()]
    assert len(stats) == 4  # one line per evaluation (DISPLAY_ALL_EVAL)
    best = min((r for r in records if r["status"] == "OK"), key=lambda r: r["metrics"]["validation_loss"])
    assert f"best objective: {best['outputs'][0]}" in result.stdout
    assert "hyperparameters: " + ", ".join(f"{k}={v}" for k, v in best["hparams"].items()) in result.stdout
    assert str(study_dir / "records.jsonl") in result.stdout
    # The same command again: the study is complete, nothing is evaluated again.
    again = run_nomad(param, study_dir, nomad_env)
    assert again.returncode == 0
    assert len(read_records(study_dir / "records.jsonl")) == 4


@pytest.mark.parametrize("nomad_env", ["binary"], indirect=True)
def test_a_finished_study_without_a_hot_restart_file_is_not_run_again(
    tmp_path: Path, nomad_env, make_study, run_nomad
) -> None:
    """A budget of 1 writes no hot-restart file, the only place NOMAD keeps its evaluation count: the rerun's
    NOMAD asks for the finished point again (no cache hit), its record answers, and the budget is spent."""
    param = make_study(budget=1, steps=2)
    study_dir = tmp_path / "runs" / "study"
    assert run_nomad(param, study_dir, nomad_env).returncode == 0
    assert not (study_dir / "hotrestart.txt").exists()
    [record] = read_records(study_dir / "records.jsonl")
    again = run_nomad(param, study_dir, nomad_env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert read_records(study_dir / "records.jsonl") == [record]
    assert again.stderr.count("answered from its record") == 1
    [entry] = read_cache(study_dir / "cache.txt")  # as NOMAD rewrote it: 15 significant digits
    assert all(math.isclose(a, b, rel_tol=1e-13) for a, b in zip(entry.point, record["point"], strict=True))


@pytest.mark.parametrize(
    ("nomad_env", "signals", "after"),
    [("binary", 1, 1), ("pynomad", 2, 1), ("binary", 2, 0), ("pynomad", 2, 0)],
    ids=["binary-finish-running", "pynomad-cut-running", "binary-cut-first", "pynomad-cut-first"],
    indirect=["nomad_env"],
)
def test_ctrl_c_then_resume(
    tmp_path: Path,
    repo: Path,
    nomad_env,
    make_study,
    run_nomad,
    records_agree_with_nomad,
    ran_with_nomad,
    wait_for,
    training_started,
    signals: int,
    after: int,
) -> None:
    """Ctrl-C (SIGINT to the terminal's process group) while an evaluation trains, once or twice, then the same
    command again. Cutting the first evaluation makes NOMAD crash writing its hot-restart file (its defect):
    the study still ends as an interrupted one, and the rerun completes it."""
    budget = 3
    # Long enough that both Ctrl-Cs land while it trains; logged from the first step on.
    param = make_study(budget=budget, steps=60, extra=["training.log_every_steps=1"])
    study_dir = tmp_path / "runs" / "study"
    stderr_file = tmp_path / "stderr.txt"
    with stderr_file.open("w") as stderr:
        process = subprocess.Popen(
            [str(repo / "run_nomad.sh"), str(param), str(study_dir)],
            env=nomad_env,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            start_new_session=True,
        )
    try:
        records_file = study_dir / "records.jsonl"
        wait_for(lambda: len(read_records(records_file)) >= after if records_file.exists() else after == 0,
                  process, f"{after} records")  # fmt: skip
        done = recorded_run_ids(study_dir)
        wait_for(lambda: training_started(study_dir, not_in=done), process, "the next evaluation to train")
        os.killpg(process.pid, signal.SIGINT)
        if signals == 2:
            wait_for(lambda: "run_nomad: stopping" in stderr_file.read_text(), process, "the first Ctrl-C")
            os.killpg(process.pid, signal.SIGINT)
        process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=60)
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

    result = run_nomad(param, study_dir, nomad_env)
    assert result.returncode == 0, result.stderr[-3000:]
    ran_with_nomad(result.stderr, nomad_env)
    records, _cache = records_agree_with_nomad(study_dir)
    ok_points = [tuple(r["point"]) for r in records if r["status"] == "OK"]
    assert len(ok_points) == len(set(ok_points))  # no finished evaluation was run again
    assert {r["run_id"] for r in first if r["status"] == "OK"} <= {r["run_id"] for r in records}  # none lost
    # The budget counts finished evaluations across the restart: cut and declined ones are not counted (CNT_EVAL 0).
    assert len([r for r in records if r["status"] not in ("INTERRUPTED", "NOT_RUN")]) == budget


def test_a_failed_starting_point_ends_the_study_with_its_error(
    tmp_path: Path, nomad_env, make_study, run_nomad, ran_with_nomad
) -> None:
    """X0 fails (here: the model folder is missing): NOMAD stops before its first iteration and crashes writing
    its hot-restart file; the study ends with exit status 1 and the point's recorded error, and a rerun
    evaluates X0 again instead of failing on what the crash left."""
    param = make_study(budget=4, extra=[f"model.name_or_path={tmp_path}/gone"])
    study_dir = tmp_path / "runs" / "study"
    for attempt in (1, 2):
        result = run_nomad(param, study_dir, nomad_env)
        assert result.returncode == 1, result.stderr[-3000:]
        ran_with_nomad(result.stderr, nomad_env)
        assert "status -11" not in result.stderr and "exited with status" not in result.stderr
        assert re.search(r"the starting point failed.*X0 \(2 -3.5\) -> NOT_RUN: cannot load .*gone", result.stderr)
        records = read_records(study_dir / "records.jsonl")
        assert [r["status"] for r in records] == ["NOT_RUN"] * attempt  # evaluated again, one record each


def test_block_mode_end_to_end(tmp_path: Path, nomad_env, make_study, run_nomad, records_agree_with_nomad) -> None:
    param = make_study(budget=8, block_size=4)
    text = param.read_text()
    assert "BB_MAX_BLOCK_SIZE 4" in text and "MEGA_SEARCH_POLL yes" in text
    study_dir = tmp_path / "runs" / "study"
    result = run_nomad(param, study_dir, nomad_env)
    assert result.returncode == 0, result.stderr[-3000:]
    records, _ = records_agree_with_nomad(study_dir)
    by_call: dict[tuple, list[int]] = {}
    for r in records:
        by_call.setdefault((r["pid"], r["point_file"]), []).append(r["block_index"])
    assert max(len(v) for v in by_call.values()) > 1  # several points in one blackbox call
    assert all(v == list(range(len(v))) for v in by_call.values())  # in order, one line each


@pytest.mark.parametrize("nomad_env", ["binary"], indirect=True)
def test_a_study_of_lora_variants(
    tmp_path: Path, nomad_env, make_study, run_nomad, records_agree_with_nomad, ran_with_nomad
) -> None:
    """Categorical settings (the variant: a table of [lora] keys; the target modules: a list or a preset) are integer
    indices for NOMAD, and alpha = k * sqrt(r) an integer k: records keep NOMAD's exact point and every decoded
    setting, and the report draws them as categorical axes. (Both NOMADs read such a file: tests/test_params.py.)"""
    from blackbox.core.experiment import load_experiment
    from blackbox.core.space import SearchSpace
    from blackbox.reports import write_report

    param = make_study(budget=2, steps=2, space="variants")
    text = param.read_text()
    assert "BB_INPUT_TYPE ( I I R I I )\n" in text
    assert '# lora: 1 = {}, 2 = {"use_dora": true}, 3 = {"init_lora_weights": "pissa"}\n' in text
    assert '# model.target_modules: 1 = ["q_proj", "v_proj"], 2 = "attention"\n' in text
    study_dir = tmp_path / "runs" / "study"
    result = run_nomad(param, study_dir, nomad_env)
    assert result.returncode == 0, result.stderr[-3000:]
    ran_with_nomad(result.stderr, nomad_env)
    records, cache = records_agree_with_nomad(study_dir)
    assert len(records) == len(cache) == 2
    assert records[0]["point"] == [2, 2, -2, 1, 1]  # X0
    assert records[0]["hparams"] == {
        "lora_r": 4,
        "lora_alpha": 4,
        "lora_dropout": 0.0,
        "learning_rate": 0.01,
        "lora": {},
        "model.target_modules": ["q_proj", "v_proj"],
    }
    space = SearchSpace.from_experiment(load_experiment(str(tmp_path / "study.toml")))
    decoded = space.decode(tuple(records[1]["point"])).as_dict()
    assert records[1]["hparams"] == json.loads(json.dumps(decoded))
    files = write_report([str(study_dir)], tmp_path / "report")
    top = json.loads(files["summary"].read_text())["top"]
    assert {json.dumps(row["hparams"]["model.target_modules"]) for row in top} <= {
        '["q_proj", "v_proj"]',
        '"attention"',
    }
    assert files["parallel_coordinates"].stat().st_size > 0
