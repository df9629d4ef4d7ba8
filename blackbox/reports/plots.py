"""The report's figures, drawn with matplotlib's Agg backend (no display needed) into PNG bytes.

- Convergence: the best objective so far against evaluations and against accumulated hours, every run
  on the same axes; runs with the same label share a colour (e.g. three seeds of one solver).
- Parallel coordinates: one line per evaluation across the decoded hyperparameters and settings and the
  objective, coloured by the objective; one panel per label. Failed evaluations are grey and dashed. A setting
  whose values are not numbers (a variant, target modules) is a categorical axis labelled by its values.
- Learning curves (when evaluations have them): the loss on the checkpoint rows against training tokens, one line
  per evaluation, one panel per label; evaluations stopped early are red and dashed, ending with a cross where they
  stopped.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Sequence
from typing import Any

from blackbox.reports.downstream import BenchmarkScores
from blackbox.reports.load import Run

_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    import matplotlib.pyplot as plt

    return plt


def label_colours(runs: Sequence[Run]) -> dict[str, str]:
    labels = list(dict.fromkeys(r.label for r in runs))
    return {label: _COLOURS[i % len(_COLOURS)] for i, label in enumerate(labels)}


def convergence_png(runs: Sequence[Run], *, objective: str) -> bytes:
    """Best objective so far against evaluations (left) and accumulated evaluation hours (right)."""
    plt = pyplot()
    colours = label_colours(runs)
    figure, (by_count, by_hours) = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    labelled: set[str] = set()
    for run in runs:
        rows = [e for e in run.evaluations if math.isfinite(e.best_so_far)]
        if not rows:
            continue
        colour = colours[run.label]
        label = None if run.label in labelled else run.label
        labelled.add(run.label)
        counts = [e.number for e in rows]
        hours = [e.cumulative_hours for e in rows]
        best = [e.best_so_far for e in rows]
        by_count.step(counts, best, where="post", color=colour, label=label, alpha=0.85)
        by_hours.step(hours, best, where="post", color=colour, alpha=0.85)
        finite = [e for e in run.evaluations if math.isfinite(e.objective)]
        by_count.scatter([e.number for e in finite], [e.objective for e in finite], color=colour, s=10, alpha=0.3)
    devices = sorted({e.device or "?" for r in runs for e in r.evaluations if e.device})
    by_count.set_xlabel("evaluations")
    by_count.set_ylabel(f"best {objective} so far (dots: each evaluation)")
    by_hours.set_xlabel(f"accumulated evaluation hours (wall clock; {', '.join(devices) or 'device unknown'})")
    from matplotlib.ticker import MaxNLocator

    by_count.xaxis.set_major_locator(MaxNLocator(integer=True))
    for axes in (by_count, by_hours):
        axes.grid(alpha=0.3)
    _clip_to_best(by_count, runs)
    if labelled:
        by_count.legend()
    figure.suptitle("Convergence")
    figure.tight_layout()
    return png(plt, figure)


def _clip_to_best(axes: Any, runs: Sequence[Run]) -> None:
    """Keep the y range on the best-so-far curves, not on the worst single evaluations."""
    curves = [e.best_so_far for r in runs for e in r.evaluations if math.isfinite(e.best_so_far)]
    if curves:
        low, high = min(curves), max(curves)
        margin = (high - low) * 0.08 or abs(high) * 0.02 or 1.0
        axes.set_ylim(low - margin, high + 2 * margin)


def parallel_coordinates_png(runs: Sequence[Run], *, objective: str) -> bytes:
    """One panel per label: a line per evaluation through the hyperparameters and the objective."""
    plt = pyplot()
    from matplotlib import cm, colors

    names = _varying_hparams(runs)
    axes_names = [*names, objective]
    labels = list(dict.fromkeys(r.label for r in runs))
    evaluations = {label: [e for r in runs if r.label == label for e in r.evaluations] for label in labels}
    finite = [e.objective for es in evaluations.values() for e in es if math.isfinite(e.objective)]
    norm = colors.Normalize(min(finite, default=0.0), max(finite, default=1.0))
    cmap = plt.get_cmap("viridis_r")  # bright: low (good) objectives
    columns = {name: [_value(e, name, objective) for es in evaluations.values() for e in es] for name in axes_names}
    scales = {name: _Scale(columns[name]) for name in axes_names}
    figure, panels = plt.subplots(len(labels), 1, figsize=(10, 3.6 * len(labels)), squeeze=False)
    for panel, label in zip(panels[:, 0], labels, strict=True):
        xs = list(range(len(axes_names)))
        # The best last, so that it is drawn on top.
        for e in sorted(evaluations[label], key=lambda e: -e.objective if math.isfinite(e.objective) else math.inf):
            ys = [scales[name].position(_value(e, name, objective)) for name in axes_names]
            if math.isfinite(e.objective):
                panel.plot(xs, ys, color=cmap(norm(e.objective)), alpha=0.8, linewidth=1.4)
            else:
                panel.plot(xs, ys, color="0.6", linestyle="--", alpha=0.6, linewidth=1.0)
        for x, name in enumerate(axes_names):
            panel.axvline(x, color="0.3", linewidth=0.8)
            for position, text in scales[name].ticks():
                if scales[name].levels is None:  # numbers: the range, below and above the axis
                    panel.annotate(
                        text, (x, position), ha="center", va="top" if position < 0.5 else "bottom", fontsize=8
                    )
                else:  # categories: each value beside its place on the axis
                    panel.annotate(text, (x + 0.03, position), ha="left", va="center", fontsize=7)
        panel.set_xticks(xs, [f"{n}{' (log)' if scales[n].log else ''}" for n in axes_names], fontsize=8, rotation=10)
        panel.set_yticks([])
        panel.set_ylim(-0.12, 1.12)
        panel.set_title(f"{label}: {len(evaluations[label])} evaluations (grey dashed: failed, diverged or stopped)")
        figure.colorbar(cm.ScalarMappable(norm=norm, cmap=cmap), ax=panel, label=f"{objective} (lower is better)")
    figure.tight_layout()
    return png(plt, figure)


def learning_curves_png(runs: Sequence[Run]) -> bytes:
    """One panel per label: each evaluation's checkpoint losses against its training tokens; stopped ones red and
    dashed, a cross where they stopped."""
    plt = pyplot()
    labels = list(dict.fromkeys(r.label for r in runs))
    figure, panels = plt.subplots(len(labels), 1, figsize=(10, 3.6 * len(labels)), squeeze=False)
    for panel, label in zip(panels[:, 0], labels, strict=True):
        evaluations = [e for r in runs if r.label == label for e in r.evaluations if e.curve]
        for e in evaluations:
            tokens = [p.train_tokens for p in e.curve]
            losses = [p.loss for p in e.curve]
            if e.stopped is not None:
                panel.plot(tokens, losses, color="#d62728", linestyle="--", linewidth=1.0, alpha=0.8)
                panel.scatter(tokens[-1:], losses[-1:], color="#d62728", marker="x", s=40, zorder=3)
            else:
                panel.plot(tokens, losses, color="#1f77b4", linewidth=1.2, alpha=0.7, marker=".")
        stopped = sum(e.stopped is not None for e in evaluations)
        panel.set_title(f"{label}: {len(evaluations)} learning curves ({stopped} stopped early: red, dashed)")
        panel.set_xlabel("training tokens")
        panel.set_ylabel("loss on the checkpoint rows")
        panel.grid(alpha=0.3)
    figure.tight_layout()
    return png(plt, figure)


def _varying_hparams(runs: Sequence[Run]) -> list[str]:
    names: list[str] = []
    for run in runs:
        for e in run.evaluations:
            for name in e.hparams or {}:
                if name not in names:
                    names.append(name)
    return [n for n in names if len({_key(_value(e, n, "")) for r in runs for e in r.evaluations if e.hparams}) > 1]


def _value(evaluation: Any, name: str, objective: str) -> Any:
    """The objective, or a decoded value (a number, or a setting's string, boolean, list or table; nan if none)."""
    if name == objective:
        return float(evaluation.objective)
    return (evaluation.hparams or {}).get(name, math.nan)


def _key(value: Any) -> str:
    """A value as one label: numbers as they print, settings as compact JSON (``["q_proj","v_proj"]``, ``{}``)."""
    return f"{value:g}" if _is_number(value) else json.dumps(value, separators=(",", ":"), sort_keys=True)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class _Scale:
    """Maps an axis's values to [0, 1]. Numbers: linear, or logarithmic when they are positive and span more than
    a decade; undefined values (failed points' objectives) are drawn at the top. Other values (a setting's strings,
    booleans, lists, tables): categories, evenly spaced in the order of their labels, each labelled by its value."""

    def __init__(self, values: Sequence[Any]) -> None:
        known = [v for v in values if not (_is_number(v) and math.isnan(v))]
        self.levels: list[str] | None = None
        if any(not _is_number(v) for v in known):
            self.levels = sorted({_key(v) for v in known})
            known = []
        finite = [v for v in known if math.isfinite(v)]
        self.low, self.high = min(finite, default=0.0), max(finite, default=1.0)
        self.log = bool(finite) and self.low > 0 and self.high / self.low > 10

    def _t(self, v: float) -> float:
        return math.log10(v) if self.log else v

    def position(self, value: Any) -> float:
        if self.levels is not None:
            if _is_number(value) and math.isnan(value):
                return 1.08
            return self.levels.index(_key(value)) / max(len(self.levels) - 1, 1)
        if not math.isfinite(value):
            return 1.08
        span = self._t(self.high) - self._t(self.low)
        return 0.5 if span == 0 else (self._t(value) - self._t(self.low)) / span

    def ticks(self) -> list[tuple[float, str]]:
        """(position, label): the range of numbers just outside it, or every category at its place."""
        if self.levels is not None:
            return [(i / max(len(self.levels) - 1, 1), label) for i, label in enumerate(self.levels)]
        return [(-0.02, f"{self.low:.3g}"), (1.02, f"{self.high:.3g}")]


def downstream_png(scores: Sequence[BenchmarkScores]) -> bytes:
    """One panel per benchmark and run: score against validation loss with 95% error bars, the base model as a
    dashed line in its grey 95% band; the rank correlation, marked when it rests on too few points."""
    plt = pyplot()
    figure, axes_list = plt.subplots(1, len(scores), figsize=(5 * len(scores), 4), squeeze=False)
    for axes, entry in zip(axes_list[0], scores, strict=True):
        losses = [p.validation_loss for p in entry.points]
        values = [p.value for p in entry.points]
        errors = [p.half_width or 0.0 for p in entry.points]
        axes.errorbar(losses, values, yerr=errors, fmt="o", markersize=5, capsize=3, label="adapters (95% interval)")
        for point in entry.points:
            axes.annotate(
                point.label, (point.validation_loss, point.value), fontsize=7, xytext=(3, 3), textcoords="offset points"
            )
        if entry.base is not None:
            axes.axhline(entry.base, linestyle="--", color="grey", label=f"base model {entry.base:.4g}")
            if entry.base_stderr:
                half = 1.959963984540054 * entry.base_stderr
                axes.axhspan(entry.base - half, entry.base + half, color="grey", alpha=0.15)
        axes.legend(fontsize=8)
        axes.set_title(
            f"{entry.run}: {entry.key.removeprefix('benchmark:')}\nSpearman ρ = {entry.describe_spearman()}",
            fontsize=9,
        )
        axes.set_xlabel("validation loss")
        axes.set_ylabel("score (bars: 95% intervals)")
        axes.grid(alpha=0.3)
    figure.tight_layout()
    return png(plt, figure)


def png(plt: Any, figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    return buffer.getvalue()
