"""The report's downstream section: each benchmark score of a study's adapters against their validation loss.

The question the reference study raised: does a lower validation loss carry over to benchmarks? Per benchmark,
the scores of the study's evaluations (``downstream.jsonl``) against their validation losses, Spearman's rank
correlation between the two (negative: lower loss, higher score), and the base model's score as a reference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from blackbox.reports.load import Run, load_downstream


@dataclass(frozen=True)
class BenchmarkScores:
    """One benchmark of one run: its evaluations' (validation loss, score, label) and the base model's score."""

    run: str
    key: str
    points: tuple[tuple[float, float, str], ...]
    base: float | None

    @property
    def spearman(self) -> float | None:
        """Spearman's rank correlation of validation loss and score (None under 3 points or a constant)."""
        if len(self.points) < 3:
            return None
        from scipy.stats import spearmanr

        losses, scores = [p[0] for p in self.points], [p[1] for p in self.points]
        if len(set(losses)) < 2 or len(set(scores)) < 2:
            return None
        return float(spearmanr(losses, scores).statistic)

    def as_dict(self) -> dict[str, Any]:
        rho = self.spearman
        return {
            "key": self.key,
            "base": self.base,
            "points": len(self.points),
            "spearman": rho,
            "scores": [{"validation_loss": loss, "value": value, "label": label} for loss, value, label in self.points],
        }


def benchmark_scores(run: Run) -> list[BenchmarkScores]:
    """The downstream scores of a run's evaluations, one entry per benchmark (empty when it has none)."""
    rows = load_downstream(run.folder)
    by_id = {e.run_id: e for e in run.evaluations}
    found = []
    for key in dict.fromkeys(row["key"] for row in rows):
        points = []
        base = None
        for row in rows:
            if row["key"] != key:
                continue
            evaluation = by_id.get(row.get("run_id") or "")
            if row.get("run_id") is None and row.get("adapter") is None:
                base = float(row["value"])
            elif evaluation is not None and evaluation.metrics.get("validation_loss") is not None:
                loss = float(evaluation.metrics["validation_loss"])
                if math.isfinite(loss):
                    points.append((loss, float(row["value"]), row["label"]))
        found.append(BenchmarkScores(run.label, key, tuple(sorted(points)), base))
    return found
