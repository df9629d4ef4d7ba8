"""The report of studies of several objectives: the Pareto front (every evaluation, the non-dominated ones joined; for
three or four objectives the pairwise projections), the hypervolume over evaluations, and the front as a table.

Dominance and hypervolume take every objective as the solver minimised it (a maximised score negated: the records'
``OBJ`` outputs); figures and tables show each as measured (a maximised score as itself, marked so). The hypervolume
is a share of the box between the ideal point (the best value of each objective over every run of the report) and
the reference point (the worst value plus a tenth of the range, :func:`blackbox.core.pareto.reference_point`): the
same number whatever the objectives' units, comparable between the runs of one report. Both points are stated on
the page and in ``summary.json``.
"""

from __future__ import annotations

import html
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from blackbox.core.errors import ConfigError
from blackbox.core.pareto import dominates, hypervolume_share, ideal_point, reference_point
from blackbox.reports.html import CHECKPOINTS, hparam_text, number, table
from blackbox.reports.load import Evaluation, Run
from blackbox.reports.plots import label_colours, png, pyplot


@dataclass(frozen=True)
class Objective:
    """One objective of the runs: ``name`` as the output prints it (``objective:benchmark:mmlu:acc``), ``metric``
    (``benchmark:mmlu:acc``), and whether it was maximised (the solver saw it negated)."""

    name: str
    metric: str
    maximised: bool

    @property
    def label(self) -> str:
        return f"{self.metric} (maximised)" if self.maximised else self.metric

    def shown(self, value: float) -> float:
        """A value as measured, from the value the solver minimised."""
        return -value if self.maximised else value


@dataclass(frozen=True)
class Frame:
    """The box the hypervolume is a share of, in the solver's values (all minimised)."""

    ideal: tuple[float, ...]
    reference: tuple[float, ...]


def objectives_of(runs: Sequence[Run]) -> tuple[Objective, ...]:
    """The objectives of the runs (several, or one), which must be the same for all of them.

    Raises:
        ConfigError: runs of different objectives (a study of one beside a study of several, or other objectives).
    """
    names = {run.objectives for run in runs}
    if len(names) > 1 and any(len(n) > 1 for n in names):
        listed = "; ".join(f"{run.folder}: ({', '.join(run.objectives) or '?'})" for run in runs)
        raise ConfigError(
            f"the runs optimise different objectives ({listed}): report them apart, or compare one metric of theirs "
            "with --objective METRIC"
        )
    first = runs[0].objectives if runs else ()
    return tuple(Objective(name, name.removeprefix("objective:"), _maximised(runs, i)) for i, name in enumerate(first))


def _maximised(runs: Sequence[Run], index: int) -> bool:
    """Whether the solver saw an objective negated: its value is the negation of the metric it names."""
    for run in runs:
        metric = run.objectives[index].removeprefix("objective:")
        for e in run.evaluations:
            measured = e.metrics.get(metric)
            if e.status == "OK" and isinstance(measured, int | float) and measured != 0:
                return bool(e.values[index] == -measured)
    return False


def frame_of(runs: Sequence[Run]) -> Frame | None:
    """The ideal and reference points of the feasible, finished evaluations of all runs; None when there are none."""
    values = [e.values for run in runs for e in run.evaluations if e.feasible and _finite(e)]
    if not values:
        return None
    return Frame(ideal_point(values), reference_point(values))


def hypervolume_curve(run: Run, frame: Frame) -> list[float]:
    """The hypervolume share of the run's front after each of its evaluations (failed ones count, and add none)."""
    front: list[tuple[float, ...]] = []
    share, curve = 0.0, []
    for e in run.evaluations:
        point = tuple(e.values)
        if e.feasible and _finite(e) and not any(dominates(p, point) or p == point for p in front):
            front = [p for p in front if not dominates(point, p)] + [point]
            share = hypervolume_share(front, ideal=frame.ideal, reference=frame.reference)
        curve.append(share)
    return curve


def pareto_png(runs: Sequence[Run], objectives: Sequence[Objective]) -> bytes:
    """Every finished evaluation of each run (small dots) and its front (large dots; with two objectives joined by a
    line); with three or four objectives, one panel per pair of them."""
    plt = pyplot()
    pairs = list(itertools.combinations(range(len(objectives)), 2))
    columns = min(len(pairs), 3)
    rows = math.ceil(len(pairs) / columns)
    figure, panels = plt.subplots(rows, columns, figsize=(5.5 * columns, 4.5 * rows), squeeze=False)
    colours = label_colours(runs)
    for panel, (i, j) in zip(panels.flat, pairs, strict=False):
        labelled: set[str] = set()
        for run in runs:
            colour = colours[run.label]
            done = [e for e in run.evaluations if e.feasible and _finite(e)]
            xs, ys = _shown(done, objectives, i), _shown(done, objectives, j)
            panel.scatter(xs, ys, color=colour, s=12, alpha=0.35)
            front = sorted(run.front, key=lambda e: objectives[i].shown(e.values[i]))
            label = None if run.label in labelled else f"{run.label} (front: large)"
            labelled.add(run.label)
            fx, fy = _shown(front, objectives, i), _shown(front, objectives, j)
            panel.scatter(fx, fy, color=colour, s=46, edgecolors="black", linewidths=0.6, label=label, zorder=3)
            if len(objectives) == 2:
                panel.plot(fx, fy, color=colour, linewidth=1.2, alpha=0.8)
        for axis, index in (("x", i), ("y", j)):
            values = [v for run in runs for v in _shown(run.evaluations, objectives, index) if math.isfinite(v)]
            if values and min(values) > 0 and max(values) / min(values) > 30:
                getattr(panel, f"set_{axis}scale")("log")
        panel.set_xlabel(objectives[i].label)
        panel.set_ylabel(objectives[j].label)
        panel.grid(alpha=0.3)
        panel.legend(fontsize=8)
    for panel in list(panels.flat)[len(pairs) :]:
        panel.axis("off")
    figure.suptitle("Pareto front" + (": pairwise projections" if len(objectives) > 2 else ""))
    figure.tight_layout()
    return png(plt, figure)


def hypervolume_png(runs: Sequence[Run], curves: Sequence[Sequence[float]], frame: Frame) -> bytes:
    """The hypervolume share of each run's front against its evaluations."""
    plt = pyplot()
    figure, axes = plt.subplots(figsize=(8, 4.2))
    colours = label_colours(runs)
    labelled: set[str] = set()
    for run, curve in zip(runs, curves, strict=True):
        label = None if run.label in labelled else run.label
        labelled.add(run.label)
        axes.step(range(1, len(curve) + 1), curve, where="post", color=colours[run.label], label=label, alpha=0.85)
    axes.set_xlabel("evaluations")
    axes.set_ylabel("hypervolume (share of the box)")
    axes.set_title(f"Hypervolume; reference point {_point(frame.reference)}, ideal point {_point(frame.ideal)}")
    axes.set_ylim(0, 1)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    return png(plt, figure)


def front_html(
    runs: Sequence[Run], objectives: Sequence[Objective], frame: Frame | None, curves: Sequence[Sequence[float]]
) -> str:
    """The front of each run as a table (each objective as measured, the hyperparameters, the run id), and the
    hypervolume after 1, 5, 10, 20, 50, 100 evaluations."""
    names = ", ".join(o.label for o in objectives)
    intro = (
        f"<p>{len(objectives)} objectives: {_e(names)}. A point is on the front when no other finished, feasible "
        "evaluation of its run is as good on every objective and better on one."
    )
    parts = []
    if frame is not None:
        intro += (
            " Hypervolume: the share of the box between the ideal point (the best of each objective over every run "
            f"here) {_e(_point(frame.ideal))} and the reference point (the worst plus a tenth of the range) "
            f"{_e(_point(frame.reference))}, both as the solvers minimised them (a maximised score negated), that "
            "the front dominates.</p>"
        )
        checkpoints = [c for c in CHECKPOINTS if any(len(curve) >= c for curve in curves)]
        rows = [
            [run.label, str(run.folder), *[number(curve[c - 1]) if len(curve) >= c else "-" for c in checkpoints]]
            for run, curve in zip(runs, curves, strict=True)
        ]
        header = ["run", "folder", *[f"hypervolume after {c}" for c in checkpoints]]
        parts.append(table(header, rows, table_id="hypervolume"))
    else:
        intro += "</p><p>No finished, feasible evaluation yet.</p>"
    hparams = list(dict.fromkeys(k for run in runs for e in run.front for k in e.hparams or {}))
    rows = [
        [
            run.label,
            str(e.number),
            *[number(o.shown(v)) for o, v in zip(objectives, e.values, strict=True)],
            *[hparam_text((e.hparams or {}).get(h)) for h in hparams],
            e.run_id,
        ]
        for run in runs
        for e in sorted(run.front, key=lambda e: e.values)
    ]
    parts.append(
        table(["run", "evaluation", *[o.label for o in objectives], *hparams, "run id"], rows, table_id="front")
    )
    return "\n".join([intro, *parts])


def front_summary(run: Run, objectives: Sequence[Objective], curve: Sequence[float] | None) -> dict[str, Any]:
    """What ``summary.json`` holds of a run of several objectives: its front and its hypervolume."""
    return {
        "front": [
            {
                "evaluation": e.number,
                "run_id": e.run_id,
                "values": {o.metric: o.shown(v) for o, v in zip(objectives, e.values, strict=True)},
                "solver_values": list(e.values),
                "hparams": e.hparams,
                "point": list(e.point) if e.point is not None else None,
            }
            for e in run.front
        ],
        "hypervolume_after": {str(c): curve[c - 1] for c in CHECKPOINTS if curve and len(curve) >= c},
        "hypervolume": list(curve or []),
    }


def _finite(evaluation: Evaluation) -> bool:
    return bool(evaluation.values) and all(math.isfinite(v) for v in evaluation.values)


def _shown(evaluations: Sequence[Evaluation], objectives: Sequence[Objective], index: int) -> list[float]:
    return [objectives[index].shown(e.values[index]) for e in evaluations if e.values]


def _point(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.6g}" for v in values) + ")"


def _e(text: object) -> str:
    return html.escape(str(text))
