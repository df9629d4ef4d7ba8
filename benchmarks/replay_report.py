"""The replay comparison's numbers (issue 29): pure functions on traces, tested on synthetic ones
(``tests/benchmarks/test_replay_report.py``), and the tables and figures of ``benchmarks/replay.py report``.

A trace is one run (a method, a budget, a seed): its counted evaluations in order, each with the value the method
saw (the validation loss of a finished one; a stopped one's true value stays unknown to it), its true value (the
table's, finished or not), its compute in simulated wall-clock seconds and whether it was stopped.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import combinations

import numpy as np

Z95 = 1.959963984540054


@dataclass(frozen=True)
class Step:
    """One counted evaluation of a run."""

    point: tuple[float, ...]
    status: str  # OK, STOPPED, DIVERGED, ...
    seen: float  # what the method knows: the validation loss of a finished evaluation; nan otherwise
    true: float  # the table's validation loss of the point (nan: it has none, e.g. diverged)
    seconds: float  # its compute in simulated wall-clock seconds of the device


@dataclass(frozen=True)
class Trace:
    method: str
    budget: int
    seed: int
    steps: tuple[Step, ...]

    @property
    def total_seconds(self) -> float:
        return math.fsum(s.seconds for s in self.steps)

    @property
    def best(self) -> float:
        """The best value the method found (nan: none)."""
        values = [s.seen for s in self.steps if not math.isnan(s.seen)]
        return min(values) if values else math.nan

    def reach(self, target: float) -> float:
        """The compute (seconds) spent until its best so far is at most ``target``; inf if it never is."""
        spent = 0.0
        for step in self.steps:
            spent += step.seconds
            if not math.isnan(step.seen) and step.seen <= target:
                return spent
        return math.inf

    def best_at(self, seconds: float) -> float:
        """The best value found within ``seconds`` of compute (nan: none yet)."""
        spent, best = 0.0, math.nan
        for step in self.steps:
            spent += step.seconds
            if spent > seconds + 1e-9:
                break
            if not math.isnan(step.seen) and (math.isnan(best) or step.seen < best):
                best = step.seen
        return best

    def wrong_stops(self) -> tuple[int, int]:
        """(stopped evaluations whose true value would have beaten the incumbent of their time, stopped ones)."""
        incumbent, wrong, stopped = math.inf, 0, 0
        for step in self.steps:
            if step.status == "STOPPED":
                stopped += 1
                wrong += int(not math.isnan(step.true) and step.true < incumbent)
            elif not math.isnan(step.seen):
                incumbent = min(incumbent, step.seen)
        return wrong, stopped


@dataclass(frozen=True)
class Estimate:
    """A statistic over seeds with its bootstrap 95% interval (percentile method)."""

    value: float
    low: float
    high: float

    def __str__(self) -> str:
        return f"{_number(self.value)} [{_number(self.low)}, {_number(self.high)}]"

    def as_dict(self) -> dict[str, float | None]:
        return {k: (None if math.isinf(v) or math.isnan(v) else v) for k, v in vars(self).items()}


def _number(value: float) -> str:
    if math.isinf(value):
        return "never"
    return f"{value:.4g}" if abs(value) < 1000 else f"{value:,.0f}"


def bootstrap(
    values: Sequence[float], statistic: Callable[[np.ndarray], float] = np.median, *, draws: int = 4000, seed: int = 0
) -> Estimate:
    """``statistic`` of ``values`` (one per seed; inf allowed: "never") and its 95% interval over seeds."""
    data = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    samples = rng.choice(data, size=(draws, len(data)), replace=True)
    stats = np.array([statistic(row) for row in samples])
    # "lower" and "higher": no interpolation, which an infinite value ("never") would turn into nan.
    low = float(np.percentile(stats, 2.5, method="lower"))
    high = float(np.percentile(stats, 97.5, method="higher"))
    return Estimate(float(statistic(data)), low, high)


def quantile_curve(traces: Sequence[Trace], times: Sequence[float], regret_of: Callable[[float], float]) -> np.ndarray:
    """Per time: the 25%, 50% and 75% quantiles over seeds of the regret of the best found within that compute
    (a seed with nothing found yet counts as infinite regret). Shape (3, len(times))."""
    out = np.empty((3, len(times)))
    for j, t in enumerate(times):
        regrets = [regret_of(trace.best_at(t)) for trace in traces]
        out[:, j] = np.quantile(np.asarray(regrets, dtype=float), [0.25, 0.5, 0.75], method="lower")
    return out


def variance_shares(values: dict[tuple[float, ...], float], names: Sequence[str]) -> dict[str, float]:
    """The functional ANOVA of a complete grid (what fANOVA estimates from samples, exact here): the share of the
    variance of ``values`` over the grid explained by each variable's main effect and each pair's interaction.

    Raises:
        ValueError: the grid is incomplete (a product of levels with a value missing).
    """
    levels = [sorted({p[i] for p in values}) for i in range(len(names))]
    shape = tuple(len(level) for level in levels)
    if len(values) != math.prod(shape):
        raise ValueError(f"an incomplete grid: {len(values)} values of {math.prod(shape)} points")
    grid = np.empty(shape)
    for point, value in values.items():
        grid[tuple(level.index(x) for level, x in zip(levels, point, strict=True))] = value
    total = grid.var()
    mean = grid.mean()
    shares: dict[str, float] = {}
    mains = {}
    for i, name in enumerate(names):
        axes = tuple(a for a in range(len(names)) if a != i)
        mains[i] = grid.mean(axis=axes) - mean
        shares[name] = float(np.mean(mains[i] ** 2) / total) if total else 0.0
    for i, j in combinations(range(len(names)), 2):
        axes = tuple(a for a in range(len(names)) if a not in (i, j))
        pair = grid.mean(axis=axes) - mean - mains[i][:, None] - mains[j][None, :]
        shares[f"{names[i]} x {names[j]}"] = float(np.mean(pair**2) / total) if total else 0.0
    return shares


def spread(values: Sequence[float]) -> dict[str, float]:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return {"median": math.nan, "q25": math.nan, "q75": math.nan, "mean": math.nan}
    q25, q50, q75 = np.quantile(np.asarray(finite), [0.25, 0.5, 0.75])
    return {"median": float(q50), "q25": float(q25), "q75": float(q75), "mean": statistics.fmean(finite)}


# --------------------------------------------------------------------------------------------------------------
# Losses on a held-out split, per example: intervals over examples


@dataclass(frozen=True)
class Interval:
    """An estimate and the half-width of its 95% interval."""

    value: float
    half_width: float

    @property
    def low(self) -> float:
        return self.value - self.half_width

    @property
    def high(self) -> float:
        return self.value + self.half_width

    def as_dict(self) -> dict[str, float]:
        return {"value": self.value, "low": self.low, "high": self.high}

    def __str__(self) -> str:
        return f"{self.value:.4f} [{self.low:.4f}, {self.high:.4f}]"


def ratio_interval(loss_sums: Sequence[float], tokens: Sequence[int]) -> Interval:
    """The token-weighted mean loss of a split (sum of the examples' loss sums over their tokens) and its 95%
    interval over examples: the delta method's standard error of a ratio of sums, sqrt(n/(n-1) sum(r_i^2)) / sum(t_i)
    with r_i = s_i - L t_i. Examples, not tokens, are the independent draws."""
    n = len(loss_sums)
    if n < 2 or n != len(tokens):
        raise ValueError(f"an interval needs at least 2 examples with their token counts, got {n} and {len(tokens)}")
    total = float(sum(tokens))
    loss = math.fsum(loss_sums) / total
    residuals = math.fsum((s - loss * t) ** 2 for s, t in zip(loss_sums, tokens, strict=True))
    return Interval(loss, Z95 * math.sqrt(n / (n - 1) * residuals) / total)


def paired_difference(a_sums: Sequence[float], b_sums: Sequence[float], tokens: Sequence[int]) -> Interval:
    """The difference of two models' losses on the same examples (a - b) and its 95% interval over the examples:
    the ratio interval of the per-example differences. Far narrower than two separate intervals: both models meet
    the same hard and easy examples."""
    if len(a_sums) != len(b_sums):
        raise ValueError(f"paired losses need the same examples, got {len(a_sums)} and {len(b_sums)}")
    return ratio_interval([a - b for a, b in zip(a_sums, b_sums, strict=True)], tokens)
