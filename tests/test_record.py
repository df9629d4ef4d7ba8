import json
import multiprocessing
from pathlib import Path

from blackbox.failures import Status
from blackbox.record import EvalRecord, append_record, read_records


def _record(i: int, writer: int) -> EvalRecord:
    # Long enough that a single write could interleave with another if it were not locked.
    return EvalRecord(
        run_id=f"{writer}-{i}",
        experiment="x",
        fingerprint="f",
        status=Status.OK,
        outputs=("1.0",),
        metrics={"padding": "x" * 5000, "i": i, "writer": writer},
    )


def _writer(path: str, writer: int, count: int) -> None:
    for i in range(count):
        append_record(Path(path), _record(i, writer))


def test_concurrent_writers_never_corrupt_the_file(tmp_path: Path) -> None:
    path = tmp_path / "records.jsonl"
    writers, count = 8, 40
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_writer, args=(str(path), w, count)) for w in range(writers)]
    for p in processes:
        p.start()
    for p in processes:
        p.join(60)
        assert p.exitcode == 0
    lines = path.read_text().splitlines()
    assert len(lines) == writers * count
    records = [json.loads(line) for line in lines]  # every line is a whole record
    assert {(r["metrics"]["writer"], r["metrics"]["i"]) for r in records} == {
        (w, i) for w in range(writers) for i in range(count)
    }


def test_a_torn_last_line_costs_only_itself(tmp_path: Path) -> None:
    path = tmp_path / "records.jsonl"
    append_record(path, _record(0, 0))
    with path.open("a") as f:
        f.write(_record(1, 0).to_json()[:100])  # a writer killed in the middle of its line
    append_record(path, _record(2, 0))
    records = read_records(path)
    assert [r["run_id"] for r in records] == ["0-0", "0-2"]


def test_round_trip(tmp_path: Path) -> None:
    record = EvalRecord(
        run_id="r",
        experiment="x",
        fingerprint="f",
        status=Status.DIVERGED,
        outputs=("inf", "nan"),
        point=(1.0, -0.0),
        hparams={"lora_r": 8},
        metrics={"train_loss": float("nan")},
    )
    append_record(tmp_path / "r.jsonl", record)
    [read] = read_records(tmp_path / "r.jsonl")
    assert read["status"] == "DIVERGED" and read["outputs"] == ["inf", "nan"]
    assert read["hparams"] == {"lora_r": 8} and read["schema_version"] == 1
