"""benchmarks/replay_report.py: the replay comparison's statistics on synthetic traces whose answers are known."""

from __future__ import annotations

import importlib
import itertools
import math
import statistics
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest


@pytest.fixture(scope="module")
def report(repo: Path) -> ModuleType:
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(repo / "benchmarks"))
        return importlib.import_module("replay_report")


def _trace(report: ModuleType, steps: list[tuple[str, float, float, float]]) -> object:
    """A trace of (status, seen, true, seconds) steps."""
    return report.Trace("m", 20, 0, tuple(report.Step((float(i),), *step) for i, step in enumerate(steps)))


def test_compute_to_reach_a_target_counts_every_evaluation_before_it(report) -> None:
    nan = math.nan
    trace = _trace(report, [("OK", 5.0, 5.0, 100), ("STOPPED", nan, 3.0, 20), ("OK", 4.0, 4.0, 100), ("OK", 6, 6, 1)])
    assert trace.reach(4.5) == 220  # the stopped evaluation's 20 s count, its true value does not
    assert trace.reach(3.5) == math.inf and trace.best == 4.0 and trace.total_seconds == 221
    assert math.isnan(trace.best_at(99)) and trace.best_at(100) == 5.0 and trace.best_at(219) == 5.0
    assert trace.best_at(220) == 4.0


def test_a_stop_is_wrong_when_the_point_would_have_become_the_incumbent(report) -> None:
    nan = math.nan
    trace = _trace(
        report,
        [
            ("STOPPED", nan, 9.0, 1),  # no incumbent yet: its 9.0 would have been the best so far
            ("OK", 5.0, 5.0, 1),
            ("STOPPED", nan, 6.0, 1),  # worse than 5.0: a right stop
            ("STOPPED", nan, 4.0, 1),  # better than 5.0: wrong
            ("STOPPED", nan, nan, 1),  # diverged anyway: right
        ],
    )
    assert trace.wrong_stops() == (2, 4)


def test_the_bootstrap_interval_covers_the_median_and_keeps_never_as_never(report) -> None:
    values = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]
    estimate = report.bootstrap(values)
    assert estimate.value == 5.0 and estimate.low < 5.0 < estimate.high
    mostly_never = report.bootstrap([1.0, math.inf, math.inf, math.inf, math.inf])
    assert mostly_never.value == math.inf and mostly_never.high == math.inf and str(mostly_never).startswith("never")
    assert report.bootstrap(values) == estimate  # seeded: the same interval every time


def test_the_variance_of_an_additive_grid_is_its_main_effects(report) -> None:
    # f(a, b, c) = 2a + b with a, b, c on {0, 1, 2}: a explains 4/5 of the variance, b 1/5, c and every pair none.
    grid = {(a, b, c): 2.0 * a + b for a, b, c in itertools.product((0.0, 1.0, 2.0), repeat=3)}
    shares = report.variance_shares(grid, ["a", "b", "c"])
    assert shares["a"] == pytest.approx(0.8) and shares["b"] == pytest.approx(0.2)
    assert shares["c"] == pytest.approx(0) and all(shares[k] == pytest.approx(0) for k in shares if " x " in k)
    interacting = {(a, b, c): a * b for a, b, c in itertools.product((0.0, 1.0), repeat=3)}
    assert report.variance_shares(interacting, ["a", "b", "c"])["a x b"] > 0.3
    with pytest.raises(ValueError, match="incomplete grid"):
        report.variance_shares(dict(list(grid.items())[:-1]), ["a", "b", "c"])


def test_anytime_quantiles_take_a_seed_without_a_value_as_infinite_regret(report) -> None:
    fast = _trace(report, [("OK", 1.0, 1.0, 10)])
    slow = _trace(report, [("OK", 3.0, 3.0, 30)])
    regret = lambda best: best if not math.isnan(best) else np.inf  # noqa: E731
    curve = report.quantile_curve([fast, slow, slow], [5, 10, 30], regret)
    assert curve[1].tolist() == [math.inf, math.inf, 3.0]  # the median seed: nothing before 30 s
    assert curve[0].tolist() == [math.inf, 1.0, 1.0]


def test_the_interval_of_one_token_examples_is_the_standard_error_of_their_mean(report) -> None:
    losses = [4.1, 3.7, 5.2, 4.4, 3.9, 4.8, 4.0, 4.6]
    interval = report.ratio_interval(losses, [1] * len(losses))
    assert interval.value == pytest.approx(statistics.fmean(losses))
    standard_error = statistics.stdev(losses) / math.sqrt(len(losses))
    assert interval.half_width == pytest.approx(report.Z95 * standard_error)
    # Longer examples weigh more: the loss is per token, not a mean of examples.
    assert report.ratio_interval([2.0, 30.0], [1, 10]).value == pytest.approx(32 / 11)


def test_a_paired_difference_sees_what_two_intervals_cannot(report) -> None:
    tokens = [3, 5, 2, 8, 4, 6, 7, 3]
    a = [t * x for t, x in zip(tokens, [4.1, 3.2, 5.9, 4.4, 2.9, 4.8, 3.6, 5.3], strict=True)]
    better = [s - 0.05 * t for s, t in zip(a, tokens, strict=True)]  # 0.05 lower on every token
    difference = report.paired_difference(better, a, tokens)
    assert difference.value == pytest.approx(-0.05) and difference.half_width == pytest.approx(0, abs=1e-12)
    separate = report.ratio_interval(better, tokens), report.ratio_interval(a, tokens)
    assert separate[0].high > separate[1].low  # apart, the intervals overlap
    noisy = [s + (0.02 if i % 2 else -0.02) * t for i, (s, t) in enumerate(zip(better, tokens, strict=True))]
    assert 0 < report.paired_difference(noisy, a, tokens).half_width < separate[0].half_width
    with pytest.raises(ValueError, match="same examples"):
        report.paired_difference(a, a[:-1], tokens)
