"""One evaluation in a ``lora-blackbox eval`` subprocess, called exactly as NOMAD calls it.

The point goes into a point file of its own; the subprocess trains, validates, appends its record to the
records file and prints the output line. The point is then settled (``runners.settle``): its record is
found by that point file, and a subprocess that ends without one (killed by the kernel's out-of-memory
killer, a segfault) gets one written here, so that every evaluation leaves exactly one record.

The subprocess runs in a session of its own: a terminal's Ctrl-C reaches this process only, which then
sends the subprocess one SIGINT and waits for it to record its evaluation as INTERRUPTED: the caller reads that
record (``failures.call_after``) as it would read an evaluation interrupted in its own process.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from blackbox.core.experiment import Experiment, experiment_reference
from blackbox.core.record import EvalRecord
from blackbox.runners import eval_argv, settle

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
) -> EvalRecord:
    """Evaluate one point line in a ``lora-blackbox eval`` subprocess; return its record.

    The subprocess inherits the working directory (relative ``records.dir`` resolve alike), the
    environment and stderr (its logs and training progress). The point is settled as every process-run
    point is (``runners.settle``): a subprocess that could not proceed, or was interrupted, leaves a NOT_RUN
    or INTERRUPTED record, which the caller reads as an evaluation in this process (``failures.call_after``).

    A Ctrl-C of this process is passed on to the subprocess, which records its evaluation INTERRUPTED.
    """
    with tempfile.TemporaryDirectory(prefix="lora-blackbox-point-") as folder:
        point_file = (Path(folder) / "point.txt").resolve()  # as the subprocess records it
        point_file.write_text(line.rstrip("\n") + "\n")
        command = eval_argv(experiment_reference(experiment_ref), overrides, str(point_file))
        env = {**os.environ, "LORA_BLACKBOX_QUIET": "1"} if quiet else None
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, env=env, start_new_session=True)
        try:
            process.wait()
        except KeyboardInterrupt:  # the subprocess records its evaluation INTERRUPTED; the caller reads it
            _stop(process)
        finally:
            if process.poll() is None:  # an exception other than Ctrl-C: never leave the subprocess behind
                process.kill()
                process.wait()
        settled = settle(
            experiment,
            line=line,
            point_file=str(point_file),
            block_index=0,
            returncode=process.returncode,
            seconds=time.perf_counter() - started,
        )
    return settled.record


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
