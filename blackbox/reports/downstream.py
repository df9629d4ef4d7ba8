"""The report's downstream section: each benchmark score of a study's adapters against their validation loss.

The question the reference study raised: does a lower validation loss carry over to benchmarks? Per benchmark,
the scores of the study's evaluations (``downstream.jsonl``) against their validation losses, Spearman's rank
correlation between the two (negative: lower loss, higher score), and the base model's score as a reference.

Each score carries its 95% interval (lm-eval's standard error): 100 items of a two-choice benchmark give +-0.1,
which separates no two adapters of the demo. A rank correlation over fewer than :data:`MIN_RANK_POINTS` points is
marked as too few to rank: over 3 points, any order is at least one chance in six.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from blackbox.reports.load import Run, load_downstream

Z95 = 1.959963984540054
MIN_RANK_POINTS = 5
"""Fewer points than this: a rank correlation is shown, marked as too few to rank."""


@dataclass(frozen=True)
class Score:
    """One scored model of a benchmark: its validation loss, score, label and lm-eval's standard error (None when
    the task reports none)."""

    validation_loss: float
    value: float
    label: str
    stderr: float | None = None

    @property
    def half_width(self) -> float | None:
        """Half the width of the 95% interval (normal approximation), None without a standard error."""
        return None if self.stderr is None else Z95 * self.stderr


@dataclass(frozen=True)
class BenchmarkScores:
    """One benchmark of one run: its evaluations' scores (by validation loss) and the base model's score."""

    run: str
    key: str
    points: tuple[Score, ...]
    base: float | None
    base_stderr: float | None = None

    @property
    def spearman(self) -> float | None:
        """Spearman's rank correlation of validation loss and score (None under 3 points or a constant)."""
        if len(self.points) < 3:
            return None
        from scipy.stats import spearmanr

        losses, scores = [p.validation_loss for p in self.points], [p.value for p in self.points]
        if len(set(losses)) < 2 or len(set(scores)) < 2:
            return None
        return float(spearmanr(losses, scores).statistic)

    @property
    def too_few_to_rank(self) -> bool:
        """Whether the rank correlation rests on fewer than :data:`MIN_RANK_POINTS` points."""
        return len(self.points) < MIN_RANK_POINTS

    def describe_spearman(self) -> str:
        """The rank correlation in words: ``-0.50 (3 points: too few to rank)``, ``n/a``."""
        rho = self.spearman
        if rho is None:
            return "n/a"
        note = f" ({len(self.points)} points: too few to rank)" if self.too_few_to_rank else ""
        return f"{rho:.2f}{note}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "base": self.base,
            "base_stderr": self.base_stderr,
            "points": len(self.points),
            "spearman": self.spearman,
            "spearman_too_few_points": self.too_few_to_rank,
            "scores": [
                {"validation_loss": p.validation_loss, "value": p.value, "label": p.label, "stderr": p.stderr}
                for p in self.points
            ],
        }


def benchmark_scores(run: Run) -> list[BenchmarkScores]:
    """The downstream scores of a run's evaluations, one entry per benchmark (empty when it has none)."""
    rows = load_downstream(run.folder)
    by_id = {e.run_id: e for e in run.evaluations}
    found = []
    for key in dict.fromkeys(row["key"] for row in rows):
        points = []
        base, base_stderr = None, None
        for row in rows:
            if row["key"] != key:
                continue
            evaluation = by_id.get(row.get("run_id") or "")
            stderr = float(row["stderr"]) if row.get("stderr") is not None else None
            if row.get("run_id") is None and row.get("adapter") is None:
                base, base_stderr = float(row["value"]), stderr
            elif evaluation is not None and evaluation.metrics.get("validation_loss") is not None:
                loss = float(evaluation.metrics["validation_loss"])
                if math.isfinite(loss):
                    points.append(Score(loss, float(row["value"]), row["label"], stderr))
        points.sort(key=lambda p: (p.validation_loss, p.value, p.label))
        found.append(BenchmarkScores(run.label, key, tuple(points), base, base_stderr))
    return found
