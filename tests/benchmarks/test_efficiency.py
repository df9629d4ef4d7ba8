"""benchmarks/efficiency.py: its statistics on synthetic numbers, and one small run of the whole harness on the tiny
model (the NOMAD and Optuna methods, the test split, the downstream scores, the outputs), so that it never rots."""

from __future__ import annotations

import importlib
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from blackbox.training.testing import instruction_rows, write_benchmark_tasks


@pytest.fixture(scope="module")
def efficiency(repo: Path) -> ModuleType:
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(repo / "benchmarks"))  # its sibling modules (compare_solvers, machine)
        return importlib.import_module("efficiency")


def test_the_interval_of_one_token_examples_is_the_standard_error_of_their_mean(efficiency) -> None:
    losses = [4.1, 3.7, 5.2, 4.4, 3.9, 4.8, 4.0, 4.6]
    interval = efficiency.ratio_interval(losses, [1] * len(losses))
    assert interval.value == pytest.approx(statistics.fmean(losses))
    standard_error = statistics.stdev(losses) / math.sqrt(len(losses))
    assert interval.half_width == pytest.approx(efficiency.Z95 * standard_error)
    # Longer examples weigh more: the loss is per token, not a mean of examples.
    assert efficiency.ratio_interval([2.0, 30.0], [1, 10]).value == pytest.approx(32 / 11)


def test_a_paired_difference_sees_what_two_intervals_cannot(efficiency) -> None:
    tokens = [3, 5, 2, 8, 4, 6, 7, 3]
    a = [t * x for t, x in zip(tokens, [4.1, 3.2, 5.9, 4.4, 2.9, 4.8, 3.6, 5.3], strict=True)]
    better = [s - 0.05 * t for s, t in zip(a, tokens, strict=True)]  # 0.05 lower on every token
    difference = efficiency.paired_difference(better, a, tokens)
    assert difference.value == pytest.approx(-0.05) and difference.half_width == pytest.approx(0, abs=1e-12)
    assert difference.excludes_zero
    separate = efficiency.ratio_interval(better, tokens), efficiency.ratio_interval(a, tokens)
    assert separate[0].high > separate[1].low  # apart, the intervals overlap
    noisy = [s + (0.02 if i % 2 else -0.02) * t for i, (s, t) in enumerate(zip(better, tokens, strict=True))]
    assert 0 < efficiency.paired_difference(noisy, a, tokens).half_width < separate[0].half_width
    with pytest.raises(ValueError, match="same examples"):
        efficiency.paired_difference(a, a[:-1], tokens)
    assert efficiency.mean_of_examples([[1.0, 2.0], [3.0, 6.0]]) == [2.0, 4.0]


def test_the_compute_to_come_within_the_target(efficiency) -> None:
    nan = math.nan
    trace = efficiency.Trace("nomad", 0, (5.0, nan, 4.5, 4.2, 4.3), (100, 40, 100, 100, 100), (10, 4, 10, 10, 10))
    assert efficiency.best_so_far(trace.objectives)[1:] == [5.0, 4.5, 4.2, 4.2]
    assert trace.best == 4.2 and trace.total_tokens == 440
    # A failed (or stopped) evaluation spends its tokens all the same.
    assert trace.reach(4.5) == efficiency.Reach(evaluations=3, tokens=240, seconds=24.0)
    assert trace.reach(4.2 * 1.01) == efficiency.Reach(evaluations=4, tokens=340, seconds=34.0)
    assert trace.reach(4.1) is None
    assert efficiency.Trace("tpe", 0, (nan, nan), (10, 10), (1, 1)).reach(9.0) is None
    assert math.isnan(efficiency.best_so_far([nan, 3.0])[0])


def test_the_untuned_settings_are_points_of_the_shipped_experiment(efficiency) -> None:
    peft_sets, peft_line = efficiency.untuned_call("efficiency", [], efficiency.UNTUNED["peft-defaults"][1])
    assert peft_sets == ["hyperparameters.lora_dropout=0.0"]  # the experiment's dropout is 0.05, peft's 0
    r, alpha, lr = (float(v) for v in peft_line.split())
    assert (r, alpha) == (3, 1) and 10**lr == pytest.approx(5e-5)
    recipe_sets, recipe_line = efficiency.untuned_call("efficiency", [], efficiency.UNTUNED["recipe"][1])
    r, alpha, lr = (float(v) for v in recipe_line.split())
    assert recipe_sets == [] and (r, alpha) == (4, 2) and 10**lr == pytest.approx(2e-4)


DOWNSTREAM = """
[[downstream]]
task = "tiny_mc"
metric = "acc"
include_path = "{tasks}"
"""


@pytest.mark.slow
def test_the_whole_harness_on_the_tiny_model(tmp_path: Path, repo: Path, write_tiny_experiment) -> None:
    tasks = write_benchmark_tasks(tmp_path / "tasks", n_items=8)
    experiment = write_tiny_experiment(
        tmp_path / "experiment.toml", space="rank_alpha_lr", steps=4, records=tmp_path / "unused"
    )
    experiment.write_text(experiment.read_text() + DOWNSTREAM.format(tasks=tasks))
    test = tmp_path / "test.jsonl"
    test.write_text("".join(json.dumps(row) + "\n" for row in instruction_rows(30, seed=11)))
    out = tmp_path / "out"
    command = [sys.executable, str(repo / "benchmarks" / "efficiency.py"), "--experiment", str(experiment)]
    command += ["--budget", "2", "--seeds", "0", "--work", str(tmp_path / "work"), "--out", str(out)]
    # The early stoppers are tested in tests/studies; TPE's first trials are random search's (the same sampler and
    # seed: benchmarks/tpe_startup_check.py), so at a budget of 2 it would repeat random search's run.
    command += ["--set", f"data.test={test}", "--methods", "nomad,random"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads((out / "efficiency.json").read_text())
    assert [row["method"] for row in result["compute"]] == ["nomad", "random"]
    for row in result["compute"]:
        assert row["total_tokens"][0] > 0 and row["best"]["mean"] >= result["best_validation_loss"]
    assert sum(r["reach"][0] is not None for r in result["compute"]) >= 1  # the best run reached its own best
    assert result["reproduced_validation_loss_max_difference"] < 1e-4  # the same seed trains the same adapter
    test_results = result["test"]
    assert [u["key"] for u in test_results["untuned"]] == ["peft-defaults", "recipe"]
    for method in test_results["methods"]:
        seed = method["seeds"][0]
        assert seed["test"]["low"] < seed["test"]["value"] < seed["test"]["high"]
        assert set(seed["minus"]) == {"peft-defaults", "recipe"}
    scores = result["downstream"]
    models = " = ".join(row["model"] for row in scores)  # methods with the same best point share a row
    assert all(name in models for name in ("base model", "NOMAD", "random search", "peft's defaults"))
    assert all(0 <= row["score"]["value"] <= 1 for row in scores)
    assert all("minus_base" in row for row in scores if row["model"] != "base model")
    for name in ("tokens.png", "report.html", "efficiency.md", "downstream.jsonl"):
        assert (out / name).stat().st_size > 0, name
    assert sorted(p.name for p in (out / "records").iterdir()) == [
        "nomad-s0.jsonl",
        "random-s0.jsonl",
        "test.jsonl",
    ]
    assert len(list((out / "test_losses").iterdir())) == 4  # 2 methods' best points and 2 untuned settings
