"""One self-contained HTML page: tables, and the figures embedded as base64 PNG (no script, no CDN)."""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from blackbox.reports.downstream import Z95, BenchmarkScores
from blackbox.reports.load import Run

CHECKPOINTS = (1, 5, 10, 20, 50, 100)


def number(value: float | None) -> str:
    """How the report writes an objective: 6 significant digits; '-' when there is none."""
    if value is None or math.isnan(value):
        return "-"
    return f"{value:.6g}"


def render_page(
    runs: Sequence[Run],
    *,
    objective: str,
    figures: dict[str, bytes],
    top_rows: Sequence[dict[str, Any]],
    downstream: Sequence[BenchmarkScores] = (),
    title: str = "lora-blackbox report",
    sections: Sequence[tuple[str, str]] = (),
) -> str:
    """The page; ``sections``: more (title, HTML) sections before the failures, their HTML escaped by their
    writer."""
    checkpoints = [c for c in CHECKPOINTS if any(len(r.evaluations) >= c for r in runs)]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_e(title)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        f"<p>Objective: <code>{_e(objective)}</code> (minimised). Generated {datetime.now(UTC):%Y-%m-%d %H:%M} UTC "
        f"from {len(runs)} run(s). Evaluations count in the order they finished; low-fidelity (surrogate) "
        "evaluations, interrupted and not-run ones are not counted.</p>",
        "<h2>Runs</h2>",
        table(
            [
                "run",
                "label",
                "solver",
                "evaluations",
                "OK",
                "stopped",
                "failed",
                "best",
                *[f"best after {c}" for c in checkpoints],
                "hours",
                "NOMAD files",
            ],
            [_run_row(r, checkpoints) for r in runs],
            table_id="runs",
        ),
        "<p>What each run cost, in wall-clock seconds of its device (start-up, loading, training, checkpoints, "
        "validation, benchmarks; failed and stopped evaluations included):</p>",
        "<ul>" + "".join(f"<li>{_e(r.label)}: {_e(r.compute.describe())}</li>" for r in runs if r.compute) + "</ul>",
    ]
    for name, png in figures.items():
        data = base64.b64encode(png).decode()
        title_of = "Downstream benchmarks" if name == "downstream" else name.replace("_", " ").capitalize()
        parts.append(f"<h2>{_e(title_of)}</h2>")
        if name == "downstream":
            parts.append(_downstream(downstream))
        parts.append(f'<img alt="{_e(name)}" src="data:image/png;base64,{data}">')
    parts.append(f"<h2>Top {len(top_rows)} points</h2>")
    hparam_names = list(dict.fromkeys(k for row in top_rows for k in row["hparams"]))
    parts.append(
        table(
            ["rank", "run", "evaluation", objective, *hparam_names, "point", "run id"],
            [
                [
                    str(row["rank"]),
                    row["run"],
                    str(row["evaluation"]),
                    number(row["objective"]),
                    *[hparam_text(row["hparams"].get(n)) for n in hparam_names],
                    " ".join(f"{x:g}" for x in row["point"] or ()),
                    row["run_id"],
                ]
                for row in top_rows
            ],
            table_id="top",
        )
    )
    for heading, body in sections:
        parts += [f"<h2>{_e(heading)}</h2>", body]
    parts += ["<h2>Failures</h2>", _failures(runs), "</body></html>"]
    return "\n".join(parts) + "\n"


def _downstream(scores: Sequence[BenchmarkScores]) -> str:
    """Per run and benchmark: the base model's score, the scored evaluations and the rank correlation of their
    scores with their validation losses (``lora-blackbox downstream``)."""
    intro = (
        "<p>Benchmark scores of evaluated points (lm-evaluation-harness, <code>downstream.jsonl</code>) against "
        "their validation loss, ± half the width of their 95% interval (lm-eval's standard error): scores whose "
        "intervals overlap are not told apart. Spearman's ρ &lt; 0: a lower validation loss went with a higher "
        "score; over fewer than 5 points it is marked as too few to rank.</p>"
    )
    rows = []
    for entry in scores:
        best = max(entry.points, key=lambda p: p.value, default=None)
        base_half = None if entry.base_stderr is None else Z95 * entry.base_stderr
        rows.append(
            [
                entry.run,
                entry.key.removeprefix("benchmark:"),
                _with_interval(entry.base, base_half),
                str(len(entry.points)),
                _with_interval(best.value, best.half_width) if best else "-",
                entry.describe_spearman(),
            ]
        )
    header = ["run", "benchmark", "base model", "points", "best score", "Spearman ρ (loss, score)"]
    return intro + table(header, rows, table_id="downstream")


def _with_interval(value: float | None, half_width: float | None) -> str:
    """A score ± half its 95% interval, where it has one."""
    if value is None:
        return "-"
    return number(value) + ("" if half_width is None else f" ± {half_width:.3f}")


def _run_row(run: Run, checkpoints: Sequence[int]) -> list[str]:
    statuses = run.statuses
    failed = sum(n for s, n in statuses.items() if s not in ("OK", "STOPPED"))
    best = run.best
    hours = run.evaluations[-1].cumulative_hours if run.evaluations else 0.0
    nomad = ""
    if run.nomad:
        n = run.nomad
        nomad = (
            f"cache: {n.cache_entries} points ({n.cache_ok} OK), best {number(n.cache_best)}; "
            f"stats: {n.stats_lines} evaluations"
        )
    return [
        str(run.folder),
        run.label,
        run.solver or "-",
        str(len(run.evaluations)),
        str(statuses.get("OK", 0)),
        str(statuses.get("STOPPED", 0)),
        str(failed),
        number(best.objective if best else None),
        *[number(run.best_after(c)) for c in checkpoints],
        f"{hours:.3f}",
        nomad,
    ]


def stopped_html(runs: Sequence[Run]) -> str:
    """The evaluations stopped early (a stopping rule or an Optuna pruner), apart from the failures: where they
    stopped, why, and the value their solver received."""
    rows = [
        [
            run.label,
            str(e.number),
            f"{e.stopped.step}/{e.stopped.total_steps}",
            number(e.curve[-1].loss if e.curve else None),
            number(e.solver_value),
            e.stopped.rule,
            e.stopped.reason,
            e.run_id,
        ]
        for run in runs
        for e in run.evaluations
        if e.stopped is not None
    ]
    intro = (
        "<p>Counted evaluations whose training a stopping rule (<code>[stopping]</code>) or an Optuna pruner "
        "stopped at a checkpoint, because the study's finished evaluations showed it could not win. The solver "
        "received their checkpoint loss, raised to just above the incumbent's value when lower: never as good as "
        "the incumbent.</p>"
    )
    header = ["run", "evaluation", "stopped at step", "checkpoint loss", "solver's value", "rule", "why", "run id"]
    return intro + table(header, rows, table_id="stopped")


def _failures(runs: Sequence[Run]) -> str:
    rows = []
    for run in runs:
        for e in run.evaluations:
            if e.status not in ("OK", "STOPPED"):  # stopped evaluations are shown apart
                rows.append([run.label, str(e.number), e.status, e.run_id, (e.error or "")[:300]])
        for r in run.not_counted:
            rows.append([run.label, "(not counted)", r.status.value, r.run_id, (r.error or "")[:300]])
    counts = table(
        ["run", "label", *sorted({s for r in runs for s in r.statuses})],
        [
            [
                str(r.folder),
                r.label,
                *[str(r.statuses.get(s, 0)) for s in sorted({s for r in runs for s in r.statuses})],
            ]
            for r in runs
        ],
        table_id="statuses",
    )
    if not rows:
        return counts + "\n<p>No evaluation failed.</p>"
    return counts + "\n" + table(["label", "evaluation", "status", "run id", "error"], rows, table_id="failures")


def table(header: Sequence[str], rows: Sequence[Sequence[str]], *, table_id: str) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "\n".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>\n{body}\n</tbody></table>'


def hparam_text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, int | float):  # a setting: a string, list or table
        return json.dumps(value)
    return str(int(value)) if float(value).is_integer() else f"{value:.6g}"


def _e(text: str) -> str:
    return html.escape(str(text))


_CSS = """
body { font-family: sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f0f0f0; }
td:first-child, td:nth-child(2) { text-align: left; }
img { max-width: 100%; border: 1px solid #eee; }
code { background: #f5f5f5; padding: 0 0.2em; }
"""
