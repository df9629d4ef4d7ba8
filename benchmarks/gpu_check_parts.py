"""The parts of benchmarks/gpu_check.py (docs/gpu.md), each a few steps of what a cloud GPU user runs; the
schedule, the budget and the report are gpu_check.py's."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gpu_check_context import (
    REPO,
    Context,
    Part,
    Row,
    choice_space,
    one_line,
    read_records,
    record_row,
    run_eval,
    write_experiment,
)
from gpu_check_workers import GPU, TRAINING_PROCESSES

COMMITTED = REPO / "benchmarks" / "results" / "throughput_h200_run3.json"
MFU_TARGET = 0.55  # issue 25's goal for the default settings on the 7B architecture
TOKENS_PER_S_TARGET = 1500  # issue 30's goal for batched answers of the 7B architecture on an H200


def part_prepare(ctx: Context, part: Part) -> None:
    ran, prepared = ctx.worker("prepare", limit_s=240)
    if prepared is None:
        raise RuntimeError(f"the preparation {ran.ended} and wrote nothing (see the log)")
    ctx.prepared.update(prepared)
    part.rows.append(
        Row(
            "model, data, tasks",
            summary=f"{prepared['parameters'] / 1e6:,.1f}M parameters ({prepared['model_gib']:.1f} GiB) built in "
            f"{prepared['build_s']:.1f} s, saved in {prepared['save_s']:.1f} s to {prepared['work']} on "
            f"{prepared['device']}; {prepared['seconds']:.0f} s in all",
            numbers=prepared,
        )
    )


def part_throughput(ctx: Context, part: Part) -> None:
    """Today's default and the options side by side (gpu_check_workers.worker_training), in two processes."""
    measured: list[dict[str, Any]] = []
    for settings in TRAINING_PROCESSES:
        ran, result = ctx.worker("training", "--settings", ",".join(settings), limit_s=240)
        done = {row["setting"]: row for row in (result or {}).get("rows", [])}
        for setting in settings:
            row = done.get(setting) or {
                "setting": setting,
                "status": "failed",
                "error": f"the measurement {ran.ended} before it: {ctx.last_error()}",
            }
            measured.append(row)
    by_setting = {row["setting"]: row for row in measured}
    default, unfused = by_setting["auto"], by_setting["none"]
    committed = _committed_figures() if ctx.scale.arch == "llama2-7b" else {}
    for row in measured:
        part.rows.append(_training_row(row, committed, default))
    if default["status"] == "ok" and unfused["status"] == "ok":
        part.rows.append(_same_loss(default, unfused))
    part.rows.append(_which_pays(default, measured))


def _label(setting: str) -> str:
    if setting == "auto":
        return "training.fused_kernels = 'auto' (the default)"
    if setting == "none":
        return "training.fused_kernels = 'none'"
    return "option: " + setting


def _training_row(row: dict[str, Any], committed: dict[str, dict[str, Any]], default: dict[str, Any]) -> Row:
    label = _label(row["setting"])
    if row["status"] != "ok":
        return Row(label, row["status"], one_line(row["error"]))
    mfu = f", MFU {row['mfu']:.1%}" if row["mfu"] is not None else ""
    summary = (
        f"{row['tokens_per_s']:,.0f} tok/s{mfu}, peak {row['peak_memory_gib']:.1f} GiB, micro-batch "
        f"{row['micro_batch_size']}, kernels {row['kernels']}, warm-up step {row['warmup_s']:.1f} s"
    )
    numbers = dict(row)
    reference = committed.get("packed-varlen-liger" if row["kernels"] == "liger" else "packed-varlen")
    if row["setting"] in ("auto", "none") and reference and row["mfu"] is not None:
        numbers |= {"committed": reference, "mfu_vs_committed": row["mfu"] / reference["mfu"]}
        summary += f"; committed (H200): {reference['mfu']:.1%}"
    if row["setting"] == "auto" and row["mfu"] is not None:
        numbers["meets_target"] = row["mfu"] >= MFU_TARGET
        summary += f"; target {MFU_TARGET:.0%}: {'met' if numbers['meets_target'] else 'not met'}"
    if row["setting"] != "auto" and default["status"] == "ok":
        numbers["vs_default"] = row["tokens_per_s"] / default["tokens_per_s"]
        numbers["loss_vs_default"] = abs(row["warmup_loss"] - default["warmup_loss"]) / abs(default["warmup_loss"])
        summary += f"; {numbers['vs_default']:.2f}x the default, loss {numbers['loss_vs_default']:.1e} off"
    return Row(label, summary=summary, numbers=numbers)


def _same_loss(default: dict[str, Any], unfused: dict[str, Any]) -> Row:
    """The warm-up losses of the same weights, adapter and data with and without fused kernels."""
    a, b = unfused["warmup_loss"], default["warmup_loss"]
    difference = abs(b - a) / abs(a)
    ok = difference < 1e-2 or default["kernels"] == "none"
    return Row(
        "same loss with and without fused kernels",
        "ok" if ok else "failed",
        None if ok else f"warm-up losses {a:.5f} and {b:.5f} differ by {difference:.2%}",
        f"warm-up step loss {a:.5f} vs {b:.5f} ({difference:.2e} relative)",
        {"relative_difference": difference},
    )


def _which_pays(default: dict[str, Any], measured: list[dict[str, Any]]) -> Row:
    """The option that trains fastest with the default's loss (1% of it): the default stays until a GPU run says."""
    if default["status"] != "ok":
        return Row("which option pays", "failed", "the default was not measured")
    same = [
        row
        for row in measured
        if row["status"] == "ok"
        and row["setting"] != "auto"
        and abs(row["warmup_loss"] - default["warmup_loss"]) <= 1e-2 * abs(default["warmup_loss"])
    ]
    best = max(same, key=lambda row: row["tokens_per_s"], default=None)
    if best is None or best["tokens_per_s"] <= 1.02 * default["tokens_per_s"]:  # within 2%: noise, keep the default
        return Row("which option pays", summary="none: keep the default", numbers={"pays": None})
    gain = best["tokens_per_s"] / default["tokens_per_s"]
    mfu = f" (MFU {best['mfu']:.1%})" if best["mfu"] is not None else ""
    return Row(
        "which option pays",
        summary=f"{best['setting']}: {gain:.2f}x the default's tokens/s{mfu}, the same loss",
        numbers={"pays": best["setting"], "vs_default": gain},
    )


def _committed_figures() -> dict[str, dict[str, Any]]:
    """The committed 2026-11-26 H200 figures of the Llama-2-7B rows (results/throughput_h200_run3.json)."""
    if not COMMITTED.is_file():
        return {}
    report = json.loads(COMMITTED.read_text())
    return {
        r["variant"]: {key: r[key] for key in ("tokens_per_s", "mfu", "peak_memory_gib", "micro_batch_size")}
        | {"source": f"{COMMITTED.relative_to(REPO)} ({report['device']}, {report['date']})"}
        for r in report["results"]
        if r["model"] == "llama2-7b" and "tokens_per_s" in r
    }


def part_block(ctx: Context, part: Part) -> None:
    """Two identical points in one call, with the paper's settings (128 sequences a step, micro-batch found)."""
    experiment = write_experiment(ctx, "block", steps=ctx.scale.block_steps, batch=ctx.scale.block_batch, micro=0)
    first, second = run_eval(ctx, experiment, ["-4", "-4"], limit_s=240)
    for index, record in enumerate((first, second), start=1):
        row = record_row(f"point {index} of 2", record)
        if row.status == "ok":
            metrics = record["metrics"]
            steady = metrics["train_tokens"] / metrics["train_steps"] / metrics["train_step_seconds"]
            row.numbers["steady_tokens_per_s"] = steady
            row.summary += f", {steady:,.0f} tok/s after the first step, kernels {metrics.get('fused_kernels')}"
        part.rows.append(row)
    if first.get("status") == "OK" and second.get("status") == "OK":
        on_gpu = str(first.get("device", "")).startswith("cuda")
        key = "peak_gib" if on_gpu else "process_rss_gib"  # the CPU's peak is the whole process's high-water mark
        a, b = first["memory"][key], second["memory"][key]
        flat = b <= a * 1.02 + (0.25 if on_gpu else 0.05)
        part.rows.append(
            Row(
                "memory flat between points",
                "ok" if flat else "failed",
                None if flat else f"{key} grew from {a:.3f} to {b:.3f} GiB between two identical points",
                f"{key}: {a:.3f} -> {b:.3f} GiB; objective {first['metrics']['objective']:.6f} -> "
                f"{second['metrics']['objective']:.6f}",
                {"memory_key": key, "first_gib": a, "second_gib": b},
            )
        )


_VARIANTS_BF16 = {
    "LoRA": "{}",
    "DoRA": "{ use_dora = true }",
    "rsLoRA": "{ use_rslora = true }",
    "PiSSA (4 iterations of randomised SVD)": '{ init_lora_weights = "pissa_niter_4" }',
}
_VARIANTS_NF4 = {"QLoRA nf4": "{}", "QLoRA nf4 + DoRA": "{ use_dora = true }"}
QLORA_LOSS_TOLERANCE = 0.05  # relative: nf4's error on the weights moves the training loss by less than this


def part_variants(ctx: Context, part: Part) -> None:
    """Each variant as a point of a block (the base model loads once per quantisation); the GPU is shared with
    other parts meanwhile: step times are indicative, peak memory (this process's) is exact."""
    scale = ctx.scale
    training = {"steps": scale.variant_steps, "batch": scale.variant_batch, "micro": scale.variant_micro}
    records: dict[str, Any] = {}
    for name, variants, quantization in (
        ("variants-bf16", _VARIANTS_BF16, "none"),
        ("variants-nf4", _VARIANTS_NF4, "nf4"),
    ):
        experiment = write_experiment(ctx, name, space=choice_space(variants), quantization=quantization, **training)
        points = [str(i) for i in range(1, len(variants) + 1)]
        records.update(zip(variants, run_eval(ctx, experiment, points, limit_s=240), strict=True))
    reference = records["LoRA"]
    for variant, record in records.items():
        row = record_row(variant, record)
        if row.status == "ok" and reference.get("status") == "OK" and variant != "LoRA":
            lora = reference["metrics"]
            step = row.numbers["train_step_seconds"] / lora["train_step_seconds"]
            memory = row.numbers["peak_memory_gib"] / reference["memory"]["peak_gib"]
            loss = record["metrics"]["train_loss"] / lora["train_loss"] - 1
            row.numbers |= {"step_time_vs_lora": step, "peak_memory_vs_lora": memory, "train_loss_vs_lora": loss}
            row.summary += f"; vs LoRA: step {step:.2f}x, memory {memory:.2f}x, training loss {loss:+.2%}"
            # On CUDA the peak is the GPU's, of this point; a CPU's is the process's, whatever loaded in it.
            heavier = memory >= 1 and str(record.get("device", "")).startswith("cuda")
            if variant.startswith("QLoRA") and (abs(loss) > QLORA_LOSS_TOLERANCE or heavier):
                row.status = "failed"
                row.error = (
                    f"QLoRA's training loss should be within {QLORA_LOSS_TOLERANCE:.0%} of LoRA's and its peak memory "
                    f"below LoRA's: {row.summary}"
                )
        part.rows.append(row)


def part_loftq(ctx: Context, part: Part) -> None:
    """LoftQ, on the top 2 layers: its initialisation is a full SVD of each adapted weight. Its own call: without
    CUDA it cannot proceed, which ends the call."""
    scale = ctx.scale
    training = {"steps": scale.variant_steps, "batch": scale.variant_batch, "micro": scale.variant_micro}
    experiment = write_experiment(ctx, "loftq", space=choice_space(_VARIANTS_NF4), quantization="nf4", **training)
    top = ctx.prepared["layers"]
    layers = f"model.layers_to_transform=[{top - 2}, {top - 1}]"
    [record] = run_eval(ctx, experiment, ["1"], sets=["lora.init_lora_weights=loftq", layers], limit_s=180)
    part.rows.append(record_row("LoftQ (nf4, top 2 layers)", record))


def part_torchrun(ctx: Context, part: Part) -> None:
    training = {"steps": ctx.scale.variant_steps, "batch": ctx.scale.variant_batch, "micro": ctx.scale.variant_micro}
    experiment = write_experiment(ctx, "torchrun", **training)
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=1"]
    [record] = run_eval(ctx, experiment, ["-4"], launcher=launcher, limit_s=180)
    part.rows.append(record_row("torchrun --nproc-per-node=1", record))


def part_adapter(ctx: Context, part: Part) -> None:
    """An evaluation whose objective is a benchmark (the local multiple-choice task, 2 log-likelihood requests an
    item) and which saves its adapter; ``downstream`` scores the base model and the adapter on another task."""
    objective = (
        '[objective]\nname = "benchmark"\ndirection = "maximize"\n\n[objective.benchmark]\ntask = "tiny_mc"\n'
        f'metric = "acc"\ninclude_path = "{ctx.prepared["tasks"]}"\nbatch_size = 32\n'
    )
    training = {"steps": ctx.scale.adapter_steps, "batch": ctx.scale.variant_batch, "micro": ctx.scale.variant_micro}
    experiment = write_experiment(ctx, "adapter", save_adapter=True, extra=objective, **training)
    # The largest learning rate of the space: the adapter must move a bf16 model's scores after a few steps. lm-eval
    # takes log-probabilities in the model's dtype, 1/16 apart near a random model's -13: after the dry run's one
    # real update of 2 steps (the first is the warm-up's, learning rate 0), the adapter's change rounded away in 1
    # run of 3; its 8 steps move the scores by far more than that spacing.
    [record] = run_eval(ctx, experiment, ["-2"], limit_s=180)
    row = record_row("benchmark objective tiny_mc:acc, adapter saved", record)
    if row.status == "ok":
        requests = 2 * ctx.scale.benchmark_items
        seconds = record["timings"]["benchmark_s"]
        row.numbers |= {"requests": requests, "benchmark_s": seconds, "requests_per_s": requests / seconds}
        row.summary = (
            f"{requests / seconds:,.0f} log-likelihood requests/s ({requests} in {seconds:.1f} s, lm-eval's set-up "
            f"included), acc {record['metrics']['benchmark:tiny_mc:acc']:.3f}; " + row.summary
        )
    part.rows.append(row)
    adapter = Path(record.get("run_dir") or "/nonexistent") / "adapter"
    if row.status != "ok" or not adapter.is_dir():
        part.rows.append(Row("downstream scores the adapter", "skipped", "no adapter was saved"))
        return
    ctx.adapter = adapter
    scores = ctx.work / "runs" / "downstream.jsonl"
    ran = ctx.blackbox(
        "downstream", "--experiment", str(experiment), "--adapter", str(adapter), "--tasks", "tiny_ll:perplexity",
        "--include-path", ctx.prepared["tasks"], "--batch-size", "32", "--out", str(scores), limit_s=180,
    )  # fmt: skip
    rows = [json.loads(line) for line in scores.read_text().splitlines()] if scores.is_file() else []
    if ran.returncode != 0 or len(rows) != 2:
        part.rows.append(Row("downstream scores the adapter", "failed", f"downstream {ran.ended}: {ctx.last_error()}"))
        return
    base, tuned = rows[0]["value"], rows[1]["value"]
    changed = base != tuned
    part.rows.append(
        Row(
            "downstream scores the adapter",
            "ok" if changed else "failed",
            None if changed else f"the adapter's score {tuned} is the base model's",
            f"tiny_ll perplexity: base {base:.4f}, adapter {tuned:.4f} ({ran.seconds:.0f} s)",
            {"base": base, "adapter": tuned, "seconds": ran.seconds},
        )
    )


def part_answers(ctx: Context, part: Part) -> None:
    """Batched generation of the base model and of the adapter part's adapter, the default decoding, 2 batches each:
    the first warms up (on CUDA: compiles the decoding step), the second is the steady speed."""
    experiment = write_experiment(ctx, "answers", steps=1, batch=ctx.scale.variant_batch, micro=0)
    out = ctx.work / "runs" / "answers.jsonl"
    adapter = ["--adapter", str(ctx.adapter)] if ctx.adapter else []
    ran = ctx.blackbox(
        "answers", "--experiment", str(experiment), "--questions", ctx.prepared["questions"], *adapter, "--greedy",
        "--out", str(out), "--max-new-tokens", str(ctx.scale.new_tokens), "--batch-size", str(ctx.scale.answer_batch),
        limit_s=240,
    )  # fmt: skip
    lines = [json.loads(line) for line in out.read_text().splitlines()] if out.is_file() else []
    if ran.returncode != 0 or not lines:
        part.rows.append(Row("batched answers", "failed", f"answers {ran.ended}: {ctx.last_error()}"))
        return
    if not ctx.adapter:
        part.rows.append(Row("batched answers: the adapter", "skipped", "the adapter part saved no adapter"))
    on_gpu = ctx.scale is GPU
    for model in dict.fromkeys(line["model"] for line in lines):
        timings = [line["timings"] for line in lines if line["model"] == model]
        first, later = (
            _tokens_per_s(timings[: ctx.scale.answer_batch]),
            _tokens_per_s(timings[ctx.scale.answer_batch :]),
        )
        numbers = {"answers": len(timings), "first_batch_tokens_per_s": first, "tokens_per_s": later}
        numbers["new_tokens"] = sum(t["new_tokens"] for t in timings)
        warming = "compiling" if on_gpu else "warming up"  # the default decoding compiles on CUDA only
        summary = f"{later:,.0f} new tokens/s (batch of {ctx.scale.answer_batch}; first batch {first:,.0f}, {warming})"
        if on_gpu:
            numbers["meets_target"] = later >= TOKENS_PER_S_TARGET
            summary += f"; target {TOKENS_PER_S_TARGET:,}: {'met' if numbers['meets_target'] else 'not met'}"
        part.rows.append(Row(f"batched answers: {model}", summary=summary, numbers=numbers))


def _tokens_per_s(timings: list[dict[str, Any]]) -> float:
    seconds = sum(t["seconds"] for t in timings)
    return sum(t["new_tokens"] for t in timings) / seconds if seconds else math.nan


def part_decoding(ctx: Context, part: Part) -> None:
    """The decodings ``answers`` did not use, on the base model, side by side with the default's steady speed."""
    experiment = ctx.work / "answers.toml"  # the answers part's experiment (its base model)
    if not experiment.is_file():
        experiment = write_experiment(ctx, "answers", steps=1, batch=ctx.scale.variant_batch, micro=0)
    ran, result = ctx.worker("decoding", "--experiment", str(experiment), limit_s=180)
    if result is None:
        part.rows.append(Row("decodings side by side", "failed", f"the measurement {ran.ended}: {ctx.last_error()}"))
        return
    default = ctx.prepared.get("answers_base_tokens_per_s")
    for row in result["rows"]:
        summary = f"{row['tokens_per_s']:,.0f} new tokens/s (first batch {row['first_batch_tokens_per_s']:,.0f})"
        if default:
            row["default_vs_this"] = default / row["tokens_per_s"]
            summary += f"; the default (answers part) {row['default_vs_this']:.2f}x this"
        part.rows.append(Row(f"decoding: {row['decoding']}", summary=summary, numbers=row))
    if default:
        best = max(result["rows"], key=lambda row: row["tokens_per_s"])
        pays = "the default" if default >= best["tokens_per_s"] else best["decoding"]
        part.rows.append(Row("which decoding pays", summary=pays, numbers={"pays": pays}))


# ---------------------------------------------------------------------------------------------------------------
# Studies: NOMAD, early stopping, kill -9, resume


def part_study(ctx: Context, part: Part) -> None:
    """With PyNomadBBO (NOMAD's library: no nomad executable anywhere on the path)."""
    env = {k: v for k, v in ctx.env.items() if k != "NOMAD_EXE"}
    _study(ctx, part, "study-pynomad", env)


def part_study_binary(ctx: Context, part: Part) -> None:
    """With the nomad binary, when one is carried (NOMAD_EXE)."""
    binary = ctx.env.get("NOMAD_EXE")
    if not binary or not Path(binary).is_file():
        part.rows.append(
            Row(
                "NOMAD study, the nomad binary", "skipped", "no nomad binary carried (NOMAD_EXE unset): PyNomadBBO only"
            )
        )
        return
    _study(ctx, part, "study-binary", ctx.env)


_STUDY_SPACE = (
    '[[space]]\nname = "learning_rate"\ntype = "R"\nlower = -5\nupper = -1\nx0 = [-2, -5]\ndecode = "log10"\n\n'
    "[hyperparameters]\n"
)
# Checkpoints at a quarter, half and three quarters; the incumbent rule from the first finished evaluation on: a
# training stops at a checkpoint whose loss is worse than the incumbent's there. On random weights that is as much
# noise as learning rate (the dry run has seen the good and the poor learning rate stopped): the study proves the
# mechanism (a STOPPED record kept across kill -9 and resume), not which point deserves it.
_STUDY_STOPPING = (
    '[stopping]\nrule = "incumbent"\nmin_finished = 1\n',
    "checkpoints = [0.25, 0.5, 0.75]\ncheckpoint_rows = 16\n",
)


def _study(ctx: Context, part: Part, name: str, env: dict[str, str]) -> None:
    """A study of ``study_budget`` evaluations: killed with kill -9 (its whole process group) while the evaluation
    after a stopped one trains, then resumed by the same command."""
    scale = ctx.scale
    experiment = write_experiment(
        ctx, name, steps=scale.study_steps, batch=scale.variant_batch, micro=scale.variant_micro, space=_STUDY_SPACE,
        extra=_STUDY_STOPPING[0], validation=_STUDY_STOPPING[1], budget=scale.study_budget,
        model=ctx.prepared["study_model"],
    )  # fmt: skip
    param, study_dir = ctx.work / f"{name}.txt", ctx.work / "runs" / f"{name}-study"
    made = ctx.blackbox("params", "-e", str(experiment), "--out", str(param), limit_s=60, env=env)
    if made.returncode != 0:
        part.rows.append(Row("NOMAD parameter file", "failed", f"params {made.ended}: {ctx.last_error()}"))
        return
    study = [sys.executable, "-m", "blackbox.cli", "study", str(param), "--dir", str(study_dir)]
    started = time.monotonic()
    process = ctx.start(study, env=env)
    try:
        killed = _kill_after_a_stop(ctx, process, study_dir, timeout=ctx.limit_s(240))
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
    part.rows.append(killed)
    if killed.status != "ok":
        return
    resumed = ctx.run(study, limit_s=240, env=env)
    records = read_records(study_dir)
    counted = [r for r in records if r["status"] not in ("KILLED", "FAILED", "NOT_RUN")]
    stopped = [r for r in records if r["status"] == "STOPPED"]
    retrained = [r for r in records if stopped and r["point"] == stopped[0]["point"] and r is not stopped[0]]
    devices = sorted({str(r.get("device")) for r in counted})
    ok = (
        resumed.returncode == 0
        and len(counted) == scale.study_budget
        and [r["status"] for r in records].count("KILLED") == 1
        and not retrained
    )
    summary = (
        f"{len(counted)} evaluations counted of a budget of {scale.study_budget}, "
        f"{[r['status'] for r in records].count('KILLED')} KILLED, the stopped point "
        f"{'trained again' if retrained else 'answered from its record'}; on {', '.join(devices)}; "
        f"{time.monotonic() - started:.0f} s in all"
    )
    part.rows.append(
        Row(
            "resumed after kill -9",
            "ok" if ok else "failed",
            None if ok else f"study {resumed.ended}: {summary}",
            summary,
            {"statuses": [r["status"] for r in records], "devices": devices, "seconds": resumed.seconds},
        )
    )


def _kill_after_a_stop(ctx: Context, process: subprocess.Popen[str], study_dir: Path, *, timeout: float) -> Row:
    """Wait until an evaluation was stopped early and a later one trains, then kill -9 the study's process group
    and wait until none of its processes is left."""
    check = "early stopping, then kill -9 mid-evaluation"
    deadline = time.monotonic() + timeout
    stopped: list[dict[str, Any]] = []
    while time.monotonic() < deadline and process.poll() is None:
        records = read_records(study_dir)
        stopped = [r for r in records if r["status"] == "STOPPED"]
        done = {r["run_id"] for r in records}
        if stopped and _training(study_dir, not_in=done):
            break
        time.sleep(0.2)
    else:
        why = f"the study ended ({process.returncode})" if process.poll() is not None else f"not within {timeout:.0f} s"
        return Row(check, "failed", f"no evaluation trained after a stopped one: {why}; {len(stopped)} stopped")
    os.killpg(process.pid, signal.SIGKILL)
    killed_at = time.monotonic()
    while time.monotonic() - killed_at < 30:
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            break
        process.poll()  # reaps the study's own process: its group is gone once its children are
        time.sleep(0.1)
    else:
        return Row(check, "failed", "processes of the study were left 30 s after kill -9 of its process group")
    first = stopped[0]
    return Row(
        check,
        summary=f"point {first['point']} stopped at step {first['stopped']['step']} of "
        f"{first['stopped']['total_steps']}; killed while the next evaluation trained, gone in "
        f"{time.monotonic() - killed_at:.1f} s",
        numbers={"stopped_step": first["stopped"]["step"], "gone_s": time.monotonic() - killed_at},
    )


def _training(study_dir: Path, *, not_in: set[str]) -> bool:
    """Whether an evaluation without a record has logged a training step."""
    logs = [p for p in (study_dir / "evals").glob("*/eval.log") if p.parent.name not in not_in]
    return any("step " in log.read_text(errors="replace") for log in logs)


PARTS: dict[str, Callable[[Context, Part], None]] = {
    "prepare": part_prepare,
    "throughput": part_throughput,
    "block": part_block,
    "variants": part_variants,
    "loftq": part_loftq,
    "torchrun": part_torchrun,
    "adapter": part_adapter,
    "study": part_study,
    "study_binary": part_study_binary,
    "answers": part_answers,
    "decoding": part_decoding,
}
