"""Where the time of one evaluation goes: start-up, data preparation, model load, training, validation.

Runs ``lora-blackbox eval`` as NOMAD does (a subprocess per call) on the tiny test model, first with
an empty tokenised-data cache (cold), then again (warm), and prints each phase from the records.

    python benchmarks/phases.py [--steps 20] [--json out.json]
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

import torch
from tiny_study import learning_rate_study  # benchmarks/tiny_study.py

from blackbox.core.record import RecordStore
from blackbox.training.testing import build_tiny_model, write_instruction_files

PHASES = ("startup_s", "data_prep_s", "model_load_s", "train_s", "validation_s", "total_s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        model = build_tiny_model(tmp / "model")
        train, validation = write_instruction_files(tmp / "data", n_train=2048, n_validation=256)
        experiment = learning_rate_study(
            tmp / "experiment.toml", name="phases", model=model, train=train, validation=validation, steps=args.steps
        )
        (tmp / "point.txt").write_text("-3\n")
        env = {**os.environ, "LORA_BLACKBOX_CACHE": str(tmp / "cache"), "HF_HOME": str(tmp / "hf")}
        rows = []
        for label in ("cold cache", "warm cache"):
            started = time.perf_counter()
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "blackbox.cli",
                    "-q",
                    "eval",
                    "-e",
                    str(experiment),
                    "--set",
                    f"records.dir={tmp / 'runs'}",
                    str(tmp / "point.txt"),
                ],
                env=env,
                check=True,
                stdout=subprocess.DEVNULL,
            )
            wall = time.perf_counter() - started
            record = [r.as_dict() for r in RecordStore(tmp / "runs").records()][-1]
            rows.append({"run": label, "wall_s": wall, **{p: record["timings"].get(p, 0.0) for p in PHASES}})
    print(
        f"tiny Llama, {args.steps} steps x 16 sequences; {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, torch {torch.__version__}"
    )
    print(f"| run | wall | {' | '.join(PHASES)} |")
    print("|---" * (len(PHASES) + 2) + "|")
    for row in rows:
        print(f"| {row['run']} | {row['wall_s']:.2f} | " + " | ".join(f"{row[p]:.2f}" for p in PHASES) + " |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
