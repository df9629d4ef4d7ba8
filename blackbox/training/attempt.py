"""An evaluation while it runs, and what it leaves besides its metrics: its run folder, its ``eval.log``, the text
of its failure and the versions its record names. ``training.objective`` writes its record from them."""

from __future__ import annotations

import contextlib
import logging
import platform
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from blackbox._version import __version__
from blackbox.core.curves import CurvePoint, Stop
from blackbox.core.early_stopping import Judge
from blackbox.core.failures import Status
from blackbox.core.logs import adopt_library_loggers, hand_over
from blackbox.core.point import PointSource
from blackbox.core.record import EvalRecord, RecordStore, new_run_id, now, writing_records
from blackbox.core.space import HyperParams


@dataclass
class Attempt:
    """One evaluation while it runs: its identity, folder, and what it has measured so far."""

    run_id: str
    run_dir: Path
    hparams: HyperParams
    source: PointSource
    started: float
    started_at: str
    metrics: dict[str, Any]
    timings: dict[str, float]
    log_failure: OSError | None = None  # the first error writing eval.log (full disk): it fails the call
    mlflow_run_id: str | None = None  # its MLflow run, when tracked
    step_losses: tuple[float, ...] = ()
    judge: Judge | None = None  # who decides at the checkpoints (None: the experiment's [stopping] rule)
    curve: tuple[CurvePoint, ...] = ()  # the learning curve, with [validation] checkpoints
    stop: Stop | None = None  # where and why a judge stopped it
    record: EvalRecord | None = None  # once written

    @classmethod
    def start(cls, store: RecordStore, hparams: HyperParams, source: PointSource, *, create: bool) -> Attempt:
        run_id = new_run_id()
        run_dir = store.run_dir(run_id)
        if create:
            with writing_records(store.folder):
                run_dir.mkdir(parents=True, exist_ok=True)
        return cls(run_id, run_dir, hparams, source, time.perf_counter(), now(), {"run_id": run_id}, {})


def describe_failure(error: BaseException, status: Status) -> str:
    """The record's error text of a failed evaluation."""
    if status is Status.OOM:
        return f"out of memory: {error}"
    if status in (Status.ERROR,):
        return f"{type(error).__name__}: {error}"
    return str(error) or status.value.lower()


class RunLog(logging.FileHandler):
    """An evaluation's eval.log. A write error (full disk) is kept for the attempt, which then fails the call
    with one line (``RecordsError``), instead of logging's "--- Logging error ---" traceback per message."""

    def __init__(self, attempt: Attempt) -> None:
        super().__init__(attempt.run_dir / "eval.log", encoding="utf-8")
        self.attempt = attempt

    def handleError(self, record: logging.LogRecord) -> None:  # logging's name
        error = sys.exc_info()[1]
        if not isinstance(error, OSError):
            super().handleError(record)
        elif self.attempt.log_failure is None:
            self.attempt.log_failure = error


@contextlib.contextmanager
def log_to(attempt: Attempt, records_dir: Path) -> Iterator[None]:
    """Write every log record of one evaluation into its run folder's ``eval.log``: the package's, and the
    libraries' logs and warnings (``blackbox.core.logs``); the first evaluation of a call gets those logged since
    the call started (the libraries' import-time warnings) at its top."""
    with writing_records(records_dir):
        handler = RunLog(attempt)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    root = logging.getLogger()
    adopt_library_loggers()
    hand_over(handler)
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        with contextlib.suppress(OSError):  # a failed write is the attempt's log_failure already
            handler.close()


def versions() -> dict[str, str]:
    import peft
    import transformers

    versions = {
        "blackbox": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
    }
    if torch.cuda.is_available():
        versions["cuda"] = str(torch.version.cuda)
        versions["gpu"] = torch.cuda.get_device_name()
    return versions
