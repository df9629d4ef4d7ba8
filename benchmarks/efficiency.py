"""What tuning buys, and for how much compute (issue 22): solvers against the settings a user picks without tuning.

Every method runs through the real commands, each run in a study folder of its own under ``--work``, one
evaluation at a time (one torch thread): NOMAD (``lora-blackbox study`` on a generated parameter file), Optuna's TPE
and random search (``lora-blackbox optuna --sampler ...``), and whatever ``METHODS`` lists besides (NOMAD with early
stopping, TPE with Hyperband), the same budget and seeds (the solver's seed) for all. Then:

1. Compute: each run's best validation loss so far against its cumulative training tokens (and seconds); the tokens
   and seconds each run needs to come within 1% of the best validation loss any run found.
2. The test split (``data.test``, never seen by a solver): each run's best point is trained again with
   ``validation.test = true`` (``lora-blackbox eval``: the same seed gives the same adapter, and the validation loss
   it reproduces is checked), and so are the untuned settings (``UNTUNED``: peft's ``LoraConfig`` defaults with the
   HF Trainer's default learning rate, and a common recipe), as single ``eval`` calls. Test losses and paired
   differences carry 95% intervals over the test examples.
3. The experiment's downstream benchmark (``lora-blackbox downstream``: the demo's offline chitchat-replies) of each
   method's best adapter and of the untuned settings, with their intervals.

    python benchmarks/efficiency.py [--experiment efficiency] [--budget 20] [--seeds 0,1,2]
                                    [--methods nomad,tpe,random] [--phases run,test,downstream,report]
                                    [--work runs/efficiency] [--out benchmarks/results/efficiency]
                                    [--set KEY=VALUE ...] [--threads 1]

Resumable: a finished study evaluates nothing again, a test point or a downstream score already recorded is not
computed again; run the same command after an interruption. Adding a method is one line of ``METHODS``.
Writes to ``--out``: ``efficiency.md`` and ``efficiency.json`` (every number), ``tokens.png`` (the figure), the
report of all runs (``report.html``, ``summary.json``), every record (``records/``), the per-example test losses
(``test_losses/``) and the downstream scores (``downstream.jsonl``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from compare_solvers import blackbox, run_nomad, run_optuna
from machine import describe

from blackbox.core.experiment import HPARAM_NAMES, load_experiment
from blackbox.core.folders import DOWNSTREAM_FILE, TEST_LOSSES_FILE
from blackbox.core.point import format_point
from blackbox.core.record import EvalRecord, RecordStore
from blackbox.core.space import HyperParams, SearchSpace
from blackbox.reports import write_report
from blackbox.reports.load import Run, load_downstream, load_run

Z95 = 1.959963984540054  # the 97.5% quantile of the standard normal: 95% two-sided intervals
WITHIN = 0.01  # "within 1% of the best validation loss any run found"


@dataclass(frozen=True)
class Method:
    """A way to tune: a solver and its options. Its runs live in ``<work>/<name>-s<seed>``."""

    name: str
    label: str
    solver: Literal["nomad", "optuna"]
    sampler: str = ""  # Optuna's
    options: tuple[str, ...] = ()  # more options of lora-blackbox optuna
    sets: tuple[str, ...] = ()  # experiment overrides of this method only


# The learning curve the early-stopping methods decide on: validation on the first 32 validation rows at a quarter,
# half and three quarters of the training (it changes no result: the experiment's fingerprint is the same).
CURVE = ("validation.checkpoints=[0.25,0.5,0.75]",)
METHODS = {
    method.name: method
    for method in (
        Method("nomad", "NOMAD", "nomad"),
        Method("nomad-stop", "NOMAD + median stopping", "nomad", sets=(*CURVE, "stopping.rule=median")),
        Method("tpe", "TPE", "optuna", sampler="tpe"),
        Method(
            "tpe-hyperband", "TPE + Hyperband", "optuna", sampler="tpe", options=("--pruner", "hyperband"), sets=CURVE
        ),
        Method("random", "random search", "optuna", sampler="random"),
    )
}

# What a user picks without tuning. peft's LoraConfig has no learning rate: its defaults get the HF Trainer's
# (TrainingArguments.learning_rate = 5e-5). The recipe's dropout is the common 0.05.
UNTUNED: dict[str, tuple[str, dict[str, float]]] = {
    "peft-defaults": (
        "peft's defaults (r 8, alpha 8, dropout 0) with the HF Trainer's learning rate 5e-5",
        {"lora_r": 8, "lora_alpha": 8.0, "lora_dropout": 0.0, "learning_rate": 5e-5},
    ),
    "recipe": (
        "common recipe (r 16, alpha 32, dropout 0.05, learning rate 2e-4)",
        {"lora_r": 16, "lora_alpha": 32.0, "lora_dropout": 0.05, "learning_rate": 2e-4},
    ),
}
TEST_SETTINGS = ("validation.test=true", "records.save_adapter=true")


# --------------------------------------------------------------------------------------------------------------
# Statistics: pure functions on numbers, tested on synthetic records (tests/benchmarks/test_efficiency.py)


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

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def as_dict(self) -> dict[str, float]:
        return {"value": self.value, "low": self.low, "high": self.high, "standard_error": self.half_width / Z95}

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


def mean_of_examples(sums: Sequence[Sequence[float]]) -> list[float]:
    """Per example, the mean of several models' loss sums (the seeds of a method): one model-averaged loss each."""
    return [statistics.fmean(column) for column in zip(*sums, strict=True)]


def best_so_far(values: Sequence[float]) -> list[float]:
    """The running minimum of the defined values (nan until the first one)."""
    best, out = math.nan, []
    for value in values:
        if not math.isnan(value) and (math.isnan(best) or value < best):
            best = value
        out.append(best)
    return out


@dataclass(frozen=True)
class Reach:
    """Where a run first came within the target: its evaluation (1-based) and the compute spent up to it."""

    evaluations: int
    tokens: int
    seconds: float


@dataclass(frozen=True)
class Trace:
    """One run: per counted evaluation in order, its objective (nan: failed or stopped), training tokens, seconds."""

    method: str
    seed: int
    objectives: tuple[float, ...]
    tokens: tuple[int, ...]
    seconds: tuple[float, ...]

    @property
    def best(self) -> float:
        curve = best_so_far(self.objectives)
        return curve[-1] if curve else math.nan

    @property
    def total_tokens(self) -> int:
        return sum(self.tokens)

    @property
    def total_seconds(self) -> float:
        return math.fsum(self.seconds)

    def reach(self, target: float) -> Reach | None:
        """The first evaluation whose best so far is at most ``target``, with the cumulative compute; None if none."""
        tokens, seconds = 0, 0.0
        for number, (best, spent, took) in enumerate(
            zip(best_so_far(self.objectives), self.tokens, self.seconds, strict=True), start=1
        ):
            tokens += spent
            seconds += took
            if not math.isnan(best) and best <= target:
                return Reach(number, tokens, seconds)
        return None


def trace_of(run: Run, method: str, seed: int) -> Trace:
    """A study's counted evaluations as a trace: its records' validation loss, ``train_tokens`` and wall seconds."""
    evaluations = run.evaluations
    return Trace(
        method,
        seed,
        tuple(e.objective if math.isfinite(e.objective) else math.nan for e in evaluations),
        tuple(int(e.metrics.get("train_tokens") or 0) for e in evaluations),
        tuple(e.hours * 3600 for e in evaluations),
    )


def spread(values: Sequence[float]) -> dict[str, float | None]:
    """Mean, standard deviation, min and max over seeds."""
    if not values:
        return {"mean": None, "sd": None, "min": None, "max": None}
    return {
        "mean": statistics.fmean(values),
        "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
    }


# --------------------------------------------------------------------------------------------------------------
# Running: the real commands


def untuned_call(experiment_ref: str, overrides: Sequence[str], hparams: dict[str, float]) -> tuple[list[str], str]:
    """The overrides and the point line that evaluate ``hparams`` with the experiment: fixed hyperparameters that
    differ are overridden (``hyperparameters.NAME``), variables are encoded into the experiment's coordinates.

    Raises:
        PointError: a value lies outside the experiment's search space.
    """
    experiment = load_experiment(experiment_ref, list(overrides))
    sets = [
        f"hyperparameters.{name}={hparams[name]!r}"
        for name in HPARAM_NAMES
        if (fixed := getattr(experiment.hyperparameters, name)) is not None and fixed != hparams[name]
    ]
    space = SearchSpace.from_experiment(load_experiment(experiment_ref, [*overrides, *sets]))
    point = space.encode(
        HyperParams(
            lora_r=int(hparams["lora_r"]),
            lora_alpha=hparams["lora_alpha"],
            lora_dropout=hparams["lora_dropout"],
            learning_rate=hparams["learning_rate"],
        )
    )
    return sets, format_point(point)


def _sets(overrides: Sequence[str]) -> list[str]:
    return [word for item in overrides for word in ("--set", item)]


def evaluate_points(
    experiment_ref: str, overrides: Sequence[str], lines: Sequence[str], folder: Path, log: Path
) -> dict[str, EvalRecord]:
    """Evaluate the point lines (one ``lora-blackbox eval`` call, the model loaded once) into ``folder``, those
    without a finished record of this experiment there; return the finished record of each line."""
    settings = [*overrides, f"records.dir={folder.resolve()}"]
    fingerprint = load_experiment(experiment_ref, settings).fingerprint()
    store = RecordStore(folder)

    def finished() -> dict[str, EvalRecord]:
        records = store.records() if store.exists() else []
        return {format_point(r.point or ()): r for r in records if r.fingerprint == fingerprint and r.counted}

    done = finished()
    missing = [line for line in dict.fromkeys(lines) if line not in done]
    if missing:
        folder.mkdir(parents=True, exist_ok=True)
        points = folder / f"points-{fingerprint}.txt"
        points.write_text("".join(f"{line}\n" for line in missing))
        with log.open("a") as out:
            subprocess.run(
                [*blackbox(), "eval", "-e", experiment_ref, *_sets(settings), str(points)], stdout=out, check=True
            )
        done = finished()
    return {line: done[line] for line in lines}


def run_method(work: Path, experiment: str, method: Method, seed: int, budget: int, overrides: Sequence[str]) -> Path:
    sets = (*overrides, *method.sets)
    if method.solver == "nomad":
        return run_nomad(work, experiment, seed, budget, sets, name=method.name)
    return run_optuna(work, experiment, method.sampler, seed, budget, sets, name=method.name, options=method.options)


def score_downstream(test_dir: Path, run_ids: Sequence[str], log: Path) -> list[dict[str, Any]]:
    """The experiment's downstream scores of the base model and of these evaluations' adapters (``lora-blackbox
    downstream``), computed once: rows already in the folder's downstream file are kept."""
    have = {row.get("run_id") for row in load_downstream(test_dir)}
    missing = [run_id for run_id in run_ids if run_id not in have]
    if missing or None not in have:  # the command scores the base model first, then the adapters asked for
        with log.open("a") as out:
            command = [*blackbox(), "downstream", str(test_dir), *[w for r in missing for w in ("--run-id", r)]]
            subprocess.run(command, stdout=out, check=True)
    return [row for row in load_downstream(test_dir) if row.get("run_id") in (*run_ids, None)]


# --------------------------------------------------------------------------------------------------------------
# Analysis and outputs


def test_losses(record: EvalRecord) -> dict[str, list[float]]:
    """The per-example test losses an evaluation with ``validation.test`` wrote into its run folder."""
    return json.loads((Path(record.run_dir or "") / TEST_LOSSES_FILE).read_text())  # type: ignore[no-any-return]


def compute_table(
    traces: Sequence[Trace], methods: Sequence[Method], target: float
) -> tuple[list[dict[str, Any]], str]:
    """Per method: the compute to come within the target, the best after the full budget, the total compute."""
    rows, lines = (
        [],
        [
            "| method | seeds within 1% | training tokens to get there: per seed | seconds to get there: per seed "
            "| best validation loss after the budget: mean ± sd (min-max) | training tokens of the budget: mean |",
            "|---|---|---|---|---|---|",
        ],
    )
    for method in methods:
        runs = [t for t in traces if t.method == method.name]
        if not runs:
            continue
        reaches = [t.reach(target) for t in runs]
        bests = [t.best for t in runs if not math.isnan(t.best)]
        row = {
            "method": method.name,
            "label": method.label,
            "seeds": [t.seed for t in runs],
            "reach": [None if r is None else vars(r) for r in reaches],
            "best": spread(bests),
            "best_per_seed": [t.best for t in runs],
            "total_tokens": [t.total_tokens for t in runs],
            "total_seconds": [t.total_seconds for t in runs],
        }
        rows.append(row)
        best = row["best"]
        lines.append(
            f"| {method.label} | {sum(r is not None for r in reaches)}/{len(runs)} | "
            + ", ".join("not reached" if r is None else f"{r.tokens:,} ({r.evaluations} ev.)" for r in reaches)
            + " | "
            + ", ".join("-" if r is None else f"{r.seconds:.0f}" for r in reaches)
            + f" | {best['mean']:.4f} ± {best['sd']:.4f} ({best['min']:.4f}-{best['max']:.4f}) | "
            + f"{statistics.fmean(row['total_tokens']):,.0f} |"
        )
    return rows, "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Tested:
    """A model evaluated on the test split: its label, validation loss, test losses per example and record."""

    key: str  # "<method>-s<seed>" or an UNTUNED name
    label: str
    validation_loss: float
    losses: dict[str, list[float]]
    record: EvalRecord

    @property
    def test(self) -> Interval:
        return ratio_interval(self.losses["loss_sums"], self.losses["target_tokens"])  # type: ignore[arg-type]


def test_table(
    tuned: dict[str, list[Tested]], untuned: Sequence[Tested], methods: Sequence[Method]
) -> tuple[dict[str, Any], str]:
    """Test losses with 95% intervals, and each method's paired difference to each untuned setting (per seed, and
    the mean of its seeds' adapters per example)."""
    references = [(u, u.losses["loss_sums"]) for u in untuned]
    tokens = untuned[0].losses["target_tokens"] if untuned else next(iter(tuned.values()))[0].losses["target_tokens"]
    header = "| model | validation loss | test loss [95% interval] | " + " | ".join(
        f"test loss - {u.key} [95% interval]" for u in untuned
    )
    lines = [header + " |", "|---" * (3 + len(untuned)) + "|"]
    result: dict[str, Any] = {"untuned": [], "methods": []}
    for u in untuned:
        result["untuned"].append(
            {"key": u.key, "label": u.label, "validation_loss": u.validation_loss, "test": u.test.as_dict()}
        )
        lines.append(f"| {u.label} | {u.validation_loss:.4f} | {u.test} |" + " |" * len(untuned))
    for method in methods:
        tested = tuned.get(method.name, [])
        if not tested:
            continue
        entry: dict[str, Any] = {"method": method.name, "label": method.label, "seeds": []}
        for t in tested:
            differences = {u.key: paired_difference(t.losses["loss_sums"], sums, tokens) for u, sums in references}
            entry["seeds"].append(
                {
                    "key": t.key,
                    "validation_loss": t.validation_loss,
                    "test": t.test.as_dict(),
                    "minus": {k: d.as_dict() for k, d in differences.items()},
                }
            )
            lines.append(
                f"| {method.label}, {t.key} | {t.validation_loss:.4f} | {t.test} | "
                + " | ".join(str(differences[u.key]) for u in untuned)
                + " |"
            )
        averaged = mean_of_examples([t.losses["loss_sums"] for t in tested])
        mean_test = ratio_interval(averaged, tokens)
        mean_differences = {u.key: paired_difference(averaged, sums, tokens) for u, sums in references}
        entry["mean_of_seeds"] = {
            "test": mean_test.as_dict(),
            "minus": {k: d.as_dict() for k, d in mean_differences.items()},
        }
        lines.append(
            f"| **{method.label}, mean of {len(tested)} seeds** | "
            f"{statistics.fmean(t.validation_loss for t in tested):.4f} | {mean_test} | "
            + " | ".join(str(mean_differences[u.key]) for u in untuned)
            + " |"
        )
        result["methods"].append(entry)
    return result, "\n".join(lines) + "\n"


def downstream_table(rows: Sequence[dict[str, Any]], names: dict[str, str]) -> tuple[list[dict[str, Any]], str]:
    """Scores with 95% intervals (lm-eval's standard error) by model, and each one's difference to the base model
    (unpaired: the items are the same, so the true interval of a difference is narrower)."""
    base = next((row for row in rows if row.get("run_id") is None), None)
    out, lines = [], ["| model | benchmark | score [95% interval] | score - base model [95% interval, unpaired] |"]
    lines.append("|---|---|---|---|")
    for row in sorted(rows, key=lambda r: (r.get("run_id") is not None, names.get(r.get("run_id") or "", ""))):
        se = row.get("stderr") or 0.0
        score = Interval(float(row["value"]), Z95 * se)
        entry = {"model": names.get(row.get("run_id") or "", "base model"), "key": row["key"], "score": score.as_dict()}
        cell = "-"
        if base is not None and row is not base:
            base_se = base.get("stderr") or 0.0
            difference = Interval(score.value - float(base["value"]), Z95 * math.hypot(se, base_se))
            entry["minus_base"] = difference.as_dict()
            cell = str(difference)
        out.append(entry)
        lines.append(f"| {entry['model']} | {row['key'].removeprefix('benchmark:')} | {score} | {cell} |")
    return out, "\n".join(lines) + "\n"


def tokens_png(traces: Sequence[Trace], methods: Sequence[Method], target: float, untuned: Sequence[Tested]) -> bytes:
    """Best validation loss so far against cumulative training tokens: a colour per method, a thin line per seed."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b")
    figure, axes = plt.subplots(figsize=(9, 5))
    finite = []
    for index, method in enumerate(methods):
        labelled = False
        for trace in (t for t in traces if t.method == method.name):
            xs, ys, spent = [], [], 0
            for best, tokens in zip(best_so_far(trace.objectives), trace.tokens, strict=True):
                spent += tokens
                if not math.isnan(best):
                    xs.append(spent)
                    ys.append(best)
            finite += ys
            axes.step(
                xs,
                ys,
                where="post",
                color=colours[index % len(colours)],
                linewidth=0.9,
                alpha=0.8,
                label=None if labelled else method.label,
            )
            labelled = True
    axes.axhline(target, color="black", linestyle=":", linewidth=1, label=f"within {WITHIN:.0%} of the best")
    low, high = (min(finite), max(finite)) if finite else (target, target)
    for u in untuned:
        if u.validation_loss <= high + (high - low):
            axes.axhline(u.validation_loss, color="grey", linestyle="--", linewidth=1, label=f"untuned: {u.key}")
        else:
            axes.annotate(
                f"untuned {u.key}: {u.validation_loss:.3f} (above)",
                (0.99, 0.97),
                xycoords="axes fraction",
                ha="right",
                va="top",
                fontsize=8,
                color="grey",
                xytext=(0, -12 * untuned.index(u)),
                textcoords="offset points",
            )
    margin = (high - low) * 0.1 or 0.01
    axes.set_ylim(low - margin, high + 2 * margin)
    axes.set_xlabel("cumulative training tokens")
    axes.set_ylabel("best validation loss so far")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    return buffer.getvalue()


# --------------------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", default="efficiency", help="a shipped experiment or a TOML file")
    parser.add_argument("--budget", type=int, default=20)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"of {', '.join(METHODS)}")
    parser.add_argument("--phases", default="run,test,downstream,report")
    parser.add_argument("--work", type=Path, default=Path("runs/efficiency"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/efficiency"))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per evaluation (OMP_NUM_THREADS)")
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # inherited by every lora-blackbox call
    seeds = [int(s) for s in args.seeds.split(",")]
    methods = [METHODS[name] for name in args.methods.split(",")]
    phases = set(args.phases.split(","))
    work: Path = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    log = work / "calls.log"
    started = time.monotonic()
    folders = {(m.name, seed): work / f"{m.name}-s{seed}" for seed in seeds for m in methods}
    if "run" in phases:
        for seed in seeds:  # seed by seed: an interruption leaves complete seeds of every method
            for method in methods:
                t0 = time.monotonic()
                run_method(work, args.experiment, method, seed, args.budget, args.overrides)
                print(f"{method.label} seed {seed}: {time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)
    runs = {key: load_run(f"{key[0]}-s{key[1]}={folder}") for key, folder in folders.items()}
    traces = [trace_of(run, name, seed) for (name, seed), run in runs.items()]
    best_loss = min(t.best for t in traces if not math.isnan(t.best))
    target = best_loss * (1 + WITHIN)
    compute_rows, compute_md = compute_table(traces, methods, target)
    result: dict[str, Any] = {
        "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": describe(("lora-blackbox", "torch", "transformers", "peft", "optuna", "PyNomadBBO", "lm_eval")),
        "experiment": args.experiment,
        "overrides": args.overrides,
        "budget": args.budget,
        "seeds": seeds,
        "methods": [vars(m) for m in methods],
        "torch_threads": args.threads,
        "best_validation_loss": best_loss,
        "target": target,
        "compute": compute_rows,
        "traces": [{**vars(t), "objectives": [None if math.isnan(v) else v for v in t.objectives]} for t in traces],
    }
    markdown = [f"Best validation loss of all runs: {best_loss:.4f}; within 1%: <= {target:.4f}.\n", compute_md]
    untuned: list[Tested] = []
    tuned: dict[str, list[Tested]] = {}
    test_dir = work / "test"
    if "test" in phases:
        test_sets = [*args.overrides, *TEST_SETTINGS]
        best_lines = {key: format_point(run.best.point or ()) for key, run in runs.items() if run.best is not None}
        records = evaluate_points(args.experiment, test_sets, list(best_lines.values()), test_dir, log)
        for (name, seed), line in best_lines.items():
            record = records[line]
            tuned.setdefault(name, []).append(
                Tested(
                    f"{name}-s{seed}",
                    f"{name}-s{seed}",
                    float(runs[(name, seed)].best.objective),
                    test_losses(record),
                    record,
                )  # type: ignore[union-attr]
            )
        reproduced = [abs(t.record.metrics["validation_loss"] - t.validation_loss) for ts in tuned.values() for t in ts]
        result["reproduced_validation_loss_max_difference"] = max(reproduced)
        for key, (label, hparams) in UNTUNED.items():
            sets, line = untuned_call(args.experiment, test_sets, hparams)
            record = evaluate_points(args.experiment, [*test_sets, *sets], [line], test_dir, log)[line]
            untuned.append(Tested(key, label, float(record.metrics["validation_loss"]), test_losses(record), record))
        result["test"], test_md = test_table(tuned, untuned, methods)
        result["test"]["examples"] = len(untuned[0].losses["loss_sums"])
        markdown += [
            f"\nTest split: {result['test']['examples']} examples. Best points trained again: validation loss "
            f"reproduced within {max(reproduced):.2g}.\n",
            test_md,
        ]
    if "downstream" in phases and untuned and load_experiment(args.experiment, args.overrides).downstream_defaults:
        # Each method's best adapter over its seeds (lowest validation loss), and the untuned settings.
        # Methods whose best points coincide (TPE and random search share their first 10 trials) share the adapter.
        chosen: dict[str, list[str]] = {}
        for name, tested in tuned.items():
            best = min(tested, key=lambda t: t.validation_loss)
            chosen.setdefault(best.record.run_id, []).append(METHODS[name].label)
        for u in untuned:
            chosen.setdefault(u.record.run_id, []).append(u.label)
        rows = score_downstream(test_dir, list(chosen), log)
        result["downstream"], downstream_md = downstream_table(rows, {k: " = ".join(v) for k, v in chosen.items()})
        markdown += ["\nDownstream (each method's best adapter over its seeds):\n", downstream_md]
    result["wall_seconds"] = time.monotonic() - started
    if "report" in phases:
        write_outputs(args.out, runs, traces, methods, target, untuned, tuned, test_dir, result, markdown)
    print("\n".join(markdown))


def write_outputs(
    out: Path,
    runs: dict[tuple[str, int], Run],
    traces: Sequence[Trace],
    methods: Sequence[Method],
    target: float,
    untuned: Sequence[Tested],
    tuned: dict[str, list[Tested]],
    test_dir: Path,
    result: dict[str, Any],
    markdown: list[str],
) -> None:
    """The report of every run, the figure, the tables, and copies of every record (small files only)."""
    out.mkdir(parents=True, exist_ok=True)
    labels = {m.name: m.label for m in methods}
    write_report([f"{labels[name]}={run.folder}" for (name, _), run in runs.items()], out, top=15)
    (out / "tokens.png").write_bytes(tokens_png(traces, methods, target, untuned))
    records = out / "records"
    records.mkdir(exist_ok=True)
    for (name, seed), run in runs.items():
        shutil.copyfile(run.folder / "records.jsonl", records / f"{name}-s{seed}.jsonl")
    if (test_dir / "records.jsonl").is_file():
        shutil.copyfile(test_dir / "records.jsonl", records / "test.jsonl")
        losses = out / "test_losses"
        losses.mkdir(exist_ok=True)
        for tested in [*untuned, *(t for ts in tuned.values() for t in ts)]:
            shutil.copyfile(Path(tested.record.run_dir or "") / TEST_LOSSES_FILE, losses / f"{tested.key}.json")
    if (test_dir / DOWNSTREAM_FILE).is_file():
        shutil.copyfile(test_dir / DOWNSTREAM_FILE, out / DOWNSTREAM_FILE)
    (out / "efficiency.json").write_text(json.dumps(result, indent=1, allow_nan=False, default=_number) + "\n")
    (out / "efficiency.md").write_text("\n".join(markdown) + "\n")


def _number(value: Any) -> Any:
    raise TypeError(f"not JSON: {value!r}")


if __name__ == "__main__":
    main()
