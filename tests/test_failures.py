"""The failure policy (``blackbox.core.failures``), run for real: every failure kind through every path that
evaluates points, checking the record status, the output line, the exit status, and that every point of a
call has exactly one record.

Two kinds are injected (``sitecustomize`` on ``PYTHONPATH``, keyed by the learning rate so that they hit one
point of a block): a bug in training (an exception) and the kernel's out-of-memory killer (SIGKILL of the
evaluating process). The others are real: a line that is not a point, a learning rate that diverges, a rank
that does not fit in the address space, a model folder that does not exist, and a Ray worker killed while
its point trains.
"""

from __future__ import annotations

import json
import math
import os
import resource
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from blackbox.core.errors import SetupError
from blackbox.core.experiment import load_experiment
from tests.records import read_records

pytestmark = pytest.mark.slow

FAULTS = """
import os, signal
import torch

_init = torch.optim.AdamW.__init__


def _faulty(self, params, lr=1e-3, *args, **kwargs):
    if abs(lr - 10**-2.7) < 1e-12:
        raise RuntimeError("injected fault: a bug in training")
    if abs(lr - 10**-2.9) < 1e-12:
        os.kill(os.getpid(), signal.SIGKILL)  # as the kernel's out-of-memory killer would
    _init(self, params, lr, *args, **kwargs)


torch.optim.AdamW.__init__ = _faulty
"""

# kind: (point line in the tiny space: rank index, log10 learning rate, dropout; the status the policy gives it)
KINDS = {
    "ok": ("2 -2 0.1", "OK"),
    "invalid": ("9 -2 0.1", "INVALID_POINT"),
    "diverged": ("2 36 0", "DIVERGED"),
    "error": ("2 -2.7 0", "ERROR"),
    "oom": ("4 -2 0", "OOM"),
    "killed": ("2 -2.9 0", "ERROR"),
}
# The kinds each path meets. An evaluation in the call's own process that is killed takes the call with it
# (no process is left to record it): its run folder's running.json makes it KILLED for a study's next run and
# for reports (tests/studies/test_faults.py); not a kind of these paths.
# Ray workers do not inherit the test's memory limit, nor do containers: no "oom" there.
PATHS = {
    # In one process the point after the failures must train as it does alone: a failure leaves nothing behind.
    "in-process": ([], ["oom", "error", "diverged", "invalid", "ok"]),
    "workers": (["--workers", "2"], ["ok", "invalid", "diverged", "error", "oom", "killed"]),
    "torchrun": (["--gpus-per-eval", "2"], ["ok", "invalid", "error", "killed"]),
    "ray": ([], ["ok", "invalid", "diverged", "error", "killed"]),
    "container": ([], ["ok", "invalid", "diverged", "error"]),
}
FOUR_GIB = 4 * 1024**3


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (FOUR_GIB, FOUR_GIB))  # the rank-16,777,216 point cannot fit


@pytest.fixture
def faults(tmp_path: Path) -> dict[str, str]:
    folder = tmp_path / "faults"
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(FAULTS)
    return {"PYTHONPATH": os.pathsep.join([str(folder), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}


def _key(line: str) -> tuple[float, ...]:
    return tuple(float(v) for v in line.split())


def _one_record_each(records: list[dict], lines: list[str]) -> dict[tuple[float, ...], dict]:
    """The record of each line, checking that every line has exactly one."""
    counts = Counter(_key(r["point_line"]) for r in records)
    assert counts == Counter(_key(line) for line in lines), counts
    return {_key(r["point_line"]): r for r in records}


def _check_block(kinds: list[str], stdout: str, records: list[dict], *, ranks: bool = False) -> None:
    lines = [KINDS[k][0] for k in kinds]
    by_line = _one_record_each(records, lines)
    printed = stdout.splitlines()
    assert len(printed) == len(kinds)
    for kind, line, output in zip(kinds, lines, printed, strict=True):
        record = by_line[_key(line)]
        assert record["status"] == KINDS[kind][1], (kind, record["status"], record.get("error"))
        assert output.split() == record["outputs"], (kind, output)
        objective = float(output.split()[0])
        if kind == "ok":
            assert math.isfinite(objective)
        elif kind == "diverged":
            assert objective == math.inf  # a valid, very bad point
        else:
            assert math.isnan(objective)  # a failed point
    if "killed" in kinds:
        error = by_line[_key(KINDS["killed"][0])]["error"]
        # Written by the process that started the evaluation; of a data-parallel evaluation, by the surviving
        # rank 0 when torchrun stopped it after rank 1 was killed first (both ranks kill themselves: a race).
        if ranks and "wrote no record" not in error:
            assert error.startswith("RankStopped: torchrun stopped this rank"), error
        else:
            assert "wrote no record" in error, error
    if "error" in kinds:
        assert "injected fault" in by_line[_key(KINDS["error"][0])]["error"]


def _check_setup_failure(result: dict, records: list[dict], lines: list[str], *, launcher: bool) -> None:
    """The model cannot be loaded: the call fails (exit status 1, no output line), every point NOT_RUN."""
    assert result["rc"] == 1, result["stderr"][-3000:]
    assert result["stdout"] == ""
    if not launcher:  # (torchrun itself reports its failed ranks with a traceback of its own)
        assert "Traceback" not in result["stderr"]
    by_line = _one_record_each(records, lines)
    assert {r["status"] for r in by_line.values()} == {"NOT_RUN"}


SETUP_LINES = ["2 -2 0.1", "3 -2 0"]


@pytest.mark.parametrize("path", list(PATHS))
def test_every_failure_through_every_path(
    path: str, tmp_path: Path, make_experiment, run_blackbox, faults, ray_calls, request: pytest.FixtureRequest
) -> None:
    args, kinds = PATHS[path]
    block = make_experiment(tmp_path / "block.toml", records=tmp_path / "block")
    broken = make_experiment(tmp_path / "broken.toml", records=tmp_path / "broken")
    (tmp_path / "block.txt").write_text("".join(KINDS[k][0] + "\n" for k in kinds))
    (tmp_path / "broken.txt").write_text("".join(line + "\n" for line in SETUP_LINES))
    missing = ["--set", f"model.name_or_path={tmp_path}/no-such-model"]
    env = {**faults, "LORA_BLACKBOX_LEASE_DIR": str(tmp_path / "leases")}
    if path == "ray":
        # One cluster for three calls: the block, the setup failure, and a point whose Ray worker is killed once
        # it trains: a lost worker is not the point's fault, Ray runs the task again and the point succeeds.
        lost = make_experiment(tmp_path / "lost.toml", records=tmp_path / "lost")
        (tmp_path / "lost.txt").write_text(KINDS["ok"][0] + "\n")
        *results, retried = ray_calls(
            [
                {"args": ["eval", "-e", str(block)], "points": tmp_path / "block.txt"},
                {"args": ["eval", "-e", str(broken), *missing], "points": tmp_path / "broken.txt"},
                {"args": ["eval", "-e", str(lost)], "points": tmp_path / "lost.txt", "kill": True},
            ],
            cluster_env=faults,  # the workers' environment
        )
        assert retried["killed"] and retried["rc"] == 0, retried["stderr"][-3000:]
        [record] = read_records(tmp_path / "lost" / "records.jsonl")
        assert (
            record["status"] == "OK"
            and record["slot"].startswith("ray:")
            and retried["stdout"].split() == record["outputs"]
        )
    elif path == "container":
        image = request.getfixturevalue("image")
        request.getfixturevalue("no_leftovers")
        runner = ["container", "--image", image, "--offline", "--mount", str(tmp_path)]
        runner += ["--env", f"PYTHONPATH={tmp_path / 'faults'}"]
        results = [
            _result(run_blackbox([*runner, "-e", str(block), str(tmp_path / "block.txt")], env=env)),
            _result(run_blackbox([*runner, "-e", str(broken), *missing, str(tmp_path / "broken.txt")], env=env)),
        ]
    else:
        results = [
            _result(
                run_blackbox(
                    ["eval", "-e", str(block), *args, str(tmp_path / "block.txt")],
                    env=env,
                    preexec_fn=_limit_memory if "oom" in kinds else None,
                )
            ),
            _result(run_blackbox(["eval", "-e", str(broken), *missing, *args, str(tmp_path / "broken.txt")], env=env)),
        ]
    block_result, broken_result = results
    assert block_result["rc"] == 0, block_result["stderr"][-3000:]
    _check_block(
        kinds, block_result["stdout"], read_records(tmp_path / "block" / "records.jsonl"), ranks=path == "torchrun"
    )
    if path == "in-process":  # the last point ran on a clean base model: the objective it has in a process alone
        (tmp_path / "alone.txt").write_text(KINDS["ok"][0] + "\n")
        alone = run_blackbox(["eval", "-e", str(block), "--set", f"records.dir={tmp_path / 'alone'}", "alone.txt"])
        assert alone.stdout.split()[0] == block_result["stdout"].splitlines()[-1].split()[0].encode()
    broken_records = read_records(tmp_path / "broken" / "records.jsonl")
    _check_setup_failure(broken_result, broken_records, SETUP_LINES, launcher=path == "torchrun")


def _result(completed: subprocess.CompletedProcess[bytes]) -> dict:
    return {"rc": completed.returncode, "stdout": completed.stdout.decode(), "stderr": completed.stderr.decode()}


def test_every_failure_through_optuna_and_the_isolated_api(
    tmp_path: Path, make_experiment, blackbox_cmd, faults
) -> None:
    """Optuna's trials run as subprocesses (``runners.isolated``, the API's ``isolate=True``): the same
    statuses, as trial states (``failures.trial_state``); a trial that cannot run stops the study (exit 1)."""
    import optuna
    from optuna.trial import TrialState

    experiment = make_experiment()
    kinds = ["ok", "diverged", "error", "oom", "killed"]
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(storage=storage, study_name="policy")
    ranks = load_experiment(str(experiment)).space[0].values  # a choice: Optuna samples its values
    for kind in kinds:
        rank, lr, dropout = (float(v) for v in KINDS[kind][0].split())
        study.enqueue_trial({"lora_r": ranks[int(rank) - 1], "learning_rate": lr, "lora_dropout": dropout})
    folder = tmp_path / "study"
    command = [*blackbox_cmd, "-q", "optuna", "-e", str(experiment), "--storage", storage, "--study-name", "policy"]
    command += ["--dir", str(folder), "--n-trials", str(len(kinds))]
    run = subprocess.run(
        command,
        env={**os.environ, **faults},
        preexec_fn=_limit_memory,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    trials = optuna.load_study(study_name="policy", storage=storage).trials
    by_line = _one_record_each(read_records(folder / "records.jsonl"), [KINDS[k][0] for k in kinds])
    for kind, trial in zip(kinds, trials, strict=True):
        record = by_line[_key(KINDS[kind][0])]
        assert record["status"] == KINDS[kind][1], (kind, record.get("error"))
        assert trial.user_attrs["run_id"] == record["run_id"]
        expected = TrialState.COMPLETE if kind in ("ok", "diverged") else TrialState.FAIL
        assert trial.state == expected, kind
    assert trials[1].value == math.inf
    assert json.loads(run.stdout)["counted_trials"] == len(kinds)

    # The model cannot be loaded: the study stops with exit status 1; the trial is not counted; one record.
    broken = make_experiment(tmp_path / "broken.toml", records=tmp_path / "broken")
    stopped = subprocess.run(
        [*blackbox_cmd, "optuna", "-e", str(broken), "--set", f"model.name_or_path={tmp_path}/gone", "--n-trials", "2",
         "--dir", str(tmp_path / "broken-study")],
        cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert stopped.returncode == 1 and "could not run" in stopped.stderr and "Traceback" not in stopped.stderr
    assert stopped.stdout == ""  # no summary: the study did not run
    [record] = read_records(tmp_path / "broken-study" / "records.jsonl")
    assert record["status"] == "NOT_RUN"

    # The same through the Python API directly: a call that cannot proceed raises, as in this process.
    from blackbox.api import Blackbox

    with pytest.raises(SetupError, match="gone"):
        Blackbox(str(broken), [f"model.name_or_path={tmp_path}/gone"], isolate=True).evaluate_point((2, -2, 0.1))
