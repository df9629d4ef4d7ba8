"""``python benchmarks/replay.py compare`` and ``report``: every method over many seeds on the replay table, and the
tables and figures of benchmarks/RESULTS.md ("What tuning buys") and docs/efficiency.md.

``compare`` runs every (budget, method, seed) through the real commands with ``replay.table`` set
(``replay_methods``), reads each run's records into a trace, writes them all to ``traces.csv``, then reports.
``report`` reads ``traces.csv`` and the table alone (both committed), so the figures can be drawn again without
replaying anything.
"""

from __future__ import annotations

import csv
import json
import math
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from replay_methods import ALL, Method, nomad_env, plain_of, run_method
from replay_report import Estimate, Step, Trace, bootstrap, quantile_curve, spread, variance_shares

from blackbox.core.failures import Status
from blackbox.core.point import format_point
from blackbox.core.record import RecordStore
from blackbox.replay.table import ReplayTable, Row

WITHIN = (0.01, 0.005)  # "within 1% and 0.5% of the grid's optimum"
_TRACE_FIELDS = ("method", "budget", "seed", "index", "point", "status", "seen", "true", "seconds")


def run_all(
    table: ReplayTable,
    *,
    experiment: str,
    methods: Sequence[Method],
    budgets: Sequence[int],
    seeds: Sequence[int],
    work: Path,
    jobs: int,
    sets: Sequence[str] = (),
) -> list[Trace]:
    """Every (budget, method, seed) replayed in ``work/b<budget>/<method>/s<seed>`` (a sweep once per budget: it
    draws nothing at random), ``jobs`` at a time; returns their traces."""
    overrides = [f"replay.table={table.path.resolve()}", *sets]
    runs = [
        (method, budget, seed, work / f"b{budget}" / method.name / f"s{seed}")
        for budget in budgets
        for method in methods
        for seed in (seeds if method.seeded else seeds[:1])
    ]
    env = nomad_env()

    def one(run: tuple[Method, int, int, Path]) -> Trace:
        method, budget, seed, folder = run
        run_method(method, experiment=experiment, sets=overrides, budget=budget, seed=seed, folder=folder, env=env)
        return trace_of(table, method.name, budget, seed, folder)

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        traces = []
        for number, trace in enumerate(pool.map(one, runs), start=1):
            traces.append(trace)
            if number % 20 == 0 or number == len(runs):
                print(f"replay compare: {number}/{len(runs)} runs", file=sys.stderr, flush=True)
    return traces


def trace_of(table: ReplayTable, method: str, budget: int, seed: int, folder: Path) -> Trace:
    """A run's counted evaluations as a trace (their true values from the table)."""
    steps = []
    for record in RecordStore(folder).records():
        if not record.counted or record.point is None:
            continue
        seen = float(record.metrics["validation_loss"]) if record.status is Status.OK else math.nan
        row = table.grid.get(record.point)
        true = _loss(row) if row is not None else seen
        steps.append(Step(record.point, record.status.value, seen, true, record.compute_seconds))
    return Trace(method, budget, seed, tuple(steps))


def _loss(row: Row) -> float:
    value = row.metrics.get("validation_loss")
    return float(value) if isinstance(value, int | float) and row.status is Status.OK else math.nan


def write_traces(path: Path, traces: Sequence[Trace]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as out:
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(_TRACE_FIELDS)
        for trace in traces:
            for index, step in enumerate(trace.steps, start=1):
                values = (step.status, _cell(step.seen), _cell(step.true), repr(step.seconds))
                writer.writerow((trace.method, trace.budget, trace.seed, index, format_point(step.point), *values))


def read_traces(path: Path) -> list[Trace]:
    runs: dict[tuple[str, int, int], list[Step]] = {}
    with path.open(newline="") as lines:
        for cells in csv.DictReader(lines):
            key = (cells["method"], int(cells["budget"]), int(cells["seed"]))
            point = tuple(float(x) for x in cells["point"].split())
            step = Step(point, cells["status"], _value(cells["seen"]), _value(cells["true"]), float(cells["seconds"]))
            runs.setdefault(key, []).append(step)
    return [Trace(method, budget, seed, tuple(steps)) for (method, budget, seed), steps in runs.items()]


def _cell(value: float) -> str:
    return "" if math.isnan(value) else repr(value)


def _value(text: str) -> float:
    return math.nan if text == "" else float(text)


# --------------------------------------------------------------------------------------------------------------
# The report


def baselines(table: ReplayTable) -> dict[str, dict[str, float]]:
    """peft's defaults and the common recipe: their validation loss and what one run costs a user (one call,
    without the checkpoints the table measured), from the table's rows."""
    out = {}
    for row in table.rows:
        if row.kind == "baseline":
            seconds = row.seconds - row.timings.get("checkpoint_s", 0.0)
            out[row.name] = {"validation_loss": _loss(row), "seconds": seconds, "point": list(row.point)}
    return out


def seed_noise(table: ReplayTable) -> list[dict[str, Any]]:
    """The points trained again with other training seeds: their values over seeds 0, 1, 2."""
    by_point: dict[tuple[str, tuple[float, ...]], list[float]] = {}
    for row in table.rows:
        name = row.name.partition("seed=")[0].strip() if row.kind == "seed" else row.name  # a grid point's: ""
        if row.kind in ("grid", "baseline", "seed"):
            by_point.setdefault((name if row.kind != "grid" else "", row.point), []).append(_loss(row))
    return [
        {"name": name or "grid", "point": list(point), "values": values, "spread": max(values) - min(values)}
        for (name, point), values in by_point.items()
        if len(values) > 1
    ]


def report(table: ReplayTable, traces: Sequence[Trace], out: Path) -> dict[str, Any]:
    """The comparison's tables (``comparison.md``, ``comparison.json``) and figures (``anytime_b<budget>.png``)."""
    grid = {point: _loss(row) for point, row in table.grid.items()}
    optimum_point, optimum = min(((p, v) for p, v in grid.items() if not math.isnan(v)), key=lambda pv: pv[1])
    names = [v.name for v in table.experiment.space]
    finite = {p: v for p, v in grid.items() if math.isfinite(v)}
    result: dict[str, Any] = {
        "optimum": {"point": list(optimum_point), "validation_loss": optimum},
        "grid_points": len(grid),
        "baselines": baselines(table),
        "seed_noise": seed_noise(table),
        "variance_shares": variance_shares(finite, names) if len(finite) == len(grid) else None,
        "budgets": {},
    }
    lines = [f"Grid optimum: {optimum:.4f} at ({format_point(optimum_point)}); {len(grid)} grid points.\n"]
    for budget in sorted({t.budget for t in traces}):
        runs = [t for t in traces if t.budget == budget]
        result["budgets"][str(budget)], text = _budget_tables(runs, optimum, budget)
        lines.append(text)
        _anytime_png(runs, optimum, result["baselines"], out / f"anytime_b{budget}.png", budget)
    out.mkdir(parents=True, exist_ok=True)
    (out / "comparison.json").write_text(json.dumps(result, indent=1, default=_json) + "\n")
    (out / "comparison.md").write_text("\n".join(lines))
    return result


def _json(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    raise TypeError(f"not JSON: {value!r}")


def _budget_tables(runs: Sequence[Trace], optimum: float, budget: int) -> tuple[dict[str, Any], str]:
    methods = [m for m in ALL.values() if any(t.method == m.name for t in runs)]
    rows: dict[str, Any] = {}
    head = (
        f"\n### Budget {budget}\n\n| method | seeds | final best: median [IQR] | regret to the optimum: median "
        "| compute of the run, hours: median | hours to within 1%: median [95% CI], seeds reaching | hours to within "
        "0.5%: median [95% CI], seeds reaching |\n|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for method in methods:
        mine = [t for t in runs if t.method == method.name]
        bests = [t.best for t in mine]
        within = {
            f"{w:g}": (bootstrap([t.reach(optimum * (1 + w)) / 3600 for t in mine]), _reached(mine, optimum * (1 + w)))
            for w in WITHIN
        }
        final, hours = spread(bests), spread([t.total_seconds / 3600 for t in mine])
        rows[method.name] = {
            "label": method.label,
            "seeds": len(mine),
            "final_best": final,
            "regret": spread([b - optimum for b in bests]),
            "hours": hours,
            "within": {k: {"hours": e.as_dict(), "reached": r} for k, (e, r) in within.items()},
        }
        cells = [f"{e} ({r}/{len(mine)})" for e, r in within.values()]
        lines.append(
            f"| {method.label} | {len(mine)} | {final['median']:.4f} [{final['q25']:.4f}, {final['q75']:.4f}] | "
            f"{final['median'] - optimum:.4f} | {hours['median']:.2f} | {cells[0]} | {cells[1]} |"
        )
    stopping_lines, rows["stopping"] = _stopping_table(runs)
    return rows, "\n".join(lines) + "\n" + stopping_lines


def _reached(traces: Sequence[Trace], target: float) -> int:
    return sum(math.isfinite(t.reach(target)) for t in traces)


def _stopping_table(runs: Sequence[Trace]) -> tuple[str, dict[str, Any]]:
    """Per stopping method against its plain one, seed by seed: the share of the plain run's compute it needs to
    reach the plain run's final best, and how the final bests compare; its wrong stops."""
    lines = [
        "\n| stopping method | against | seeds reaching the plain best | compute to reach it / plain run's compute: "
        "median [95% CI] | final best - plain's: median [95% CI] | wrong stops |",
        "|---|---|---|---|---|---|",
    ]
    rows: dict[str, Any] = {}
    for method in ALL.values():
        name, plain_name = method.name, plain_of(method)
        if plain_name is None:
            continue
        stopping = {t.seed: t for t in runs if t.method == name}
        plain = {t.seed: t for t in runs if t.method == plain_name}
        seeds = sorted(stopping.keys() & plain.keys())
        if not seeds:
            continue
        ratios = [stopping[s].reach(plain[s].best) / plain[s].total_seconds for s in seeds]
        differences = [stopping[s].best - plain[s].best for s in seeds]
        wrong = [stopping[s].wrong_stops() for s in seeds]
        wrong_count, stopped = sum(w for w, _ in wrong), sum(n for _, n in wrong)
        ratio, difference = bootstrap(ratios), bootstrap(differences, np.median)
        rows[name] = {
            "against": plain_name,
            "seeds": len(seeds),
            "reached": sum(math.isfinite(r) for r in ratios),
            "compute_ratio": ratio.as_dict(),
            "final_best_difference": difference.as_dict(),
            "wrong_stops": wrong_count,
            "stopped": stopped,
        }
        share = f"{wrong_count}/{stopped} ({wrong_count / stopped:.1%})" if stopped else "0/0"
        lines.append(
            f"| {ALL[name].label} | {ALL[plain_name].label} | {rows[name]['reached']}/{len(seeds)} | "
            f"{ratio} | {_signed(difference)} | {share} |"
        )
    return "\n".join(lines) + "\n", rows


def confirmation(method: Method, real: Trace, replayed: Trace) -> dict[str, Any]:
    """A real run beside its replay: the same points in the same order? the same values? the real compute against
    the simulated one. ``lines``: the Markdown of it."""
    same_points = [s.point for s in real.steps] == [s.point for s in replayed.steps]
    pairs = [(a.seen, b.seen) for a, b in zip(real.steps, replayed.steps, strict=False) if a.point == b.point]
    differences = [abs(a - b) for a, b in pairs if not (math.isnan(a) and math.isnan(b))]
    result: dict[str, Any] = {
        "method": method.name,
        "evaluations": [len(real.steps), len(replayed.steps)],
        "same_points": same_points,
        "largest_value_difference": max(differences, default=0.0),
        "best": [real.best, replayed.best],
        "hours": [real.total_seconds / 3600, replayed.total_seconds / 3600],
    }
    result["lines"] = [
        f"| {method.label} | {len(real.steps)} / {len(replayed.steps)} | {'yes' if same_points else 'no'} | "
        f"{result['largest_value_difference']:.2g} | {real.best:.4f} / {replayed.best:.4f} | "
        f"{real.total_seconds / 3600:.2f} / {replayed.total_seconds / 3600:.2f} |"
    ]
    return result


CONFIRM_HEAD = (
    "| method | evaluations: real / replay | the same points in the same order | largest difference of a value "
    "| best: real / replay | compute, hours: real / simulated |\n|---|---|---|---|---|---|"
)


def _signed(estimate: Estimate) -> str:
    return f"{estimate.value:+.4f} [{estimate.low:+.4f}, {estimate.high:+.4f}]"


def _anytime_png(
    runs: Sequence[Trace], optimum: float, untuned: dict[str, dict[str, float]], path: Path, budget: int
) -> None:
    """Regret of the best found against simulated wall-clock compute: per method the median over seeds and the
    25-75% band; the untuned settings as points at the cost of one run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    horizon = max(t.total_seconds for t in runs)
    times = np.linspace(0, horizon, 400)
    figure, axes = plt.subplots(figsize=(10, 6))
    colours = plt.get_cmap("tab20").colors
    for index, method in enumerate(m for m in ALL.values() if any(t.method == m.name for t in runs)):
        mine = [t for t in runs if t.method == method.name]
        curve = quantile_curve(mine, times, lambda best: (best - optimum) if not math.isnan(best) else math.inf)
        colour = colours[index % len(colours)]
        style = "--" if method.stops else "-"
        axes.plot(times / 3600, curve[1], style, color=colour, label=f"{method.label} ({len(mine)} seeds)")
        if len(mine) > 1:
            axes.fill_between(times / 3600, curve[0], curve[2], color=colour, alpha=0.12, step=None)
    for name, baseline in untuned.items():
        axes.scatter([baseline["seconds"] / 3600], [baseline["validation_loss"] - optimum], marker="x", color="black")
        axes.annotate(name, (baseline["seconds"] / 3600, baseline["validation_loss"] - optimum), fontsize=8)
    axes.set_yscale("symlog", linthresh=1e-3)
    axes.set_xlabel("simulated wall-clock compute of the device (hours: start-up, loading, training, checkpoints)")
    axes.set_ylabel("best validation loss found - the grid's optimum")
    axes.set_title(f"Budget {budget} evaluations: median over seeds, 25-75% band")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, loc="upper right")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
