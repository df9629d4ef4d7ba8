"""``lora-blackbox report`` says where the best points of a study sit on a bound of its search space."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from blackbox.reports import write_report
from tests.study_folders import LR_AT_UPPER, LR_UPPER, write_demo_study


def test_the_report_warns_of_best_points_on_a_bound(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    study = tmp_path / "demo"
    points = [
        ((2.0, 4.0, LR_UPPER), 4.3),
        ((3.0, 2.0, LR_UPPER), 4.35),
        ((2.0, 2.0, -4.5), 4.9),
        ((5.0, 8.0, -3.0), 4.4),
    ]
    write_demo_study(study, points)
    with caplog.at_level(logging.WARNING, logger="blackbox.reports"):
        files = write_report([f"demo={study}"], tmp_path / "report")
    [run] = json.loads(files["summary"].read_text())["runs"]
    assert run["on_bounds"] == [
        {"variable": "learning_rate", "bound": "upper", "coordinate": LR_UPPER, "value": LR_AT_UPPER, "count": 2,
         "top": 4}
    ]  # fmt: skip
    said = "demo: the best points sit on a bound of the search space: learning_rate is at its upper bound"
    assert said in caplog.text
    page = files["html"].read_text()
    assert "On a bound of the search space" in page and "in 2 of the 4 best points, the best included" in page


def test_no_warning_when_the_best_point_is_inside(tmp_path: Path) -> None:
    write_demo_study(tmp_path / "demo", [((2.0, 4.0, -3.0), 4.3), ((3.0, 2.0, LR_UPPER), 4.35)])
    files = write_report([str(tmp_path / "demo")], tmp_path / "report")
    assert json.loads(files["summary"].read_text())["runs"][0]["on_bounds"] == []
    assert "On a bound of the search space" not in files["html"].read_text()
