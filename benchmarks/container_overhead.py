"""What a container adds to one blackbox call: ``lora-blackbox container`` against ``lora-blackbox eval``.

Both run as NOMAD runs them (a subprocess per call, one point per call) on the tiny test model, in
turns, with a warm tokenised-data cache; the container with ``--offline``. Prints the wall-clock time of
each call and the medians. Needs a Docker-API engine (DOCKER_HOST) and the image.

    python benchmarks/container_overhead.py [--image lora-blackbox:latest] [--calls 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tiny_study import learning_rate_study  # benchmarks/tiny_study.py

from blackbox.training.testing import build_tiny_model, write_instruction_files


def _call(command: list[str], cwd: Path) -> float:
    started = time.perf_counter()
    result = subprocess.run(command, cwd=cwd, capture_output=True, check=False)
    seconds = time.perf_counter() - started
    if result.returncode != 0 or len(result.stdout.splitlines()) != 1:
        sys.exit(f"{' '.join(command)} failed ({result.returncode}):\n{result.stderr.decode()[-3000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", default="lora-blackbox:latest")
    parser.add_argument("--calls", type=int, default=5)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    script = Path(sys.executable).parent / "lora-blackbox"
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        os.environ.update(HF_HUB_OFFLINE="1", HF_HOME=str(folder / "hf"), LORA_BLACKBOX_CACHE=str(folder / "cache"))
        model = build_tiny_model(folder / "tiny")
        train, validation = write_instruction_files(folder / "data")
        study = folder / "experiment.toml"
        experiment = learning_rate_study(
            study, name="overhead", model=model, train=train, validation=validation, steps=args.steps
        )
        (folder / "x.txt").write_text("-3\n")
        common = ["-q", "--experiment", str(experiment), "--set", "records.dir=.", "x.txt"]
        commands = {
            "eval": [str(script), "-q", "eval", *common[1:]],
            "container": [str(script), "-q", "container", "--image", args.image, "--offline", *common[1:]],
        }
        for command in commands.values():
            _call(command, folder)  # warm-up: tokenised-data cache, page cache, image layers
        seconds: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.calls):
            for name, command in commands.items():
                seconds[name].append(_call(command, folder))
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    result = {
        "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} CPUs",
        "image": args.image,
        "steps": args.steps,
        "seconds": seconds,
        "median_s": medians,
        "overhead_s": medians["container"] - medians["eval"],
    }
    for name, values in seconds.items():
        print(f"{name:>10}: median {medians[name]:.2f} s  ({', '.join(f'{v:.2f}' for v in values)})")
    print(f"  overhead: {result['overhead_s']:.2f} s per call")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
