"""The GPU path, proven in one call (issues 25 and 30): what a cloud GPU user runs, each part a few steps, all of it
within 7 minutes on one H100/H200 with the wheel install (benchmarks/gpu_check.sh), ending with one JSON and a short
table. ``--dry-run`` runs every part on a CPU with a tiny model (tests/test_gpu_check.py, in CI), so that no part
rots between GPU loans. docs/gpu.md says how to carry the wheels and run it in one device call. This file holds the
schedule, the budget and the report; the parts are in gpu_check_parts.py, what they share (processes, experiments,
records) in gpu_check_context.py, the measurements that need torch in their process in gpu_check_workers.py.

Parts (each isolated: a part that fails is reported in one line and the others still run; a part whose estimated
time no longer fits in ``--budget-s`` is skipped and said so in one line). The schedule (SCHEDULE) runs the parts
that measure speed alone and the others side by side on the GPU:

  prepare       a model of the Llama-2-7B architecture with random weights, saved once for every later part (in
                /dev/shm where it fits: a RAM disk); a small model of the same vocabulary for the studies; a
                word-level tokenizer; instruction data whose token lengths follow Alpaca + Dolly's; tasks; questions
  throughput    the paper's LoRA training (r 8 on q_proj,v_proj, 128 sequences a step) by throughput.py's method,
                on a model built in memory: today's default (``training.fused_kernels = "auto"``) and the options
                that could raise its MFU side by side (no fused kernels, liger's fused linear cross-entropy,
                torch.compile of the decoder layers, FlashAttention 3), the same warm-up loss; which option pays
  block         a block of 2 identical points in one ``eval`` with the paper's defaults: memory flat between
                points, the eval path's tokens/s
  variants      LoRA, DoRA, rsLoRA, PiSSA, QLoRA nf4, QLoRA nf4 + DoRA: runs or fails with one line; QLoRA's loss
                against LoRA's (within what quantisation explains) and its peak memory below LoRA's
  loftq         LoftQ (nf4, the top 2 layers: its initialisation is a full SVD of each adapted weight)
  torchrun      one point through torchrun on one GPU
  adapter       an evaluation whose objective is a benchmark (a local lm-eval task: log-likelihood requests/s)
                and which saves its adapter; ``lora-blackbox downstream`` scores base and adapter: they differ
  study         a NOMAD study (PyNomadBBO) of a few short evaluations with early stopping, killed with kill -9
                while an evaluation trains, then resumed: every evaluation counted once, the stopped one kept
  study_binary  the same with the nomad binary, when one is carried (NOMAD_EXE)
  answers       ``lora-blackbox answers`` (batched, the default decoding: on CUDA a static cache, compiled) of the
                base model and the adapter: new tokens/s of the first batch (compiling) and of the second
  decoding      the base model's answers with the decodings ``answers`` did not use, side by side: which pays

    python benchmarks/gpu_check.py --out "$OUT"                 # on the GPU machine (benchmarks/gpu_check.sh)
    python benchmarks/gpu_check.py --dry-run --out /tmp/check   # on a CPU: the tiny architecture, every part
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from gpu_check_context import REPO, Context, Part, one_line
from gpu_check_parts import PARTS
from gpu_check_workers import DRY_RUN, GPU

# Packages whose versions the report names (None where one is not installed).
PACKAGES = (
    "torch",
    "transformers",
    "peft",
    "accelerate",
    "bitsandbytes",
    "liger-kernel",
    "triton",
    "lm-eval",
    "datasets",
    "PyNomadBBO",
    "pydantic",
)

# The schedule: stages one after another; the lanes of a stage side by side, the parts of a lane one after another.
# What measures speed runs alone (throughput, the block's automatic micro-batch takes the memory it finds, answers,
# decoding); the other parts share the GPU (together under 80 GB: an H100 holds them too).
SCHEDULE: tuple[tuple[tuple[str, ...], ...], ...] = (
    (("prepare",),),
    (("throughput",),),
    (("block",),),
    (("variants",), ("loftq", "torchrun"), ("adapter",), ("study",), ("study_binary",)),
    (("answers",),),
    (("decoding",),),
)
# Seconds each part needs on an H100/H200 (it starts only when its lane has that much left). From the call of
# 2026-12-04 (issue 30): a 7B process (imports, load, a few steps, exit) took 30-40 s; prepare 59.6 s, of which 21.6 s
# saving to disk (now to a RAM disk); the second call's prepare + adapter + answers 183 s. Not yet measured: the
# training options (compilation about 45 s), the studies (an evaluation of the small model about 12 s), compiled
# decoding. Sum of the stages: 45 + 120 + 45 + 90 (the widest lane, with the GPU shared) + 75 + 40 = 415 s, in the
# 420 s of the call less the wheels' install (about 15 s): decoding, the last and least needed, may not fit.
NEEDS_S = {
    "prepare": 45,
    "throughput": 120,
    "block": 45,
    "variants": 80,
    "loftq": 40,
    "torchrun": 40,
    "adapter": 80,
    "study": 80,
    "study_binary": 80,
    "answers": 75,
    "decoding": 40,
}


assert sorted(PARTS) == sorted(name for stage in SCHEDULE for lane in stage for name in lane) == sorted(NEEDS_S)


# ---------------------------------------------------------------------------------------------------------------
# The run


class Run:
    """The schedule's stages one after another, each stage's lanes in threads of their own; the report written
    after every part (a call cut short keeps what it did)."""

    def __init__(self, ctx: Context, names: list[str], report: dict[str, Any], write: Callable[[], None]) -> None:
        self.ctx, self.names, self.report, self.write = ctx, names, report, write
        self.lock = threading.Lock()
        self.logs: list[Path] = []

    def stages(self) -> None:
        for number, stage in enumerate(SCHEDULE):
            lanes = [[name for name in lane if name in self.names] for lane in stage]
            lanes = [lane for lane in lanes if lane]
            threads = [
                threading.Thread(target=self.lane, args=(lane, f"{number}.{index}")) for index, lane in enumerate(lanes)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()

    def lane(self, names: list[str], label: str) -> None:
        log_path = self.ctx.work / f"gpu_check.{label}.log"
        self.logs.append(log_path)
        with log_path.open("w", encoding="utf-8") as log:
            ctx = replace(self.ctx, log=log)
            for name in names:
                part = Part(name)
                with self.lock:
                    self.report["parts"].append(part)
                self.part(ctx, part)
                with self.lock:
                    print(f"{name:12} {part.status:8} {part.seconds:6.1f} s  {part.error or ''}", flush=True)
                    self.write()
            self.ctx.adapter = self.ctx.adapter or ctx.adapter

    def part(self, ctx: Context, part: Part) -> None:
        needed = NEEDS_S[part.name] if ctx.scale is GPU else 5
        if ctx.remaining_s() < needed:
            part.status = "skipped"
            part.error = f"out of time: {ctx.remaining_s():.0f} s left, about {needed} s needed (run it with --parts)"
            return
        if part.name != "prepare" and not ctx.prepared:
            part.status, part.error = "skipped", "no model: the preparation failed"
            return
        started = time.monotonic()
        ctx.log.write(f"\n===== part {part.name}\n")
        try:
            PARTS[part.name](ctx, part)
        # A benchmark harness's boundary: a part that breaks is reported in one line and the next one runs.
        except Exception as e:  # noqa: BLE001
            part.status, part.error = "error", one_line(f"{type(e).__name__}: {e}")
        part.seconds = time.monotonic() - started
        if part.status == "ok" and any(row.status == "failed" for row in part.rows):
            part.status = "failed"
        elif part.status == "ok" and part.rows and all(row.status == "skipped" for row in part.rows):
            part.status = "skipped"
        if part.name == "answers":  # the default decoding's steady speed, for the decoding part's comparison
            base = next((r for r in part.rows if r.check == "batched answers: base"), None)
            ctx.prepared["answers_base_tokens_per_s"] = base.numbers.get("tokens_per_s") if base else None

    def merge_logs(self, into: Path) -> None:
        """The lanes' logs, one after another, in one file."""
        with into.open("w", encoding="utf-8") as merged:
            for path in self.logs:
                merged.write(f"\n######## lane {path.stem.removeprefix('gpu_check.')}\n")
                merged.write(path.read_text(errors="replace"))


def table(report: dict[str, Any]) -> str:
    """The short table: one line per check."""
    machine = report["machine"]
    gpu = report["gpu"] or {}
    versions = ", ".join(f"{k} {v}" for k, v in machine["versions"].items() if v)
    lines = [
        f"gpu_check {'dry run ' if report['dry_run'] else ''}{report['date']}: {gpu.get('name') or machine['cpu']}"
        f"{', driver ' + gpu['driver'] if gpu.get('driver') else ''}; {report['seconds']:.0f} s",
        versions,
        "",
        "| part | check | status | result |",
        "|---|---|---|---|",
    ]
    for part in report["parts"]:
        if not part.rows or part.error:
            lines.append(f"| {part.name} | | {part.status} | {part.error or ''} |")
        for row in part.rows:
            lines.append(f"| {part.name} | {row.check} | {row.status} | {row.error or row.summary} |")
    return "\n".join(lines) + "\n"


def nvidia_smi() -> dict[str, str] | None:
    """The GPU and its driver as nvidia-smi names them (None without one): no CUDA context in this process."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    name, memory, driver = (part.strip() for part in out.splitlines()[0].split(","))
    return {"name": name, "memory": memory, "driver": driver}


def work_folder(dry_run: bool) -> Path:
    """A temporary folder: on a GPU machine in /dev/shm (a RAM disk: the 7B model saves and loads at memory
    speed) when it has room for it twice over, else the default temporary folder."""
    shm = Path("/dev/shm")
    if not dry_run and shm.is_dir() and os.access(shm, os.W_OK) and shutil.disk_usage(shm).free > 30 * 1024**3:
        return Path(tempfile.mkdtemp(prefix="gpu-check-", dir=shm))
    return Path(tempfile.mkdtemp(prefix="gpu-check-"))


def _environment(work: Path, dry_run: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _CALLERS_VARIABLES}
    # NOMAD's BB_EXE calls lora-blackbox by name: a machine that runs the package from its source tree has none.
    shim = work / "bin" / "lora-blackbox"
    shim.parent.mkdir(parents=True, exist_ok=True)
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m blackbox.cli "$@"\n')
    shim.chmod(0o755)
    env |= {
        "PATH": os.pathsep.join([str(shim.parent), env.get("PATH", "/usr/bin:/bin")]),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), str(REPO / "benchmarks"), env.get("PYTHONPATH")])),
        "LORA_BLACKBOX_CACHE": str(work / "cache"),
        "HF_HOME": str(work / "hf"),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONUNBUFFERED": "1",
        # As the blackbox sets it: packed batches of varying length fragment the caching allocator.
        "PYTORCH_CUDA_ALLOC_CONF": env.get("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True"),
    }
    if dry_run:
        # One thread: a tiny model gains nothing from more, and on a shared CPU two threads of each process wait on
        # each other (measured on a loaded 2-core VM: 186 against 3,436 tokens/s of one training step).
        env |= {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return env


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="the tiny architecture on any device: every code path")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu-check")), help="default: $OUT")
    parser.add_argument("--work", type=Path, help="models, data and records (default: a temporary folder, removed)")
    parser.add_argument("--parts", default=",".join(PARTS), help="a comma-separated subset (prepare: the others')")
    parser.add_argument("--budget-s", type=float, help="no part starts past its estimate (default 420; dry run: 900)")
    args = parser.parse_args()
    from machine import describe

    scale = DRY_RUN if args.dry_run else GPU
    names = [n for n in PARTS if n in args.parts.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.work or work_folder(args.dry_run)
    work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "dry_run": args.dry_run,
        "command": shlex.join(sys.argv),
        "scale": asdict(scale),
        "budget_s": args.budget_s or scale.budget_s,
        "machine": describe(PACKAGES),
        "gpu": nvidia_smi(),
        "work": str(work),
        "seconds": 0.0,
        "parts": [],
    }
    json_path, table_path = args.out / "gpu_check.json", args.out / "gpu_check.md"
    order = [name for stage in SCHEDULE for lane in stage for name in lane]

    def write() -> None:
        report["seconds"] = time.monotonic() - started
        report["parts"].sort(key=lambda part: order.index(part.name))
        json_path.write_text(json.dumps(report, indent=1, default=lambda o: asdict(o)))

    ctx = Context(scale, work, sys.stderr, started + report["budget_s"], _environment(work, args.dry_run))
    run = Run(ctx, names, report, write)
    try:
        run.stages()
    finally:
        run.merge_logs(args.out / "gpu_check.log")
        write()
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    table_path.write_text(table(report))
    print("\n" + table(report), flush=True)
    return 0


# Variables of the calling shell that would change what the parts run: a study's, an experiment's, MLflow's.
_CALLERS_VARIABLES = {"LORA_BLACKBOX_ANSWER_FINISHED", "LORA_BLACKBOX_EXPERIMENT", "MLFLOW_TRACKING_URI"}


if __name__ == "__main__":
    sys.exit(main())
