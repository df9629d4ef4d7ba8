"""benchmarks/pareto.py: its interval on known numbers, and one small run of the whole harness on the tiny model
(NOMAD's DMultiMads and NSGA-II, one seed, a budget of 2), so that it never rots."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest


@pytest.fixture(scope="module")
def pareto(repo: Path) -> ModuleType:
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(repo / "benchmarks"))  # its sibling modules (compare_solvers, machine)
        return importlib.import_module("pareto")


def test_the_interval_over_seeds_is_students(pareto) -> None:
    found = pareto.interval([1.0, 2.0, 3.0])
    assert found.mean == 2.0 and found.n == 3
    assert found.high - found.mean == pytest.approx(4.302652729911275 / 3**0.5)  # t(0.975, 2) * sd / sqrt(n)
    assert pareto.interval([0.5]).low is None and pareto.interval([0.5]).text() == "0.500 (1 seed)"


LOSS_AND_SIZE = """
[[objectives]]
name = "validation_loss"

[[objectives]]
name = "trainable_params"
"""


@pytest.mark.slow
def test_the_whole_harness_on_the_tiny_model(tmp_path: Path, repo: Path, write_tiny_experiment) -> None:
    outputs = '["OBJ:objective:validation_loss", "OBJ:objective:trainable_params", "EXTRA_O:run_id", "CNT_EVAL"]'
    experiment = write_tiny_experiment(
        tmp_path / "e.toml", space="rank_lr", steps=4, outputs=outputs, records=tmp_path / "unused"
    )
    experiment.write_text(experiment.read_text() + LOSS_AND_SIZE)
    out = tmp_path / "out"
    command = [sys.executable, str(repo / "benchmarks" / "pareto.py"), "--experiment", str(experiment)]
    command += ["--budget", "2", "--seeds", "0", "--solvers", "nomad,nsga2", "--checkpoints", "1,2"]
    command += ["--work", str(tmp_path / "work"), "--out", str(out), "--set", "training.max_steps=2"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads((out / "pareto.json").read_text())
    assert [row["solver"] for row in result["solvers"]] == ["nomad", "nsga2"]
    assert [o["metric"] for o in result["objectives"]] == ["validation_loss", "trainable_params"]
    for row in result["solvers"]:
        [after_1], [after_2] = row["after_1"]["values"], row["after_2"]["values"]
        assert 0 < after_1 <= after_2 <= 1  # one reference point for all: every finished point adds volume
        assert row["wall_seconds"]["values"][0] > 0 and row["compute_seconds"]["values"][0] > 0
    records = [json.loads(line) for line in (out / "records" / "nomad-s0.jsonl").read_text().splitlines()]
    assert all("--set" not in r["point_line"] for r in records) and all(
        r["metrics"]["train_steps"] == 2 for r in records
    )
    assert "HV after 1 | HV after 2" in (out / "pareto.md").read_text() and "| Optuna NSGA-II | 1 |" in done.stdout
    assert (out / "hypervolume.png").stat().st_size > 0
    # The same command again reads the finished runs: nothing is evaluated again.
    again = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert again.returncode == 0 and json.loads((out / "pareto.json").read_text())["solvers"] == result["solvers"]
