"""Does training matter in the efficiency experiment? A few points, each trained with several training seeds.

Before a comparison of solvers means anything, the points it chooses between must differ by more than the training
seed moves one point (issue 22: "enough steps that learning rate and rank change the held-out loss well beyond seed
noise"). This evaluates a learning-rate sweep, a rank sweep and the untuned settings of ``benchmarks/efficiency.py``
with each training seed (``training.seed``: the adapter's initialisation and the order of the examples), one
``lora-blackbox eval`` call per seed with all points as a block, and tabulates per point the mean and the spread
over the seeds, and the seconds of an evaluation (one torch thread).

    python benchmarks/efficiency_sizing.py [--experiment efficiency] [--seeds 0,1] [--set KEY=VALUE ...]
                                           [--work runs/efficiency-sizing] [--out benchmarks/results/efficiency]

Resumable: a seed whose records hold every point is not evaluated again.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from machine import describe

from blackbox.core.experiment import load_experiment
from blackbox.core.point import format_point
from blackbox.core.record import EvalRecord, RecordStore

# (label, point in the experiment's coordinates: log2 r, alpha / r, log10 lr). The sweeps cross at r 8, alpha 16.
POINTS: tuple[tuple[str, tuple[float, ...]], ...] = (
    ("lr 1e-4", (3, 2, -4)),
    ("lr 1e-3", (3, 2, -3)),
    ("lr 3.2e-3", (3, 2, -2.5)),
    ("lr 1e-2", (3, 2, -2)),
    ("lr 3.2e-2", (3, 2, -1.5)),
    ("lr 1e-1", (3, 2, -1)),
    ("r 1, lr 3.2e-3", (0, 2, -2.5)),
    ("r 64, lr 3.2e-3", (6, 2, -2.5)),
    ("alpha = r, lr 3.2e-3", (3, 1, -2.5)),
    ("alpha = 8 r, lr 3.2e-3", (3, 8, -2.5)),
)


def blackbox() -> list[str]:
    script = Path(sys.executable).parent / "lora-blackbox"
    return [str(script)] if script.exists() else [sys.executable, "-m", "blackbox.cli"]


def evaluate_seed(work: Path, experiment: str, seed: int, overrides: list[str]) -> dict[str, EvalRecord]:
    """The records of every point trained with ``seed``, by point."""
    folder = (work / f"seed{seed}").resolve()
    settings = [*overrides, f"training.seed={seed}", f"records.dir={folder}"]
    fingerprint = load_experiment(experiment, settings).fingerprint()
    wanted = {format_point(point) for _, point in POINTS}
    store = RecordStore(folder)

    def finished() -> dict[str, EvalRecord]:
        """The finished evaluations of this experiment (not of an earlier version of it), by point."""
        records = store.records() if store.exists() else []
        return {format_point(r.point or ()): r for r in records if r.fingerprint == fingerprint and r.counted}

    done = finished()
    missing = [point for _, point in POINTS if format_point(point) not in done]
    if missing:
        points = work / f"points-seed{seed}.txt"
        points.write_text("".join(format_point(p) + "\n" for p in missing))
        command = [*blackbox(), "eval", "-e", experiment, *[w for s in settings for w in ("--set", s)], str(points)]
        with (work / f"seed{seed}.stdout.txt").open("a") as out:
            subprocess.run(command, stdout=out, check=True)
        done = finished()
    return {key: done[key] for key in wanted}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", default="efficiency")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--work", type=Path, default=Path("runs/efficiency-sizing"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/efficiency"))
    parser.add_argument("--threads", type=int, default=1, help="torch threads per evaluation (OMP_NUM_THREADS)")
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    args.work.mkdir(parents=True, exist_ok=True)
    by_seed = {seed: evaluate_seed(args.work, args.experiment, seed, args.overrides) for seed in seeds}
    rows = []
    lines = [
        "| point | r, alpha, lr | " + ", ".join(f"seed {s}" for s in seeds) + " | mean | spread | train tokens "
        "| seconds (train + validation) |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, point in POINTS:
        records = [by_seed[seed][format_point(point)] for seed in seeds]
        losses = [float(r.metrics.get("validation_loss", float("nan"))) for r in records]
        seconds = [r.timings.get("train_s", 0.0) + r.timings.get("validation_s", 0.0) for r in records]
        hparams = records[0].hparams or {}
        row = {
            "label": label,
            "point": list(point),
            "hparams": hparams,
            "statuses": [r.status.value for r in records],
            "validation_loss": losses,
            "mean": statistics.fmean(losses),
            "spread": max(losses) - min(losses),
            "train_tokens": records[0].metrics.get("train_tokens"),
            "seconds": seconds,
        }
        rows.append(row)
        lines.append(
            f"| {label} | {hparams.get('lora_r')}, {hparams.get('lora_alpha'):g}, {hparams.get('learning_rate'):.2g} | "
            + ", ".join(f"{v:.4f}" for v in losses)
            + f" | {row['mean']:.4f} | {row['spread']:.4f} | {row['train_tokens']} | "
            + ", ".join(f"{s:.0f}" for s in seconds)
            + " |"
        )
    result = {
        "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": describe(("lora-blackbox", "torch", "transformers", "peft")),
        "experiment": args.experiment,
        "overrides": args.overrides,
        "torch_threads": args.threads,
        "seeds": seeds,
        "points": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sizing.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / "sizing.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
