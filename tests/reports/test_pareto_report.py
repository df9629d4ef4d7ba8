"""The report of studies of several objectives, on records of known values: the front, the hypervolume against a
reference point stated once for all runs, a maximised score shown as measured, and runs of other objectives
refused. (The report of real studies: tests/studies/test_pareto_studies.py.)"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from blackbox.core.errors import ConfigError
from blackbox.core.experiment import Experiment, load_experiment
from blackbox.core.failures import Status
from blackbox.core.objectives import objective_metrics
from blackbox.core.point import PointSource
from blackbox.core.record import RecordStore, build_record
from blackbox.reports import write_report

MMLU = "benchmark:instructeval_mmlu:exact_match"


def _study(folder: Path, rows: list[tuple[Status, float, float]]) -> Path:
    """A study of paper_exp3_pareto (the validation loss, and MMLU maximised) whose evaluations measured ``rows``:
    (status, validation loss, MMLU score)."""
    experiment = load_experiment("paper_exp3_pareto", [f"records.dir={folder}"])
    store = RecordStore.of(experiment)
    for number, (status, loss, score) in enumerate(rows, start=1):
        metrics = {"validation_loss": loss, MMLU: score, "train_loss": 1.5, "train_seconds": 60.0}
        if status is Status.OK:
            metrics |= objective_metrics(experiment.all_objectives, metrics)
        point = PointSource(values=(1.0, float(number), 1.0))
        store.append(build_record(experiment, status, point, metrics=metrics, hparams={"lora_r": 4 * number}))
    return folder


def _one_objective(folder: Path, experiment: Experiment) -> Path:
    metrics = {"validation_loss": 1.0, "objective": 1.0, "train_loss": 1.5, "train_seconds": 60.0}
    source = PointSource(values=(2.0, 2.0, -4.0))
    RecordStore.of(experiment).append(build_record(experiment, Status.OK, source, metrics=metrics))
    return folder


def test_the_front_and_its_hypervolume(tmp_path: Path) -> None:
    a = _study(
        tmp_path / "a",
        [
            (Status.OK, 2.0, 0.40),  # (2, -0.4) as the solver minimised it
            (Status.ERROR, math.nan, math.nan),  # failed: counts, adds nothing
            (Status.OK, 1.0, 0.30),  # (1, -0.3): both on the front
            (Status.OK, 2.5, 0.35),  # dominated by the first
        ],
    )
    b = _study(tmp_path / "b", [(Status.OK, 3.0, 0.50)])  # the best score of all, the worst loss
    files = write_report([f"A={a}", f"B={b}"], tmp_path / "report")
    summary = json.loads(files["summary"].read_text())
    assert summary["objectives"] == [
        {"name": "objective:validation_loss", "metric": "validation_loss", "maximised": False},
        {"name": f"objective:{MMLU}", "metric": MMLU, "maximised": True},
    ]
    # One frame for both runs: ideal (1, -0.5), reference the worst plus a tenth of the range: (3.2, -0.28).
    frame = summary["hypervolume_frame"]
    assert frame["ideal"] == [1.0, -0.5] and frame["reference"] == pytest.approx([3.2, -0.28])
    box = 2.2 * 0.22
    run_a, run_b = summary["runs"]
    assert [p["evaluation"] for p in run_a["front"]] == [1, 3]
    assert run_a["front"][0]["values"] == {"validation_loss": 2.0, MMLU: 0.4}  # the score as measured
    first = 1.2 * 0.12  # (2, -0.4) alone
    both = first + (2.0 - 1.0) * (-0.28 + 0.3)  # and (1, -0.3) beside it
    assert run_a["hypervolume"] == pytest.approx([first / box, first / box, both / box, both / box])
    assert run_a["hypervolume_after"] == {"1": pytest.approx(first / box)}
    assert run_b["hypervolume"] == pytest.approx([0.2 * 0.22 / box])
    page = files["html"].read_text()
    assert f"{MMLU} (maximised)" in page and 'id="front"' in page and "(3.2, -0.28)" in page
    assert files["pareto_front"].stat().st_size > 0 and files["hypervolume"].stat().st_size > 0


def test_runs_of_other_objectives_are_refused_unless_one_metric_is_asked_for(tmp_path: Path) -> None:
    pareto = _study(tmp_path / "pareto", [(Status.OK, 2.0, 0.4)])
    one = _one_objective(tmp_path / "one", load_experiment("demo", [f"records.dir={tmp_path / 'one'}"]))
    with pytest.raises(ConfigError, match=r"the runs optimise different objectives \(.*pareto: \(objective:valid"):
        write_report([str(pareto), str(one)], tmp_path / "report")
    files = write_report([str(pareto), str(one)], tmp_path / "report", objective="validation_loss")
    assert "pareto_front" not in files
    assert json.loads(files["summary"].read_text())["objective"] == "validation_loss"


def test_three_objectives_are_drawn_as_their_pairwise_projections(tmp_path: Path) -> None:
    three = [
        'objectives=[{name="validation_loss"},{name="trainable_params"},{name="train_seconds"}]',
        'study.outputs=["OBJ:objective:validation_loss","OBJ:objective:trainable_params",'
        '"OBJ:objective:train_seconds","CNT_EVAL"]',
        f"records.dir={tmp_path / 'study'}",
    ]
    experiment = load_experiment("demo_pareto", three)
    store = RecordStore.of(experiment)
    for number, values in enumerate([(2.0, 100.0, 9.0), (1.0, 400.0, 9.0), (3.0, 50.0, 5.0), (3.0, 400.0, 9.0)]):
        metrics = dict(zip(("validation_loss", "trainable_params", "train_seconds"), values, strict=True))
        metrics |= objective_metrics(experiment.all_objectives, metrics)
        store.append(build_record(experiment, Status.OK, PointSource(values=(1.0, 1.0, -number)), metrics=metrics))
    files = write_report([str(tmp_path / "study")], tmp_path / "report")
    [run] = json.loads(files["summary"].read_text())["runs"]
    assert [p["evaluation"] for p in run["front"]] == [1, 2, 3]  # the fourth is dominated by the second
    assert run["hypervolume"][-1] == run["hypervolume"][-2] > 0
    assert files["pareto_front"].read_bytes()[:4] == b"\x89PNG"
