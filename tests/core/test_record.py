"""The record store (``blackbox.core.record.RecordStore``): appends under a lock, typed records back, torn lines,
records of the previous schema, and evaluations that never recorded their end."""

import dataclasses
import fcntl
import json
import multiprocessing
import os
from pathlib import Path

import pytest

from blackbox.core.curves import CurvePoint, Stop
from blackbox.core.failures import Status
from blackbox.core.record import RUNNING_FILE, EvalRecord, RecordStore
from tests.records import read_records

SPECS = ("OBJ:validation_loss", "EXTRA_O:run_id", "CNT_EVAL")


def _record(i: int, writer: int = 0, status: Status = Status.OK) -> EvalRecord:
    # Long enough that a single write could interleave with another if it were not locked.
    return EvalRecord(
        run_id=f"{writer}-{i}",
        experiment="x",
        fingerprint="f",
        status=status,
        outputs=("1.0", f"{writer}-{i}", "1"),
        output_specs=SPECS,
        point=(float(i), 1.0),
        metrics={"padding": "x" * 5000, "i": i, "writer": writer, "validation_loss": 1.0},
    )


def _append_one(folder: str, writer: int) -> None:
    RecordStore(Path(folder)).append(_record(0, writer))


def _waiting_flocks(path: Path) -> int:
    """How many processes wait for a FLOCK on ``path`` (``->`` lines of /proc/locks that name its inode)."""
    inode = f":{os.stat(path).st_ino} "
    lines = Path("/proc/locks").read_text().splitlines()
    return sum(line.split()[1:3] == ["->", "FLOCK"] and inode in line for line in lines)


@pytest.mark.skipif(not Path("/proc/locks").exists(), reason="needs Linux's /proc/locks to see a waiting lock")
def test_concurrent_writers_wait_for_a_writer_in_the_middle_of_its_line(tmp_path: Path, wait_for) -> None:
    """While one writer is in the middle of its line (this test: it holds the lock and has written half of a
    record), the appends of other processes wait for the lock, then add whole lines after it. Were the lock not
    taken, they would write into the middle of that line (one O_APPEND write each would not save it)."""
    store = RecordStore(tmp_path)
    store.append(_record(0))
    line = (_record(1).to_json() + "\n").encode()
    fd = os.open(store.path, os.O_WRONLY | os.O_APPEND)
    fcntl.flock(fd, fcntl.LOCK_EX)
    writers = [
        multiprocessing.get_context("spawn").Process(target=_append_one, args=(str(tmp_path), w)) for w in (2, 3)
    ]
    try:
        os.write(fd, line[: len(line) // 2])
        for writer in writers:
            writer.start()

        def all_waiting() -> bool:
            assert all(w.is_alive() for w in writers), "a writer appended while another was in the middle of its line"
            return _waiting_flocks(store.path) == len(writers)

        wait_for(all_waiting, None, "the other writers to wait for the lock", timeout=120)
        os.write(fd, line[len(line) // 2 :])
    finally:
        os.close(fd)  # releases the lock
        for writer in writers:
            writer.join(timeout=60)
    assert [w.exitcode for w in writers] == [0, 0]
    lines = store.path.read_text().splitlines()
    assert [json.loads(text)["run_id"] for text in lines[:2]] == ["0-0", "0-1"]  # whole lines, the cut one too
    assert sorted(json.loads(text)["run_id"] for text in lines[2:]) == ["2-0", "3-0"]


def test_a_torn_last_line_costs_only_itself(tmp_path: Path) -> None:
    store = RecordStore(tmp_path)
    store.append(_record(0))
    with store.path.open("a") as f:
        f.write(_record(1).to_json()[:100])  # a writer killed in the middle of its line
    store.append(_record(2))
    assert [r.run_id for r in store.records()] == ["0-0", "0-2"]
    assert [r["run_id"] for r in read_records(store.path)] == ["0-0", "0-2"]  # the file itself: whole lines


def test_typed_round_trip(tmp_path: Path) -> None:
    record = EvalRecord(
        run_id="r",
        experiment="x",
        fingerprint="f",
        status=Status.DIVERGED,
        outputs=("inf", "nan"),
        output_specs=("OBJ:validation_loss", "EXTRA_O:train_loss"),
        point=(1.0, -0.0),
        hparams={"lora_r": 8},
        metrics={"train_loss": float("nan")},
    )
    store = RecordStore(tmp_path)
    store.append(record)
    [raw] = read_records(store.path)
    assert raw["status"] == "DIVERGED" and raw["outputs"] == ["inf", "nan"] and raw["schema_version"] == 3
    [read] = store.records()
    assert read.status is Status.DIVERGED and read.point == (1.0, -0.0) and read.output("OBJ") == float("inf")
    assert read.to_json() == record.to_json()
    # A stopped evaluation keeps its learning curve and where it stopped, typed.
    stopped = dataclasses.replace(
        record,
        run_id="s",
        status=Status.STOPPED,
        curve=(CurvePoint(3, 1200, 1.5), CurvePoint(6, 2400, 1.25)),
        stopped=Stop(6, 12, "median", "worse than the median"),
    )
    store.append(stopped)
    read = store.records()[-1]
    assert read.curve == stopped.curve and read.stopped == stopped.stopped and read.status is Status.STOPPED


def test_records_of_schema_1_and_later_keys_are_read(tmp_path: Path) -> None:
    old = {
        "run_id": "a",
        "experiment": "x",
        "fingerprint": "f",
        "status": "OK",
        "outputs": ["0.5", "1"],
        "point": [2, -3],
    }
    later = {**old, "run_id": "b", "a_key_of_a_later_version": 1}
    (tmp_path / "records.jsonl").write_text(json.dumps(old) + "\n" + json.dumps(later) + "\n{not json\n")
    a, b = RecordStore(tmp_path).records()
    assert (a.run_id, b.run_id) == ("a", "b") and a.point == (2.0, -3.0) and a.output_specs == ()
    assert a.output("OBJ") == 0.5  # schema 1: the objective came first


def test_finished_and_find(tmp_path: Path) -> None:
    store = RecordStore(tmp_path)
    store.append(_record(0))
    store.append(_record(1, status=Status.INTERRUPTED))
    store.append(EvalRecord.from_dict({**_record(2).as_dict(), "fingerprint": "other"}))
    assert list(store.finished("f")) == [(0.0, 1.0)]
    store.append(EvalRecord.from_dict({**_record(3).as_dict(), "point_file": "/p", "block_index": 1}))
    found = store.find(point_file="/p", block_index=1)
    assert found is not None and found.run_id == "0-3"
    assert store.find(point_file="/p", block_index=0) is None


@pytest.mark.parametrize(
    ("solver_exit", "interrupted", "status", "counted"),
    [(None, False, "KILLED", "0"), (0, True, "KILLED", "0"), (0, False, "ERROR", "1")],
)
def test_an_evaluation_without_an_end_is_recorded_as_the_policy_says(
    tmp_path: Path, solver_exit: int | None, interrupted: bool, status: str, counted: str
) -> None:
    store = RecordStore(tmp_path)
    marker = _record(0, status=Status.KILLED)
    marker = EvalRecord.from_dict({**marker.as_dict(), "outputs": ["nan", "nan", "0"], "pid": None})
    store.run_dir(marker.run_id).mkdir(parents=True)
    store.mark_running(marker)
    [unfinished] = store.unfinished()
    assert unfinished.status is Status.KILLED
    [written] = store.record_unfinished(solver_exit=solver_exit, interrupted=interrupted)
    assert written.status.value == status and written.outputs == ("nan", "nan", counted)
    assert json.loads((store.run_dir(marker.run_id) / "record.json").read_text())["status"] == status
    assert (store.run_dir(marker.run_id) / RUNNING_FILE).exists()  # the marker stays: record.json ends it
    assert store.unfinished() == [] and [r.status.value for r in store.records()] == [status]
