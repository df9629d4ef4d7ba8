"""benchmarks/gpu_check.py's dry run: every part of the GPU check, on the CPU with the tiny architecture, so that none
of them rots between GPU loans (docs/gpu.md). Each `lora-blackbox` command runs as a user runs it; the study is a
real NOMAD study (PyNomadBBO), killed with kill -9 mid-evaluation and resumed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_the_dry_run_runs_every_part_and_reports_each_check(tmp_path: Path, repo: Path) -> None:
    out = tmp_path / "out"
    argv = [sys.executable, str(repo / "benchmarks" / "gpu_check.py"), "--dry-run", "--out", str(out)]
    env = {k: v for k, v in os.environ.items() if k != "NOMAD_EXE"}  # the binary's study: said skipped in one line
    result = subprocess.run(
        [*argv, "--work", str(tmp_path / "work")], capture_output=True, text=True, timeout=1200, env=env
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["dry_run"] and report["machine"]["versions"]["torch"] and report["date"]
    parts = {part["name"]: part for part in report["parts"]}
    assert list(parts) == [
        "prepare", "throughput", "block", "variants", "loftq", "torchrun", "adapter", "study", "study_binary",
        "answers", "decoding",
    ]  # fmt: skip
    rows = {(name, row["check"]): row for name, part in parts.items() for row in part["rows"]}
    # The one check a CPU cannot pass fails in one line, as it must; what a CPU cannot run is said skipped.
    failed = [key for key, row in rows.items() if row["status"] == "failed"]
    assert failed == [("loftq", "LoftQ (nf4, top 2 layers)")], failed
    loftq = rows[failed[0]]["error"]
    assert loftq.startswith("NOT_RUN: ") and "needs CUDA" in loftq and "\n" not in loftq
    skipped = {key for key, row in rows.items() if row["status"] == "skipped"}
    assert skipped == {
        ("throughput", "option: auto + fused linear cross-entropy"),
        ("throughput", "option: auto + FlashAttention 3"),
        ("study_binary", "NOMAD study, the nomad binary"),
    }
    assert all(rows[key]["error"] and "\n" not in rows[key]["error"] for key in skipped)
    assert {name: part["status"] for name, part in parts.items() if part["status"] != "ok"} == {
        "loftq": "failed",
        "study_binary": "skipped",
    }

    auto = rows[("throughput", "training.fused_kernels = 'auto' (the default)")]["numbers"]
    assert auto["kernels"] == "none" and auto["tokens_per_s"] > 0 and auto["mfu"] is None  # no peak FLOP/s on a CPU
    assert rows[("throughput", "same loss with and without fused kernels")]["numbers"]["relative_difference"] == 0
    compiled = rows[("throughput", "option: none + torch.compile of the decoder layers")]["numbers"]
    assert compiled["loss_vs_default"] < 1e-3 and compiled["tokens_per_s"] > 0  # the graphs captured, the same loss
    assert "pays" in rows[("throughput", "which option pays")]["numbers"]
    for variant in ("DoRA", "rsLoRA", "PiSSA (4 iterations of randomised SVD)", "QLoRA nf4", "QLoRA nf4 + DoRA"):
        numbers = rows[("variants", variant)]["numbers"]
        assert numbers["step_time_vs_lora"] > 0 and numbers["peak_memory_vs_lora"] > 0, variant
        # Through the flash kernel's stand-in: bf16 compute, as on CUDA (QLoRA once reached it in fp32)
        assert numbers["attention"] == "varlen" and numbers["precision"].startswith("bfloat16"), variant

    flat = rows[("block", "memory flat between points")]["numbers"]
    assert flat["memory_key"] == "process_rss_gib" and flat["second_gib"] > 0
    assert rows[("block", "point 2 of 2")]["numbers"]["fused_kernels"] == "none"
    assert rows[("torchrun", "torchrun --nproc-per-node=1")]["status"] == "ok"
    # Trained with the GPU's packed-only attention (its CPU stand-in), scored by lm-eval on padded batches
    objective = rows[("adapter", "benchmark objective tiny_mc:acc, adapter saved")]["numbers"]
    assert objective["attention"] == "varlen" and objective["requests_per_s"] > 0
    scored = rows[("adapter", "downstream scores the adapter")]["numbers"]
    assert scored["base"] != scored["adapter"]

    stopped = rows[("study", "early stopping, then kill -9 mid-evaluation")]["numbers"]
    assert stopped["stopped_step"] >= 1 and stopped["gone_s"] < 30
    statuses = rows[("study", "resumed after kill -9")]["numbers"]["statuses"]
    assert statuses.count("KILLED") == 1 and "STOPPED" in statuses

    answered = [row for (name, _), row in rows.items() if name == "answers"]
    assert len(answered) == 2 and all(row["numbers"]["new_tokens"] > 0 for row in answered)  # base and adapter
    decodings = [row for (name, check), row in rows.items() if name == "decoding" and check.startswith("decoding:")]
    assert [row["numbers"]["decoding"] for row in decodings] == ["dynamic cache", "static cache"]

    table = (out / "gpu_check.md").read_text()
    assert "| loftq | LoftQ (nf4, top 2 layers) | failed | NOT_RUN: " in table
    assert table in result.stdout  # the table ends the output
    assert "$ " in (out / "gpu_check.log").read_text()  # every command is in the log
