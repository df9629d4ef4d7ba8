"""Benchmark scores by lm-evaluation-harness: ``lora-blackbox downstream`` on a study's adapters, a benchmark as a
study's objective and as a NOMAD constraint, through the real NOMADs and Optuna.

lm-eval's hub datasets cannot be fetched here: the tasks are our own YAMLs over local JSON files
(``write_benchmark_tasks``): a multiple-choice task (``tiny_mc``, log-likelihood, ``acc``) and a generation task
(``tiny_gen``, greedy, ``exact_match``), scored on the tiny model with the adapters it was really trained with.
"""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import pytest

from blackbox.core.folders import BASE_SCORES_FILE, DOWNSTREAM_FILE
from blackbox.training.testing import write_benchmark_tasks
from tests.records import read_records

pytestmark = pytest.mark.slow

POINTS = "1 -3.0\n3 -2.5\n2 -3.8\n"  # rank_lr: log2 rank, log10 learning rate


@pytest.fixture(scope="module")
def tasks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_benchmark_tasks(tmp_path_factory.mktemp("tasks"))


def _evaluate(blackbox_cmd: list[str], experiment: Path, folder: Path, points: str, *settings: str) -> None:
    (folder / "points.txt").write_text(points)
    args = [word for setting in settings for word in ("--set", setting)]
    subprocess.run(
        [*blackbox_cmd, "eval", "-e", str(experiment), *args, str(folder / "points.txt")],
        cwd=folder,
        check=True,
        capture_output=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory, write_tiny_experiment, blackbox_cmd: list[str]) -> Path:
    """A study folder of three evaluations of the tiny model that saved their adapters."""
    folder = tmp_path_factory.mktemp("study")
    experiment = write_tiny_experiment(folder / "experiment.toml", space="rank_lr", steps=8, records=folder / "runs")
    _evaluate(blackbox_cmd, experiment, folder, POINTS, "records.save_adapter=true")
    return folder / "runs"


def _downstream(blackbox_cmd: list[str], *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*blackbox_cmd, "downstream", *args], cwd=cwd, capture_output=True, text=True, timeout=600)


def test_downstream_scores_the_base_model_and_a_studys_adapters(study: Path, tasks: Path, blackbox_cmd) -> None:
    records = [r for r in read_records(study / "records.jsonl") if r["status"] == "OK"]
    assert len(records) == 3
    ranked = sorted(records, key=lambda r: r["metrics"]["validation_loss"])
    adapter = Path(ranked[1]["run_dir"]) / "adapter"

    done = _downstream(
        blackbox_cmd,
        str(study),
        "--best",
        "--worst",
        "--adapter",
        str(adapter),
        "--tasks",
        "tiny_mc,tiny_gen:exact_match,tiny_ll",
        "--include-path",
        str(tasks),
        cwd=study.parent,
    )
    assert done.returncode == 0, done.stderr
    # Our terminal is for our lines: lm-eval's progress bars (which it turns on past TQDM_DISABLE) and prints went
    # to the log.
    assert all(line.startswith("lora-blackbox ") for line in done.stderr.splitlines()), done.stderr[-3000:]

    rows = [json.loads(line) for line in (study / DOWNSTREAM_FILE).read_text().splitlines()]
    assert [(r["label"], r["task"]) for r in rows] == [
        (label, task)
        for label in ("base", "best", "worst", ranked[1]["run_id"])
        for task in ("tiny_mc", "tiny_gen", "tiny_ll")
    ]
    by_label = {r["label"]: r for r in rows if r["task"] == "tiny_mc"}
    assert by_label["base"]["run_id"] is None and by_label["base"]["adapter"] is None
    assert by_label["best"]["run_id"] == ranked[0]["run_id"]
    assert by_label["worst"]["run_id"] == ranked[-1]["run_id"]
    assert by_label["best"]["validation_loss"] == ranked[0]["metrics"]["validation_loss"]
    for row in rows:
        assert row["key"] == f"benchmark:{row['task']}:{row['metric']}"
        assert row["metric"] == {"tiny_mc": "acc", "tiny_gen": "exact_match", "tiny_ll": "perplexity"}[row["task"]]
        assert row["samples"] == 24 and row["lm_eval_version"] and row["seconds"] > 0
        if row["task"] != "tiny_ll":
            assert 0 <= row["value"] <= 1 and row["stderr"] is not None
    # The adapters are really on the model, and taken off again: each model has its own perplexity (the
    # first metric tiny_ll reports), the base model's is the same before and after the adapters.
    perplexity = {r["label"]: r["value"] for r in rows if r["task"] == "tiny_ll"}
    assert len(set(perplexity.values())) == 4, perplexity
    assert perplexity["best"] < perplexity["base"]  # trained on these word tasks: the right answers got likelier
    mc = {r["label"]: r["value"] for r in rows if r["task"] == "tiny_mc"}
    # stdout: the table alone, one line per model
    table = done.stdout.strip().splitlines()
    assert len(table) == 5 and table[0].split()[:3] == ["model", "run", "val."]
    assert table[1].startswith("base") and f"{mc['best']:.4f}" in table[2]
    again = _downstream(
        blackbox_cmd,
        "--adapter",
        str(adapter),
        "-e",
        str(study.parent / "experiment.toml"),
        "--tasks",
        "tiny_ll",
        "--include-path",
        str(tasks),
        "--out",
        str(study.parent / "again.jsonl"),
        cwd=study.parent,
    )
    assert again.returncode == 0, again.stderr
    base_again = json.loads((study.parent / "again.jsonl").read_text().splitlines()[0])
    assert (base_again["label"], base_again["value"]) == ("base", perplexity["base"])

    # The report: each score against the validation loss, with the rank correlation and the base model.
    report = subprocess.run(
        [*blackbox_cmd, "report", str(study), "--out", str(study / "report")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert report.returncode == 0, report.stderr
    page = (study / "report" / "report.html").read_text()
    assert "Downstream benchmarks" in page and "tiny_mc:acc" in page and "Spearman" in page
    assert (study / "report" / "downstream.png").stat().st_size > 0
    summary = json.loads((study / "report" / "summary.json").read_text())
    downstream = {d["key"]: d for d in summary["runs"][0]["downstream"]}
    assert downstream["benchmark:tiny_mc:acc"]["base"] == mc["base"]
    assert downstream["benchmark:tiny_mc:acc"]["points"] == 2  # best and worst: evaluations of this study


def test_retraining_an_evaluation_reproduces_its_validation_loss(
    tmp_path: Path, tasks: Path, write_tiny_experiment, blackbox_cmd
) -> None:
    experiment = write_tiny_experiment(tmp_path / "e.toml", space="rank_lr", steps=8, records=tmp_path / "runs")
    _evaluate(blackbox_cmd, experiment, tmp_path, "2 -3.0\n")
    [record] = read_records(tmp_path / "runs" / "records.jsonl")
    assert not (Path(record["run_dir"]) / "adapter").exists()

    refused = _downstream(
        blackbox_cmd, "runs", "--best", "--tasks", "tiny_mc", "--include-path", str(tasks), cwd=tmp_path
    )
    assert refused.returncode == 2 and "--retrain" in refused.stderr and not refused.stdout

    done = _downstream(
        blackbox_cmd, "runs", "--best", "--retrain", "--tasks", "tiny_mc", "--include-path", str(tasks), cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in (tmp_path / "runs" / DOWNSTREAM_FILE).read_text().splitlines()]
    best = next(r for r in rows if r["label"] == "best")
    assert best["retrained"] and Path(best["adapter"]).is_dir()
    assert best["retrained_validation_loss"] == pytest.approx(record["metrics"]["validation_loss"], rel=1e-4)
    # The retraining is not an evaluation of the study: it spent no budget.
    assert len(read_records(tmp_path / "runs" / "records.jsonl")) == 1


BENCHMARK_STUDY = """
[objective]
name = "benchmark"
direction = "maximize"

[objective.benchmark]
task = "tiny_mc"
metric = "acc"
include_path = "{tasks}"

[[constraints]]
name = "no_forgetting"
type = "PB"
at_least = 0.0
relative_to_base = true

[constraints.benchmark]
task = "tiny_gen"
metric = "exact_match"
include_path = "{tasks}"
"""
BENCHMARK_OUTPUTS = (
    '["OBJ:objective", "PB:no_forgetting", "EXTRA_O:benchmark:tiny_mc:acc", "EXTRA_O:validation_loss", '
    '"EXTRA_O:run_id", "CNT_EVAL"]'
)


def _benchmark_experiment(path: Path, write_tiny_experiment, tasks: Path, budget: int) -> Path:
    experiment = write_tiny_experiment(
        path,
        space="rank_lr",
        name="tiny-benchmark",
        budget=budget,
        steps=6,
        outputs=BENCHMARK_OUTPUTS,
        records=path.parent / "runs",
    )
    experiment.write_text(experiment.read_text() + BENCHMARK_STUDY.format(tasks=tasks))
    return experiment


def test_a_nomad_study_maximises_a_benchmark_under_a_forgetting_constraint(
    tmp_path: Path, tasks: Path, write_tiny_experiment, blackbox_cmd, nomad_env, run_nomad, ran_with_nomad
) -> None:
    from blackbox.core.nomad import read_cache

    experiment = _benchmark_experiment(tmp_path / "e.toml", write_tiny_experiment, tasks, budget=3)
    param = tmp_path / "study.txt"
    subprocess.run([*blackbox_cmd, "-q", "params", "-e", str(experiment), "--out", str(param)], check=True, timeout=600)
    assert "BB_OUTPUT_TYPE OBJ PB EXTRA_O EXTRA_O EXTRA_O CNT_EVAL" in param.read_text()

    done = run_nomad(param, tmp_path / "study", nomad_env)
    assert done.returncode == 0, done.stderr
    ran_with_nomad(done.stderr, nomad_env)

    records = [r for r in read_records(tmp_path / "study" / "records.jsonl") if r["status"] == "OK"]
    assert len(records) == 3
    base = json.loads((tmp_path / "study" / BASE_SCORES_FILE).read_text())
    [base_gen] = [b["value"] for b in base.values() if b["key"] == "benchmark:tiny_gen:exact_match"]
    cache = {e.outputs[4]: e for e in read_cache(tmp_path / "study" / "cache.txt")}  # by the EXTRA_O run id
    for record in records:
        metrics = record["metrics"]
        accuracy = metrics["benchmark:tiny_mc:acc"]
        # What NOMAD minimised is the accuracy negated; the record keeps both.
        assert metrics["objective"] == -accuracy
        assert metrics["constraint:no_forgetting"] == pytest.approx(
            base_gen - metrics["benchmark:tiny_gen:exact_match"]
        )
        assert metrics["benchmark:tiny_gen:exact_match:base"] == base_gen
        assert record["timings"]["benchmark_s"] > 0
        entry = cache[record["run_id"]]
        assert entry.point == tuple(record["point"])
        assert float(entry.outputs[0]) == -accuracy and float(entry.outputs[1]) == metrics["constraint:no_forgetting"]
    # The report ranks by what NOMAD saw, and tells feasible points from infeasible ones.
    report = subprocess.run(
        [*blackbox_cmd, "report", str(tmp_path / "study"), "--out", str(tmp_path / "report")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert report.returncode == 0, report.stderr
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    feasible = [r for r in records if r["metrics"]["constraint:no_forgetting"] <= 0]
    infeasible = len(records) - len(feasible)
    assert summary["runs"][0]["infeasible"] == infeasible
    # The best feasible point (the tiny model's generations match the base model's: some point is feasible).
    assert feasible, [r["metrics"]["constraint:no_forgetting"] for r in records]
    best = summary["runs"][0]["best"]
    assert best["objective"] == min(r["metrics"]["objective"] for r in feasible)
    assert best["run_id"] == min(feasible, key=lambda r: r["metrics"]["objective"])["run_id"]


def test_an_optuna_study_of_a_benchmark_objective_keeps_its_constraints(
    tmp_path: Path, tasks: Path, write_tiny_experiment, blackbox_cmd
) -> None:
    experiment = _benchmark_experiment(tmp_path / "e.toml", write_tiny_experiment, tasks, budget=2)
    done = subprocess.run(
        [
            *blackbox_cmd,
            "optuna",
            "-e",
            str(experiment),
            "--n-trials",
            "2",
            "--in-process",
            "--dir",
            str(tmp_path / "study"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    records = {r["run_id"]: r for r in read_records(tmp_path / "study" / "records.jsonl")}
    import optuna

    trials = optuna.load_study(study_name=summary["study_name"], storage=summary["storage"]).trials
    assert len(trials) == 2
    for trial in trials:
        metrics = records[trial.user_attrs["run_id"]]["metrics"]
        assert trial.value == -metrics["benchmark:tiny_mc:acc"]
        assert trial.user_attrs["constraints"] == [metrics["constraint:no_forgetting"]]
    feasible = [t for t in trials if t.user_attrs["constraints"][0] <= 0]
    assert feasible, [t.user_attrs["constraints"] for t in trials]  # (see the NOMAD study above)
    best = summary["best"]  # the best feasible trial
    assert best["value"] == min(t.value for t in feasible)
    assert best["trial"] == min(feasible, key=lambda t: t.value).number
    assert all(math.isfinite(t.value) for t in trials)


def test_a_varlen_experiment_is_scored_on_padded_batches(
    tmp_path: Path, tasks: Path, write_tiny_experiment, blackbox_cmd
) -> None:
    """The 'varlen' attention (the default on CUDA with packing) takes packed batches only, lm-eval pads its batches:
    the evaluation scores the model it trained with SDPA (its objective, and the base model of its constraint), and
    downstream loads the base model with SDPA."""
    experiment = _benchmark_experiment(tmp_path / "e.toml", write_tiny_experiment, tasks, budget=1)
    varlen, bf16 = "model.attn_implementation=varlen", "model.dtype=bfloat16"  # flash attention's dtypes only
    _evaluate(blackbox_cmd, experiment, tmp_path, "3 -2.5\n", varlen, bf16, "records.save_adapter=true")
    [record] = read_records(tmp_path / "runs" / "records.jsonl")
    assert record["status"] == "OK", record["error"]
    assert record["metrics"]["attention"] == "varlen" and 0 <= record["metrics"]["benchmark:tiny_mc:acc"] <= 1
    assert "benchmark:tiny_gen:exact_match:base" in record["metrics"]
    done = _downstream(
        blackbox_cmd, "runs", "--best", "-e", str(experiment), "--set", varlen, "--set", bf16, "--tasks", "tiny_ll",
        "--include-path", str(tasks), cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert [json.loads(line)["label"] for line in (tmp_path / "runs" / DOWNSTREAM_FILE).read_text().splitlines()] == [
        "base",
        "best",
    ]
