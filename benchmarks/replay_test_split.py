"""``python benchmarks/replay.py test``: the points the methods chose, and the untuned settings, on the held-out test
split (``data.test``) that no solver saw: is "better" still better on data nobody chose by?

Each run's chosen point is its best finished evaluation. Every distinct chosen grid point, peft's defaults and the
common recipe are trained again for real with ``validation.test = true`` (one ``lora-blackbox eval`` call for the
grid's points, one for each untuned setting; the same training seed gives the same adapter, and the validation loss
it reproduces is checked against the table). Then, per budget and method: the test loss of its chosen point over the
seeds (median and bootstrap 95% interval over seeds), and the mean of its seeds' adapters example by example against
the recipe's and peft's defaults (paired 95% intervals over the test examples).
"""

from __future__ import annotations

import json
import math
import statistics
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from compare_solvers import blackbox
from replay import BASELINES, baseline_jobs
from replay_methods import METHODS
from replay_report import Trace, bootstrap, paired_difference, ratio_interval

from blackbox.core.experiment import load_experiment
from blackbox.core.folders import TEST_LOSSES_FILE
from blackbox.core.point import format_point
from blackbox.core.record import EvalRecord, RecordStore
from blackbox.replay.table import ReplayTable


def chosen_point(trace: Trace) -> tuple[float, ...] | None:
    """A run's answer: the point of its best finished evaluation (None: it finished none)."""
    finished = [s for s in trace.steps if not math.isnan(s.seen)]
    return min(finished, key=lambda s: s.seen).point if finished else None


def evaluate(experiment: str, sets: Sequence[str], lines: Sequence[str], folder: Path) -> dict[str, EvalRecord]:
    """The lines without a finished record of this experiment in ``folder`` evaluated in one call; every line's
    finished record, by line."""
    settings = [*sets, f"records.dir={folder}"]
    fingerprint = load_experiment(experiment, settings).fingerprint()
    store = RecordStore(folder)

    def finished() -> dict[str, EvalRecord]:
        return {format_point(r.point or ()): r for r in store.records() if r.fingerprint == fingerprint and r.counted}

    missing = [line for line in dict.fromkeys(lines) if line not in finished()]
    if missing:
        folder.mkdir(parents=True, exist_ok=True)
        points = folder / f"points-{fingerprint}.txt"
        points.write_text("".join(f"{line}\n" for line in missing))
        with (folder / "calls.log").open("a") as log:
            command = [*blackbox(), "-q", "eval", "-e", experiment, *[w for s in settings for w in ("--set", s)]]
            subprocess.run([*command, str(points)], stdout=subprocess.DEVNULL, stderr=log, check=True)
    done = finished()
    return {line: done[line] for line in lines}


def _losses(record: EvalRecord) -> dict[str, list[float]]:
    return json.loads((Path(record.run_dir or "") / TEST_LOSSES_FILE).read_text())  # type: ignore[no-any-return]


def test_split(
    table: ReplayTable, traces: Sequence[Trace], *, experiment: str, work: Path, test_rows: int
) -> tuple[dict[str, Any], str]:
    """Train the chosen points and the untuned settings again with their test losses; the tables of them."""
    sets = ["validation.test=true", f"data.max_test_rows={test_rows}"]
    chosen = {(t.budget, t.method, t.seed): chosen_point(t) for t in traces}
    lines = sorted({format_point(p) for p in chosen.values() if p is not None})
    grid = evaluate(experiment, sets, lines, work / "grid")
    reproduced = max(
        abs(r.metrics["validation_loss"] - table.grid[r.point].metrics["validation_loss"])  # type: ignore[index]
        for r in grid.values()
    )
    untuned = _untuned(experiment, sets, work)
    tokens = _losses(next(iter(untuned.values())))["target_tokens"]
    result: dict[str, Any] = {
        "test_examples": len(tokens),
        "validation_loss_reproduced_within": reproduced,
        "untuned": {k: {"validation_loss": r.metrics["validation_loss"], **_test(r)} for k, r in untuned.items()},
        "budgets": {},
    }
    lines_md = [
        f"Test split: {len(tokens)} examples of conversations no solver saw; every chosen point trained again "
        f"(validation loss reproduced within {reproduced:.2g}).\n",
        "| untuned | validation loss | test loss [95% interval over examples] |",
        "|---|---|---|",
    ]
    for name, record in untuned.items():
        lines_md.append(f"| {BASELINES_LABELS[name]} | {record.metrics['validation_loss']:.4f} | {_interval(record)} |")
    for budget in sorted({t.budget for t in traces}):
        rows, text = _budget(budget, chosen, grid, untuned, tokens)
        result["budgets"][str(budget)] = rows
        lines_md.append(text)
    return result, "\n".join(lines_md) + "\n"


def _untuned(experiment: str, sets: Sequence[str], work: Path) -> dict[str, EvalRecord]:
    """peft's defaults and the common recipe trained again with ``sets`` (off the grid: one call each)."""
    untuned = {}
    for job in baseline_jobs(experiment, work):
        extra = [s for s in job.sets if s.startswith("hyperparameters.")]
        untuned[job.name] = evaluate(job.experiment, [*sets, *extra], [job.line], work / "untuned")[job.line]
    return untuned


BASELINES_LABELS = {
    "peft-defaults": "peft's defaults (r 8, alpha 8, dropout 0, lr 5e-5)",
    "recipe": "recipe (r 16, alpha 32, lr 2e-4)",
}
assert set(BASELINES_LABELS) == set(BASELINES)


def _test(record: EvalRecord) -> dict[str, Any]:
    losses = _losses(record)
    return {"test": ratio_interval(losses["loss_sums"], losses["target_tokens"]).as_dict()}


def _interval(record: EvalRecord) -> str:
    losses = _losses(record)
    return str(ratio_interval(losses["loss_sums"], losses["target_tokens"]))


def _budget(
    budget: int,
    chosen: dict[tuple[int, str, int], tuple[float, ...] | None],
    grid: dict[str, EvalRecord],
    untuned: dict[str, EvalRecord],
    tokens: list[int],
) -> tuple[dict[str, Any], str]:
    lines = [
        f"\n#### Budget {budget}: the chosen points on the test split\n",
        "| method | seeds | distinct points chosen | test loss of the chosen point: median [95% CI over seeds] "
        "| mean of the seeds' adapters - recipe [95% interval over examples] | - peft's defaults |",
        "|---|---|---|---|---|---|",
    ]
    rows: dict[str, Any] = {}
    for method in METHODS.values():
        points = [p for (b, m, _), p in chosen.items() if b == budget and m == method.name and p is not None]
        if not points:
            continue
        records = [grid[format_point(p)] for p in points]
        sums = [_losses(r)["loss_sums"] for r in records]
        tests = [math.fsum(s) / sum(tokens) for s in sums]
        mean_sums = [statistics.fmean(column) for column in zip(*sums, strict=True)]
        against = {
            name: paired_difference(mean_sums, _losses(record)["loss_sums"], tokens) for name, record in untuned.items()
        }
        estimate = bootstrap(tests)
        rows[method.name] = {
            "seeds": len(points),
            "distinct_points": len(set(points)),
            "test_loss": estimate.as_dict(),
            "mean_of_seeds_minus": {k: v.as_dict() for k, v in against.items()},
        }
        lines.append(
            f"| {method.label} | {len(points)} | {len(set(points))} | {estimate} | {against['recipe']} | "
            f"{against['peft-defaults']} |"
        )
    return rows, "\n".join(lines) + "\n"


def test_points(
    table: ReplayTable, lines: Sequence[str], labels: Sequence[str], *, experiment: str, work: Path, test_rows: int
) -> tuple[dict[str, Any], str]:
    """The named grid points only (e.g. the grid's optimum and the sweep's choice) beside the untuned settings on the
    test split, each against each untuned one on the same examples: the short form of :func:`test_split`, when
    training every chosen point again does not fit."""
    sets = ["validation.test=true", f"data.max_test_rows={test_rows}"]
    grid = evaluate(experiment, sets, list(lines), work / "grid")
    untuned = _untuned(experiment, sets, work)
    tokens = _losses(next(iter(untuned.values())))["target_tokens"]
    reproduced = max(
        abs(r.metrics["validation_loss"] - table.grid[r.point].metrics["validation_loss"])  # type: ignore[index]
        for r in grid.values()
    )
    rows: dict[str, Any] = {}
    md = [
        f"Test split: {len(tokens)} examples of conversations no solver saw (validation loss reproduced within "
        f"{reproduced:.2g}).\n",
        "| model | validation loss | test loss [95% interval over examples] | - recipe [95%, paired] "
        "| - peft's defaults [95%, paired] |",
        "|---|---|---|---|---|",
    ]
    for name, record in untuned.items():
        rows[name] = {"validation_loss": record.metrics["validation_loss"], **_test(record)}
        md.append(f"| {BASELINES_LABELS[name]} | {record.metrics['validation_loss']:.4f} | {_interval(record)} | | |")
    for line, label in zip(lines, labels, strict=True):
        record, sums = grid[line], _losses(grid[line])["loss_sums"]
        against = {n: paired_difference(sums, _losses(r)["loss_sums"], tokens) for n, r in untuned.items()}
        rows[label] = {
            "point": line,
            "validation_loss": record.metrics["validation_loss"],
            **_test(record),
            "minus": {n: a.as_dict() for n, a in against.items()},
        }
        md.append(
            f"| {label} ({line}) | {record.metrics['validation_loss']:.4f} | {_interval(record)} | "
            f"{against['recipe']} | {against['peft-defaults']} |"
        )
    if len(lines) == 2:
        a, b = (_losses(grid[line])["loss_sums"] for line in lines)
        difference = paired_difference(a, b, tokens)
        rows["first_minus_second"] = difference.as_dict()
        md.append(f"\n{labels[0]} - {labels[1]}, paired over the same examples: {difference}")
    return {"test_examples": len(tokens), "validation_loss_reproduced_within": reproduced, "models": rows}, (
        "\n".join(md) + "\n"
    )
