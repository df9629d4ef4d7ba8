"""Evaluation records: one JSON object per evaluation, appended to a JSON Lines file.

Every evaluation leaves a record, failed ones too. Several processes may append to one file at once
(NOMAD's parallel evaluations): each record is one ``write`` under an exclusive ``flock``. A process
killed in the middle of a write can leave a torn last line; the next writer starts on a fresh line
and readers skip lines that do not parse, so one torn record never hides the others.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import platform
import secrets
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from blackbox import __version__
from blackbox.errors import PointError
from blackbox.failures import Status
from blackbox.folders import RECORDS_FILE
from blackbox.output import output_tokens

if TYPE_CHECKING:
    from blackbox.experiment import Experiment
    from blackbox.point import PointSource

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class EvalRecord:
    """What one evaluation was, did and printed. ``outputs`` are the tokens of its output line."""

    run_id: str
    experiment: str
    fingerprint: str
    status: Status
    outputs: tuple[str, ...]
    error: str | None = None
    point_line: str | None = None
    point: tuple[float, ...] | None = None
    hparams: dict[str, float] | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    memory: dict[str, float] = field(default_factory=dict)
    seed: int | None = None
    device: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    host: str | None = None
    pid: int | None = None
    versions: dict[str, str] = field(default_factory=dict)
    run_dir: str | None = None
    slot: str | None = None  # the leased device(s) of a parallel run (LORA_BLACKBOX_SLOT)
    point_file: str | None = None
    block_index: int | None = None
    mlflow_run_id: str | None = None  # the evaluation's MLflow run, when tracked (blackbox.tracking)
    schema_version: int = SCHEMA_VERSION

    @property
    def output_line(self) -> str:
        return " ".join(self.outputs)

    def as_dict(self) -> dict[str, Any]:
        """The record as ``records.jsonl`` holds it (what :func:`read_records` returns)."""
        data: dict[str, Any] = json.loads(self.to_json())
        return data

    def to_json(self) -> str:
        data = asdict(self)
        data["status"] = self.status.value
        return json.dumps(data, allow_nan=True)


def new_run_id() -> str:
    """A unique, time-ordered evaluation id: ``20261201T213755-8e20f663``."""
    return f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{secrets.token_hex(4)}"


def now() -> str:
    """The current UTC time as records store it (ISO 8601, milliseconds)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def build_record(
    experiment: Experiment,
    status: Status,
    source: PointSource,
    *,
    run_id: str | None = None,
    error: str | None = None,
    metrics: dict[str, Any] | None = None,
    **fields: Any,
) -> EvalRecord:
    """The record of one evaluation of ``experiment``, its outputs derived from ``status`` and ``metrics``.

    Every record is built here, whatever ran (or did not run) the point: fields that only an evaluation
    process knows (timings, memory, device, run folder, ...) come as keyword arguments.
    """
    run_id = run_id or new_run_id()
    metrics = {"run_id": run_id, **(metrics or {})}
    fields.setdefault("versions", {"blackbox": __version__, "python": platform.python_version()})
    return EvalRecord(
        run_id=run_id,
        experiment=experiment.study.name,
        fingerprint=experiment.fingerprint(),
        status=status,
        outputs=output_tokens(experiment.study.outputs, status, metrics),
        error=error,
        point_line=source.line,
        point=source.values,
        point_file=source.file,
        block_index=source.block_index,
        metrics=metrics,
        seed=experiment.training.seed,
        finished_at=now(),
        host=platform.node(),
        pid=os.getpid(),
        slot=os.environ.get("LORA_BLACKBOX_SLOT"),
        **fields,
    )


def record_not_run(
    experiment: Experiment, lines: list[str], point_file: str | None, *, reason: str, first_block_index: int = 0
) -> list[str]:
    """Record every non-blank line as NOT_RUN (the call never evaluated it) and return their output lines:
    failures that do not count (CNT_EVAL 0). Needs no torch: it answers at once.
    """
    from blackbox.point import PointSource, parse_point

    records_file = experiment.records_dir.resolve() / RECORDS_FILE
    outputs = []
    for block_index, line in enumerate(lines, start=first_block_index):
        if not line.strip():
            continue
        try:
            values: tuple[float, ...] | None = parse_point(line)
        except PointError:
            values = None
        record = build_record(
            experiment, Status.NOT_RUN, PointSource(line, values, point_file, block_index), error=reason
        )
        if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, rank 0 alone records
            append_record(records_file, record)
        outputs.append(record.output_line)
    return outputs


def append_record(path: Path, record: EvalRecord) -> None:
    """Append one record as one line, safely against concurrent writers and torn previous lines."""
    append_json_line(path, record.to_json())


def append_json_line(path: Path, text: str) -> None:
    """Append one JSON text as one line (see :func:`append_record`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = (text + "\n").encode()
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            data = b"\n" + data  # a writer was killed mid-line: do not glue this record to it
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)  # closing releases the lock


def find_record(records_file: Path, *, point_file: str, block_index: int | None) -> dict[str, Any] | None:
    """The last record of the point at ``block_index`` of ``point_file``, or None."""
    if not records_file.exists():
        return None
    found = [
        r
        for r in read_records(records_file)
        if r.get("point_file") == point_file and (block_index is None or r.get("block_index") == block_index)
    ]
    return found[-1] if found else None


def read_records(path: Path) -> list[dict[str, Any]]:
    """Every record of a records file; torn or corrupt lines are skipped with a warning."""
    records = []
    with path.open(encoding="utf-8", errors="replace") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                logger.warning("%s line %d is not a complete record (a writer was killed?): skipped", path, number)
                continue
            if isinstance(record, dict):
                records.append(record)
    return records
