"""Early stopping in real NOMAD studies on the tiny model, with both NOMADs: a point with a hopeless learning rate
stops at its first checkpoint and the study ends with the same best as without stopping; after kill -9 a resumed
study keeps a stopped point stopped."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from blackbox.core.failures import Status
from blackbox.core.nomad import read_cache
from blackbox.reports import write_report
from tests.processes import study_processes
from tests.records import read_records, recorded_run_ids

pytestmark = pytest.mark.slow

# The incumbent rule from the first finished evaluation on; checkpoints at steps 2, 4 and 6 of 8.
STOPPING = [
    "validation.checkpoints=[0.25,0.5,0.75]",
    "validation.checkpoint_rows=16",
    "stopping.rule=incumbent",
    "stopping.min_finished=1",
]


def _best(records: list[dict]) -> tuple[list[float], float]:
    best = min((r for r in records if r["status"] == "OK"), key=lambda r: r["metrics"]["validation_loss"])
    return best["point"], best["metrics"]["validation_loss"]


def test_a_hopeless_point_stops_at_its_first_checkpoint_and_the_best_is_the_same(
    tmp_path: Path, nomad_env, make_study, run_nomad, ran_with_nomad
) -> None:
    """Two starting points (learning rates 1e-2 and 1e-5), then NOMAD's poll: its first trial point, at the upper
    bound (1e-1), learns nothing useful in 8 steps and is stopped at step 2, after which NOMAD's budget is spent."""
    plain = make_study(budget=3, steps=8, space="lr_two_starts").rename(tmp_path / "plain.txt")
    stopping = make_study(budget=3, steps=8, space="lr_two_starts", extra=STOPPING)
    without = run_nomad(plain, tmp_path / "runs" / "plain", nomad_env)
    assert without.returncode == 0, without.stderr[-3000:]
    result = run_nomad(stopping, tmp_path / "runs" / "stopping", nomad_env)
    assert result.returncode == 0, result.stderr[-3000:]
    ran_with_nomad(result.stderr, nomad_env)
    plain_records = read_records(tmp_path / "runs" / "plain" / "records.jsonl")
    records = read_records(tmp_path / "runs" / "stopping" / "records.jsonl")
    assert [r["status"] for r in plain_records] == ["OK"] * 3
    [stopped] = [r for r in records if r["status"] == "STOPPED"]
    assert len(records) == 3 and all(Status(r["status"]).counted for r in records)
    # Stopped at its first checkpoint: fewer training steps, its curve and where it stopped in its record.
    assert stopped["metrics"]["train_steps"] == 2 and stopped["stopped"]["step"] == 2
    assert stopped["stopped"]["total_steps"] == 8 and stopped["stopped"]["rule"] == "incumbent"
    assert [p["step"] for p in stopped["curve"]] == [2]
    # It could not win: trained to its end without stopping, it is worse than the best.
    best_point, best_loss = _best(records)
    [trained] = [r for r in plain_records if r["point"] == stopped["point"]]
    assert trained["metrics"]["validation_loss"] > best_loss
    # The same best as without stopping, and NOMAD got a value for the stopped point that is worse than it.
    assert (best_point, best_loss) == _best(plain_records)
    value = float(stopped["outputs"][0])
    assert value > best_loss
    [entry] = [e for e in read_cache(tmp_path / "runs" / "stopping" / "cache.txt") if list(e.point) == stopped["point"]]
    assert entry.ok and float(entry.outputs[0]) == value
    assert f"best objective: {best_loss!r}" in result.stdout and "1 STOPPED" in result.stdout
    # The report shows the stopped point apart (not among the failures) and draws the study's learning curves.
    files = write_report([str(tmp_path / "runs" / "stopping")], tmp_path / "report")
    assert set(files) >= {"learning_curves", "html", "summary"}
    [run] = json.loads(files["summary"].read_text())["runs"]
    assert [e["run_id"] for e in run["stopped"]] == [stopped["run_id"]] and run["stopped"][0]["solver_value"] == value
    page = files["html"].read_text()
    assert '<table id="stopped">' in page and stopped["run_id"] in page.split('<table id="stopped">')[1]
    assert "No evaluation failed." in page


@pytest.mark.parametrize("nomad_env", ["binary"], indirect=True)
def test_kill_9_then_resume_keeps_a_stopped_point_stopped(
    tmp_path: Path, repo: Path, nomad_env, make_study, run_nomad, wait_for, training_started
) -> None:
    param = make_study(budget=4, steps=8, space="lr_two_starts", extra=[*STOPPING, "training.log_every_steps=1"])
    study_dir = (tmp_path / "runs" / "study").resolve()
    records_file = study_dir / "records.jsonl"
    study_dir.parent.mkdir(parents=True)
    with (tmp_path / "study.out").open("w") as out:
        process = subprocess.Popen(
            [str(repo / "run_nomad.sh"), str(param), str(study_dir)],
            env=nomad_env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:

        def stopped() -> bool:
            return records_file.exists() and any(r["status"] == "STOPPED" for r in read_records(records_file))

        wait_for(stopped, process, "a stopped evaluation")
        done = recorded_run_ids(study_dir)
        wait_for(lambda: training_started(study_dir, not_in=done), process, "the next evaluation to train")
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=60)
        wait_for(lambda: not study_processes(study_dir), None, "the study's processes to be gone", timeout=10)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=60)
    first = read_records(records_file)
    [stopped_record] = [r for r in first if r["status"] == "STOPPED"]

    result = run_nomad(param, study_dir, nomad_env)
    assert result.returncode == 0, result.stderr[-3000:]
    # NOMAD asked again for the points finished before the kill: the stopped one among them, answered from its record.
    assert result.stderr.count("answered from its record") == len(first)
    assert f"answered from its record {stopped_record['run_id']} (STOPPED)" in result.stderr
    records = read_records(records_file)
    assert [r for r in records if r["point"] == stopped_record["point"]] == [stopped_record]  # never trained again
    counted = [r for r in records if Status(r["status"]).counted]
    assert len(counted) == 4 and [r["status"] for r in records].count("KILLED") == 1
