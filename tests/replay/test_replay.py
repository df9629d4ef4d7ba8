"""Replay (``replay.table``): a study answered from a table of real evaluations asks the points and gets the values
the real study did, through the real paths (NOMAD binary and PyNomadBBO calling ``lora-blackbox eval``, the stopping
rules, Optuna's pruners, warm starts); bad input ends the call with one line and exit status 2."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from blackbox.core.failures import Status
from blackbox.core.nomad import read_cache
from blackbox.core.record import RecordStore
from blackbox.replay.objective import ReplayEvaluator
from blackbox.replay.table import LOAD_PHASES, read_table
from tests.conftest import BLACKBOX

pytestmark = pytest.mark.xdist_group("replay")  # one worker builds the grid's table once
CURVE = ("validation.checkpoints=[0.25,0.5,0.75]", "validation.checkpoint_rows=16")


def _sets(items: list[str] | tuple[str, ...]) -> list[str]:
    return [word for item in items for word in ("--set", item)]


def _study(experiment: Path, folder: Path, sets: list[str], env: dict[str, str]) -> list:
    """A NOMAD study of the grid in ``folder``; returns its records."""
    param = folder.with_suffix(".txt")
    subprocess.run([*BLACKBOX, "-q", "params", "-e", str(experiment), *_sets(sets), "--out", str(param)], check=True)
    result = subprocess.run(
        [*BLACKBOX, "study", str(param), "--dir", str(folder)], env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return RecordStore(folder).records()


@pytest.fixture
def one_nomad(nomad_binary: Path | None) -> dict[str, str]:
    """The 4.5.1 binary where there is one (CI), else PyNomadBBO."""
    env = {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), "/usr/bin", "/bin"])}
    env.pop("NOMAD_EXE", None)
    if nomad_binary is not None:
        env["NOMAD_EXE"] = str(nomad_binary)
    return env


def test_a_replayed_study_asks_and_gets_what_the_real_study_did(
    tmp_path: Path, grid_experiment: Path, grid_table: Path, one_nomad: dict[str, str]
) -> None:
    real = _study(grid_experiment, tmp_path / "real", [f"records.dir={tmp_path / 'real'}"], one_nomad)
    replayed_sets = [f"records.dir={tmp_path / 'replay'}", f"replay.table={grid_table}"]
    replayed = _study(grid_experiment, tmp_path / "replay", replayed_sets, one_nomad)
    assert len(real) == len(replayed) == 4 and all(r.status is Status.OK for r in real + replayed)
    assert [r.point for r in replayed] == [r.point for r in real]
    for a, b in zip(real, replayed, strict=True):  # the same training, trained again: the same loss
        assert math.isclose(b.metrics["validation_loss"], a.metrics["validation_loss"], rel_tol=1e-6)
    # NOMAD's own view: the same points in the same order.
    assert [e.point for e in read_cache(tmp_path / "replay" / "cache.txt")] == [
        e.point for e in read_cache(tmp_path / "real" / "cache.txt")
    ]
    # Each replayed evaluation costs what its row measured: one call of its own, start-up and loading included.
    table = read_table(grid_table)
    for record in replayed:
        row = table.grid[record.point]
        assert record.metrics["replay_row"] == row.run_id
        # (Without checkpoints in this study, their seconds are not paid.)
        assert record.compute_seconds == pytest.approx(row.seconds - row.timings["checkpoint_s"])
    clock = [r.metrics["replay_clock_s"] for r in replayed]
    assert clock == pytest.approx(list(_cumulative([r.compute_seconds for r in replayed])))


def _cumulative(values: list[float]) -> list[float]:
    total, out = 0.0, []
    for value in values:
        total += value
        out.append(total)
    return out


def test_a_replayed_study_stops_points_pays_up_to_the_stop_and_seeds_a_warm_start(
    tmp_path: Path, grid_experiment: Path, grid_table: Path
) -> None:
    """PyNomadBBO with the incumbent rule on a replay: a stopped point pays its training up to the checkpoint and
    the checkpoints it measured; a finished one gets its row's value; a second study warm-starts from the first."""
    env = {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), "/usr/bin", "/bin"])}
    env.pop("NOMAD_EXE", None)
    stopping = [*CURVE, "stopping.rule=incumbent", "stopping.min_finished=1", f"replay.table={grid_table}"]
    first = _study(grid_experiment, tmp_path / "first", [*stopping, f"records.dir={tmp_path / 'first'}"], env)
    table = read_table(grid_table)
    stopped = [r for r in first if r.status is Status.STOPPED]
    assert len(first) == 4 and stopped, [r.status for r in first]
    for record in first:
        row = table.grid[record.point]
        if record.status is Status.OK:
            assert record.metrics["validation_loss"] == row.metrics["validation_loss"]
            assert record.timings["checkpoint_s"] == pytest.approx(sum(p.seconds or 0 for p in row.curve))
        else:
            at = record.stopped.step  # type: ignore[union-attr]
            [point] = [p for p in row.curve if p.step == at]
            assert record.timings["train_s"] == point.train_seconds and "validation_s" not in record.timings
            assert record.curve == tuple(p for p in row.curve if p.step <= at)
            assert record.compute_seconds < row.seconds
    second_sets = [*stopping, f"records.dir={tmp_path / 'second'}"]
    param = tmp_path / "second.txt"
    subprocess.run([*BLACKBOX, "-q", "params", "-e", str(grid_experiment), *_sets(second_sets), "--out", str(param)])
    result = subprocess.run(
        [*BLACKBOX, "study", str(param), "--dir", str(tmp_path / "second"), "--warm-start", str(tmp_path / "first")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert {e.point for e in read_cache(tmp_path / "first" / "cache.txt")} <= {
        e.point for e in read_cache(tmp_path / "second" / "cache.txt")
    }


def test_optuna_samples_and_prunes_on_a_replay(tmp_path: Path, grid_experiment: Path, grid_table: Path) -> None:
    """Optuna's TPE and its successive-halving pruner on a replay, in the driver's process: every trial is a grid
    point answered from its row; pruned trials are STOPPED records."""
    sets = [*CURVE, f"replay.table={grid_table}"]
    command = [*BLACKBOX, "-q", "optuna", "-e", str(grid_experiment), *_sets(sets), "--n-trials", "6"]
    command += ["--pruner", "successive-halving", "--in-process", "--dir", str(tmp_path / "optuna")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    records = RecordStore(tmp_path / "optuna").records()
    table = read_table(grid_table)
    assert summary["counted_trials"] == len(records) == 6
    for record in records:
        row = table.grid[record.point]
        if record.status is Status.OK:
            assert record.metrics["validation_loss"] == row.metrics["validation_loss"]
        else:
            assert record.status is Status.STOPPED and record.stopped.rule == "optuna:successive-halving"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("sets", "line", "message"),
    [
        (
            [],
            "2 -2.5",
            r"point \(2 -2.5\) has no row in .*incomplete build.*: the nearest grid point with a row is \(2 -[23]\)",
        ),
        (["training.max_steps=6"], "1 -3", "was built for another experiment: .*training.max_steps = 8 there, 6 here"),
        (["validation.checkpoints=[0.1]"], "1 -3", r"has learning curves at \[0.25, 0.5, 0.75\], not at \[0.1\]"),
    ],
)
def test_what_a_replay_cannot_answer_ends_the_call_with_one_line(
    tmp_path: Path, grid_experiment: Path, grid_table: Path, sets: list[str], line: str, message: str
) -> None:
    import re

    points = tmp_path / "x.txt"
    points.write_text(f"1 -3\n{line}\n")
    incomplete = tmp_path / "incomplete.csv"  # a build that has not evaluated (2 -2.5) yet
    incomplete.write_text("".join(r for r in grid_table.read_text().splitlines(True) if ",2 -2.5," not in r))
    replay = [f"replay.table={incomplete}", f"records.dir={tmp_path / 'runs'}", "validation.checkpoint_rows=16"]
    result = subprocess.run(
        [*BLACKBOX, "eval", "-e", str(grid_experiment), *_sets([*replay, *sets]), str(points)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and result.stdout == ""
    [error] = result.stderr.strip().splitlines()
    assert re.search(message, error), error
    assert not (tmp_path / "runs" / "records.jsonl").exists()  # nothing answered, nothing recorded


def test_a_missing_or_foreign_table_ends_the_call_with_one_line(tmp_path: Path, grid_experiment: Path) -> None:
    points = tmp_path / "x.txt"
    points.write_text("1 -3\n")
    notes = tmp_path / "notes.csv"
    notes.write_text("a,b\n1,2\n")
    for table, message in ((tmp_path / "none.csv", "No such file"), (notes, "is not a replay table of format 1")):
        result = subprocess.run(
            [*BLACKBOX, "eval", "-e", str(grid_experiment), "--set", f"replay.table={table}", str(points)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 2 and result.stdout == "", result.stderr
        assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_the_first_point_of_a_call_pays_the_start_up_and_the_loading(
    tmp_path: Path, grid_experiment: Path, grid_table: Path
) -> None:
    """In one process (a block of points, or Optuna's --in-process) the model loads once: the first replayed point
    pays the row's start-up and loading, the next ones do not; without checkpoints, none are paid."""
    from blackbox.core.experiment import load_experiment

    experiment = load_experiment(
        str(grid_experiment), [f"replay.table={grid_table}", f"records.dir={tmp_path / 'runs'}"]
    )
    replayer = ReplayEvaluator(experiment)
    first, second = replayer.evaluate_line("1 -3"), replayer.evaluate_line("2 -2")
    table = read_table(grid_table)
    row = table.grid[(2.0, -2.0)]
    assert "startup_s" in first.timings and "model_load_s" in first.timings
    assert "startup_s" not in second.timings and "model_load_s" not in second.timings
    assert "checkpoint_s" not in second.timings and second.curve == ()
    assert second.compute_seconds == pytest.approx(
        row.timings["total_s"] - row.timings["checkpoint_s"] - sum(row.timings.get(k, 0) for k in LOAD_PHASES)
    )
    assert second.metrics["replay_clock_s"] == pytest.approx(first.compute_seconds + second.compute_seconds)


def test_the_comparison_harness_replays_methods_and_reports(
    tmp_path: Path, repo: Path, grid_experiment: Path, grid_table: Path
) -> None:
    """benchmarks/replay.py compare on the tiny grid (two methods, two seeds), then report again from its traces: the
    harness of the committed comparison, run end to end so that it never rots."""
    out = tmp_path / "out"
    command = [sys.executable, str(repo / "benchmarks" / "replay.py"), "compare", "--experiment", str(grid_experiment)]
    command += ["--table", str(grid_table), "--budgets", "3", "--seeds", "2", "--methods", "nomad-median,random"]
    command += [
        "--work",
        str(tmp_path / "work"),
        "--out",
        str(out),
        "--jobs",
        "2",
        "--set",
        "validation.checkpoint_rows=16",
    ]
    env = {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), "/usr/bin", "/bin"])}
    env.pop("NOMAD_EXE", None)  # PyNomadBBO: the binary is the other tests'
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((out / "comparison.json").read_text())
    table = read_table(grid_table)
    optimum = min(row.metrics["validation_loss"] for row in table.grid.values())
    assert result["optimum"]["validation_loss"] == optimum and result["grid_points"] == 6
    rows = result["budgets"]["3"]
    assert rows["nomad-median"]["seeds"] == rows["random"]["seeds"] == 2
    assert rows["random"]["final_best"]["median"] >= optimum
    assert (out / "anytime_b3.png").stat().st_size > 10_000
    traces = (out / "traces.csv").read_text().splitlines()
    assert len(traces) == 1 + 2 * 3 * 2  # a header, then every evaluation of the 4 runs
    again = subprocess.run(
        [
            sys.executable,
            str(repo / "benchmarks" / "replay.py"),
            "report",
            "--table",
            str(grid_table),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((out / "comparison.json").read_text()) == result  # the same numbers from the traces alone


def test_a_table_of_one_objective_answers_a_study_of_two_with_what_each_row_measured(
    tmp_path: Path, grid_experiment: Path, grid_table: Path
) -> None:
    """The validation loss against the adapter's size, both measured by every row: each line prints the row's two
    values; an objective the rows did not measure (a benchmark score) is refused with one line."""
    two = [
        'objectives=[{name="validation_loss"},{name="trainable_params"}]',
        'study.outputs=["OBJ:objective:validation_loss","OBJ:objective:trainable_params","CNT_EVAL"]',
    ]
    points = tmp_path / "x.txt"
    points.write_text("1 -3\n2 -2\n")
    replay = [f"replay.table={grid_table}", f"records.dir={tmp_path / 'runs'}"]
    command = [*BLACKBOX, "eval", "-e", str(grid_experiment), *_sets([*replay, *two]), str(points)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    table = read_table(grid_table)
    expected = [table.grid[p] for p in ((1.0, -3.0), (2.0, -2.0))]
    lines = [[float(v) for v in line.split()] for line in result.stdout.splitlines()]
    assert lines == [[row.metrics["validation_loss"], row.metrics["trainable_params"], 1.0] for row in expected], (
        result.stdout
    )
    assert expected[0].metrics["trainable_params"] != expected[1].metrics["trainable_params"]  # the rank decides it

    benchmark = [
        'objectives=[{name="validation_loss"},{name="benchmark",benchmark={task="x",metric="acc"}}]',
        'study.outputs=["OBJ:objective:validation_loss","OBJ:objective:benchmark:x:acc","CNT_EVAL"]',
    ]
    refused = subprocess.run(
        [*command[:-1], *_sets(benchmark), str(points)], capture_output=True, text=True, timeout=120
    )
    assert refused.returncode == 2 and refused.stdout == "", refused.stderr
    assert "was built for another experiment" in refused.stderr
