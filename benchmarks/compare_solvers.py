"""NOMAD, Optuna TPE and random search on the demo study at the same budget, several seeds each (issue 6); on
``--experiment demo_variants``, which LoRA variant, target modules and epochs win (issue 15).

Every evaluation is a ``lora-blackbox eval`` subprocess, for all three solvers: NOMAD (the library
embedded in PyNomadBBO, through ``lora-blackbox study`` on a generated parameter file) calls it as its
BB_EXE; Optuna (``lora-blackbox optuna``, TPE or random sampler) calls it once per trial. The search
space, the CPU-sized settings and the budget are the same for all. Then one report draws all runs on
the same axes, and a table gives each solver's best validation loss after 5, 10 and 20 evaluations
(mean and range over the seeds).

    python benchmarks/compare_solvers.py [--experiment demo] [--budget 20] [--seeds 0,1,2] [--solvers nomad,tpe,random]
                                         [--work runs/compare-solvers] [--out benchmarks/results/solvers]
                                         [--set KEY=VALUE ...] [--threads 1] [--jobs 1]

The LoRA-variant study (NOMAD's integer indices against Optuna's categorical sampling of the same values):

    python benchmarks/compare_solvers.py --experiment demo_variants --solvers nomad,tpe --jobs 2 \
        --work runs/compare-variants --out benchmarks/results/variants --recheck-top 5

Besides the table of best values, ``settings.md`` (and ``comparison.json``) give, per solver and per value of
each setting that is a variable (the variant, the target modules, the epochs): how many evaluations sampled it
and the best validation loss it reached. ``--recheck-top N`` then evaluates the N best distinct points again with
other training seeds (``recheck.md``): whether the winners' gaps exceed what the seed alone moves.

Each run is resumable: the script skips nothing itself, but a finished NOMAD study or Optuna study
evaluates nothing again, so an interrupted comparison continues where it stopped.
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
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from machine import describe

from blackbox.core.experiment import HPARAM_NAMES, load_experiment
from blackbox.core.point import format_point
from blackbox.reports import write_report
from blackbox.reports.load import Evaluation, Run, load_run

# CPU-friendly settings of the demo study (10-20 s an evaluation on 2 idle cores, process start included):
# 4 optimizer steps of 8 sequences instead of 16 of 16, and 32 validation rows instead of 128. Other experiments
# (demo_variants: CPU-sized already, and its epochs are a variable that max_steps would override) run as they are.
CPU_SETTINGS = (
    "training.max_steps=4",
    "training.effective_batch_size=8",
    "training.micro_batch_size=8",
    "data.max_validation_rows=32",
)
SOLVERS = {"nomad": "NOMAD", "tpe": "Optuna TPE", "random": "random search"}
CHECKPOINTS = (5, 10, 20)


def blackbox() -> list[str]:
    script = Path(sys.executable).parent / "lora-blackbox"
    return [str(script)] if script.exists() else [sys.executable, "-m", "blackbox.cli"]


def run_nomad(
    work: Path, experiment: str, seed: int, budget: int, overrides: tuple[str, ...], *, name: str = "nomad"
) -> Path:
    """A NOMAD study (``lora-blackbox study`` on a generated parameter file) in ``work/<name>-s<seed>``."""
    folder = work / f"{name}-s{seed}"
    param = work / f"{name}-s{seed}.txt"
    settings = (*overrides, f"study.budget={budget}", f"study.seed={seed}")
    subprocess.run([*blackbox(), "-q", "params", "-e", experiment, *_sets(settings), "--out", str(param)], check=True)
    with (work / f"{name}-s{seed}.stdout.txt").open("a") as display:
        subprocess.run([*blackbox(), "study", str(param), "--dir", str(folder)], stdout=display, check=True)
    return folder


def run_optuna(
    work: Path,
    experiment: str,
    sampler: str,
    seed: int,
    budget: int,
    overrides: tuple[str, ...],
    *,
    name: str = "",
    options: tuple[str, ...] = (),
) -> Path:
    """An Optuna study (``lora-blackbox optuna --sampler SAMPLER [OPTIONS]``) in ``work/<name or sampler>-s<seed>``."""
    folder = work / f"{name or sampler}-s{seed}"
    command = [*blackbox(), "optuna", "-e", experiment, *_sets(overrides), "--n-trials", str(budget)]
    command += ["--sampler", sampler, "--seed", str(seed), "--dir", str(folder), *options]
    with (work / f"{name or sampler}-s{seed}.stdout.json").open("w") as summary:
        subprocess.run(command, stdout=summary, check=True)
    return folder


def _sets(overrides: tuple[str, ...]) -> list[str]:
    return [word for item in overrides for word in ("--set", item)]


def table(summary: dict[str, Any], budget: int) -> tuple[list[dict[str, Any]], str]:
    """Best validation loss after 5, 10, 20 evaluations per solver: mean, min and max over the seeds; and what a run
    cost in wall-clock hours of its device (start-up, loading, training, validation) beside its training tokens."""
    rows = []
    lines = [
        "| solver | seeds | "
        + " | ".join(f"after {c}: mean (min-max)" for c in CHECKPOINTS if c <= budget)
        + " | device hours of a run: mean | training tokens of a run: mean |",
        "|---|---|" + "---|" * len([c for c in CHECKPOINTS if c <= budget]) + "---|---|",
    ]
    for label in SOLVERS.values():
        runs = [r for r in summary["runs"] if r["label"] == label]
        if not runs:
            continue
        row: dict[str, Any] = {"solver": label, "seeds": len(runs)}
        cells = []
        for c in (c for c in CHECKPOINTS if c <= budget):
            values = [r["best_after"].get(str(c)) for r in runs]
            values = [v for v in values if v is not None]
            row[f"after_{c}"] = {"values": values}
            if values:
                row[f"after_{c}"].update(mean=statistics.fmean(values), min=min(values), max=max(values))
                cells.append(f"{statistics.fmean(values):.4f} ({min(values):.4f}-{max(values):.4f})")
            else:
                cells.append("-")
        computes = [r["compute"] for r in runs if r.get("compute")]
        row["hours"] = statistics.fmean(c["seconds"] / 3600 for c in computes) if computes else None
        row["train_tokens"] = statistics.fmean(c["train_tokens"] for c in computes) if computes else None
        cells.append("-" if row["hours"] is None else f"{row['hours']:.2f}")
        cells.append("-" if row["train_tokens"] is None else f"{row['train_tokens']:,.0f}")
        rows.append(row)
        lines.append(f"| {label} | {len(runs)} | " + " | ".join(cells) + " |")
    return rows, "\n".join(lines) + "\n"


def settings_table(runs: list[Run]) -> tuple[dict[str, Any], str]:
    """Per solver, per setting that is a variable (an hparams key with a dot, or a section), per value: the number
    of evaluations that sampled it and the best objective among them; and the settings of each solver's best point."""
    names = sorted({k for r in runs for e in r.evaluations for k in e.hparams or {} if k not in HPARAM_NAMES})
    table: dict[str, Any] = {}
    lines = ["| solver | setting | value | evaluations | best |", "|---|---|---|---|---|"]
    for label in SOLVERS.values():
        evaluations = [e for r in runs if r.label == label for e in r.evaluations if e.hparams]
        if not evaluations:
            continue
        table[label] = {}
        for name in names:
            by_value: dict[str, list[float]] = {}
            for e in evaluations:
                by_value.setdefault(json.dumps(e.hparams.get(name)), []).append(e.objective)  # type: ignore[union-attr]
            table[label][name] = {}
            for value, objectives in sorted(by_value.items()):
                finite = [v for v in objectives if math.isfinite(v)]
                best = min(finite, default=None)
                table[label][name][value] = {"evaluations": len(objectives), "best": best}
                lines.append(
                    f"| {label} | {name} | `{value}` | {len(objectives)} | {'-' if best is None else f'{best:.4f}'} |"
                )
    best_points = {}
    lines.append("\nBest point of each run:\n")
    for run in runs:
        if run.best is not None and run.best.hparams:
            best_points[run.folder.name] = {"objective": run.best.objective, "hparams": run.best.hparams}
            lines.append(f"- {run.label}, {run.folder.name}: {run.best.objective:.4f} {json.dumps(run.best.hparams)}")
    return {"by_value": table, "best_points": best_points}, "\n".join(lines) + "\n"


def recheck(
    runs: list[Run],
    experiment: str,
    overrides: tuple[str, ...],
    seeds: list[int],
    top: int,
    work: Path,
    jobs: int,
) -> tuple[dict[str, Any], str]:
    """The ``top`` best distinct points of all runs, evaluated again with other training seeds (``training.seed``:
    the adapter's initialisation and the order of the examples): whether the gaps between the winners are larger
    than what the seed alone moves. One ``lora-blackbox eval`` call per seed evaluates all the points (a block:
    one model load, a fresh adapter per point); ``jobs`` calls at once."""
    best: dict[str, Evaluation] = {}
    for run in runs:
        for e in run.evaluations:
            if e.point is not None and math.isfinite(e.objective):
                key = format_point(e.point)
                if key not in best or e.objective < best[key].objective:
                    best[key] = e
    chosen = sorted(best.items(), key=lambda item: item[1].objective)[:top]
    points = work / "recheck-points.txt"
    points.write_text("".join(f"{key}\n" for key, _ in chosen))

    def evaluate(seed: int) -> dict[str, float]:
        folder = work / f"recheck-seed{seed}"
        done = load_run(str(folder)) if (folder / "records.jsonl").is_file() else None
        if done is None or {format_point(e.point or ()) for e in done.evaluations} != {key for key, _ in chosen}:
            shutil.rmtree(folder, ignore_errors=True)
            settings = (*overrides, f"training.seed={seed}", f"records.dir={folder.resolve()}")
            subprocess.run([*blackbox(), "eval", "-e", experiment, *_sets(settings), str(points)], check=True)
            done = load_run(str(folder))
        return {format_point(e.point or ()): e.objective for e in done.evaluations}

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        by_seed = dict(zip(seeds, pool.map(evaluate, seeds), strict=True))
    study_seed = load_experiment(experiment, overrides).training.seed
    rows = []
    lines = [
        "| point | decoded | study (seed " + ", ".join(map(str, [study_seed, *seeds])) + ") | mean | spread |",
        "|---|---|---|---|---|",
    ]
    for key, e in chosen:
        values = [e.objective, *(by_seed[seed][key] for seed in seeds)]
        rows.append({"point": key, "hparams": e.hparams, "objectives": values, "mean": statistics.fmean(values)})
        lines.append(
            f"| `{key}` | `{json.dumps(_rounded(e.hparams))}` | "
            + ", ".join(f"{v:.4f}" for v in values)
            + f" | {statistics.fmean(values):.4f} | {max(values) - min(values):.4f} |"
        )
    return {"training_seeds": [study_seed, *seeds], "points": rows}, "\n".join(lines) + "\n"


def _rounded(hparams: dict[str, Any] | None) -> dict[str, Any]:
    """The decoded values of a point, reals rounded for a table."""
    return {k: round(v, 6) if isinstance(v, float) else v for k, v in (hparams or {}).items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", default="demo", help="a shipped experiment or a file (demo, demo_variants)")
    parser.add_argument("--budget", type=int, default=20)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--solvers", default=",".join(SOLVERS))
    parser.add_argument("--work", type=Path, default=Path("runs/compare-solvers"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/solvers"))
    parser.add_argument(
        "--jobs", type=int, default=1, help="runs (solver x seed) at once; each evaluation uses --threads threads"
    )
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads per evaluation (OMP_NUM_THREADS). 1: on a shared 2-core machine two threads "
        "fighting other jobs trained 6x slower; one count for all runs keeps objectives comparable, since "
        "the thread count changes the order of floating-point sums.",
    )
    parser.add_argument(
        "--recheck-top",
        type=int,
        default=0,
        help="then evaluate the best N distinct points of all runs again with the training seeds of --recheck-seeds",
    )
    parser.add_argument("--recheck-seeds", default="1,2", help="training seeds (training.seed) of the recheck")
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # inherited by every lora-blackbox eval
    seeds = [int(s) for s in args.seeds.split(",")]
    solvers = args.solvers.split(",")
    overrides = (*(CPU_SETTINGS if args.experiment == "demo" else ()), *args.overrides)
    args.work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()

    def run(solver: str, seed: int) -> str:
        t0 = time.monotonic()
        if solver == "nomad":
            folder = run_nomad(args.work, args.experiment, seed, args.budget, overrides)
        else:
            folder = run_optuna(args.work, args.experiment, solver, seed, args.budget, overrides)
        print(f"{SOLVERS[solver]} seed {seed}: {time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)
        return f"{SOLVERS[solver]}={folder}"

    # Seed by seed: an early stop leaves complete seeds of every solver. Runs are independent processes.
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(run, solver, seed) for seed in seeds for solver in solvers]
        specs = [future.result() for future in futures]
    files = write_report(specs, args.out, top=15)
    summary = json.loads(files["summary"].read_text())
    rows, markdown = table(summary, args.budget)
    comparison = {
        "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": describe(("lora-blackbox", "torch", "transformers", "peft", "optuna", "PyNomadBBO")),
        "experiment": args.experiment,
        "overrides": list(overrides),
        "budget": args.budget,
        "seeds": seeds,
        "torch_threads": args.threads,
        "jobs": args.jobs,
        "wall_seconds": time.monotonic() - started,
        "table": rows,
    }
    runs = [load_run(spec) for spec in specs]
    settings, settings_markdown = settings_table(runs)
    if settings["by_value"]:
        comparison["settings"] = settings
        (args.out / "settings.md").write_text(settings_markdown)
    if args.recheck_top:
        recheck_seeds = [int(s) for s in args.recheck_seeds.split(",")]
        comparison["recheck"], recheck_markdown = recheck(
            runs, args.experiment, overrides, recheck_seeds, args.recheck_top, args.work, args.jobs
        )
        (args.out / "recheck.md").write_text(recheck_markdown)
        settings_markdown += "\n" + recheck_markdown
    (args.out / "comparison.json").write_text(json.dumps(comparison, indent=1) + "\n")
    (args.out / "comparison.md").write_text(markdown)
    print(markdown + ("\n" + settings_markdown if settings["by_value"] else ""))


if __name__ == "__main__":
    main()
