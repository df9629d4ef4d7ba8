"""The failure policy: which failure fails a point and which fails the whole call, with what record status,
output line and exit status. This table is its single statement; every path that evaluates points asks
the functions below instead of deciding for itself.

| what happened                                      | record status         | output line     | the call         |
|----------------------------------------------------|-----------------------|-----------------|------------------|
| the evaluation finished                            | OK                    | values, CNT 1   | goes on          |
| the loss became NaN or infinite                    | DIVERGED              | OBJ inf, CNT 1  | goes on          |
| out of memory (CUDA, host allocator, MemoryError)  | OOM                   | nan, CNT 1      | goes on          |
| training ran past ``training.timeout_s``           | TIMEOUT               | nan, CNT 1      | goes on          |
| the line is not a point of the search space        | INVALID_POINT         | nan, CNT 1      | goes on          |
| any other exception while training or validating   | ERROR                 | nan, CNT 1      | goes on          |
| an evaluation process ended without a record       | ERROR, written by the | nan, CNT 1      | goes on          |
| (a signal, e.g. the out-of-memory killer; a crash) | process that started  | (NOMAD called   |                  |
|                                                    | it, or by the study   | it: none, a     |                  |
|                                                    | driver when NOMAD     | failure to      |                  |
|                                                    | ends                  | NOMAD)          |                  |
| an evaluation killed with its caller (kill -9 of    | KILLED, written from  | none (nobody    | gone with it     |
| the study, a machine crash): its run folder holds  | the folder's marker   | is left to      |                  |
| ``running.json`` and no record                     | by the study driver   | read it)        |                  |
| the model or the data cannot be loaded (here, or   | NOT_RUN, for it and   | none            | fails: exit 1    |
| in an evaluation process: its exit status 1 or 2)  | every later point     |                 |                  |
| the records folder cannot be written (full disk,   | NOT_RUN where it can  | none            | fails: exit 1,   |
| read-only, no permission): a record, eval.log, an  | still be written, for |                 | one line: cannot |
| adapter, traceback.txt (``RecordsError``); checked | it and every later    |                 | write records in |
| before the model loads, too                        | point                 |                 | DIR: <reason>    |
| the experiment or an option is invalid             | none (nothing ran)    | none            | fails: exit 2    |
| SIGINT or SIGTERM                                  | INTERRUPTED; later    | none            | interrupted: 130 |
|                                                    | points NOT_RUN        |                 |                  |
| the same while the study is stopping (the Ctrl-C   | INTERRUPTED; later    | nan, CNT 0      | goes on: exit 0  |
| of ``lora-blackbox study``, ``blackbox.stopping``) | points NOT_RUN        |                 |                  |
| a point asked for while the study is stopping      | NOT_RUN               | nan, CNT 0      | goes on          |

(CNT: the ``CNT_EVAL`` output, when the experiment prints it.)

A call that goes on prints one line per point and exits 0: NOMAD fails every point of a call that exits
non-zero, so a point's failure is its own line (``nan``), never an exit status. Every point a call was
given gets exactly one record, whoever writes it: the evaluating process, or the process that started it
when it died without one. ``CNT_EVAL`` is 1 for a finished evaluation (``Status.counted``): the budget
counts it; an interrupted, killed or never run point is evaluated again when the study resumes.

A write error under ``records.dir`` fails the call, not the point: every later point would fail the same
way, and a result that cannot be recorded is lost to a resumed study anyway.

The paths: in this process (``training.objective``); a subprocess per point (``runners.isolated``: the
Python API with ``isolate=True``, Optuna's trials); parallel processes or torchrun ranks per point
(``runners.local``); Ray tasks (``runners.ray_pool``); a container per call (``runners.container``,
whose exit status is the call's). Optuna reads the statuses as trial states (:func:`trial_state`).
"""

from __future__ import annotations

import enum
import signal
import sys
from typing import Literal

from blackbox.errors import PointError, SetupError, TrainingDiverged, TrainingTimeout


class Status(str, enum.Enum):
    """How an evaluation ended. ``counted``: whether it is a finished evaluation (it spent the budget); an
    interrupted or killed one, or one the call never reached, is not, and a resumed study evaluates its point
    again."""

    OK = "OK"
    DIVERGED = "DIVERGED"  # NaN/inf loss: objective printed as inf, a valid but very bad point
    OOM = "OOM"  # out of memory (GPU or host)
    TIMEOUT = "TIMEOUT"  # training ran past training.timeout_s
    INVALID_POINT = "INVALID_POINT"  # the point file line is not a point of the space
    ERROR = "ERROR"  # any other exception while training or validating; a process that died without a record
    INTERRUPTED = "INTERRUPTED"  # SIGINT/SIGTERM arrived during the evaluation
    KILLED = "KILLED"  # killed before it could record anything, its caller with it (found from its run folder)
    NOT_RUN = "NOT_RUN"  # the call failed (e.g. the model could not be loaded) before this point ran

    @property
    def counted(self) -> bool:
        return self not in (Status.INTERRUPTED, Status.KILLED, Status.NOT_RUN)


class Call(enum.Enum):
    """What a failure means for the whole call, and the exit status it ends with."""

    GOES_ON = 0
    FAILS = 1
    INTERRUPTED = 130

    @property
    def exit_status(self) -> int:
        return self.value


def status_of(error: BaseException) -> Status | None:
    """The status of an evaluation that raised ``error``; None for what is not an evaluation's failure
    (``SystemExit``, ``GeneratorExit``): let it pass."""
    if isinstance(error, KeyboardInterrupt):  # SIGINT, and SIGTERM through the CLI's handler
        return Status.INTERRUPTED
    if isinstance(error, SetupError):
        return Status.NOT_RUN
    if isinstance(error, PointError):
        return Status.INVALID_POINT
    if isinstance(error, TrainingDiverged):
        return Status.DIVERGED
    if isinstance(error, TrainingTimeout):
        return Status.TIMEOUT
    if _is_out_of_memory(error):
        return Status.OOM
    if isinstance(error, Exception):
        return Status.ERROR
    return None


def call_after(status: Status, *, stopping: bool) -> Call:
    """What the call does after one of its points ended with ``status`` (``stopping``: the study asked it to
    stop). NOT_RUN here means the point could not run because the call cannot proceed."""
    if status is Status.NOT_RUN:
        return Call.GOES_ON if stopping else Call.FAILS
    if status is Status.INTERRUPTED:
        return Call.GOES_ON if stopping else Call.INTERRUPTED
    return Call.GOES_ON


def process_status(returncode: int, recorded: Status | None) -> Status:
    """The status of a point evaluated by a process (an ``eval`` subprocess, a torchrun launcher, a Ray task's,
    a container's) that ended with ``returncode``, having recorded ``recorded`` for it (None: no record).
    The process's own record stands; without one, its exit tells."""
    if recorded is not None:
        return recorded
    if returncode in (130, -signal.SIGINT):
        return Status.INTERRUPTED  # before it could record anything
    if returncode in (1, 2):
        return Status.NOT_RUN  # it could not proceed (setup or configuration: see its stderr)
    return Status.ERROR  # killed by a signal, crashed, or exited 0 without recording: see describe_exit


def describe_exit(returncode: int) -> str:
    """How a process ended, for a record's error: ``was killed by SIGKILL (...)``, ``exited with status 3``."""
    if returncode < 0:
        name = signal.Signals(-returncode).name if -returncode in signal.valid_signals() else str(-returncode)
        return f"was killed by {name}" + (" (the kernel's out-of-memory killer?)" if name == "SIGKILL" else "")
    return f"exited with status {returncode}"


def trial_state(status: Status) -> Literal["complete", "fail", "not_counted"]:
    """How an Optuna study takes an evaluation: ``complete`` (its objective; ``inf`` when diverged, as NOMAD
    reads it), ``fail`` (a counted failure), ``not_counted`` (failed, left out of ``--n-trials``, and its
    point queued to run first when the study resumes)."""
    if status in (Status.OK, Status.DIVERGED):
        return "complete"
    return "fail" if status.counted else "not_counted"


def _is_out_of_memory(error: BaseException) -> bool:
    """GPU OOM, Python's MemoryError, or the CPU allocator failing (a plain RuntimeError in torch).

    torch is looked up, not imported: this module is below the training layer.
    """
    if isinstance(error, MemoryError):
        return True
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(error, torch.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and "DefaultCPUAllocator: can't allocate memory" in str(error)
