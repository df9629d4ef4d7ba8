"""benchmarks/gpu_check.py's dry run: every part of the GPU check, on the CPU with the tiny architecture, so that none
of them rots between GPU loans (docs/gpu.md). Each `lora-blackbox` command runs as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_the_dry_run_runs_every_part_and_reports_each_check(tmp_path: Path, repo: Path) -> None:
    out = tmp_path / "out"
    argv = [sys.executable, str(repo / "benchmarks" / "gpu_check.py"), "--dry-run", "--out", str(out)]
    result = subprocess.run([*argv, "--work", str(tmp_path / "work")], capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["dry_run"] and report["machine"]["versions"]["torch"] and report["date"]
    parts = {part["name"]: part for part in report["parts"]}
    assert list(parts) == ["prepare", "throughput", "variants", "block", "torchrun", "objective", "adapter", "answers"]
    rows = {(name, row["check"]): row for name, part in parts.items() for row in part["rows"]}
    # The one check a CPU cannot pass fails in one line, as it must; every other part ran.
    failed = [key for key, row in rows.items() if row["status"] != "ok"]
    assert failed == [("variants", "LoftQ (nf4, top 2 layers)")], failed
    loftq = rows[failed[0]]["error"]
    assert loftq.startswith("NOT_RUN: ") and "needs CUDA" in loftq and "\n" not in loftq
    assert {name: part["status"] for name, part in parts.items() if part["status"] != "ok"} == {"variants": "failed"}

    auto = rows[("throughput", "training.fused_kernels = 'auto' (the default)")]["numbers"]
    assert auto["kernels"] == "none" and auto["tokens_per_s"] > 0 and auto["mfu"] is None  # no peak FLOP/s on a CPU
    assert rows[("throughput", "same loss with and without fused kernels")]["numbers"]["relative_difference"] == 0
    for variant in ("DoRA", "rsLoRA", "PiSSA (4 iterations of randomised SVD)", "QLoRA nf4", "QLoRA nf4 + DoRA"):
        numbers = rows[("variants", variant)]["numbers"]
        assert numbers["step_time_vs_lora"] > 0 and numbers["peak_memory_vs_lora"] > 0, variant

    flat = rows[("block", "memory flat between points")]["numbers"]
    assert flat["memory_key"] == "process_rss_gib" and flat["second_gib"] > 0
    assert rows[("block", "point 2 of 2")]["numbers"]["fused_kernels"] == "none"
    # Trained with the GPU's packed-only attention (its CPU stand-in), scored by lm-eval on padded batches
    assert rows[("objective", "benchmark objective tiny_mc:acc")]["numbers"]["attention"] == "varlen"
    assert rows[("torchrun", "torchrun --nproc-per-node=1")]["status"] == "ok"
    assert rows[("objective", "benchmark objective tiny_mc:acc")]["numbers"]["requests_per_s"] > 0
    scored = rows[("adapter", "downstream scores the adapter")]["numbers"]
    assert scored["base"] != scored["adapter"]
    answered = [row for (name, _), row in rows.items() if name == "answers"]
    assert len(answered) == 2 and all(row["numbers"]["new_tokens"] > 0 for row in answered)  # base and adapter

    table = (out / "gpu_check.md").read_text()
    assert "| variants | LoftQ (nf4, top 2 layers) | failed | NOT_RUN: " in table
    assert table in result.stdout  # the table ends the output
    assert "$ " in (out / "gpu_check.log").read_text()  # every command is in the log
