"""The demo on a laptop-class CPU: the whole study's wall time, per-evaluation cost against the previous demo
settings (side by side), and how long a second Ctrl-C takes to end a study.

Each case runs as a user would (``lora-blackbox study`` with ``nomad_params/demo.txt``, the embedded NOMAD)
on the precision paths this machine can take:

- ``fp32``: what a CPU without native bfloat16 (AVX2 only) runs. On a CPU with native bf16 it is forced by
  holding PyTorch's and oneDNN's kernels to AVX2 (``ATEN_CPU_CAPABILITY=avx2 DNNL_MAX_CPU_ISA=AVX2
  MKL_ENABLE_INSTRUCTIONS=AVX2``): bf16 is then emulated, exactly as on such a CPU, and ``auto`` picks fp32.
- ``native``: this CPU's own path (bf16 autocast where it computes bf16 natively).

    python benchmarks/demo_cpu.py [--paths fp32,native] [--json benchmarks/results/demo_cpu.json]

The model and the data must be installed (``make install``); the first run converts the model (cached).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from machine import cpu_model

from blackbox.core.record import RecordStore
from blackbox.training.precision import cpu_bf16

REPO = Path(__file__).resolve().parent.parent
BLACKBOX = [sys.executable, "-m", "blackbox.cli"]
AVX2_ONLY = {"ATEN_CPU_CAPABILITY": "avx2", "DNNL_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}


def previous_demo(folder: Path) -> Path:
    """The demo experiment as it was before issue 11 (all 30 layers, SmolLM2's default system prompt,
    16 x 16 sequences, 128 validation rows), without its forced bf16 autocast: the baseline."""
    text = resources.files("blackbox").joinpath("experiments", "demo.toml").read_text()
    replacements = {
        r"layers_to_transform = \[.*\]\n": "",
        r'system_prompt = ""\n': "",
        r"max_validation_rows = 64": "max_validation_rows = 128",
        r"effective_batch_size = 8": "effective_batch_size = 16",
        r"micro_batch_size = 4.*": "micro_batch_size = 16",
        r"\[validation\]\nbatch_size = 8": "[validation]\nbatch_size = 32",
        r'name = "demo"': 'name = "demo-previous"',
    }
    for pattern, replacement in replacements.items():
        text, count = re.subn(pattern, replacement, text)
        assert count == 1, pattern
    path = folder / "demo_previous.toml"
    path.write_text(text)
    return path


def one_evaluation(experiment: str, folder: Path, env: dict[str, str]) -> dict[str, Any]:
    """One evaluation of the demo's X0 in a process of its own, as NOMAD calls it."""
    point = folder / "x0.txt"
    point.write_text("2 2 -4.5\n")
    records = folder / f"runs-{Path(experiment).stem}"
    started = time.perf_counter()
    subprocess.run(
        [*BLACKBOX, "-q", "eval", "-e", experiment, "--set", f"records.dir={records}", str(point)],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    wall = time.perf_counter() - started
    record = [r.as_dict() for r in RecordStore(records).records()][-1]
    return {"wall_s": wall, "objective": record["metrics"]["validation_loss"], "timings": record["timings"]}


def whole_study(folder: Path, env: dict[str, str]) -> dict[str, Any]:
    study = folder / "study"
    started = time.perf_counter()
    subprocess.run(
        [*BLACKBOX, "-q", "study", str(REPO / "nomad_params" / "demo.txt"), "--dir", str(study)],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    wall = time.perf_counter() - started
    records = [r.as_dict() for r in RecordStore(study).records()]
    objectives = [r["metrics"]["validation_loss"] for r in records if r["status"] == "OK"]
    return {
        "wall_s": wall,
        "evaluations": len(records),
        "x0_objective": objectives[0],
        "best_objective": min(objectives),
        "best_point": min((r for r in records if r["status"] == "OK"), key=lambda r: r["metrics"]["validation_loss"])[
            "point"
        ],
        "evaluation_s": [r["timings"]["total_s"] + r["timings"].get("startup_s", 0.0) for r in records],
        "precision": records[0]["metrics"]["precision"],
    }


def second_ctrl_c(folder: Path, env: dict[str, str]) -> dict[str, Any]:
    """Ctrl-C twice while the first evaluation trains: seconds from the second one to the study's end."""
    study = folder / "interrupted"
    process = subprocess.Popen(
        [*BLACKBOX, "-q", "study", str(REPO / "nomad_params" / "demo.txt"), "--dir", str(study)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    while not any("step " in log.read_text() for log in study.glob("evals/*/eval.log")):
        if process.poll() is not None:
            raise RuntimeError(f"the study ended early: {process.stderr.read() if process.stderr else ''}")
        time.sleep(0.1)
    os.killpg(process.pid, signal.SIGINT)
    time.sleep(0.5)
    os.killpg(process.pid, signal.SIGINT)
    cut = time.perf_counter()
    _, stderr = process.communicate(timeout=120)
    seconds = time.perf_counter() - cut
    return {"seconds_to_end": seconds, "exit_status": process.returncode, "stderr_tail": stderr[-400:]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--paths", default="fp32,native", help="fp32 (forced as on an AVX2-only CPU), native")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "native_bf16": cpu_bf16().native,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "paths": {},
    }
    for path in args.paths.split(","):
        env = {**os.environ, **(AVX2_ONLY if path == "fp32" else {})}
        with tempfile.TemporaryDirectory() as tmp_name:
            tmp = Path(tmp_name)
            row = {
                "previous_demo_evaluation": one_evaluation(str(previous_demo(tmp)), tmp, env),
                "demo_evaluation": one_evaluation("demo", tmp, env),
                "study": whole_study(tmp, env),
                "ctrl_c": second_ctrl_c(tmp, env),
            }
        row["speedup_per_evaluation"] = row["previous_demo_evaluation"]["wall_s"] / row["demo_evaluation"]["wall_s"]
        results["paths"][path] = row
        study = row["study"]
        print(
            f"{path}: {study['precision']}; study of {study['evaluations']} evaluations {study['wall_s']:.0f} s, "
            f"X0 {study['x0_objective']:.4f} -> best {study['best_objective']:.4f} at {study['best_point']}; "
            f"one evaluation {row['demo_evaluation']['wall_s']:.1f} s vs previous demo "
            f"{row['previous_demo_evaluation']['wall_s']:.1f} s ({row['speedup_per_evaluation']:.2f}x); "
            f"second Ctrl-C -> exit {row['ctrl_c']['exit_status']} in {row['ctrl_c']['seconds_to_end']:.1f} s"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
