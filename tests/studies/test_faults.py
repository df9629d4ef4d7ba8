"""Fault injection, run for real (issue 17): kill -9 of a study's process group while an evaluation trains, with
both NOMADs, then the same command again; a second study on a busy folder; records folders that are read-only
or full. Each case checks: no process of the study left, no finished point trained twice, the budget kept,
records readable, one line per failure."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from blackbox.core.failures import Status
from blackbox.reports.load import load_run
from tests.processes import study_processes
from tests.records import read_records, recorded_run_ids

pytestmark = pytest.mark.slow


def _start_study(repo: Path, param: Path, study_dir: Path, env: dict[str, str]) -> subprocess.Popen:
    """``run_nomad.sh PARAM STUDY_DIR`` in a session of its own; its stdout and stderr go to files beside the
    study folder (``_output``): a pipe nobody reads while the study runs could fill and stall it."""
    study_dir.parent.mkdir(parents=True, exist_ok=True)
    with (study_dir.parent / "study.out").open("w") as out, (study_dir.parent / "study.err").open("w") as err:
        return subprocess.Popen(
            [str(repo / "run_nomad.sh"), str(param), str(study_dir)],
            env=env,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )


def _output(study_dir: Path) -> tuple[str, str]:
    """The stdout and stderr of a study started by :func:`_start_study`."""
    return (study_dir.parent / "study.out").read_text(), (study_dir.parent / "study.err").read_text()


def _none_left(study_dir: Path, wait_for: Callable[..., None], seconds: float = 5) -> None:
    """Wait up to ``seconds`` for the study's processes to be gone; fail if one outlives that."""
    wait_for(
        lambda: not study_processes(study_dir), None, f"the study's processes to end (within {seconds:g} s)", seconds
    )


def test_kill_9_of_the_study_then_resume(
    tmp_path: Path,
    repo: Path,
    nomad_env,
    make_study,
    run_nomad,
    records_agree_with_nomad,
    wait_for,
    training_started,
) -> None:
    """kill -9 of run_nomad.sh's process group while the third of 4 evaluations trains: within 5 s no process
    of the study is left (NOMAD, the evaluation); the evaluation is KILLED; the rerun answers the finished
    points from their records, trains the killed one again, and ends with exactly 4 finished evaluations."""
    budget = 4
    param = make_study(budget=budget, steps=16, extra=["training.log_every_steps=1"])
    study_dir = (tmp_path / "runs" / "study").resolve()
    records_file = study_dir / "records.jsonl"
    process = _start_study(repo, param, study_dir, nomad_env)
    try:
        wait_for(lambda: records_file.exists() and len(read_records(records_file)) >= 2, process, "2 evaluations")
        # One study per folder: a second one is refused while this one runs.
        second = run_nomad(param, study_dir, nomad_env)
        assert second.returncode == 1, second.stderr[-3000:]
        assert f"another study is running in {study_dir} (driver pid" in second.stderr
        done = recorded_run_ids(study_dir)
        wait_for(lambda: training_started(study_dir, not_in=done), process, "the third evaluation to train")
        assert study_processes(study_dir)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=60)
        _none_left(study_dir, wait_for)
    finally:
        for leftover in [*study_processes(study_dir), psutil.Process(process.pid)] if process.poll() is None else []:
            with contextlib.suppress(psutil.Error):
                leftover.kill()
    [killed_dir] = {p.name for p in (study_dir / "evals").glob("*")} - done
    assert (study_dir / "evals" / killed_dir / "running.json").exists()
    # The report sees it as soon as its process is gone: a killed process can outlast what psutil reads of it
    # (its cwd and environment) for a moment on a loaded machine.
    wait_for(lambda: bool(load_run(str(study_dir)).not_counted), None, "the report to see the killed evaluation", 5)
    assert [r.status.value for r in load_run(str(study_dir)).not_counted] == ["KILLED"]
    first = read_records(records_file)
    assert [r["status"] for r in first] == ["OK", "OK"]

    result = run_nomad(param, study_dir, nomad_env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "1 evaluation(s) of an earlier run were killed before they could finish (recorded as KILLED)" in (
        result.stderr
    )
    assert result.stderr.count("answered from its record") == 2  # NOMAD asked again for both finished points
    records, _cache = records_agree_with_nomad(study_dir)
    counted = [r for r in records if Status(r["status"]).counted]
    assert len(counted) == budget
    assert len({tuple(r["point"]) for r in counted}) == budget  # no finished point trained twice
    assert {r["run_id"] for r in first} <= {r["run_id"] for r in counted}  # none lost
    [killed] = [r for r in records if r["status"] == "KILLED"]
    assert killed["run_id"] == killed_dir and "killed before it could record" in killed["error"]
    assert tuple(killed["point"]) in {tuple(r["point"]) for r in counted}  # evaluated again
    assert "1 KILLED" in result.stdout  # the summary


def _target(study_dir: Path, which: str) -> psutil.Process:
    """NOMAD (the binary) or the evaluation process it started, among the study's processes."""
    for process in study_processes(study_dir):
        with contextlib.suppress(psutil.Error):
            command = process.cmdline()
            is_nomad = Path(command[0]).name == "nomad"
            if (which == "nomad") == is_nomad and (is_nomad or "eval" in command):
                return process
    raise AssertionError(f"no {which} process among {[p.cmdline() for p in study_processes(study_dir)]}")


@pytest.mark.parametrize("nomad_env", ["binary"], indirect=True)
@pytest.mark.parametrize("victim", ["nomad", "evaluation"])
def test_kill_9_of_nomad_or_of_one_evaluation_then_resume(
    tmp_path: Path,
    repo: Path,
    victim: str,
    nomad_env,
    make_study,
    run_nomad,
    records_agree_with_nomad,
    wait_for,
    training_started,
) -> None:
    """kill -9 of the nomad binary alone, or of the one evaluation it started, while the second of 3 evaluations
    trains. A dead NOMAD: exit 1 and one line saying so, no process of the study left, the cut evaluation KILLED
    and trained again by the same command. A dead evaluation (the out-of-memory killer's way): NOMAD counts the
    failed call and goes on, the driver records it as a counted ERROR, as the failure policy has it, and the
    same command again has nothing left to do. Either way: 3 finished evaluations, none twice, none lost."""
    budget = 3
    param = make_study(budget=budget, steps=16, extra=["training.log_every_steps=1"])
    study_dir = (tmp_path / "runs" / "study").resolve()
    records_file = study_dir / "records.jsonl"
    process = _start_study(repo, param, study_dir, nomad_env)
    try:
        wait_for(lambda: records_file.exists() and len(read_records(records_file)) >= 1, process, "1 evaluation")
        done = recorded_run_ids(study_dir)
        wait_for(lambda: training_started(study_dir, not_in=done), process, "the second evaluation to train")
        [cut_dir] = {p.name for p in (study_dir / "evals").glob("*")} - done
        _target(study_dir, victim).kill()
        process.wait(timeout=300)
        _none_left(study_dir, wait_for)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=60)
    _stdout, stderr = _output(study_dir)
    first = read_records(records_file)
    [cut] = [r for r in first if r["run_id"] == cut_dir]
    if victim == "nomad":  # cut with its study: evaluated again when the study resumes
        assert process.returncode == 1, stderr[-3000:]
        assert "NOMAD was killed by SIGKILL" in stderr and "run the same command again to resume" in stderr
        assert [r["status"] for r in first] == ["OK", "KILLED"]
        assert "killed before it could record" in cut["error"]
    else:  # died alone: NOMAD counted the failed call and went on; the records say so (ERROR, counted)
        assert process.returncode == 0, stderr[-3000:]
        assert [r["status"] for r in first] == ["OK", "OK", "ERROR"]
        assert "died without a record while its study went on" in cut["error"]
        assert cut["outputs"] == ["nan", "nan", "1"]  # as an ERROR of the evaluation itself: CNT_EVAL 1
        assert "1 evaluation process(es) died without a record (recorded as ERROR" in stderr

    result = run_nomad(param, study_dir, nomad_env)
    assert result.returncode == 0, result.stderr[-3000:]
    records, _cache = records_agree_with_nomad(study_dir)
    counted = [r for r in records if Status(r["status"]).counted]
    assert len(counted) == budget
    assert len({tuple(r["point"]) for r in counted}) == budget  # no finished point trained twice
    assert {r["run_id"] for r in first if r["status"] == "OK"} <= {r["run_id"] for r in counted}  # none lost
    if victim == "nomad":
        assert tuple(cut["point"]) in {tuple(r["point"]) for r in counted if r["status"] == "OK"}  # again
    else:
        assert result.stderr.count("answered from its record") == 0 and records == first  # nothing to do


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs for a records folder (root only: CI runs as root; chmod would not stop root)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    folder = tmp_path / "records"
    folder.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(folder)], capture_output=True, timeout=600
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False, timeout=600)


def _fill(folder: Path) -> Path:
    """Fill the file system of ``folder``; returns the filler file (remove it to make room again)."""
    filler = folder / "filler"
    with filler.open("wb") as out, contextlib.suppress(OSError):
        while True:
            out.write(bytes(64 * 1024))
            out.flush()
    return filler


def test_records_that_cannot_be_written_fail_the_call_with_one_line(
    tmp_path: Path, small_tmpfs: Path, make_experiment, blackbox_cmd, wait_for, training_started
) -> None:
    """Read-only and full records folders: exit 1 and one line on stderr before anything is loaded; a disk that
    fills while a point trains: the same, once the point ends (its eval.log cannot be written)."""
    experiment = make_experiment(records=small_tmpfs, steps=20)
    (tmp_path / "points.txt").write_text("2 -3.5 0\n3 -3 0\n")
    command = [*blackbox_cmd, "-q", "eval", "-e", str(experiment), "--set", "training.log_every_steps=1", "points.txt"]

    def call() -> subprocess.CompletedProcess[str]:
        return subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)

    subprocess.run(["mount", "-o", "remount,ro", str(small_tmpfs)], check=True, timeout=600)
    read_only = call()
    assert (read_only.returncode, read_only.stdout) == (1, "")
    assert read_only.stderr == f"lora-blackbox ERROR: cannot write records in {small_tmpfs}: Read-only file system\n"

    subprocess.run(["mount", "-o", "remount,rw", str(small_tmpfs)], check=True, timeout=600)
    filler = _fill(small_tmpfs)
    full = call()
    assert (full.returncode, full.stdout) == (1, "")
    assert full.stderr.startswith(f"lora-blackbox ERROR: cannot write records in {small_tmpfs}: No space left")
    assert full.stderr.count("\n") == 1

    filler.unlink()
    process = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: training_started(small_tmpfs), process, "the first point to train")
        _fill(small_tmpfs)
        stdout, stderr = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=60)
    assert (process.returncode, stdout) == (1, ""), stderr[-3000:]
    # (torch and transformers may warn on stderr of their own; the blackbox says one thing)
    assert [line for line in stderr.splitlines() if line.startswith("lora-blackbox")] == [
        f"lora-blackbox ERROR: cannot write records in {small_tmpfs}: No space left on device"
    ]
    assert "Traceback" not in stderr and "Logging error" not in stderr
    [run_dir] = (small_tmpfs / "evals").iterdir()
    assert not (run_dir / "running.json").exists()  # not taken for a killed evaluation
