"""Wall-clock of a block of k points: one after the other in one process, in parallel processes on
leased slots (--workers k), and through a local Ray cluster (--backend ray); the tiny model on the CPU.

    python benchmarks/parallel.py [--points 4] [--steps 60] [--json out.json]

On a CPU host the parallel processes share the cores (each gets cores/k threads), so the speed-up shows
what process-level parallelism costs or gains there; on a GPU host each process has its own GPU.
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

from tiny_study import learning_rate_study  # benchmarks/tiny_study.py

from blackbox.training.testing import build_tiny_model, write_instruction_files


def timed(command: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", type=int, default=4)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    blackbox = [sys.executable, "-m", "blackbox.cli", "-q", "eval"]
    with tempfile.TemporaryDirectory(prefix="lbx") as name:
        tmp = Path(name)
        model = build_tiny_model(tmp / "model")
        train, validation = write_instruction_files(tmp / "data", n_train=1024, n_validation=128)
        experiment = learning_rate_study(
            tmp / "experiment.toml", name="parallel", model=model, train=train, validation=validation, steps=args.steps
        )
        points = tmp / "points.txt"
        points.write_text("".join(f"{-4 + 0.5 * i}\n" for i in range(args.points)))
        env = {
            **os.environ,
            "LORA_BLACKBOX_CACHE": str(tmp / "cache"),
            "LORA_BLACKBOX_LEASE_DIR": str(tmp / "leases"),
            "RAY_USAGE_STATS_ENABLED": "0",
        }
        base = [*blackbox, "-e", str(experiment), "--set", f"records.dir={tmp / 'runs'}"]
        timed([*base, str(points)], env)  # warm the tokenised-data cache
        rows = {
            "sequential, one process": timed([*base, str(points)], env),
            f"parallel, --workers {args.points}": timed([*base, "--workers", str(args.points), str(points)], env),
        }
        ray = str(Path(sys.executable).parent / "ray")
        subprocess.run(
            [
                ray,
                "start",
                "--head",
                "--node-ip-address=127.0.0.1",
                "--port=6398",
                f"--num-cpus={args.points}",
                "--include-dashboard=false",
                "--disable-usage-stats",
                f"--temp-dir={tmp}/ray",
            ],
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            rows["ray, local cluster"] = timed(
                [*base, "--backend", "ray", "--ray-address", "127.0.0.1:6398", str(points)], env
            )
            one = tmp / "one.txt"
            one.write_text("-3\n")
            single_local = timed([*base, "--workers", "2", str(one)], env)
            single_ray = timed([*base, "--backend", "ray", "--ray-address", "127.0.0.1:6398", str(one)], env)
        finally:
            subprocess.run([ray, "stop", "--force"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, no GPU",
        "points": args.points,
        "steps": args.steps,
        "wall_s": rows,
        "speedup_parallel_vs_sequential": rows["sequential, one process"] / rows[f"parallel, --workers {args.points}"],
        "one_point_local_process_s": single_local,
        "one_point_ray_s": single_ray,
        "ray_overhead_per_point_s": single_ray - single_local,
    }
    print(f"tiny model, a block of {args.points} points, {args.steps} steps each; {result['machine']}")
    print("| how | wall-clock s |")
    print("|---|---|")
    for how, seconds in rows.items():
        print(f"| {how} | {seconds:.1f} |")
    print(
        f"one point: {single_local:.1f} s in a local evaluation process, {single_ray:.1f} s as a Ray task "
        f"(overhead {result['ray_overhead_per_point_s']:+.1f} s)"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
