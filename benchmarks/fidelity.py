"""How well a low-fidelity evaluation ranks points, and what it saves (the demo study, on the CPU).

Evaluates the same points at full fidelity and at a low fidelity (a fraction of the training steps and of
the validation set: what ``params --surrogate-fidelity`` gives NOMAD as SURROGATE_EXE), each set in one
``lora-blackbox eval`` call (one model load), and reports Spearman's and Kendall's rank correlations of
the two objectives and the ratio of their training + validation times.

    python benchmarks/fidelity.py [--fidelity 0.25] [--points 8] [--json out.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from blackbox.core.experiment import load_experiment
from blackbox.core.record import RecordStore
from blackbox.core.space import SearchSpace


def demo_points(count: int) -> list[tuple[float, ...]]:
    """A spread of points of the demo space: ranks 2..32, alpha multiples, learning rates 10^-5..10^-2."""
    space = SearchSpace.from_experiment(load_experiment("demo"))
    rng = np.random.default_rng(0)
    points = []
    for _ in range(count):
        point = tuple(
            float(rng.integers(int(v.lower), int(v.upper) + 1))
            if v.type == "I"
            else round(float(rng.uniform(v.lower, v.upper)), 2)
            for v in space.variables
        )
        points.append(space.check(point))
    return points


def ranks(values: np.ndarray) -> np.ndarray:
    order = values.argsort()
    result = np.empty(len(values))
    result[order] = np.arange(len(values))
    return result


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(ranks(a), ranks(b))[0, 1])


def kendall(a: np.ndarray, b: np.ndarray) -> float:
    pairs = list(itertools.combinations(range(len(a)), 2))
    agree = sum(np.sign(a[i] - a[j]) * np.sign(b[i] - b[j]) for i, j in pairs)
    return float(agree / len(pairs))


def evaluate(points: list[tuple[float, ...]], records: Path, overrides: list[str]) -> list[dict]:
    points_file = records / "points.txt"
    points_file.write_text("".join(" ".join(f"{x:g}" for x in p) + "\n" for p in points))
    sets = [a for o in [*overrides, f"records.dir={records}"] for a in ("--set", o)]
    subprocess.run(
        [sys.executable, "-m", "blackbox.cli", "-q", "eval", "-e", "demo", *sets, str(points_file)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return [r.as_dict() for r in RecordStore(records).records()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fidelity", type=float, default=0.25)
    parser.add_argument("--points", type=int, default=8)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    points = demo_points(args.points)
    with tempfile.TemporaryDirectory() as tmp:
        runs = {}
        for label, overrides in (
            ("full", []),
            ("low", [f"fidelity.train={args.fidelity}", f"fidelity.validation={args.fidelity}"]),
        ):
            folder = Path(tmp) / label
            folder.mkdir()
            started = time.perf_counter()
            runs[label] = evaluate(points, folder, overrides)
            runs[label + "_wall_s"] = time.perf_counter() - started  # type: ignore[assignment]
    full = np.array([r["metrics"]["validation_loss"] for r in runs["full"]])
    low = np.array([r["metrics"]["validation_loss"] for r in runs["low"]])
    cost = {k: sum(r["timings"]["train_s"] + r["timings"]["validation_s"] for r in runs[k]) for k in ("full", "low")}
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "fidelity": args.fidelity,
        "points": [list(p) for p in points],
        "full_objective": full.tolist(),
        "low_objective": low.tolist(),
        "spearman": spearman(full, low),
        "kendall_tau": kendall(full, low),
        "best_full_point_is_best_low": int(full.argmin()) == int(low.argmin()),
        "train_and_validation_seconds": cost,
        "cost_ratio_low_to_full": cost["low"] / cost["full"],
    }
    print(f"demo, {len(points)} points, fidelity {args.fidelity} (steps and validation set)")
    print("| point | full objective | low-fidelity objective |")
    print("|---|---|---|")
    for p, f, lo in zip(points, full, low, strict=True):
        print(f"| {' '.join(f'{x:g}' for x in p)} | {f:.4f} | {lo:.4f} |")
    print(
        f"Spearman {result['spearman']:.3f}, Kendall tau {result['kendall_tau']:.3f}, same best point: "
        f"{result['best_full_point_is_best_low']}; "
        f"train+validation time low/full = {result['cost_ratio_low_to_full']:.2f}"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
