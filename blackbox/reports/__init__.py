"""Reports of studies: convergence and parallel-coordinates plots, the top points, failures, one HTML page.

Never imports torch (nor optuna): a report is drawn from the files a study left, on any machine.

Example::

    from blackbox.reports import write_report
    files = write_report(["NOMAD=runs/demo", "TPE=runs/demo-optuna-tpe"], Path("report"))
    files["html"]  # report/report.html
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from blackbox.core.extras import require
from blackbox.core.folders import VOTES_FILE
from blackbox.core.votes import read_votes
from blackbox.reports.downstream import BenchmarkScores, benchmark_scores
from blackbox.reports.html import CHECKPOINTS, render_page
from blackbox.reports.load import Run, load_run
from blackbox.reports.plots import convergence_png, downstream_png, parallel_coordinates_png
from blackbox.reports.preferences import group_preferences, preferences_summary, results_html

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
        The files written: ``convergence`` and ``parallel_coordinates`` (PNG), ``html`` (the page, with
        the PNGs embedded), ``summary`` (JSON: per run, counts, best point and best after 1, 5, 10, 20,
        50, 100 evaluations; the top points; the blind comparison's results when there are votes), and
        ``downstream`` (PNG) when a run has benchmark scores. ``objective``: the metric that was minimised; by
        default what the solver saw (``load_run``).

    Raises:
        SetupError: a path holds no records, ``votes`` is not a votes file, or the report's extra is missing.
        ConfigError: the objective is not a metric of the records.
    """
    require("matplotlib", "scipy", purpose="lora-blackbox report")
    runs = [load_run(spec, objective=objective) for spec in specs]
    minimised = objective or _objective_name(runs)
    if votes is None:
        votes = next((run.folder / VOTES_FILE for run in runs if (run.folder / VOTES_FILE).is_file()), None)
    groups = group_preferences(read_votes(votes)) if votes is not None else None
    rows = top_points(runs, top)
    downstream = {run.label: benchmark_scores(run) for run in runs}
    figures = {
        "convergence": convergence_png(runs, objective=minimised),
        "parallel_coordinates": parallel_coordinates_png(runs, objective=minimised),
    }
    scores = [entry for entries in downstream.values() for entry in entries]
    if scores:
        figures["downstream"] = downstream_png(scores)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, png in figures.items():
        files[name] = out_dir / f"{name}.png"
        files[name].write_bytes(png)
    files["html"] = out_dir / "report.html"
    sections = [] if groups is None else [(f"Blind comparison ({votes})", results_html(groups))]
    page = render_page(runs, objective=minimised, figures=figures, top_rows=rows, downstream=scores, sections=sections)
    files["html"].write_text(page, encoding="utf-8")
    summary = _summary(runs, rows, minimised, downstream)
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


def _summary(
    runs: Sequence[Run], rows: list[dict[str, Any]], objective: str, downstream: dict[str, list[BenchmarkScores]]
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
                "infeasible": run.infeasible,
                "low_fidelity_evaluations": run.low_fidelity,
                "hours": run.evaluations[-1].cumulative_hours if run.evaluations else 0.0,
                "best": None
                if run.best is None
                else {
                    "objective": finite(run.best.objective),
                    "evaluation": run.best.number,
                    "hparams": run.best.hparams,
                    "run_id": run.best.run_id,
                },
                "best_after": {str(c): finite(run.best_after(c)) for c in CHECKPOINTS if len(run.evaluations) >= c},
                "best_so_far": [finite(e.best_so_far) for e in run.evaluations],
                "nomad": None if run.nomad is None else dataclasses.asdict(run.nomad),
                "downstream": [entry.as_dict() for entry in downstream[run.label]],
            }
            for run in runs
        ],
        "top": rows,
    }
