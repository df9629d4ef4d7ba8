"""NOMAD's DMultiMads against Optuna's NSGA-II and multi-objective TPE on a study of several objectives (issue 32):
the hypervolume after 10, 20 and 40 evaluations, mean and 95% interval over the seeds, and the seconds each took.

    python benchmarks/pareto.py [--experiment demo_pareto] [--set KEY=VALUE ...] [--budget 40] [--seeds 0,1,2,3,4]
                                [--solvers nomad,nsga2,tpe] [--checkpoints 10,20,40] [--work runs/pareto-bench]
                                [--out benchmarks/results/pareto] [--jobs 1]

Every evaluation is a ``lora-blackbox eval`` subprocess for every solver (NOMAD's BB_EXE, Optuna's trials), so the
experiment and its ``--set`` items decide what an evaluation is: a real training, or a row of a replay table
(``--set replay.table=PATH``, answered in milliseconds with the metrics the real evaluation measured). One
reference point serves every run: the worst value of each objective over all of them plus a tenth of the range, and
the hypervolume is a share of the box between it and the ideal point (``blackbox.reports.pareto``): comparable
between solvers and seeds, stated in the table. Seconds: the wall clock of each run on this machine, and the
compute its evaluations recorded (``timings.total_s`` and ``startup_s``: measured, or the replay table's).

Writes ``pareto.json``, ``pareto.md`` (the table) and ``hypervolume.png`` (mean and interval against evaluations)
into ``--out``, and every run's records (``records/<solver>-s<seed>.jsonl``). Each run is resumable: a run that
finished (``<work>/<run>.seconds.json``) is read, not run again; an interrupted one resumes.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from compare_solvers import run_nomad, run_optuna
from machine import describe

from blackbox.core.experiment import load_experiment
from blackbox.reports.load import load_run
from blackbox.reports.pareto import frame_of, hypervolume_curve, objectives_of

SOLVERS = {"nomad": "NOMAD DMultiMads", "nsga2": "Optuna NSGA-II", "tpe": "Optuna multi-objective TPE"}


@dataclass(frozen=True)
class Interval:
    """A mean over seeds with its 95% interval (Student's t; none for one seed)."""

    mean: float
    low: float | None
    high: float | None
    n: int

    def text(self) -> str:
        if self.low is None or self.high is None:
            return f"{self.mean:.3f} (1 seed)"
        return f"{self.mean:.3f} [{self.low:.3f}, {self.high:.3f}]"


def interval(values: list[float]) -> Interval:
    """The mean of ``values`` and its 95% t-interval."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return Interval(mean, None, None, len(values))
    from scipy.stats import t

    half = float(t.ppf(0.975, len(values) - 1)) * statistics.stdev(values) / math.sqrt(len(values))
    return Interval(mean, mean - half, mean + half, len(values))


def run(
    solver: str,
    seed: int,
    *,
    experiment: str,
    overrides: tuple[str, ...],
    budget: int,
    work: Path,
    in_process: bool = False,
) -> float:
    """One study (resumed when it was interrupted); returns its wall-clock seconds, measured once."""
    name = f"{solver}-s{seed}"
    timing = work / f"{name}.seconds.json"
    if timing.is_file():
        return float(json.loads(timing.read_text())["seconds"])
    started = time.monotonic()
    if solver == "nomad":
        run_nomad(work, experiment, seed, budget, overrides)
    else:
        run_optuna(work, experiment, solver, seed, budget, overrides, options=("--in-process",) if in_process else ())
    seconds = time.monotonic() - started
    timing.write_text(json.dumps({"seconds": seconds}))
    return seconds


def compare(
    folders: dict[tuple[str, int], Path], seconds: dict[tuple[str, int], float], checkpoints: list[int]
) -> dict[str, Any]:
    """The hypervolume of every run after each evaluation (one frame for all), and per solver at the checkpoints:
    mean and interval over the seeds; the runs' seconds."""
    runs = {key: load_run(f"{key[0]}={folder}") for key, folder in folders.items()}
    objectives = objectives_of(list(runs.values()))
    if len(objectives) < 2:
        raise SystemExit(f"pareto.py compares studies of several objectives; this one has {len(objectives)}")
    frame = frame_of(list(runs.values()))
    if frame is None:
        raise SystemExit("no run has a finished, feasible evaluation: no hypervolume")
    curves = {key: hypervolume_curve(run, frame) for key, run in runs.items()}
    solvers = []
    for solver in dict.fromkeys(key[0] for key in runs):
        keys = [key for key in runs if key[0] == solver]
        row: dict[str, Any] = {"solver": solver, "label": SOLVERS[solver], "seeds": [key[1] for key in keys]}
        for checkpoint in checkpoints:
            values = [curves[key][checkpoint - 1] for key in keys if len(curves[key]) >= checkpoint]
            row[f"after_{checkpoint}"] = {"values": values, **(interval(values).__dict__ if values else {})}
        walls = [seconds[key] for key in keys]
        computes = [sum(e.hours for e in runs[key].evaluations) * 3600 for key in keys]
        row["wall_seconds"] = {"values": walls, **interval(walls).__dict__}
        row["compute_seconds"] = {"values": computes, **interval(computes).__dict__}
        solvers.append(row)
    return {
        "objectives": [{"metric": o.metric, "maximised": o.maximised} for o in objectives],
        "frame": {"ideal": frame.ideal, "reference": frame.reference},
        "checkpoints": checkpoints,
        "solvers": solvers,
        "curves": {f"{solver}-s{seed}": curve for (solver, seed), curve in curves.items()},
    }


def table(result: dict[str, Any]) -> str:
    """The comparison as a Markdown table."""
    checkpoints = result["checkpoints"]
    head = " | ".join(f"HV after {c}" for c in checkpoints)
    lines = [
        f"| solver | seeds | {head} | wall-clock s per run | compute s per run |",
        "|---|---|" + "---|" * len(checkpoints) + "---|---|",
    ]
    for row in result["solvers"]:
        cells = []
        for c in checkpoints:
            cell = row[f"after_{c}"]
            cells.append(Interval(cell["mean"], cell["low"], cell["high"], cell["n"]).text() if "mean" in cell else "-")
        seconds = [f"{row[k]['mean']:.0f}" for k in ("wall_seconds", "compute_seconds")]
        lines.append(f"| {row['label']} | {len(row['seeds'])} | {' | '.join([*cells, *seconds])} |")
    objectives = ", ".join(o["metric"] + (" (maximised)" if o["maximised"] else "") for o in result["objectives"])
    frame = result["frame"]
    lines.append(
        f"\nObjectives: {objectives}. Hypervolume: share of the box between the ideal point {_point(frame['ideal'])} "
        f"and the reference point {_point(frame['reference'])} (the solvers' values, a maximised score negated), "
        "one for every run; mean [95% t-interval] over the seeds."
    )
    return "\n".join(lines) + "\n"


def figure(result: dict[str, Any], out: Path) -> None:
    """Hypervolume against evaluations: each solver's mean over the seeds and its 95% interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure_, axes = plt.subplots(figsize=(8, 4.5))
    for row in result["solvers"]:
        curves = [result["curves"][f"{row['solver']}-s{seed}"] for seed in row["seeds"]]
        length = min(len(c) for c in curves)
        counts = list(range(1, length + 1))
        stats = [interval([c[i] for c in curves]) for i in range(length)]
        (line,) = axes.plot(counts, [s.mean for s in stats], label=f"{row['label']} ({len(curves)} seeds)")
        if all(s.low is not None for s in stats):
            lows = [s.low for s in stats]
            highs = [s.high for s in stats]
            axes.fill_between(counts, lows, highs, color=line.get_color(), alpha=0.15)  # type: ignore[arg-type]
    axes.set_xlabel("evaluations")
    axes.set_ylabel("hypervolume (share of the box)")
    axes.set_ylim(0, 1)
    axes.grid(alpha=0.3)
    axes.legend()
    axes.set_title("Hypervolume: mean and 95% interval over the seeds")
    figure_.tight_layout()
    figure_.savefig(out / "hypervolume.png", dpi=110)
    plt.close(figure_)


def _point(values: list[float]) -> str:
    return "(" + ", ".join(f"{v:.6g}" for v in values) + ")"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment", default="demo_pareto")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--budget", type=int, default=40)
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--solvers", default=",".join(SOLVERS))
    parser.add_argument("--checkpoints", default="10,20,40")
    parser.add_argument("--work", type=Path, default=Path("runs/pareto-bench"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/pareto"))
    parser.add_argument("--jobs", type=int, default=1, help="runs at once")
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="Optuna's trials in its own process (a replay: milliseconds a trial; NOMAD still calls a process a point)",
    )
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    solvers = args.solvers.split(",")
    unknown = [s for s in solvers if s not in SOLVERS]
    if unknown:
        parser.error(f"unknown solvers {unknown}; known: {', '.join(SOLVERS)}")
    checkpoints = [int(c) for c in args.checkpoints.split(",") if int(c) <= args.budget]
    overrides = tuple(args.overrides)
    load_experiment(args.experiment, overrides)  # a bad experiment or --set fails here, before any run
    work, out = args.work.resolve(), args.out
    work.mkdir(parents=True, exist_ok=True)
    keys = [(solver, seed) for solver in solvers for seed in seeds]

    def one(key: tuple[str, int]) -> float:
        return run(
            key[0],
            key[1],
            experiment=args.experiment,
            overrides=overrides,
            budget=args.budget,
            work=work,
            in_process=args.in_process,
        )

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        seconds = dict(zip(keys, pool.map(one, keys), strict=True))
    result = compare({key: work / f"{key[0]}-s{key[1]}" for key in keys}, seconds, checkpoints)
    result |= {
        "command": " ".join(["python benchmarks/pareto.py", *argv]),
        "experiment": args.experiment,
        "overrides": list(overrides),
        "budget": args.budget,
        "jobs": args.jobs,
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "machine": describe(("torch", "optuna", "PyNomadBBO")),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "records").mkdir(exist_ok=True)
    for solver, seed in keys:
        shutil.copyfile(work / f"{solver}-s{seed}" / "records.jsonl", out / "records" / f"{solver}-s{seed}.jsonl")
    (out / "pareto.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "pareto.md").write_text(table(result))
    figure(result, out)
    sys.stdout.write(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
