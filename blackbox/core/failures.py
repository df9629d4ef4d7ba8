"""The failure policy: the one place that decides what a failure does.

For every way an evaluation or a call can end, this module decides the record's status, the values the
output line carries, whether the evaluation counts against the budget, and how the whole call goes on or
ends (its exit status). Every path that evaluates points (in this process, subprocesses, torchrun ranks,
Ray tasks, a container, Optuna's trials, the Python API) asks the functions below instead of deciding for
itself; :data:`POLICY` is their table, rendered into ``docs/failures.md`` by :func:`policy_table` (a test
fails when the page and the code differ).

Why a point's failure is a line and not an exit status: NOMAD fails every point of a call that exits
non-zero, so a call that goes on prints one line per point and exits 0; only what makes every later point
fail the same way (the model cannot load, the records cannot be written) or what a person asked for
(Ctrl-C) ends the call. ``CNT_EVAL`` is 1 for a finished evaluation (:attr:`Status.counted`): an
interrupted, killed or never-run point is evaluated again when the study resumes.
"""

from __future__ import annotations

import enum
import math
import signal
import sys
from dataclasses import dataclass
from typing import Literal

from blackbox.core.errors import BlackboxError, ConfigError, PointError, SetupError, TrainingDiverged, TrainingTimeout


class Status(enum.StrEnum):
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

    @property
    def finished(self) -> bool:
        """Whether the evaluation has values of its own (its objective is a number, not ``nan``)."""
        return self in (Status.OK, Status.DIVERGED)


class Call(enum.Enum):
    """How the whole call goes on after a failure, and the exit status it ends with."""

    GOES_ON = 0
    FAILS = 1  # it cannot proceed: every later point would fail the same way
    INVALID = 2  # the experiment or an option is invalid: nothing ran
    TIMED_OUT = 124  # a container call passed its wall-clock limit (as timeout(1) says it)
    INTERRUPTED = 130  # SIGINT or SIGTERM (as a shell says it)

    @property
    def exit_status(self) -> int:
        return self.value


# ---------------------------------------------------------------------------------------------------------------
# Decisions


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


def call_of(error: BaseException) -> Call | None:
    """How a call ends when ``error`` escapes it (raised outside any evaluation, or where no point is left to
    record it); None for what is not ours to decide (a bug: its traceback ends the call)."""
    if isinstance(error, KeyboardInterrupt):
        return Call.INTERRUPTED
    if isinstance(error, ConfigError):
        return Call.INVALID
    if isinstance(error, BlackboxError):
        return Call.FAILS
    return None


def value_of_failure(status: Status, kind: str) -> float:
    """The value an output of ``kind`` (``OBJ``, ``PB``, ``EB``, ``EXTRA_O``) carries for an evaluation that did
    not finish OK: ``inf`` for the objective and constraints of a diverged one (a valid, very bad, infeasible
    point, as NOMAD reads ``inf``), ``nan`` otherwise (NOMAD: an undefined value, the point failed)."""
    if status is Status.DIVERGED and kind in ("OBJ", "PB", "EB"):
        return math.inf
    return math.nan


def raise_if_call_ends(status: Status, error: str | None) -> None:
    """For callers whose interface is exceptions (the Python API, retraining): raise what ends the call after
    an evaluation that ended with ``status`` (:func:`call_after`).

    Raises:
        SetupError: it could not run (the model or the data cannot be loaded).
        KeyboardInterrupt: it was interrupted (SIGINT, SIGTERM).
    """
    call = call_after(status, stopping=False)
    if call is Call.FAILS:
        raise SetupError(error or "the evaluation could not run")
    if call is Call.INTERRUPTED:
        raise KeyboardInterrupt(error or "the evaluation was interrupted")


def process_status(returncode: int, recorded: Status | None, *, launcher: bool = False, lost: bool = False) -> Status:
    """The status of a point evaluated by a process (an ``eval`` subprocess, a torchrun launcher, a Ray task's,
    a container's) that ended with ``returncode``, having recorded ``recorded`` for it (None: no record).

    The process's own record stands; without one, its exit tells: 130 or SIGINT, interrupted before it could
    record; 1 or 2, it could not proceed (setup or configuration) -- unless it was torchrun (``launcher``),
    whose 1 means "a rank failed"; a lost Ray worker (``lost``), a signal or a crash: ERROR.
    """
    if recorded is not None:
        return recorded
    if lost:
        return Status.ERROR
    if returncode in (130, -signal.SIGINT):
        return Status.INTERRUPTED
    if returncode == 1 and launcher:
        return Status.ERROR
    if returncode in (1, 2):
        return Status.NOT_RUN
    return Status.ERROR  # killed by a signal, crashed, or exited 0 without recording: see describe_exit


def unrecorded_status(*, caller_went_on: bool) -> Status:
    """The status of an evaluation that started (its run folder holds ``running.json``) and never recorded its
    end. ``caller_went_on``: its caller (NOMAD) ended normally after it, so the evaluation died alone (the
    out-of-memory killer, a crash) and was counted as a failed evaluation: ERROR. Otherwise it was cut with its
    caller (kill -9 of the study, a machine crash): KILLED, evaluated again when the study resumes."""
    return Status.ERROR if caller_went_on else Status.KILLED


def call_of_container(ended: str, status: int | None, *, stopping: bool) -> tuple[Call, int]:
    """How ``lora-blackbox container`` ends after its container ``ended`` (``exited``, ``killed``, ``timeout``,
    ``interrupted``) with exit ``status`` (None: it never ran). Returns the call and its exit status: the
    container's own, relayed, unless the call timed out (124) or was interrupted (130). A stopping study's
    container that answered its cut point and ended normally is relayed as it ended."""
    if ended == "timeout":
        return Call.TIMED_OUT, Call.TIMED_OUT.exit_status
    if ended == "interrupted" and not (stopping and status == 0):
        return Call.INTERRUPTED, Call.INTERRUPTED.exit_status
    code = status or 0
    return (Call.GOES_ON if code == 0 else Call.FAILS), code


def container_returncode(ended: str, status: int | None) -> int:
    """A container's end as a process's return code, for :func:`process_status`: SIGKILL when it was killed,
    an interrupt when it never ran or was stopped, ``-N`` for the shell's ``128 + N`` (killed by signal N)."""
    if ended == "killed" or status is None:
        return -signal.SIGKILL if ended == "killed" else 130
    if status > 128 and status - 128 in signal.valid_signals():
        return -(status - 128)
    return status


def trial_state(status: Status) -> Literal["complete", "fail", "not_counted"]:
    """How an Optuna study takes an evaluation: ``complete`` (its objective; ``inf`` when diverged, as NOMAD
    reads it), ``fail`` (a counted failure), ``not_counted`` (failed, left out of ``--n-trials``, and its
    point queued to run first when the study resumes)."""
    if status.finished:
        return "complete"
    return "fail" if status.counted else "not_counted"


def describe_exit(returncode: int) -> str:
    """How a process ended, for a record's error: ``was killed by SIGKILL (...)``, ``exited with status 3``."""
    if returncode < 0:
        name = signal.Signals(-returncode).name if -returncode in signal.valid_signals() else str(-returncode)
        return f"was killed by {name}" + (" (the kernel's out-of-memory killer?)" if name == "SIGKILL" else "")
    return f"exited with status {returncode}"


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


# ---------------------------------------------------------------------------------------------------------------
# The table


@dataclass(frozen=True)
class Rule:
    """One row of the policy: what happened, the record's status (None: no record), the output line, the
    call. ``output`` and ``call`` are derived from the functions above (:func:`policy_table`)."""

    happened: str
    status: Status | None
    stopping: bool = False
    recorded_by: str = ""
    prints: bool = True  # whether the call prints the point's line (False: the call ends without lines)
    call: Call | None = None  # for rows without a status: how the call ends

    @property
    def outcome(self) -> Call:
        if self.call is not None:
            return self.call
        assert self.status is not None
        return call_after(self.status, stopping=self.stopping)

    def output(self) -> str:
        """The output line of the point, in words."""
        if self.status is None or not self.prints or self.outcome is not Call.GOES_ON:
            return "none"
        counted = f"CNT {int(self.status.counted)}"
        if self.status is Status.OK:
            return f"values, {counted}"
        value = value_of_failure(self.status, "OBJ")
        return f"OBJ {value!r}, {counted}" if not math.isnan(value) else f"nan, {counted}"


_STOPPING = "while the study is stopping (its Ctrl-C)"
POLICY: tuple[Rule, ...] = (
    Rule("the evaluation finished", Status.OK),
    Rule("the loss became NaN or infinite", Status.DIVERGED),
    Rule("out of memory (CUDA, the host allocator, MemoryError)", Status.OOM),
    Rule("training ran past `training.timeout_s`", Status.TIMEOUT),
    Rule("the line is not a point of the search space", Status.INVALID_POINT),
    Rule("any other exception while training or validating", Status.ERROR),
    Rule(
        "an evaluation process ended without a record (a signal: the out-of-memory killer; a crash)",
        Status.ERROR,
        recorded_by="the process that started it; for NOMAD's calls, the study driver when NOMAD ends",
    ),
    Rule(
        "an evaluation killed with its caller (kill -9 of the study, a machine crash)",
        Status.KILLED,
        recorded_by="the study driver, from the run folder's `running.json`",
        prints=False,
        call=Call.INTERRUPTED,
    ),
    Rule("the model or the data cannot be loaded", Status.NOT_RUN, recorded_by="it and every later point"),
    Rule(
        "the records folder cannot be written (full, read-only)",
        Status.NOT_RUN,
        recorded_by="it and every later point, where the folder can still be written",
    ),
    Rule("the experiment or an option is invalid", None, call=Call.INVALID),
    Rule("SIGINT or SIGTERM", Status.INTERRUPTED, recorded_by="it; later points NOT_RUN"),
    Rule(f"SIGINT or SIGTERM {_STOPPING}", Status.INTERRUPTED, stopping=True, recorded_by="it; later points NOT_RUN"),
    Rule(f"a point asked for {_STOPPING}", Status.NOT_RUN, stopping=True),
    Rule("a container call passed `--timeout`", Status.INTERRUPTED, prints=False, call=Call.TIMED_OUT),
)
"""Every way a point or a call ends, in the order of ``docs/failures.md``."""


def policy_table() -> str:
    """:data:`POLICY` as a Markdown table: what ``docs/failures.md`` shows."""
    rows = [
        "| what happened | record status | output line | the call |",
        "|---|---|---|---|",
    ]
    for rule in POLICY:
        status = rule.status.value if rule.status else "none (nothing ran)"
        if rule.recorded_by:
            status += f" ({rule.recorded_by})"
        call = {
            Call.GOES_ON: "goes on: exit 0" if rule.stopping else "goes on",
            Call.FAILS: "fails: exit 1",
            Call.INVALID: "fails: exit 2",
            Call.TIMED_OUT: "ends: exit 124",
            Call.INTERRUPTED: "interrupted: exit 130",
        }[rule.outcome]
        if rule.status is Status.KILLED:
            call = "gone with it"
        rows.append(f"| {rule.happened} | {status} | {rule.output()} | {call} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":  # python -m blackbox.core.failures: the table for docs/failures.md
    sys.stdout.write(policy_table())
