"""The failure policy's decisions, row by row (``blackbox.core.failures``), and its table in the docs.

Fast: no model, no process. ``tests/test_failures.py`` runs every failure kind through every path for real."""

from __future__ import annotations

import math
import signal
from pathlib import Path

import pytest

from blackbox.core.errors import (
    ConfigError,
    PointError,
    RankStopped,
    RecordsError,
    SetupError,
    TrainingDiverged,
    TrainingTimeout,
)
from blackbox.core.failures import (
    NOT_RUN_INTERRUPTED,
    NOT_RUN_STOPPING,
    POLICY,
    STUDY_POLICY,
    Call,
    Status,
    call_after,
    call_of,
    call_of_container,
    call_of_decode,
    call_of_study,
    constraint_of,
    container_returncode,
    not_run_reason,
    policy_tables,
    process_status,
    raise_if_call_ends,
    run_status,
    status_of,
    study_run_status,
    trial_state,
    unrecorded_status,
    value_of_extra,
    value_of_failure,
    value_of_stopped,
)
from blackbox.core.output import output_tokens

SPECS = ("OBJ:validation_loss", "PB:c", "EXTRA_O:train_loss", "CNT_EVAL")
DOCS = Path(__file__).resolve().parents[2] / "docs" / "failures.md"


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (KeyboardInterrupt(), Status.INTERRUPTED),
        (SetupError("no model"), Status.NOT_RUN),
        (RecordsError(Path("/r"), OSError(28, "No space left on device")), Status.NOT_RUN),
        (PointError("not a number"), Status.INVALID_POINT),
        (TrainingDiverged("nan"), Status.DIVERGED),
        (TrainingTimeout("late"), Status.TIMEOUT),
        (MemoryError(), Status.OOM),
        (RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 bytes"), Status.OOM),
        (RankStopped("another rank failed"), Status.ERROR),
        (ValueError("a bug"), Status.ERROR),
        (SystemExit(0), None),
        (GeneratorExit(), None),
    ],
)
def test_the_status_of_each_error(error: BaseException, status: Status | None) -> None:
    assert status_of(error) is status


@pytest.mark.parametrize("status", list(Status))
@pytest.mark.parametrize("stopping", [False, True])
def test_what_each_status_does_to_the_call(status: Status, stopping: bool) -> None:
    expected = {Status.NOT_RUN: Call.FAILS, Status.INTERRUPTED: Call.INTERRUPTED}.get(status, Call.GOES_ON)
    assert call_after(status, stopping=stopping) is (Call.GOES_ON if stopping else expected)


def test_which_statuses_count_and_what_optuna_makes_of_them() -> None:
    assert {s for s in Status if not s.counted} == {Status.INTERRUPTED, Status.KILLED, Status.NOT_RUN}
    states = {s: trial_state(s) for s in Status}
    assert {s for s, state in states.items() if state == "complete"} == {Status.OK, Status.DIVERGED}
    assert {s for s, state in states.items() if state == "pruned"} == {Status.STOPPED}
    assert {s for s, state in states.items() if state == "not_counted"} == {s for s in Status if not s.counted}


@pytest.mark.parametrize("status", [s for s in Status if s is not Status.OK])
def test_the_output_line_of_each_failure(status: Status) -> None:
    tokens = output_tokens(SPECS, status, {"train_loss": 2.5, "objective": 1.25})
    objective, constraint, extra, counted = tokens
    if status is Status.DIVERGED:  # a valid, very bad and infeasible point; what it measured is kept
        assert (objective, constraint, extra) == ("inf", "inf", "2.5")
    elif status is Status.STOPPED:  # the value decided when it stopped; never scored constraints: infeasible
        assert (objective, constraint, extra) == ("1.25", "inf", "2.5")
    else:
        assert (objective, constraint, extra) == ("nan", "nan", "nan")
    assert counted == str(int(status.counted))
    assert math.isnan(value_of_failure(status, "EXTRA_O"))  # what it did not measure


@pytest.mark.parametrize("status", list(Status))
def test_the_extra_outputs_of_each_status(status: Status) -> None:
    """A diverged or stopped evaluation's line is a value the solver uses: what it measured is kept, what it did
    not reach is nan; a failed evaluation's line is nan throughout."""
    keeps = status in (Status.DIVERGED, Status.STOPPED)
    measured = value_of_extra(status, 12.5)
    assert measured == 12.5 if keeps else math.isnan(float(measured))
    assert (value_of_extra(status, "run-1") == "run-1") is keeps
    assert math.isnan(float(value_of_extra(status, None)))
    if status is not Status.OK:  # the output line says the same
        [extra] = output_tokens(("EXTRA_O:total_seconds",), status, {"total_seconds": 12.5})
        assert extra == ("12.5" if keeps else "nan")


def test_a_constraint_for_a_solver_that_needs_a_number() -> None:
    assert constraint_of(math.nan) == math.inf  # never scored: violated
    assert constraint_of(-0.5) == -0.5 and constraint_of(math.inf) == math.inf


@pytest.mark.parametrize("status", list(Status))
def test_the_mlflow_status_of_each_evaluation(status: Status) -> None:
    expected = {Status.OK: "FINISHED", Status.STOPPED: "FINISHED"}.get(status, "FAILED" if status.counted else "KILLED")
    assert run_status(status) == expected


def test_the_mlflow_status_of_a_study() -> None:
    assert study_run_status(interrupted=True) == "KILLED"  # the same command resumes it and reopens the run
    assert study_run_status(interrupted=False) == "FINISHED"


def test_why_points_are_not_run() -> None:
    assert not_run_reason(Call.INTERRUPTED, "signal 2") == NOT_RUN_INTERRUPTED
    assert not_run_reason(Call.FAILS, "no model") == "not evaluated: the call failed: no model"
    assert not_run_reason(Call.FAILS) == "not evaluated: the call failed: fails"
    assert all(reason.startswith("not evaluated: ") for reason in (NOT_RUN_INTERRUPTED, NOT_RUN_STOPPING))


@pytest.mark.parametrize(
    ("error", "call", "exit_status"),
    [
        (KeyboardInterrupt(), Call.INTERRUPTED, 130),
        (ConfigError("bad key"), Call.INVALID, 2),
        (SetupError("no model"), Call.FAILS, 1),
        (RecordsError(Path("/r"), OSError(30, "Read-only file system")), Call.FAILS, 1),
        (ValueError("a bug"), None, None),
    ],
)
def test_how_an_escaping_error_ends_the_call(error: BaseException, call: Call | None, exit_status: int | None) -> None:
    assert call_of(error) is call
    if call is not None:
        assert call.exit_status == exit_status


@pytest.mark.parametrize(
    ("returncode", "recorded", "launcher", "lost", "status"),
    [
        (0, Status.OK, False, False, Status.OK),  # its own record stands
        (1, Status.NOT_RUN, True, False, Status.NOT_RUN),
        (130, None, False, False, Status.INTERRUPTED),
        (-signal.SIGINT, None, False, False, Status.INTERRUPTED),
        (1, None, False, False, Status.NOT_RUN),  # could not proceed
        (2, None, False, False, Status.NOT_RUN),
        (1, None, True, False, Status.ERROR),  # torchrun: a rank failed
        (-signal.SIGKILL, None, False, False, Status.ERROR),
        (0, None, False, False, Status.ERROR),  # exited 0 without a record
        (0, None, False, True, Status.ERROR),  # a lost Ray worker
    ],
)
def test_the_status_of_a_point_from_its_process(
    returncode: int, recorded: Status | None, launcher: bool, lost: bool, status: Status
) -> None:
    assert process_status(returncode, recorded, launcher=launcher, lost=lost) is status


def test_an_evaluation_without_a_record() -> None:
    assert unrecorded_status(solver_exit=0) is Status.ERROR  # NOMAD ended by itself: it died alone, counted
    assert unrecorded_status(solver_exit=0, interrupted=True) is Status.KILLED  # cut with its study's Ctrl-C
    assert unrecorded_status(solver_exit=-signal.SIGKILL) is Status.KILLED  # NOMAD killed: cut with it
    assert unrecorded_status(solver_exit=1) is Status.KILLED
    assert unrecorded_status(solver_exit=None) is Status.KILLED  # found by a rerun (or an Optuna trial left RUNNING)
    assert trial_state(unrecorded_status(solver_exit=None)) == "not_counted"


@pytest.mark.parametrize(
    ("facts", "expected"),
    [
        ({}, (Call.GOES_ON, 0)),
        ({"interrupted": True}, (Call.INTERRUPTED, 130)),
        ({"interrupted": True, "failed_start": True, "solver_exit": 3}, (Call.INTERRUPTED, 130)),
        ({"failed_start": True}, (Call.FAILS, 1)),
        ({"failed_start": True, "solver_exit": -11, "solver_crashed": True}, (Call.FAILS, 1)),
        ({"solver_exit": -signal.SIGKILL}, (Call.FAILS, 1)),  # killed from outside: resumable
        ({"solver_exit": 3}, (Call.FAILS, 3)),  # NOMAD's own failure, relayed
        ({"solver_exit": -signal.SIGSEGV, "solver_crashed": True}, (Call.GOES_ON, 0)),  # repaired by the driver
    ],
)
def test_how_a_study_ends(facts: dict, expected: tuple[Call, int]) -> None:
    assert call_of_study(**facts) == expected


def test_every_way_a_study_ends_has_a_row() -> None:
    ends = {rule.end() for rule in STUDY_POLICY}
    assert ends == {(Call.GOES_ON, 0), (Call.INTERRUPTED, 130), (Call.FAILS, 1), (Call.FAILS, 3)}


def test_how_decode_ends() -> None:
    assert call_of_decode(invalid_lines=0) is Call.GOES_ON
    assert call_of_decode(invalid_lines=2).exit_status == 1


@pytest.mark.parametrize(
    ("ended", "status", "stopping", "expected"),
    [
        ("exited", 0, False, (Call.GOES_ON, 0)),
        ("exited", 1, False, (Call.FAILS, 1)),
        ("killed", 137, False, (Call.FAILS, 137)),
        ("timeout", 130, False, (Call.TIMED_OUT, 124)),
        ("interrupted", 130, False, (Call.INTERRUPTED, 130)),
        ("interrupted", 0, True, (Call.GOES_ON, 0)),  # a stopping study's container answered its cut point
        ("interrupted", 0, False, (Call.INTERRUPTED, 130)),
    ],
)
def test_how_a_container_call_ends(ended: str, status: int, stopping: bool, expected: tuple[Call, int]) -> None:
    assert call_of_container(ended, status, stopping=stopping) == expected


def test_a_container_end_as_a_return_code() -> None:
    assert container_returncode("killed", 137) == -signal.SIGKILL
    assert container_returncode("interrupted", None) == 130
    assert container_returncode("exited", 128 + signal.SIGSEGV) == -signal.SIGSEGV
    assert container_returncode("exited", 3) == 3


def test_the_value_a_stopped_point_gives_its_solver() -> None:
    """Its checkpoint loss, but never as good as the incumbent's value."""
    assert value_of_stopped(2.0, 1.5) == 2.0
    assert value_of_stopped(1.2, 1.5) == math.nextafter(1.5, math.inf)  # lower rows or an overfitting incumbent
    assert value_of_stopped(1.5, 1.5) > 1.5  # a tie would be "as good"
    assert value_of_stopped(1.2, None) == 1.2  # no finished evaluation yet (an Optuna pruner's first rung)
    assert value_of_stopped(1.2, math.inf) == 1.2


def test_raise_if_call_ends() -> None:
    raise_if_call_ends(Status.OOM, "out of memory")  # a point's failure: no exception
    with pytest.raises(SetupError, match="no model"):
        raise_if_call_ends(Status.NOT_RUN, "no model")
    with pytest.raises(KeyboardInterrupt):
        raise_if_call_ends(Status.INTERRUPTED, None)


def test_every_status_has_a_row() -> None:
    assert {rule.status for rule in POLICY if rule.status} == set(Status)


def test_the_docs_show_the_policy_tables_of_the_code() -> None:
    """docs/failures.md holds the tables that ``python -m blackbox.core.failures`` prints, between its markers."""
    text = DOCS.read_text(encoding="utf-8")
    begin, end = "<!-- policy tables: python -m blackbox.core.failures -->\n", "<!-- end of the policy tables -->"
    assert begin in text and end in text, f"{DOCS} lost its markers"
    shown = text.split(begin, 1)[1].split(end, 1)[0]
    assert shown == policy_tables(), f"{DOCS} is stale: paste the output of python -m blackbox.core.failures"
