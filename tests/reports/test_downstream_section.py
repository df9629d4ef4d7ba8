"""The report's downstream section on synthetic scores: each score with its 95% interval, and a rank correlation
over too few points marked as such (issue 22: the demo's 0.55-0.58 with a standard error of 0.05 read as a ranking)."""

from __future__ import annotations

import pytest

from blackbox.reports.downstream import MIN_RANK_POINTS, BenchmarkScores, Score
from blackbox.reports.html import _downstream
from blackbox.reports.plots import downstream_png

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _scores(count: int) -> BenchmarkScores:
    points = tuple(Score(4.3 + 0.01 * i, 0.58 - 0.01 * (i % 3), f"top{i + 1}", 0.05) for i in range(count))
    return BenchmarkScores("NOMAD", "benchmark:chitchat-replies:acc", points, 0.56, 0.05)


def test_three_points_are_too_few_to_rank() -> None:
    demo = _scores(3)
    assert demo.spearman is not None and demo.too_few_to_rank
    assert demo.describe_spearman().endswith("(3 points: too few to rank)")
    assert demo.as_dict()["spearman_too_few_points"] is True
    enough = _scores(MIN_RANK_POINTS)
    assert not enough.too_few_to_rank and "too few" not in enough.describe_spearman()
    assert _scores(2).describe_spearman() == "n/a"


def test_each_score_carries_its_interval() -> None:
    demo = _scores(3)
    assert demo.points[0].half_width == pytest.approx(0.098, abs=1e-3)  # 100 two-choice items: +-0.1
    assert demo.as_dict()["scores"][0]["stderr"] == 0.05
    assert Score(4.3, 0.5, "x").half_width is None
    section = _downstream([demo])
    assert "0.56 ± 0.098" in section and "0.58 ± 0.098" in section and "too few to rank" in section
    assert downstream_png([demo, _scores(MIN_RANK_POINTS)]).startswith(PNG_SIGNATURE)
