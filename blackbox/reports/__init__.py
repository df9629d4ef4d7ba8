"""Reports of studies: convergence and parallel-coordinates plots, the top points, failures, one HTML page.

Never imports torch (nor optuna): a report is drawn from the files a study left, on any machine.

Example::

    from blackbox.reports import write_report
    files = write_report(["NOMAD=runs/demo", "TPE=runs/demo-optuna-tpe"], Path("report"))
    files["html"]  # report/report.html
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import math
from collections.abc import Sequence
from html import escape
from pathlib import Path
from typing import Any

from blackbox.core.bounds import OnBound, study_on_bounds, warning
from blackbox.core.extras import require
from blackbox.core.folders import VOTES_FILE
from blackbox.reports.downstream import BenchmarkScores, benchmark_scores
from blackbox.reports.html import CHECKPOINTS, render_page, stopped_html
from blackbox.reports.load import Run, load_run
from blackbox.reports.pareto import (
    frame_of,
    front_html,
    front_summary,
    hypervolume_curve,
    hypervolume_png,
    objectives_of,
    pareto_png,
)
from blackbox.reports.plots import convergence_png, downstream_png, learning_curves_png, parallel_coordinates_png
from blackbox.reports.preferences import group_preferences, preferences_summary, results_html
from blackbox.reports.votes import read_votes

__all__ = ["load_run", "top_points", "write_report"]

logger = logging.getLogger(__name__)


def write_report(
    specs: Sequence[str],
    out_dir: Path,
    *,
    objective: str | None = None,
    top: int = 10,
    votes: Path | None = None,
) -> dict[str, Path]:
    """Read the runs (``[LABEL=]PATH``: a records.jsonl file or a study folder) and write the report.

    Args:
        votes: a votes file of ``lora-blackbox compare``; default: the first run folder's ``votes.sqlite``, if any.

    Returns:
        The files written: ``convergence`` and ``parallel_coordinates`` (PNG), ``learning_curves`` (PNG) when
        evaluations have curves, ``html`` (the page, with the PNGs embedded), ``summary`` (JSON: per run, counts,
        the evaluations stopped early, best point and best after 1, 5, 10, 20, 50, 100 evaluations; the top points;
        the blind comparison's results when there are votes), and ``downstream`` (PNG) when a run has benchmark
        scores. Studies of several objectives add ``pareto_front`` and ``hypervolume`` (PNG), a section of the page,
        and to ``summary.json`` the objectives, the hypervolume's ideal and reference points, and per run its front
        and its hypervolume after each evaluation. ``objective``: the metric that was minimised; by default what the
        solver saw (``load_run``): with several objectives, the first for the one-objective figures.

    Raises:
        SetupError: a path holds no records, ``votes`` is not a votes file, or the report's extra is missing.
        ConfigError: the objective is not a metric of the records, or the runs optimise different objectives.
    """
    require("matplotlib", "scipy", purpose="lora-blackbox report")
    runs = [load_run(spec, objective=objective) for spec in specs]
    minimised = objective or _objective_name(runs)
    # Several objectives: the front, unless --objective reports one metric of theirs.
    objectives = objectives_of(runs) if objective is None else ()
    several = len(objectives) > 1
    if votes is None:
        votes = next((run.folder / VOTES_FILE for run in runs if (run.folder / VOTES_FILE).is_file()), None)
    groups = group_preferences(read_votes(votes)) if votes is not None else None
    rows = top_points(runs, top)
    downstream = {run.label: benchmark_scores(run) for run in runs}
    figures = {
        "convergence": convergence_png(runs, objective=minimised),
        "parallel_coordinates": parallel_coordinates_png(runs, objective=minimised),
    }
    if any(e.curve for run in runs for e in run.evaluations):
        figures["learning_curves"] = learning_curves_png(runs)
    scores = [entry for entries in downstream.values() for entry in entries]
    if scores:
        figures["downstream"] = downstream_png(scores)
    frame = frame_of(runs) if several else None
    curves = [hypervolume_curve(run, frame) for run in runs] if frame is not None else []
    if several:
        figures = {"pareto_front": pareto_png(runs, objectives), **figures}
    if frame is not None:
        figures["hypervolume"] = hypervolume_png(runs, curves, frame)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, png in figures.items():
        files[name] = out_dir / f"{name}.png"
        files[name].write_bytes(png)
    files["html"] = out_dir / "report.html"
    bounds = {run.label: bounds_of(run) for run in runs}
    sections = []
    if several:
        sections.append(("Pareto front", front_html(runs, objectives, frame, curves)))
    if any(bounds.values()):
        lines = {label: warning(hits) for label, hits in bounds.items()}
        for label, line in lines.items():
            if line:
                logger.warning("%s: %s", label, line)
        text = "".join(f"<p><b>{escape(k)}</b>: {escape(v)}</p>" for k, v in lines.items() if v)
        sections.append(("On a bound of the search space", text))
    if any(run.stopped for run in runs):
        sections.append(("Stopped early", stopped_html(runs)))
    if groups is not None:
        sections.append((f"Blind comparison ({votes})", results_html(groups)))
    page = render_page(runs, objective=minimised, figures=figures, top_rows=rows, downstream=scores, sections=sections)
    files["html"].write_text(page, encoding="utf-8")
    summary = _summary(runs, rows, minimised, downstream, bounds)
    if several:
        summary["objectives"] = [{"name": o.name, "metric": o.metric, "maximised": o.maximised} for o in objectives]
        summary["hypervolume_frame"] = None if frame is None else {"ideal": frame.ideal, "reference": frame.reference}
        for run, entry, curve in itertools.zip_longest(runs, summary["runs"], curves):
            entry |= front_summary(run, objectives, curve)
    if groups is not None:
        summary["preferences"] = {"votes_file": str(votes), "groups": [preferences_summary(g) for g in groups]}
    files["summary"] = out_dir / "summary.json"
    files["summary"].write_text(json.dumps(summary, indent=1, allow_nan=False) + "\n")
    logger.info("report of %d run(s) written to %s", len(runs), out_dir)
    return files


def top_points(runs: Sequence[Run], count: int) -> list[dict[str, Any]]:
    """The ``count`` evaluations with the lowest defined objective over all runs, best first."""
    rows = [(run, e) for run in runs for e in run.evaluations if math.isfinite(e.objective)]
    rows.sort(key=lambda pair: pair[1].objective)
    return [
        {
            "rank": rank,
            "run": run.label,
            "folder": str(run.folder),
            "evaluation": e.number,
            "objective": e.objective,
            "hparams": e.hparams or {},
            "point": list(e.point) if e.point is not None else None,
            "run_id": e.run_id,
        }
        for rank, (run, e) in enumerate(rows[:count], start=1)
    ]


def _objective_name(runs: Sequence[Run]) -> str:
    """What the solver minimised: ``validation_loss``, or ``objective`` when that was something else (a benchmark
    score; records keep both)."""
    other = any(
        e.metrics.get("objective", e.metrics.get("validation_loss")) != e.metrics.get("validation_loss")
        for run in runs
        for e in run.evaluations
    )
    return "objective" if other else "validation_loss"


def bounds_of(run: Run) -> list[OnBound]:
    """The bounds of the search space on which the run's best feasible evaluation sits, each with how many of the
    best ten sit there too (``core.bounds``); none when the study folder keeps no snapshot of its experiment."""
    best = run.best
    if best is None:
        return []
    same = [e for e in run.evaluations if e.fingerprint == best.fingerprint and e.feasible and e.point is not None]
    ranked = sorted((e for e in same if math.isfinite(e.objective)), key=lambda e: e.objective)
    return study_on_bounds(run.folder, best.fingerprint, [e.point for e in ranked if e.point is not None])


def _summary(
    runs: Sequence[Run],
    rows: list[dict[str, Any]],
    objective: str,
    downstream: dict[str, list[BenchmarkScores]],
    bounds: dict[str, list[OnBound]],
) -> dict[str, Any]:
    def finite(value: float | None) -> float | None:
        return value if value is not None and math.isfinite(value) else None

    return {
        "objective": objective,
        "runs": [
            {
                "label": run.label,
                "folder": str(run.folder),
                "solver": run.solver,
                "evaluations": len(run.evaluations),
                "statuses": run.statuses,
                "stopped": [
                    {
                        "evaluation": e.number,
                        "run_id": e.run_id,
                        "step": e.stopped.step,
                        "total_steps": e.stopped.total_steps,
                        "rule": e.stopped.rule,
                        "checkpoint_loss": e.curve[-1].loss if e.curve else None,
                        "solver_value": finite(e.solver_value),
                    }
                    for e in run.stopped
                    if e.stopped is not None
                ],
                "infeasible": run.infeasible,
                "low_fidelity_evaluations": run.low_fidelity,
                "hours": run.evaluations[-1].cumulative_hours if run.evaluations else 0.0,
                "compute": None if run.compute is None else run.compute.as_dict(),
                "best": None
                if run.best is None
                else {
                    "objective": finite(run.best.objective),
                    "evaluation": run.best.number,
                    "hparams": run.best.hparams,
                    "run_id": run.best.run_id,
                },
                "on_bounds": [hit.as_dict() for hit in bounds[run.label]],
                "best_after": {str(c): finite(run.best_after(c)) for c in CHECKPOINTS if len(run.evaluations) >= c},
                "best_so_far": [finite(e.best_so_far) for e in run.evaluations],
                "nomad": None if run.nomad is None else dataclasses.asdict(run.nomad),
                "downstream": [entry.as_dict() for entry in downstream[run.label]],
            }
            for run in runs
        ],
        "top": rows,
    }
