"""Many evaluations at once on one machine: leased device slots, parallel processes, data-parallel ranks."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

from blackbox.runners.devices import Slots, lease
from tests.points import point_file
from tests.records import read_records

pytestmark = pytest.mark.slow


def _records(experiment: Path) -> list[dict]:
    return read_records(experiment.parent / "runs" / "records.jsonl")


def _interval(record: dict) -> tuple[float, float]:
    return (
        datetime.fromisoformat(record["started_at"]).timestamp(),
        datetime.fromisoformat(record["finished_at"]).timestamp(),
    )


def test_a_block_spread_over_two_slots_answers_in_order(tmp_path, tiny_experiment, run_blackbox) -> None:
    points = point_file(tmp_path, "2 -2 0", "", "3 -2.5 0", "2.5 -2 0", "1 -3 0")
    env = {"LORA_BLACKBOX_LEASE_DIR": str(tmp_path / "leases")}
    spread = run_blackbox(["eval", "-e", str(tiny_experiment), "--workers", "2", str(points)], env=env)
    assert spread.returncode == 0, spread.stderr.decode()[-3000:]
    lines = spread.stdout.decode().splitlines()
    assert len(lines) == 4 and lines[2] == "nan nan nan"
    records = _records(tiny_experiment)
    by_line = {r["point_line"]: r for r in records}
    assert by_line["2.5 -2 0"]["status"] == "INVALID_POINT"  # answered without starting a process
    # both slots worked (the first two points start together, each on a slot of its own)
    assert {by_line[p]["slot"] for p in ("2 -2 0", "3 -2.5 0", "1 -3 0")} == {"cpu0", "cpu1"}
    for line, point in zip(lines[:2] + lines[3:], ("2 -2 0", "3 -2.5 0", "1 -3 0"), strict=True):
        assert line.split()[2] == by_line[point]["run_id"]  # each output line belongs to its point
    # The same points one after the other in one process: the same objectives (up to the thread count).
    alone = run_blackbox(["eval", "-e", str(tiny_experiment), str(points)])
    for a, b in zip(alone.stdout.decode().splitlines(), lines, strict=True):
        assert a.split()[0] == b.split()[0] == "nan" or abs(float(a.split()[0]) - float(b.split()[0])) < 1e-5


def test_sibling_processes_never_share_a_slot(tmp_path, tiny_experiment, blackbox_cmd) -> None:
    """Two blackbox calls at once (NOMAD's NB_THREADS_PARALLEL_EVAL), each wanting two slots of a machine
    with two: at most two evaluations run at a time, never two on one slot."""
    env = {**os.environ, "LORA_BLACKBOX_LEASE_DIR": str(tmp_path / "leases")}
    calls = []
    for i in range(2):
        points = tmp_path / f"nomadtmp.{i}"
        points.write_text(f"2 -{2 + i} 0\n3 -{2 + i} 0\n")
        command = [*blackbox_cmd, "-q", "eval", "-e", str(tiny_experiment), "--workers", "2", str(points)]
        calls.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path))
    for call in calls:
        out, err = call.communicate(timeout=600)
        assert call.returncode == 0, err.decode()[-3000:]
        assert len(out.splitlines()) == 2
    records = _records(tiny_experiment)
    assert len(records) == 4 and all(r["status"] == "OK" for r in records)
    for slot in ("cpu0", "cpu1"):
        spans = sorted(_interval(r) for r in records if r["slot"] == slot)
        assert all(end <= next_start for (_, end), (next_start, _) in itertools.pairwise(spans))
    moments = sorted(t for r in records for t in _interval(r))
    for t in moments:
        assert sum(start <= t < end for start, end in map(_interval, records)) <= 2


def test_a_lease_survives_its_holder_being_killed(tmp_path) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from blackbox.runners.devices import Slots, lease\n"
            "with lease(Slots(('gpu7',), True), 1, folder=Path(sys.argv[1])):\n"
            "    print('held', flush=True); time.sleep(600)",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
    )
    assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
    slots = Slots(("gpu7",), gpu=True)
    started = time.monotonic()
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=60)
    with lease(slots, 1, folder=tmp_path, poll_s=0.05) as leased:
        assert leased == ["gpu7"]
    assert time.monotonic() - started < 5
    assert slots.child_env(["gpu7"], workers=1) == {"CUDA_VISIBLE_DEVICES": "gpu7"}


def test_data_parallel_ranks_give_the_objective_of_one_process(tmp_path, tiny_experiment, run_blackbox) -> None:
    """--gpus-per-eval 2 on a CPU host: torchrun with two gloo ranks, each on half of every step."""
    points = point_file(tmp_path, "2 -2 0")
    env = {"LORA_BLACKBOX_LEASE_DIR": str(tmp_path / "leases")}
    ranks = run_blackbox(["eval", "-e", str(tiny_experiment), "--gpus-per-eval", "2", str(points)], env=env)
    assert ranks.returncode == 0, ranks.stderr.decode()[-3000:]
    one = run_blackbox(["eval", "-e", str(tiny_experiment), str(points)])
    assert len(ranks.stdout.splitlines()) == 1  # rank 0 alone answers
    assert abs(float(ranks.stdout.split()[0]) - float(one.stdout.split()[0])) < 1e-5
    records = _records(tiny_experiment)
    assert len(records) == 2  # rank 0 alone records
    assert (
        records[0]["slot"] == "cpu0,cpu1"
        and records[0]["metrics"]["validation_tokens"] == records[1]["metrics"]["validation_tokens"]
    )  # the whole validation set, once


def test_params_for_parallel_studies(blackbox_cmd) -> None:
    result = subprocess.run(
        [*blackbox_cmd, "params", "-e", "demo", "--parallel", "4"],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    assert "BB_MAX_BLOCK_SIZE 4\n" in result.stdout and "MEGA_SEARCH_POLL yes\n" in result.stdout
    assert '"$lora-blackbox $eval $--experiment $demo $--workers $4 $--set $records.dir=."' in result.stdout
