"""The replay benchmark (issue 29): a table of real evaluations on a grid, and methods compared over many seeds on it.

    python benchmarks/replay.py build   [--experiment efficiency] [--work runs/replay] [--table TABLE.csv]
                                        [--workers 2] [--threads 1]
    python benchmarks/replay.py compare [--table TABLE.csv] [--budgets 20,50] [--seeds 30] [--methods ...]
                                        [--work runs/replay-compare] [--out benchmarks/results/replay] [--jobs 2]
    python benchmarks/replay.py report  [--table TABLE.csv] [--out benchmarks/results/replay]
    python benchmarks/replay.py confirm [--budget 20] [--seed 0] [--methods ...] [--work runs/replay-confirm]
    python benchmarks/replay.py test    [--test-rows 1000] [--work runs/replay-test]

``build`` evaluates every point of the experiment's grid for real (one ``lora-blackbox eval`` call per point, as
NOMAD's binary calls its blackbox, so that each row holds its own start-up and loading), with a learning curve at
``CHECKPOINTS``; then the untuned settings a practitioner would use (``BASELINES``: off the grid, rows of their
own) and the grid's best points with other training seeds (``SEED_ROWS``: how much a training seed alone moves a
value). It is resumable: a point with a finished record in ``--work`` is not evaluated again, so the same command
after an interruption goes on where it stopped (and a GPU builds a larger grid with the same command). At the end
it writes the table (``blackbox.replay.table``: one CSV with its machine, versions and dates).

``compare`` replays every method of ``replay_methods.METHODS`` at each budget with many solver seeds, through the
real commands (NOMAD with the ``nomad`` binary as NOMAD_EXE where it is set, else PyNomadBBO; Optuna with one eval
subprocess per trial), writes every run's evaluations to ``traces.csv`` and reports: ``comparison.md`` and
``.json`` (final bests, regret to the grid's optimum, compute to come within 1% and 0.5% of it with bootstrap 95%
intervals over seeds, the stopping methods against their plain runs, the variance decomposition of the grid) and
``anytime_b<budget>.png``. ``report`` draws them again from the committed ``traces.csv`` and table alone.

``confirm`` runs methods for real (no replay: every evaluation trains) at one budget and seed, and sets each beside
its replay (the same method, budget and seed in the comparison's work folder): the points asked, the values got,
and the wall-clock compute against the simulated clock (``confirm.md``, ``confirm.json``).

``test`` trains the points the runs chose, and the untuned settings, again with the loss of the held-out test split
that no solver saw (``replay_test_split``: ``test_chosen.md``, ``test_chosen.json``); with ``--point``, the named
grid points only (``test.md``, ``test.json``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from compare_solvers import blackbox
from machine import describe

from blackbox.core.experiment import load_experiment, resolve_experiment
from blackbox.core.point import format_point
from blackbox.core.record import EvalRecord, RecordStore
from blackbox.core.space import HyperParams, SearchSpace
from blackbox.replay.grid import grid_points
from blackbox.replay.table import read_table, write_table

# The learning curve of every row: a study replays any subset of these checkpoints (fractions of the training).
CHECKPOINTS = (0.125, 0.25, 0.5, 0.75)
# What a user picks without tuning. peft's LoraConfig has no learning rate: its defaults get the HF Trainer's
# (TrainingArguments.learning_rate = 5e-5). The recipe's dropout is the common 0.05.
BASELINES = {
    "peft-defaults": {"lora_r": 8, "lora_alpha": 8, "lora_dropout": 0.0, "learning_rate": 5e-5},
    "recipe": {"lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.05, "learning_rate": 2e-4},
}
SEED_ROWS = {"training_seeds": (1, 2), "best_points": 3}  # the grid's 3 best points and the baselines, seeds 1 and 2


@dataclass(frozen=True)
class Job:
    """One evaluation of the build: a point line of an experiment with its overrides, into a records folder."""

    kind: str  # grid | baseline | seed
    name: str  # a baseline's name, "seed=N" for a seed row, "" for the grid
    experiment: str
    sets: tuple[str, ...]
    line: str
    folder: Path

    def done(self) -> bool:
        return self.record() is not None

    def record(self) -> EvalRecord | None:
        """Its finished record (counted, of the same experiment), or None."""
        fingerprint = load_experiment(self.experiment, list(self.sets)).fingerprint()
        store = RecordStore(self.folder)
        point = tuple(float(x) for x in self.line.split())
        return store.finished(fingerprint).get(point) if store.exists() else None


def run(job: Job, log: Path, threads: int) -> float:
    """Evaluate one job in a ``lora-blackbox eval`` call of its own; returns its wall seconds."""
    job.folder.mkdir(parents=True, exist_ok=True)
    points = job.folder / f"point-{'-'.join(job.line.split())}-{job.name or 'grid'}.txt"
    points.write_text(job.line + "\n")
    sets = [word for item in job.sets for word in ("--set", item)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    started = time.monotonic()
    with log.open("a") as err:
        subprocess.run(
            [*blackbox(), "-q", "eval", "-e", job.experiment, *sets, str(points)],
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=env,
            check=True,
        )
    return time.monotonic() - started


def run_all(jobs: Sequence[Job], *, workers: int, threads: int, log: Path) -> None:
    """Evaluate the jobs without a finished record, ``workers`` at a time, saying each one's time on stderr."""
    todo = [job for job in jobs if not job.done()]
    print(f"replay build: {len(jobs) - len(todo)} of {len(jobs)} done, {len(todo)} to go", file=sys.stderr)

    def one(index_job: tuple[int, Job]) -> None:
        index, job = index_job
        seconds = run(job, log, threads)
        print(
            f"  {index + 1}/{len(todo)} {job.kind} {job.name or ''} ({job.line}): {seconds:.0f} s",
            file=sys.stderr,
            flush=True,
        )

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(one, enumerate(todo)))


def curve_sets(folder: Path) -> tuple[str, ...]:
    return (f"validation.checkpoints={list(CHECKPOINTS)}", f"records.dir={folder}")


def grid_jobs(experiment: str, work: Path) -> list[Job]:
    """Every grid point, in a seeded random order: an interrupted build holds a random part of the grid, and the
    machine's load while it ran spreads over the grid rather than along one variable."""
    sets = curve_sets(work / "grid")
    space = SearchSpace.from_experiment(load_experiment(experiment, list(sets)))
    points = list(grid_points(space))
    order = np.random.default_rng(0).permutation(len(points))
    return [Job("grid", "", experiment, sets, format_point(points[i]), work / "grid") for i in order]


def off_grid_experiment(experiment: str, work: Path) -> str:
    """The experiment's file without its granularities: the untuned settings lie off the grid (lr 2e-4, 5e-5)."""
    text, _ = resolve_experiment(experiment)
    lines = [line for line in text.splitlines() if not line.startswith("granularity")]
    path = work / f"{Path(experiment).stem}-off-grid.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def baseline_jobs(experiment: str, work: Path, *, seed: int = 0) -> list[Job]:
    variant = off_grid_experiment(experiment, work)
    folder = work / "baselines"
    jobs = []
    for name, hparams in BASELINES.items():
        sets = (*curve_sets(folder), f"hyperparameters.lora_dropout={hparams['lora_dropout']!r}")
        if seed:
            sets = (*sets, f"training.seed={seed}")
        space = SearchSpace.from_experiment(load_experiment(variant, list(sets)))
        point = space.encode(
            HyperParams(
                lora_r=int(hparams["lora_r"]),
                lora_alpha=hparams["lora_alpha"],
                lora_dropout=hparams["lora_dropout"],
                learning_rate=hparams["learning_rate"],
            )
        )
        kind, label = ("seed", f"{name} seed={seed}") if seed else ("baseline", name)
        jobs.append(Job(kind, label, variant, sets, format_point(point), folder))
    return jobs


def seed_jobs(experiment: str, work: Path, grid: Sequence[Job]) -> list[Job]:
    """The grid's best points and the baselines again, with other training seeds (once the grid is done)."""
    records = [(job, job.record()) for job in grid]
    finished = sorted(
        ((r.metrics["validation_loss"], job) for job, r in records if r is not None and "validation_loss" in r.metrics),
        key=lambda pair: pair[0],
    )
    best = [job for _, job in finished[: SEED_ROWS["best_points"]]]
    jobs = []
    for seed in SEED_ROWS["training_seeds"]:
        for job in best:
            sets = (*curve_sets(work / "seeds"), f"training.seed={seed}")
            jobs.append(Job("seed", f"seed={seed}", experiment, sets, job.line, work / "seeds"))
        jobs += baseline_jobs(experiment, work, seed=seed)
    return jobs


def remeasure(jobs: Sequence[Job], *, factor: float, threads: int, log: Path) -> list[dict[str, object]]:
    """Evaluate again the jobs whose training took more than ``factor`` times the median training time of all rows:
    measured while the machine was oversubscribed (every row trains the same steps on the same tokens, so their
    training times agree but for the load). The same training gives the same values; the newest record of a point is
    the one the table takes (``RecordStore.finished``). Returns what was measured again, with both times."""
    records = [(job, job.record()) for job in jobs]
    times = [r.timings["train_s"] for _, r in records if r is not None and "train_s" in r.timings]
    typical = statistics.median(times) if times else math.inf
    again = []
    for job, record in records:
        if record is None or record.timings.get("train_s", 0.0) <= factor * typical:
            continue
        run(job, log, threads)
        newer = job.record()
        assert newer is not None
        again.append(
            {
                "point": job.line,
                "kind": job.kind,
                "name": job.name,
                "first_train_s": record.timings["train_s"],
                "train_s": newer.timings.get("train_s"),
                "median_train_s": typical,
                "same_value": newer.metrics.get("validation_loss") == record.metrics.get("validation_loss"),
            }
        )
        print(f"  measured again: {job.kind} {job.name} ({job.line})", file=sys.stderr, flush=True)
    return again


def build(args: argparse.Namespace) -> None:
    work: Path = args.work.resolve()
    log = work / "build.log"
    work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    grid = grid_jobs(args.experiment, work)
    baselines = baseline_jobs(args.experiment, work)
    run_all([*baselines, *grid], workers=args.workers, threads=args.threads, log=log)
    seeds = seed_jobs(args.experiment, work, grid)
    run_all(seeds, workers=args.workers, threads=args.threads, log=log)
    again = remeasure([*grid, *baselines, *seeds], factor=args.remeasure, threads=args.threads, log=log)
    rows = [(job.kind, job.name, job.sets, job.record()) for job in (*grid, *baselines, *seeds)]
    machine = describe(("lora-blackbox", "torch", "transformers", "peft"))
    write_table(
        args.table,
        experiment=load_experiment(args.experiment, list(curve_sets(work / "grid"))),
        rows=[(kind, name, sets, record) for kind, name, sets, record in rows if record is not None],
        about={
            "command": " ".join(["python benchmarks/replay.py", *sys.argv[1:]]),
            "machine": machine,
            "workers": args.workers,
            "torch_threads": args.threads,
            "measured_again": again,
        },
    )
    print(f"replay build: wrote {args.table} ({time.monotonic() - started:.0f} s)", file=sys.stderr)
    print(json.dumps({"table": str(args.table), "rows": len(rows)}))


def compare(args: argparse.Namespace) -> None:
    from replay_compare import report, run_all, write_traces
    from replay_methods import ALL

    table = read_table(args.table)
    methods = [ALL[name] for name in args.methods.split(",")]
    budgets = [int(b) for b in args.budgets.split(",")]
    started = time.monotonic()
    traces = run_all(
        table,
        experiment=args.experiment,
        methods=methods,
        budgets=budgets,
        seeds=list(range(args.first_seed, args.first_seed + args.seeds)),
        work=args.work.resolve(),
        jobs=args.jobs,
        sets=args.overrides,
    )
    write_traces(args.out / "traces.csv", traces)
    print(f"replay compare: {len(traces)} runs replayed in {time.monotonic() - started:.0f} s", file=sys.stderr)
    report(table, traces, args.out)
    print((args.out / "comparison.md").read_text())


def confirm(args: argparse.Namespace) -> None:
    from replay_compare import CONFIRM_HEAD, confirmation, trace_of
    from replay_methods import ALL, nomad_env, run_method

    table = read_table(args.table)
    rows = []
    for name in args.methods.split(","):
        method = ALL[name]
        real_folder = args.work.resolve() / f"b{args.budget}" / name / f"s{args.seed}"
        started = time.monotonic()
        run_method(
            method,
            experiment=args.experiment,
            sets=[],
            budget=args.budget,
            seed=args.seed,
            folder=real_folder,
            env=nomad_env(),
        )
        print(f"replay confirm: {name} ran for real ({time.monotonic() - started:.0f} s)", file=sys.stderr)
        replay_folder = args.replays.resolve() / f"b{args.budget}" / name / f"s{args.seed}"
        replayed = trace_of(table, name, args.budget, args.seed, replay_folder)
        rows.append(confirmation(method, trace_of(table, name, args.budget, args.seed, real_folder), replayed))
    text = "\n".join([CONFIRM_HEAD, *(line for row in rows for line in row.pop("lines"))])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "confirm.json").write_text(json.dumps(rows, indent=1) + "\n")
    (args.out / "confirm.md").write_text(text + "\n")
    print(text)


def held_out(args: argparse.Namespace) -> None:
    from replay_compare import read_traces
    from replay_test_split import test_points, test_split

    table = read_table(args.table)
    if args.points:
        lines, labels = zip(*(item.split("=", 1)[::-1] for item in args.points), strict=True)
        result, text = test_points(
            table, lines, labels, experiment=args.experiment, work=args.work.resolve(), test_rows=args.test_rows
        )
        name = "test"
    else:
        traces = read_traces(args.out / "traces.csv")
        result, text = test_split(
            table, traces, experiment=args.experiment, work=args.work.resolve(), test_rows=args.test_rows
        )
        name = "test_chosen"
    (args.out / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / f"{name}.md").write_text(text)
    print(text)


def report_again(args: argparse.Namespace) -> None:
    from replay_compare import read_traces, report

    report(read_table(args.table), read_traces(args.out / "traces.csv"), args.out)
    print((args.out / "comparison.md").read_text())


def main() -> None:
    from replay_methods import ALL, METHODS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    build_parser = commands.add_parser("build", help="evaluate the grid for real and write the table")
    build_parser.add_argument("--experiment", default="efficiency")
    build_parser.add_argument("--work", type=Path, default=Path("runs/replay"))
    build_parser.add_argument("--table", type=Path, default=Path("benchmarks/results/replay/efficiency.csv"))
    build_parser.add_argument("--workers", type=int, default=2, help="evaluations at once (one per core)")
    build_parser.add_argument("--threads", type=int, default=1, help="torch threads per evaluation")
    build_parser.add_argument(
        "--remeasure", type=float, default=1.5, help="evaluate again a row whose training took over this x the median"
    )
    compare_parser = commands.add_parser("compare", help="replay every method over many seeds, then report")
    compare_parser.add_argument("--experiment", default="efficiency")
    compare_parser.add_argument("--table", type=Path, default=Path("benchmarks/results/replay/efficiency.csv"))
    compare_parser.add_argument("--budgets", default="20,50")
    compare_parser.add_argument("--seeds", type=int, default=30, help="solver seeds per method")
    compare_parser.add_argument("--first-seed", type=int, default=0, help="the seeds are FIRST .. FIRST+N-1")
    compare_parser.add_argument("--methods", default=",".join(METHODS), help=f"of {', '.join(ALL)}")
    compare_parser.add_argument("--work", type=Path, default=Path("runs/replay-compare"))
    compare_parser.add_argument("--out", type=Path, default=Path("benchmarks/results/replay"))
    compare_parser.add_argument("--jobs", type=int, default=2, help="runs at once")
    compare_parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    report_parser = commands.add_parser("report", help="the tables and figures again, from traces.csv")
    report_parser.add_argument("--table", type=Path, default=Path("benchmarks/results/replay/efficiency.csv"))
    report_parser.add_argument("--out", type=Path, default=Path("benchmarks/results/replay"))
    confirm_parser = commands.add_parser("confirm", help="methods run for real, beside their replays")
    confirm_parser.add_argument("--experiment", default="efficiency")
    confirm_parser.add_argument("--table", type=Path, default=Path("benchmarks/results/replay/efficiency.csv"))
    confirm_parser.add_argument("--budget", type=int, default=20)
    confirm_parser.add_argument("--seed", type=int, default=0)
    confirm_parser.add_argument("--methods", default=",".join(METHODS), help=f"of {', '.join(ALL)}")
    confirm_parser.add_argument("--work", type=Path, default=Path("runs/replay-confirm"))
    confirm_parser.add_argument("--replays", type=Path, default=Path("runs/replay-compare"), help="compare's --work")
    confirm_parser.add_argument("--out", type=Path, default=Path("benchmarks/results/replay"))
    test_parser = commands.add_parser("test", help="the chosen points and the untuned settings on the test split")
    test_parser.add_argument("--experiment", default="efficiency")
    test_parser.add_argument("--table", type=Path, default=Path("benchmarks/results/replay/efficiency.csv"))
    test_parser.add_argument("--test-rows", type=int, default=1000, help="examples of the test split")
    test_parser.add_argument("--work", type=Path, default=Path("runs/replay-test"))
    test_parser.add_argument("--out", type=Path, default=Path("benchmarks/results/replay"))
    test_parser.add_argument(
        "--point",
        dest="points",
        action="append",
        default=[],
        metavar="LABEL=LINE",
        help="only these grid points (and the untuned settings), e.g. 'optimum=5 2 -2.5'; default: every chosen one",
    )
    args = parser.parse_args()
    if args.command == "confirm":
        confirm(args)
    elif args.command == "test":
        held_out(args)
    elif args.command == "build":
        build(args)
    elif args.command == "compare":
        compare(args)
    else:
        report_again(args)


if __name__ == "__main__":
    main()
