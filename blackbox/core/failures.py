"""The failure policy: the one place that decides what a failure does.

For every way an evaluation or a call can end, this module decides the record's status, the values the
output line carries, whether the evaluation counts against the budget, and how the whole call goes on or
ends (its exit status). Every path that evaluates points (in this process, subprocesses, torchrun ranks,
Ray tasks, a container, Optuna's trials, the Python API) asks the functions below instead of deciding for
itself, and so do the study drivers (how a study ends, what its evaluations killed with it become) and the
side channels (Optuna's trial states, MLflow's run statuses). :data:`POLICY`, :data:`STUDY_POLICY` and
:func:`status_table` are their tables, rendered into ``docs/failures.md`` by :func:`policy_tables` (a test fails
when the page and the code differ).

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
    STOPPED = "STOPPED"  # a stopping rule or an Optuna pruner stopped the training at a checkpoint: it cannot win

    @property
    def counted(self) -> bool:
        return self not in (Status.INTERRUPTED, Status.KILLED, Status.NOT_RUN)

    @property
    def finished(self) -> bool:
        """Whether the evaluation has values of its own (its objective is a number, not ``nan``). A STOPPED one has
        not: the value it gives the solver is :func:`value_of_stopped`'s, not its own result."""
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


# Why a point is NOT_RUN: the error of its record.
NOT_RUN_STOPPING = "not evaluated: the study is stopping (Ctrl-C); a rerun evaluates this point"
NOT_RUN_INTERRUPTED = "not evaluated: the call was interrupted"


def not_run_reason(call: Call, error: str | None = None) -> str:
    """Why the points a call did not reach are NOT_RUN, once the call ends with ``call`` (``error``: why it
    failed, one line)."""
    if call is Call.INTERRUPTED:
        return NOT_RUN_INTERRUPTED
    return f"not evaluated: the call failed: {error or call.name.lower()}"


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


def call_of_decode(*, invalid_lines: int) -> Call:
    """How ``lora-blackbox decode`` ends (it evaluates nothing: each line gets its JSON object, ``{"error": ...}``
    for a line that is not a point): it fails when ``invalid_lines`` is not 0, so that a script notices."""
    return Call.FAILS if invalid_lines else Call.GOES_ON


def value_of_failure(status: Status, kind: str) -> float:
    """The value an output of ``kind`` (``OBJ``, ``PB``, ``EB``, ``EXTRA_O``) carries for an evaluation that did
    not finish OK: ``inf`` for the objective and constraints of a diverged one (a valid, very bad, infeasible
    point, as NOMAD reads ``inf``) and for the constraints of a stopped one (whose objective is
    :func:`value_of_stopped`'s), ``nan`` otherwise (NOMAD: an undefined value, the point failed). An extra output
    it measured is :func:`value_of_extra`'s."""
    if status is Status.DIVERGED and kind in ("OBJ", "PB", "EB"):
        return math.inf
    if status is Status.STOPPED and kind in ("PB", "EB"):
        return math.inf  # its constraints were never scored: taken as violated, so it is never the incumbent
    return math.nan


def value_of_extra(status: Status, measured: float | str | None) -> float | str:
    """What an extra output (``EXTRA_O``) of an evaluation that did not finish OK carries, given what it
    ``measured`` (None: nothing): a diverged or stopped evaluation ended by itself and its line is a value the
    solver uses, so what it measured (its time, memory, tokens, run id) is a fact of that evaluation and is
    kept, and what it did not reach is ``nan``; a failed one's line is ``nan`` throughout, so that no part of it
    reads as a result."""
    if status in (Status.DIVERGED, Status.STOPPED) and measured is not None:
        return measured
    return value_of_failure(status, "EXTRA_O")


def constraint_of(value: float) -> float:
    """A constraint's value for a solver that needs a number (Optuna's ``constraints_func``; <= 0: satisfied):
    ``nan``, a failed evaluation's (never scored), is taken as violated (``inf``)."""
    return math.inf if math.isnan(value) else value


def value_of_stopped(checkpoint_loss: float, incumbent: float | None) -> float:
    """The objective a solver receives for an evaluation stopped early at a checkpoint where its loss on the
    checkpoint rows was ``checkpoint_loss``, in a study whose best finished evaluation (the incumbent) has the
    objective ``incumbent`` (None: none yet).

    Its checkpoint loss, raised to just above the incumbent's value when it is lower. Why:

    - A stopped point must never look better than the incumbent, nor as good: NOMAD would move its poll centre
      (and the mesh) to a point that was stopped because it cannot win, and the study's best would be a training
      that never ended. The checkpoint loss alone can be lower than the incumbent's final loss: it is measured on
      other rows (the checkpoint subset), and a run that overfits ends above its earlier checkpoint.
    - Above that floor the value keeps the checkpoint's information (how bad the point looked when it stopped), so
      that NOMAD's quadratic models still see the shape of the landscape; ``inf`` or ``nan`` would leave the point
      out of the models, or fail it, and a constant would flatten them. A training loss falls as it goes on, so the
      checkpoint loss overstates rather than understates the point's final value: a pessimistic value, like
      Optuna's pruned trials, which its samplers rank below every complete trial.
    """
    if incumbent is None or not math.isfinite(incumbent) or math.isnan(checkpoint_loss):
        return checkpoint_loss
    if checkpoint_loss > incumbent:
        return checkpoint_loss
    return math.nextafter(incumbent, math.inf)  # strictly worse: a tie would not be "never as good"


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


def unrecorded_status(*, solver_exit: int | None = None, interrupted: bool = False) -> Status:
    """The status of an evaluation that started (its run folder holds ``running.json``) and never recorded its
    end, found when its solver (NOMAD) ended with ``solver_exit`` (None: found later, by a rerun of the study)
    and the study was ``interrupted`` or not. NOMAD waits for its blackbox calls: when it ended by itself (exit
    0, nobody interrupted the study) the evaluation died alone (the out-of-memory killer, a crash) and NOMAD
    counted it as a failed evaluation: ERROR. Otherwise it was cut with its caller (Ctrl-C, kill -9 of the
    study, a machine crash): KILLED, evaluated again when the study resumes."""
    return Status.ERROR if solver_exit == 0 and not interrupted else Status.KILLED


def call_of_study(
    *, interrupted: bool = False, failed_start: bool = False, solver_exit: int = 0, solver_crashed: bool = False
) -> tuple[Call, int]:
    """How a study driver (``lora-blackbox study``, ``lora-blackbox optuna``) ends, and its exit status:
    ``interrupted`` (Ctrl-C), ``failed_start`` (no evaluation of the study finished and this run's all failed:
    NOMAD stops when its starting point fails), ``solver_exit`` (NOMAD's exit status; ``-N``: killed by signal
    N), ``solver_crashed`` (NOMAD's known crash writing the hot-restart file of a study that ends before its first
    iteration, repaired by the driver: the study itself ended).

    Interrupted and killed studies are resumed by the same command; a study that failed at its start needs a fix
    first; NOMAD's own failure is relayed as its exit status."""
    if interrupted:
        return Call.INTERRUPTED, Call.INTERRUPTED.exit_status
    if failed_start:
        return Call.FAILS, Call.FAILS.exit_status
    if solver_crashed or solver_exit == 0:
        return Call.GOES_ON, Call.GOES_ON.exit_status
    if solver_exit < 0:  # killed from outside: resumable like an interrupted study, but no Ctrl-C of ours
        return Call.FAILS, Call.FAILS.exit_status
    return Call.FAILS, solver_exit


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


def trial_state(status: Status) -> Literal["complete", "pruned", "fail", "not_counted"]:
    """How an Optuna study takes an evaluation: ``complete`` (its objective; ``inf`` when diverged, as NOMAD
    reads it), ``pruned`` (stopped early: Optuna's PRUNED, counted), ``fail`` (a counted failure),
    ``not_counted`` (failed, left out of ``--n-trials``, and its point queued to run first when the study
    resumes)."""
    if status.finished:
        return "complete"
    if status is Status.STOPPED:
        return "pruned"
    return "fail" if status.counted else "not_counted"


def run_status(status: Status) -> Literal["FINISHED", "FAILED", "KILLED"]:
    """The MLflow status of an evaluation's run: FINISHED when it ended as designed (OK, or STOPPED early by a
    stopping rule or a pruner: no failure; its ``status`` tag says STOPPED), KILLED when it did not count (cut,
    interrupted, never run: it runs again), FAILED for every counted failure (a diverged run included)."""
    if status in (Status.OK, Status.STOPPED):
        return "FINISHED"
    return "FAILED" if status.counted else "KILLED"


def study_run_status(*, interrupted: bool) -> Literal["FINISHED", "KILLED"]:
    """The MLflow status of a study's parent run when its driver ends: KILLED when the study was interrupted or
    stopped short of its budget (the same command resumes it and reopens the run), else FINISHED."""
    return "KILLED" if interrupted else "FINISHED"


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
        if self.status is Status.STOPPED:
            return f"OBJ: its checkpoint loss, raised above the incumbent's when lower (value_of_stopped), {counted}"
        value = value_of_failure(self.status, "OBJ")
        return f"OBJ {value!r}, {counted}" if not math.isnan(value) else f"nan, {counted}"


_STOPPING = "while the study is stopping (its Ctrl-C)"
POLICY: tuple[Rule, ...] = (
    Rule("the evaluation finished", Status.OK),
    Rule("the loss became NaN or infinite", Status.DIVERGED),
    Rule(
        "a stopping rule (`[stopping]`) or an Optuna pruner stopped the training at a checkpoint",
        Status.STOPPED,
        recorded_by="by the evaluation, with its curve and the checkpoint it stopped at",
    ),
    Rule("out of memory (CUDA, the host allocator, MemoryError)", Status.OOM),
    Rule("training ran past `training.timeout_s`", Status.TIMEOUT),
    Rule("the line is not a point of the search space", Status.INVALID_POINT),
    Rule("any other exception while training or validating", Status.ERROR),
    Rule(
        "an evaluation process ended without a record (a signal: the out-of-memory killer; a crash)",
        process_status(-signal.SIGKILL, None),
        recorded_by="the process that started it",
    ),
    Rule(
        "an evaluation of NOMAD's died without a record, and NOMAD ended by itself (exit 0, no Ctrl-C)",
        unrecorded_status(solver_exit=0),
        recorded_by="the study driver when NOMAD ends, from the run folder's `running.json`; NOMAD counted it",
    ),
    Rule(
        "an evaluation killed with its caller (Ctrl-C or kill -9 of the study, a machine crash)",
        unrecorded_status(solver_exit=None),
        recorded_by="the study driver when NOMAD ends or at the rerun, from the run folder's `running.json`; "
        "an Optuna trial left RUNNING is failed, not counted",
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
    Rule(
        '`lora-blackbox decode` of a line that is not a point (it prints `{"error": ...}` for it)',
        None,
        call=call_of_decode(invalid_lines=1),
    ),
    Rule("SIGINT or SIGTERM", Status.INTERRUPTED, recorded_by="it; later points NOT_RUN"),
    Rule(f"SIGINT or SIGTERM {_STOPPING}", Status.INTERRUPTED, stopping=True, recorded_by="it; later points NOT_RUN"),
    Rule(f"a point asked for {_STOPPING}", Status.NOT_RUN, stopping=True),
    Rule("a container call passed `--timeout`", Status.INTERRUPTED, prints=False, call=Call.TIMED_OUT),
)
"""Every way a point or a call ends, in the order of ``docs/failures.md``."""


@dataclass(frozen=True)
class StudyRule:
    """One way a study ends: what happened, as the arguments of :func:`call_of_study`, and what to do next."""

    happened: str
    then: str
    interrupted: bool = False
    failed_start: bool = False
    solver_exit: int = 0
    solver_crashed: bool = False

    def end(self) -> tuple[Call, int]:
        return call_of_study(
            interrupted=self.interrupted,
            failed_start=self.failed_start,
            solver_exit=self.solver_exit,
            solver_crashed=self.solver_crashed,
        )


_RESUME = "the same command resumes it: finished points are answered from their records, the others run again"
STUDY_POLICY: tuple[StudyRule, ...] = (
    StudyRule("the study spent its budget (NOMAD, Optuna's trials)", "its summary and report"),
    StudyRule("Ctrl-C (SIGINT, SIGTERM) of `lora-blackbox study` or `optuna`", _RESUME, interrupted=True),
    StudyRule(
        "no evaluation of the study finished, and this run's all failed (NOMAD stops when its starting point fails)",
        "fix what the message names (the first failed point and its log), then the same command",
        failed_start=True,
    ),
    StudyRule("NOMAD was killed from outside (a signal)", _RESUME, solver_exit=-signal.SIGKILL),
    StudyRule("NOMAD failed (a non-zero exit of its own)", "its output is in `nomad.log`", solver_exit=3),
    StudyRule(
        "NOMAD crashed writing the hot-restart file of a study that ended before its first iteration (NOMAD 4.5, 4.6)",
        "the broken file is removed and the driver says so: the same command runs again",
        solver_exit=-signal.SIGSEGV,
        solver_crashed=True,
    ),
)
"""Every way a study driver ends, in the order of ``docs/failures.md``."""


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


def study_table() -> str:
    """:data:`STUDY_POLICY` as a Markdown table."""
    rows = ["| what happened | the study | exit status | then |", "|---|---|---|---|"]
    names = {Call.GOES_ON: "ended", Call.FAILS: "failed", Call.INTERRUPTED: "interrupted"}
    for rule in STUDY_POLICY:
        call, code = rule.end()
        shown = "NOMAD's own" if code == rule.solver_exit != 0 else str(code)
        rows.append(f"| {rule.happened} | {names[call]} | {shown} | {rule.then} |")
    return "\n".join(rows) + "\n"


def status_table() -> str:
    """What each status gives the solver (NOMAD's output line, an Optuna trial) and MLflow, as a Markdown table,
    derived from :func:`value_of_failure`, :func:`value_of_stopped`, :func:`value_of_extra`, :func:`constraint_of`,
    :func:`trial_state` and :func:`run_status`."""
    rows = [
        "| status | CNT_EVAL | OBJ | constraints (PB, EB) | extra outputs (EXTRA_O) | Optuna trial | MLflow run |",
        "|---|---|---|---|---|---|---|",
    ]
    trials = {
        "complete": "COMPLETE",
        "pruned": "PRUNED",
        "fail": "FAIL",
        "not_counted": "FAIL, not counted (its point runs first at the resume)",
    }
    for status in Status:
        if status is Status.OK:
            objective, constraints, extras = "its value", "their values", "their values"
        else:
            value = value_of_failure(status, "PB")
            constraints = repr(value) + (
                f" (Optuna: {constraint_of(value)!r})" if constraint_of(value) != value else ""
            )
            measured = value_of_extra(status, "measured") == "measured"
            extras = "what it measured, nan for the rest" if measured else repr(value_of_extra(status, None))
            stopped = status is Status.STOPPED
            objective = "value_of_stopped" if stopped else repr(value_of_failure(status, "OBJ"))
        cells = [status.value, str(int(status.counted)), objective, constraints, extras]
        cells += [trials[trial_state(status)], run_status(status)]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


def policy_tables() -> str:
    """The tables of ``docs/failures.md``: :func:`policy_table`, :func:`study_table`, :func:`status_table`."""
    return "\n".join(
        [
            policy_table(),
            "**How a study ends** (`lora-blackbox study`, `lora-blackbox optuna`):\n",
            study_table(),
            "**What each status gives the solver and MLflow**:\n",
            status_table(),
        ]
    )


if __name__ == "__main__":  # python -m blackbox.core.failures: the tables for docs/failures.md
    sys.stdout.write(policy_tables())
