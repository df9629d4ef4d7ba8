"""Evaluation records: one JSON object per evaluation, appended to a JSON Lines file.

Every evaluation leaves a record, failed ones too. Several processes may append to one file at once
(NOMAD's parallel evaluations): each record is one ``write`` under an exclusive ``flock``. A process
killed in the middle of a write can leave a torn last line; the next writer starts on a fresh line
and readers skip lines that do not parse, so one torn record never hides the others.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import platform
import secrets
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from blackbox import __version__
from blackbox.errors import PointError, RecordsError
from blackbox.failures import Status
from blackbox.files import write_text_atomic
from blackbox.folders import RECORDS_FILE
from blackbox.output import output_tokens
from blackbox.point import shorten

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
    hparams: dict[str, Any] | None = None  # the four LoRA hyperparameters and the settings that are variables
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
        point_line=None if source.line is None else shorten(source.line),  # a garbage line is not stored whole
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
            # Recorded where possible: when the call fails because the records folder cannot be written,
            # its one error line says so, and these points are evaluated again anyway (not counted).
            with contextlib.suppress(RecordsError):
                append_record(records_file, record)
        outputs.append(record.output_line)
    return outputs


def append_record(path: Path, record: EvalRecord) -> None:
    """Append one record as one line, safely against concurrent writers and torn previous lines.

    Raises:
        RecordsError: the records file cannot be written (full disk, read-only folder).
    """
    with writing_records(path.parent):
        append_json_line(path, record.to_json())


@contextlib.contextmanager
def writing_records(records_dir: Path) -> Iterator[None]:
    """Turn an ``OSError`` of the body (writing under ``records_dir``) into a :class:`RecordsError`: the call
    fails with one line (``blackbox.failures``), not a traceback."""
    try:
        yield
    except OSError as e:
        raise RecordsError(records_dir, e) from e


# Room a call needs before it loads anything: a few records and logs (an adapter can need more; running
# out while saving it still fails the call with one line, after the training).
_ROOM_BYTES = 1024**2
_PROBE_BYTES = 64 * 1024


def check_records_writable(records_dir: Path) -> None:
    """Check that ``records_dir`` can be created and written and has room for records, before any work.

    Raises:
        RecordsError: it cannot (read-only, no permission, full disk, a file size limit).
    """
    with writing_records(records_dir):
        records_dir.mkdir(parents=True, exist_ok=True)
        free = os.statvfs(records_dir)
        if free.f_bavail * free.f_frsize < _ROOM_BYTES:
            raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} ({free.f_bavail * free.f_frsize} bytes free)")
        probe = records_dir / f".write-check-{os.getpid()}"
        try:
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                os.write(fd, bytes(_PROBE_BYTES))
                os.fsync(fd)
            finally:
                os.close(fd)
                probe.unlink()
        except OSError as e:
            raise OSError(e.errno, e.strerror) from None  # the probe's name would only puzzle


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


# ---------------------------------------------------------------------------------------------------------------
# An evaluation while it runs: its marker, and the evaluations that were killed before they could record.

RUNNING_FILE = "running.json"
"""Written into an evaluation's run folder when it starts; ``record.json`` joins it when it ends. A run folder
with the one and not the other, whose process is gone, is an evaluation killed without a trace (SIGKILL,
the out-of-memory killer, a machine crash): :func:`record_killed` records it as KILLED."""


def write_running_marker(run_dir: Path, record: EvalRecord) -> None:
    """Mark an evaluation as started: ``record`` is what is known of it so far (status KILLED: what it is
    taken for should it never finish)."""
    write_text_atomic(run_dir / RUNNING_FILE, record.to_json())


def killed_evaluations(records_dir: Path, *, alive: bool = True) -> list[tuple[Path, dict[str, Any]]]:
    """The evaluations under ``records_dir`` that started and never recorded their end, as KILLED records (not
    written), with their run folders. ``alive``: leave out those whose process still runs on this machine
    (False when none of the folder's evaluations can be running: a study's driver between two NOMAD runs)."""
    evals = records_dir / "evals"
    if not evals.is_dir():
        return []
    markers = sorted(p for p in evals.glob(f"*/{RUNNING_FILE}") if not (p.parent / "record.json").exists())
    if not markers:
        return []
    records_file = records_dir / RECORDS_FILE
    recorded = {r.get("run_id") for r in read_records(records_file)} if records_file.exists() else set()
    killed = []
    for marker in markers:
        try:
            record = json.loads(marker.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue  # unreadable: written by rename (files.write_text_atomic), so never torn
        if not isinstance(record, dict) or record.get("run_id") in recorded:
            continue  # its record was written by the process that started it (runners.settle)
        if alive and record.get("host") == platform.node() and _running(record.get("pid")):
            continue
        record["error"] = "the evaluation was killed before it could record its end (its run folder holds its log)"
        killed.append((marker.parent, record))
    return killed


def record_killed(records_dir: Path, *, alive: bool = True, alone: bool = False) -> list[dict[str, Any]]:
    """Record every evaluation under ``records_dir`` that started and never recorded its end
    (:func:`killed_evaluations`): its marker becomes its ``record.json`` and a line of the records file.
    KILLED (evaluated again when the study resumes), or with ``alone`` ERROR: the evaluation died while its
    caller went on (the out-of-memory killer, a crash), and that caller counted it as a failed evaluation, as
    ``blackbox.failures`` has it. Returns the records written.

    Raises:
        RecordsError: the records cannot be written.
    """
    written = []
    for run_dir, record in killed_evaluations(records_dir, alive=alive):
        if alone:
            record["status"] = Status.ERROR.value
            record["error"] = (
                "the evaluation process died without a record while its study went on (a signal: the "
                "out-of-memory killer?, or a crash; its run folder holds its log); NOMAD counted it as failed"
            )
            # A KILLED record's tokens are all nan but CNT_EVAL's 0 (output.output_tokens); counted, it is 1.
            record["outputs"] = ["1" if token == "0" else token for token in record.get("outputs") or []]
        record["finished_at"] = now()  # when it was found
        text = json.dumps(record, allow_nan=True)
        with writing_records(records_dir):
            write_text_atomic(run_dir / "record.json", text)
            append_json_line(records_dir / RECORDS_FILE, text)
        written.append(record)
    return written


def _running(pid: object) -> bool:
    """Whether process ``pid`` of this machine runs (a zombie does not: a killed evaluation whose parent died
    with it waits as one until something reaps it)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


def finished_records(records_file: Path, fingerprint: str) -> dict[tuple[float, ...], dict[str, Any]]:
    """The finished evaluations (``Status.counted``) of a records file with this experiment fingerprint, by
    point (the last one of a point wins)."""
    if not records_file.exists():
        return {}
    return {
        tuple(r["point"]): r
        for r in read_records(records_file)
        if r.get("point") and r.get("fingerprint") == fingerprint and Status(r["status"]).counted
    }
