"""One evaluation in a ``lora-blackbox eval`` subprocess, called exactly as NOMAD calls it.

The point goes into a point file of its own; the subprocess trains, validates, appends its record to the
records file and prints the output line. The record is found by that point file and the subprocess's pid.
A subprocess that ends without a record (killed by the kernel's out-of-memory killer, a segfault) gets
one written here, so that every evaluation leaves a record.

The subprocess runs in a session of its own: a terminal's Ctrl-C reaches this process only, which then
sends the subprocess one SIGINT, waits for it to record its evaluation as INTERRUPTED, and re-raises.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from blackbox.errors import PointError
from blackbox.experiment import Experiment
from blackbox.failures import Status
from blackbox.point import PointSource, parse_point
from blackbox.record import RECORDS_FILE, append_record, build_record, read_records
from blackbox.runners import eval_command
from blackbox.space import SearchSpace

logger = logging.getLogger(__name__)

# How long an interrupted subprocess gets to record its evaluation before it is killed.
_INTERRUPT_GRACE_S = 60.0


def evaluate_in_subprocess(
    line: str,
    *,
    experiment_ref: str,
    overrides: tuple[str, ...],
    experiment: Experiment,
    quiet: bool = False,
) -> dict[str, Any]:
    """Evaluate one point line in a ``lora-blackbox eval`` subprocess; return its record (a dict).

    The subprocess inherits the working directory (relative ``records.dir`` resolve alike), the
    environment and stderr (its logs and training progress). Its stdout is the output line, checked
    against the record.

    Raises:
        KeyboardInterrupt: this process was interrupted (the subprocess was stopped and recorded first).
    """
    records_file = experiment.records_dir.resolve() / RECORDS_FILE
    with tempfile.TemporaryDirectory(prefix="lora-blackbox-point-") as folder:
        point_file = (Path(folder) / "point.txt").resolve()  # as the subprocess records it
        point_file.write_text(line.rstrip("\n") + "\n")
        command = eval_command(experiment_ref, overrides, str(point_file))
        env = {**os.environ, "LORA_BLACKBOX_QUIET": "1"} if quiet else None
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=subprocess.PIPE, env=env, start_new_session=True)
        try:
            stdout, _ = process.communicate()
        except KeyboardInterrupt:
            _stop(process)
            raise
        finally:
            if process.poll() is None:  # an exception other than Ctrl-C: never leave the subprocess behind
                process.kill()
                process.wait()
        seconds = time.perf_counter() - started
        found = [
            r
            for r in (read_records(records_file) if records_file.exists() else [])
            if r.get("point_file") == str(point_file) and r.get("pid") == process.pid
        ]
    if found:
        record = found[-1]
        printed = stdout.decode(errors="replace").strip()
        if process.returncode == 0 and printed != " ".join(record["outputs"]):
            logger.warning("run %s printed %r but recorded %r", record["run_id"], printed, record["outputs"])
        return record
    return _record_missing(line, experiment, process.returncode, seconds, records_file, point_file)


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Interrupt the subprocess as Ctrl-C would, and give it time to record its evaluation."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=_INTERRUPT_GRACE_S)
        except subprocess.TimeoutExpired:
            logger.warning("the evaluation did not stop within %.0f s after SIGINT: killed", _INTERRUPT_GRACE_S)
            process.kill()
            process.wait()


def _record_missing(
    line: str, experiment: Experiment, returncode: int, seconds: float, records_file: Path, point_file: Path
) -> dict[str, Any]:
    """Write and return the record of a subprocess that ended without writing one."""
    if returncode < 0:
        name = signal.Signals(-returncode).name if -returncode in signal.valid_signals() else str(-returncode)
        ended = f"was killed by {name}" + (" (the kernel's out-of-memory killer?)" if name == "SIGKILL" else "")
    else:
        ended = f"exited with status {returncode}"
    if returncode in (1, 2):
        status = Status.NOT_RUN  # the call could not proceed (setup or configuration): see its stderr
    elif returncode in (130, -signal.SIGINT):
        status = Status.INTERRUPTED
    else:
        status = Status.ERROR
    error = f"lora-blackbox eval {ended} and wrote no record"
    logger.error("%s (point %r)", error, line.strip())
    point: tuple[float, ...] | None = None
    hparams = None
    # An invalid point keeps only its line; the subprocess would have said why it is invalid.
    with contextlib.suppress(PointError):
        point = parse_point(line)
        hparams = SearchSpace.from_experiment(experiment).decode(point).as_dict()
    record = build_record(
        experiment,
        status,
        PointSource(line=line, values=point, file=str(point_file)),
        error=error,
        hparams=hparams,
        metrics={"total_seconds": seconds},
        timings={"total_s": seconds},
    )
    append_record(records_file, record)
    data: dict[str, Any] = json.loads(record.to_json())
    return data
