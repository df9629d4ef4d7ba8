"""A block of points in one call: the base model is loaded once, memory does not grow from point to point,
and each point gives the objective it gives in a process of its own (the demo model, on the CPU).

Two blocks: the same point five times (growth there is memory kept from point to point), and five points
of growing LoRA rank (the realistic case; larger adapters need more memory of their own).

    python benchmarks/block_memory.py [--points 5] [--steps 4] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from blackbox.core.record import RecordStore


def run(points: list[str], records: Path, steps: int) -> list[dict]:
    records.mkdir(parents=True, exist_ok=True)
    points_file = records / "points.txt"
    points_file.write_text("\n".join(points) + "\n")
    sets = ["--set", f"training.max_steps={steps}", "--set", f"records.dir={records}"]
    subprocess.run(
        [sys.executable, "-m", "blackbox.cli", "-q", "eval", "-e", "demo", *sets, str(points_file)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return [r.as_dict() for r in RecordStore(records).records()]


def rows_of(records: list[dict]) -> list[dict]:
    return [
        {
            "point": r["point_line"],
            "validation_loss": r["metrics"]["validation_loss"],
            "rss_after_gib": r["memory"]["process_rss_gib"],
            "max_rss_gib": r["memory"]["peak_gib"],
            "model_load_s": r["timings"].get("model_load_s", 0.0),
            "total_s": r["timings"]["total_s"],
        }
        for r in records
    ]


def show(title: str, rows: list[dict]) -> None:
    print(title)
    print("| point | validation loss | RSS after (GiB) | max RSS so far (GiB) | model load s | total s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['point']} | {r['validation_loss']:.6f} | {r['rss_after_gib']:.3f} | {r['max_rss_gib']:.3f} | "
            f"{r['model_load_s']:.2f} | {r['total_s']:.1f} |"
        )
    growth = rows[-1]["rss_after_gib"] - rows[0]["rss_after_gib"]
    print(f"RSS after the last point - after the first: {growth:+.3f} GiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", type=int, default=5)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    # The same point again and again: any growth is memory the block keeps from point to point.
    repeated = ["5 8 -2.5"] * args.points
    # Ranks 2, 4, 8, 16, 32: later points need larger adapters and optimizer states.
    varied = [f"{1 + i % 5} {1 + i % 8} {-4.5 + 0.5 * i}" for i in range(args.points)]
    with tempfile.TemporaryDirectory() as tmp:
        same = rows_of(run(repeated, Path(tmp) / "repeated", args.steps))
        block = rows_of(run(varied, Path(tmp) / "varied", args.steps))
        alone = [run([p], Path(tmp) / f"alone{i}", args.steps)[0] for i, p in enumerate(varied[:2])]
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "repeated": same,
        "varied": block,
        "rss_growth_gib_repeated": same[-1]["rss_after_gib"] - same[0]["rss_after_gib"],
        "rss_growth_gib_varied": block[-1]["rss_after_gib"] - block[0]["rss_after_gib"],
        "same_objective_repeated": len({r["validation_loss"] for r in same}) == 1,
        "same_objective_alone": [
            a["metrics"]["validation_loss"] == b["validation_loss"] for a, b in zip(alone, block, strict=False)
        ],
    }
    show(f"demo, one call, {args.points} times the same point (r 32), {args.steps} steps each", same)
    show(f"demo, one call, {args.points} points of growing rank (2 to 32), {args.steps} steps each", block)
    print(
        f"same objective for each repetition: {result['same_objective_repeated']}; "
        f"same objective as alone (first 2 varied points): {result['same_objective_alone']}"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
