"""The summary a NOMAD study prints when it ends (``studies.nomad_study.read_summary``), from a study folder's records
and its experiment's snapshot: no NOMAD, no training (the studies' own tests run them)."""

from __future__ import annotations

from pathlib import Path

from blackbox.studies.nomad_study import read_summary
from tests.study_folders import LR_AT_UPPER, LR_UPPER, write_demo_study


def test_the_summary_warns_when_the_best_points_sit_on_a_bound(tmp_path: Path) -> None:
    points = [
        ((2.0, 4.0, LR_UPPER), 4.3),
        ((3.0, 2.0, LR_UPPER), 4.4),
        ((2.0, 2.0, -4.5), 4.9),
        ((1.0, 1.0, -3.0), 4.6),
    ]
    text = read_summary(tmp_path, write_demo_study(tmp_path, points)).text()
    assert "best objective: 4.3  (run run0)" in text
    assert (
        "warning: the best points sit on a bound of the search space: learning_rate is at its upper bound "
        f"({LR_AT_UPPER}) in 2 of the 4 best points, the best included. The optimum may lie beyond: widen it there"
    ) in text


def test_no_warning_inside_the_box_or_without_the_experiment(tmp_path: Path) -> None:
    inside = [((2.0, 4.0, -3.0), 4.3), ((3.0, 2.0, LR_UPPER), 4.4)]
    summary = read_summary(tmp_path / "a", write_demo_study(tmp_path / "a", inside))
    assert summary.on_bounds == () and "\nwarning: " not in summary.text()
    on_bound = [((2.0, 4.0, LR_UPPER), 4.3)]
    summary = read_summary(
        tmp_path / "b", write_demo_study(tmp_path / "b", on_bound, snapshot=False)
    )  # an older study folder
    assert summary.best is not None and summary.on_bounds == ()
