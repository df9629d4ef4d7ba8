"""Evaluation records: one JSON object per evaluation, appended to a JSON Lines file of a records folder.

Every evaluation leaves a record, failed ones too. :class:`RecordStore` is the one way to a records folder:
its file (``records.jsonl``), its run folders (``evals/<run_id>/``), appending, and reading typed
:class:`EvalRecord` objects back. Several processes may append to one file at once (NOMAD's parallel
evaluations): each record is one ``write`` under an exclusive ``flock``. A process killed in the middle of a
write can leave a torn last line; the next writer starts on a fresh line and readers skip lines that do not
parse, so one torn record never hides the others.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import logging
import math
import os
import platform
import secrets
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from blackbox._version import __version__
from blackbox.core.curves import CurvePoint, Stop, curve_from_dicts, stop_from_dict
from blackbox.core.errors import PointError, RecordsError
from blackbox.core.failures import Status, unrecorded_status
from blackbox.core.files import write_text_atomic
from blackbox.core.folders import EVALS_DIR, RECORDS_FILE
from blackbox.core.output import output_tokens
from blackbox.core.point import shorten

if TYPE_CHECKING:
    from blackbox.core.experiment import Experiment
    from blackbox.core.point import PointSource

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 3
"""2: records name their outputs (``output_specs``); 3: they keep their learning curve (``curve``) and, when a rule
stopped them early, where and why (``stopped``)."""


@dataclass(frozen=True)
class EvalRecord:
    """What one evaluation was, did and printed. ``outputs`` are the tokens of its output line, ``output_specs``
    what each token is (``study.outputs``: ``OBJ:validation_loss``, ``CNT_EVAL``, ...)."""

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
    output_specs: tuple[str, ...] = ()  # empty in records of schema 1
    # The validation loss on the checkpoint rows at each checkpoint ([validation] checkpoints); empty without them.
    curve: tuple[CurvePoint, ...] = ()
    stopped: Stop | None = None  # where and why a stopping rule or a pruner stopped it (status STOPPED)
    schema_version: int = SCHEMA_VERSION

    @property
    def output_line(self) -> str:
        return " ".join(self.outputs)

    @property
    def counted(self) -> bool:
        return self.status.counted

    @property
    def compute_seconds(self) -> float:
        """What the evaluation cost in wall-clock seconds of its device, as a user pays it: its process's start-up
        (for the first evaluation of a call), the loading, the training, the checkpoints, the validation and the
        benchmarks (``timings``: ``startup_s`` and ``total_s``, which holds the rest). 0 for a point never run."""
        return float(self.timings.get("startup_s", 0.0)) + float(self.timings.get("total_s", 0.0))

    @property
    def full_fidelity(self) -> bool:
        """Whether it trained and validated in full (not a low-fidelity, surrogate evaluation)."""
        return bool(
            self.metrics.get("fidelity_train", 1.0) == 1.0 and self.metrics.get("fidelity_validation", 1.0) == 1.0
        )

    def output(self, kind: str) -> float | None:
        """The value of its first output of ``kind`` (``OBJ``, ``PB``, ...) as printed; None when it has none."""
        specs = self.output_specs or ()
        for spec, token in zip(specs, self.outputs, strict=False):
            if spec.partition(":")[0] == kind:
                try:
                    return float(token)
                except ValueError:
                    return None
        if kind == "OBJ" and self.outputs and not specs:  # schema 1: the objective came first
            try:
                return float(self.outputs[0])
            except ValueError:
                return None
        return None

    def objective_values(self) -> tuple[float, ...]:
        """The values of its ``OBJ`` outputs as printed, in order (one per objective; ``nan`` when failed, ``inf``
        when diverged); records without output names: the first output."""
        specs = self.output_specs or ("OBJ",)
        values = []
        for spec, token in zip(specs, self.outputs, strict=False):
            if spec.partition(":")[0] == "OBJ":
                try:
                    values.append(float(token))
                except ValueError:
                    values.append(math.nan)
        return tuple(values)

    def with_status(self, status: Status, error: str) -> EvalRecord:
        """This record ended otherwise: its status, error and output line (from its specs) replaced."""
        outputs = output_tokens(self.output_specs, status, self.metrics) if self.output_specs else self.outputs
        return dataclasses.replace(self, status=status, error=error, outputs=outputs, finished_at=now())

    def as_dict(self) -> dict[str, Any]:
        """The record as ``records.jsonl`` holds it."""
        data: dict[str, Any] = json.loads(self.to_json())
        return data

    def to_json(self) -> str:
        data = asdict(self)
        data["status"] = self.status.value
        return json.dumps(data, allow_nan=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EvalRecord:
        """A record as read from JSON; keys of later versions are ignored, missing ones take their defaults.

        Raises:
            ValueError: not a record (no run id, or an unknown status).
        """
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        if not isinstance(values.get("run_id"), str):
            raise ValueError("a record needs its run_id")
        values["status"] = Status(str(values.get("status")))
        values.setdefault("experiment", "")
        values.setdefault("fingerprint", "")
        values["outputs"] = tuple(str(t) for t in values.get("outputs") or ())
        values["output_specs"] = tuple(values.get("output_specs") or ())
        if values.get("point") is not None:
            values["point"] = tuple(float(v) for v in values["point"])
        for name in ("metrics", "timings", "memory", "versions"):
            values[name] = dict(values.get(name) or {})
        values["curve"] = curve_from_dicts(values.get("curve") or ())
        values["stopped"] = stop_from_dict(values.get("stopped"))
        return cls(**values)


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
        output_specs=experiment.study.outputs,
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


@contextlib.contextmanager
def writing_records(records_dir: Path) -> Iterator[None]:
    """Turn an ``OSError`` of the body (writing under ``records_dir``) into a :class:`RecordsError`: the call
    fails with one line (``blackbox.core.failures``), not a traceback."""
    try:
        yield
    except OSError as e:
        raise RecordsError(records_dir, e) from e


# Room a call needs before it loads anything: a few records and logs (an adapter can need more; running
# out while saving it still fails the call with one line, after the training).
_ROOM_BYTES = 1024**2
_PROBE_BYTES = 64 * 1024

RUNNING_FILE = "running.json"
"""Written into an evaluation's run folder when it starts; ``record.json`` joins it when it ends. A run folder
with the one and not the other, whose process is gone, is an evaluation killed without a trace (SIGKILL,
the out-of-memory killer, a machine crash): :meth:`RecordStore.record_unfinished` records it."""
RECORD_FILE = "record.json"
"""An evaluation's own record, in its run folder."""


class RecordStore:
    """The records of one records folder (a study folder): ``records.jsonl`` and a run folder per evaluation.

    Example::

        store = RecordStore.of(experiment)
        for record in store.records():
            record.status, record.metrics.get("validation_loss")
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.path = folder / RECORDS_FILE

    @classmethod
    def of(cls, experiment: Experiment) -> RecordStore:
        """The store of an experiment's ``records.dir`` (resolved: another working directory finds it alike)."""
        return cls(experiment.records_dir.resolve())

    def exists(self) -> bool:
        return self.path.is_file()

    def run_dir(self, run_id: str) -> Path:
        """The folder of one evaluation: ``eval.log``, ``record.json``, ``adapter/``."""
        return self.folder / EVALS_DIR / run_id

    # -- writing -----------------------------------------------------------------------------------------------

    def append(self, record: EvalRecord) -> None:
        """Append one record as one line, safely against concurrent writers and torn previous lines.

        Raises:
            RecordsError: the records file cannot be written (full disk, read-only folder).
        """
        with writing_records(self.folder):
            append_json_line(self.path, record.to_json())

    def write_run_record(self, record: EvalRecord) -> None:
        """An evaluation's own ``record.json`` in its run folder (atomic).

        Raises:
            RecordsError: it cannot be written.
        """
        with writing_records(self.folder):
            write_text_atomic(self.run_dir(record.run_id) / RECORD_FILE, record.to_json())

    def mark_running(self, record: EvalRecord) -> None:
        """Mark an evaluation as started: ``record`` is what is known of it so far (status KILLED: what it is
        taken for should it never finish).

        Raises:
            RecordsError: the marker cannot be written.
        """
        with writing_records(self.folder):
            write_text_atomic(self.run_dir(record.run_id) / RUNNING_FILE, record.to_json())

    def check_writable(self) -> None:
        """Check that the folder can be created and written and has room for records, before any work.

        Raises:
            RecordsError: it cannot (read-only, no permission, full disk, a file size limit).
        """
        with writing_records(self.folder):
            self.folder.mkdir(parents=True, exist_ok=True)
            free = os.statvfs(self.folder)
            if free.f_bavail * free.f_frsize < _ROOM_BYTES:
                available = free.f_bavail * free.f_frsize
                raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} ({available} bytes free)")
            probe = self.folder / f".write-check-{os.getpid()}"
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

    # -- reading -----------------------------------------------------------------------------------------------

    def records(self) -> list[EvalRecord]:
        """Every record, in the order they were written; torn or corrupt lines are skipped with a warning."""
        if not self.path.is_file():
            return []
        records = []
        with self.path.open(encoding="utf-8", errors="replace") as lines:
            for number, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                try:
                    records.append(EvalRecord.from_dict(json.loads(line)))
                except (json.JSONDecodeError, TypeError, ValueError):
                    logger.warning(
                        "%s line %d is not a complete record (a writer was killed?): skipped", self.path, number
                    )
        return records

    def __iter__(self) -> Iterator[EvalRecord]:
        return iter(self.records())

    def find(self, *, point_file: str, block_index: int | None) -> EvalRecord | None:
        """The last record of the point at ``block_index`` of ``point_file``, or None."""
        found = [
            r
            for r in self.records()
            if r.point_file == point_file and (block_index is None or r.block_index == block_index)
        ]
        return found[-1] if found else None

    def finished(self, fingerprint: str) -> dict[tuple[float, ...], EvalRecord]:
        """The finished evaluations (``Status.counted``) of the experiment with this fingerprint, by point (the last
        one of a point wins)."""
        return {r.point: r for r in self.records() if r.point and r.fingerprint == fingerprint and r.counted}

    # -- evaluations that never recorded their end -------------------------------------------------------------

    def unfinished(self, *, alive: bool = True) -> list[EvalRecord]:
        """The evaluations that started and never recorded their end, as KILLED records (not written).
        ``alive``: leave out those whose process still runs on this machine (False when none of the folder's
        evaluations can be running: a study's driver between two NOMAD runs)."""
        evals = self.folder / EVALS_DIR
        if not evals.is_dir():
            return []
        markers = sorted(p for p in evals.glob(f"*/{RUNNING_FILE}") if not (p.parent / RECORD_FILE).exists())
        if not markers:
            return []
        recorded = {r.run_id for r in self.records()}
        killed = []
        for marker in markers:
            try:
                record = EvalRecord.from_dict(json.loads(marker.read_text(encoding="utf-8")))
            except (OSError, json.JSONDecodeError, TypeError, ValueError):
                continue  # unreadable: written by rename (files.write_text_atomic), so never torn
            if record.run_id in recorded:
                continue  # its record was written by the process that started it (runners.settle)
            if alive and record.host == platform.node() and _running(record.pid):
                continue
            error = "the evaluation was killed before it could record its end (its run folder holds its log)"
            killed.append(dataclasses.replace(record, error=error))
        return killed

    def record_unfinished(
        self, *, alive: bool = True, solver_exit: int | None = None, interrupted: bool = False
    ) -> list[EvalRecord]:
        """Record every evaluation that started and never recorded its end (:meth:`unfinished`): its marker
        becomes its ``record.json`` and a line of the records file, with the status the failure policy gives
        it (``failures.unrecorded_status`` of its solver's exit ``solver_exit`` and whether the study was
        ``interrupted``: ERROR when NOMAD ended by itself, else KILLED). Returns them.

        Raises:
            RecordsError: the records cannot be written.
        """
        status = unrecorded_status(solver_exit=solver_exit, interrupted=interrupted)
        error = (
            "the evaluation process died without a record while its study went on (a signal: the out-of-memory "
            "killer?, or a crash; its run folder holds its log); NOMAD counted it as failed"
            if status.counted
            else "the evaluation was killed before it could record its end (its run folder holds its log)"
        )
        written = []
        for marker in self.unfinished(alive=alive):
            record = marker.with_status(status, error)
            self.write_run_record(record)
            self.append(record)
            written.append(record)
        return written


def append_json_line(path: Path, text: str) -> None:
    """Append one JSON text as one line, under an exclusive ``flock``, on a fresh line (see :class:`RecordStore`)."""
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


def record_not_run(
    experiment: Experiment, lines: list[str], point_file: str | None, *, reason: str, first_block_index: int = 0
) -> list[str]:
    """Record every non-blank line as NOT_RUN (the call never evaluated it) and return their output lines:
    failures that do not count (CNT_EVAL 0). Needs no torch: it answers at once.
    """
    from blackbox.core.point import PointSource, parse_point

    store = RecordStore.of(experiment)
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
                store.append(record)
        outputs.append(record.output_line)
    return outputs


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
