"""Evaluation records: one JSON object per evaluation, appended to a JSON Lines file.

Every evaluation leaves a record, failed ones too. Several processes may append to one file at once
(NOMAD's parallel evaluations): each record is one ``write`` under an exclusive ``flock``. A process
killed in the middle of a write can leave a torn last line; the next writer starts on a fresh line
and readers skip lines that do not parse, so one torn record never hides the others.
"""

from __future__ import annotations

import enum
import fcntl
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
RECORDS_FILE = "records.jsonl"


class Status(str, enum.Enum):
    OK = "OK"
    DIVERGED = "DIVERGED"  # NaN/inf loss: objective printed as inf, a valid but very bad point
    OOM = "OOM"  # out of memory (GPU or host)
    TIMEOUT = "TIMEOUT"  # training ran past training.timeout_s
    INVALID_POINT = "INVALID_POINT"  # the point file line is not a point of the space
    ERROR = "ERROR"  # any other exception while training or validating
    INTERRUPTED = "INTERRUPTED"  # SIGINT/SIGTERM arrived during the evaluation
    NOT_RUN = "NOT_RUN"  # the call failed (e.g. the model could not be loaded) before this point ran


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
    schema_version: int = SCHEMA_VERSION

    @property
    def output_line(self) -> str:
        return " ".join(self.outputs)

    def to_json(self) -> str:
        data = asdict(self)
        data["status"] = self.status.value
        return json.dumps(data, allow_nan=True)


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


def write_json_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


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
