"""The GPU path, proven in one call (issue 25): what a cloud GPU user runs, each part a few steps, in at most
8 minutes on one H100/H200, ending with one JSON and a short table. docs/gpu.md says how to carry the wheels
and run it in one device call (benchmarks/gpu_check.sh); ``--dry-run`` runs every part on a CPU with a tiny
model in about a minute (tests/test_gpu_check.py, in CI), so that no part rots between GPU loans.

Parts, in this order (each isolated: a part that fails is reported in one line and the others still run; a
part that would start with too little of ``--budget-s`` left is skipped and said so):

  prepare     a model of the Llama-2-7B architecture with random weights (the values do not change the speed),
              saved as a hub model is; a word-level tokenizer; instruction data whose token lengths follow
              Alpaca + Dolly's (benchmarks/throughput.py); small local lm-eval tasks; questions
  throughput  the paper's LoRA training (r 8 on q_proj,v_proj, 128 sequences a step) by throughput.py's method:
              tokens/s, MFU, peak memory, with no fused kernels and with what ``training.fused_kernels =
              "auto"`` (the default) picks, against the committed H200 figures
  variants    one short ``lora-blackbox eval`` each of LoRA, DoRA, rsLoRA, PiSSA, QLoRA nf4, QLoRA nf4 + DoRA,
              LoftQ: runs or fails with one line; peak memory and step time against plain LoRA
  block       a block of 2 identical points in one call with the paper's defaults (automatic micro-batch):
              memory flat between points, and the eval path's tokens/s
  torchrun    one point through torchrun on one GPU
  objective   a benchmark objective (a local lm-eval task): log-likelihood requests per second
  adapter     an evaluation that saves its adapter, scored again by ``lora-blackbox downstream``: the adapter
              changes the score
  answers     ``lora-blackbox answers`` (batched generation) of the base model and that adapter: new tokens/s

    python benchmarks/gpu_check.py --out "$OUT"                 # on the GPU machine (benchmarks/gpu_check.sh)
    python benchmarks/gpu_check.py --dry-run --out /tmp/check   # on a CPU: the tiny architecture, every part
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

REPO = Path(__file__).resolve().parent.parent
COMMITTED = REPO / "benchmarks" / "results" / "throughput_h200_run3.json"
MFU_TARGET = 0.55  # issue 25's goal for the default settings on the 7B architecture
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


@dataclass(frozen=True)
class Scale:
    """How big each part is: the GPU run's, or the dry run's (every code path, in seconds on a CPU)."""

    arch: str  # a key of throughput.ARCHITECTURES
    max_length: int  # of a sequence (the paper's 512); lengths follow instruction data's below it
    autocast: str  # training.autocast: the default, or none where bf16 autocast slows a tiny model down
    # model.attn_implementation: the default (on CUDA: "varlen" for packed batches), or "varlen" on the CPU too,
    # whose exact per-example stand-in takes the GPU's code path (packed-only attention, SDPA on padded batches)
    attention: str
    throughput_examples: int
    throughput_batch: int  # sequences per optimizer step (the paper's 128)
    throughput_steps: int  # timed optimizer steps after the warm-up step
    train_rows: int
    validation_rows: int
    variant_steps: int
    variant_batch: int  # sequences per step of the variants (fixed micro-batch: comparable memory)
    variant_micro: int
    block_batch: int  # sequences per step of the block's points (the paper's 128), automatic micro-batch
    block_steps: int
    benchmark_items: int  # items of the local multiple-choice task: 2 log-likelihood requests each
    questions: int
    new_tokens: int
    budget_s: float


GPU = Scale("llama2-7b", 512, "auto", "auto", 2048, 128, 3, 1024, 64, 3, 32, 8, 128, 2, 256, 32, 128, 420)
DRY_RUN = Scale("llama-tiny", 128, "none", "varlen", 64, 16, 1, 48, 16, 2, 8, 4, 16, 1, 8, 4, 8, 900)

# Rough cost of each part on an H100/H200 (seconds): a part is skipped when less than this is left.
_NEEDS_S = {
    "prepare": 40,
    "throughput": 45,
    "variants": 60,
    "block": 30,
    "torchrun": 25,
    "objective": 25,
    "adapter": 40,
    "answers": 20,
}


# ---------------------------------------------------------------------------------------------------------------
# What a part reports


@dataclass
class Row:
    """One check of a part: ``ok``, ``failed`` (with its one line) or ``skipped``; its numbers; a short summary."""

    check: str
    status: str = "ok"
    error: str | None = None
    summary: str = ""
    numbers: dict[str, Any] = field(default_factory=dict)


@dataclass
class Part:
    name: str
    status: str = "ok"  # ok, failed (a row failed), error (the part itself broke), skipped
    seconds: float = 0.0
    error: str | None = None
    rows: list[Row] = field(default_factory=list)


def one_line(text: str | None, limit: int = 300) -> str:
    """The first non-blank line of an error, shortened: what the table shows."""
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    first = lines[0] if lines else "no message"
    return first if len(first) <= limit else first[: limit - 3] + "..."


# ---------------------------------------------------------------------------------------------------------------
# Processes: every part runs in processes of its own (a CUDA error or liger's process-wide patch stays there)


@dataclass
class Ran:
    argv: list[str]
    returncode: int | None  # None: killed at its time limit
    stdout: str
    seconds: float

    @property
    def ended(self) -> str:
        if self.returncode is None:
            return f"timed out after {self.seconds:.0f} s"
        return f"exit status {self.returncode}"


def _children_cpu_s() -> float:
    """CPU seconds of the ended child processes of this one, their children included."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Context:
    scale: Scale
    work: Path
    log: TextIO
    deadline: float
    env: dict[str, str]
    prepared: dict[str, Any] = field(default_factory=dict)
    adapter: Path | None = None  # saved by the adapter part, asked questions by the answers part

    def remaining_s(self) -> float:
        return self.deadline - time.monotonic()

    def run(self, argv: list[str], *, limit_s: float | None = None) -> Ran:
        """Run ``argv`` in a session of its own (stderr to the log, stdout kept); killed at its time limit: the
        smaller of ``limit_s`` and what is left of the budget."""
        timeout = max(5.0, min(limit_s or math.inf, self.remaining_s()))
        self.log.write(f"\n$ {shlex.join(argv)}\n")
        self.log.flush()
        started, cpu = time.monotonic(), _children_cpu_s()
        process = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=self.log,
            cwd=self.work,
            env=self.env,
            text=True,
            start_new_session=True,
        )
        try:
            stdout, _ = process.communicate(timeout=timeout)
            code: int | None = process.returncode
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                stdout, _ = process.communicate(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                stdout, _ = process.communicate()
            code = None
        ran = Ran(argv, code, stdout, time.monotonic() - started)
        self.log.write(f"# {ran.ended}, {ran.seconds:.1f} s ({_children_cpu_s() - cpu:.1f} s of CPU)\n")
        self.log.flush()
        return ran

    def worker(self, name: str, *args: str, limit_s: float | None = None) -> tuple[Ran, dict[str, Any] | None]:
        """This script as a worker process (``--worker NAME``); its result JSON, None when it wrote none."""
        result = self.work / f"{name}-{'-'.join(args) or 'result'}.json"
        result.unlink(missing_ok=True)
        argv = [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--work", str(self.work)]
        argv += ["--scale", "dry-run" if self.scale is DRY_RUN else "gpu", "--result", str(result), *args]
        ran = self.run(argv, limit_s=limit_s)
        return ran, json.loads(result.read_text()) if result.is_file() else None

    def blackbox(self, *args: str, launcher: list[str] | None = None, limit_s: float | None = None) -> Ran:
        """``lora-blackbox ARGS`` as a user runs it (``python -m blackbox.cli``), optionally under a launcher."""
        return self.run([sys.executable, *(launcher or []), "-m", "blackbox.cli", *args], limit_s=limit_s)


# ---------------------------------------------------------------------------------------------------------------
# Workers: the parts' code that needs torch in the process


def worker_prepare(scale: Scale, work: Path, result: Path) -> None:
    """The model, tokenizer, data, tasks and questions every later part uses; the device's description."""
    import throughput
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from blackbox.training.data import ALPACA_WITHOUT_CONTEXT
    from blackbox.training.testing import instruction_rows, write_benchmark_tasks

    started = time.perf_counter()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    architecture = throughput.ARCHITECTURES[scale.arch]
    tokenizer = _word_tokenizer(architecture["vocab_size"])
    model_dir = work / "model"
    tokenizer.save_pretrained(model_dir)
    ids = {name: tokenizer.convert_tokens_to_ids(name) for name in ("<s>", "</s>", "<pad>")}
    config = LlamaConfig(
        **architecture,
        max_position_embeddings=4096,
        bos_token_id=ids["<s>"],
        eos_token_id=ids["</s>"],
        pad_token_id=ids["<pad>"],
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM._from_config(config, dtype=torch.bfloat16 if device.type == "cuda" else torch.float32)
    built_s = time.perf_counter() - started
    model.save_pretrained(model_dir)
    saved_s = time.perf_counter() - started - built_s
    parameters = sum(p.numel() for p in model.parameters())
    del model
    data = work / "data"
    data.mkdir(exist_ok=True)
    filler = [t for t in tokenizer.get_vocab() if t.startswith("w") and t[1:].isdigit()]
    template = len(tokenizer(ALPACA_WITHOUT_CONTEXT.format(instruction=""))["input_ids"])
    for name, rows, seed in (("train", scale.train_rows, 1), ("validation", scale.validation_rows, 2)):
        lines = (
            json.dumps(row)
            for row in _instruction_rows(rows, filler, template_tokens=template, max_length=scale.max_length, seed=seed)
        )
        (data / f"{name}.jsonl").write_text("".join(line + "\n" for line in lines))
    tasks = write_benchmark_tasks(work / "tasks", n_items=scale.benchmark_items)
    questions = work / "questions.jsonl"
    asked = instruction_rows(scale.questions, seed=5)
    questions.write_text(
        "".join(json.dumps({"id": i, "question": r["instruction"]}) + "\n" for i, r in enumerate(asked))
    )
    gpu = None
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        gpu = {
            "name": properties.name,
            "memory_gib": properties.total_memory / 1024**3,
            "capability": f"{properties.major}.{properties.minor}",
            "multiprocessors": properties.multi_processor_count,
        }
    summary = {
        "device": str(device),
        "gpu": gpu,
        "cuda": torch.version.cuda,
        "model": str(model_dir),
        "parameters": parameters,
        "model_gib": sum(f.stat().st_size for f in model_dir.glob("*.safetensors")) / 1024**3,
        "build_s": built_s,
        "save_s": saved_s,
        "train": str(data / "train.jsonl"),
        "validation": str(data / "validation.jsonl"),
        "tasks": str(tasks),
        "questions": str(questions),
        "layers": config.num_hidden_layers,
    }
    result.write_text(json.dumps(summary, indent=1))


def _word_tokenizer(vocab_size: int) -> Any:
    """A word-level tokenizer: the prompt template's and the local tasks' words, then filler words ``w<N>`` up to
    ``vocab_size``, so that a data row of N words is N tokens (lengths are set exactly) and the tasks read as text."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    from blackbox.training.data import ALPACA_WITH_CONTEXT, ALPACA_WITHOUT_CONTEXT
    from blackbox.training.testing import instruction_rows

    splitter = pre_tokenizers.Whitespace()
    texts = [ALPACA_WITH_CONTEXT, ALPACA_WITHOUT_CONTEXT, "0 1 2 3 4 5 6 7 8 9 ! ? . , : #"]
    texts += [" ".join(row.values()) for row in instruction_rows(600, seed=3)]
    words = ["<unk>", "<s>", "</s>", "<pad>"]
    for text in texts:
        for word, _ in splitter.pre_tokenize_str(text):
            for form in (word, word.upper()):
                if form not in words:
                    words.append(form)
    words += [f"w{i}" for i in range(vocab_size - len(words))]
    bpe = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words[:vocab_size])}, unk_token="<unk>"))
    bpe.pre_tokenizer = splitter
    bpe.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )


def _instruction_rows(
    n: int, filler: list[str], *, template_tokens: int, max_length: int, seed: int
) -> list[dict[str, str]]:
    """Rows whose token lengths (prompt, response) follow instruction data's (throughput.synthetic_lengths);
    ``template_tokens``: those of the prompt template with an empty instruction."""
    import numpy as np
    import throughput

    prompt, total = throughput.synthetic_lengths(n, seed, max_length)
    rng = np.random.default_rng(seed)
    rows = []
    for p, t in zip(prompt, total, strict=True):
        instruction = rng.choice(filler, size=max(1, int(p) - template_tokens))
        response = rng.choice(filler, size=max(1, int(t - p) - 1))  # the end-of-sequence token is the last
        rows.append({"instruction": " ".join(instruction), "context": "", "response": " ".join(response)})
    return rows


def worker_throughput(scale: Scale, kernels: str, result: Path) -> None:
    """throughput.py's measurement of our training loop (packed batches; variable-length flash attention on CUDA)
    with ``training.fused_kernels = kernels``."""
    import throughput
    import torch

    from blackbox.training import attention

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    fast = device.type == "cuda" and attention.varlen_available()  # what "auto" picks for packed batches
    attn = attention.NAME if fast or scale.attention == attention.NAME else "sdpa"
    vocab_size = throughput.ARCHITECTURES[scale.arch]["vocab_size"]
    split = throughput.synthetic_split(scale.throughput_examples, vocab_size, seed=0, max_length=scale.max_length)
    torch.manual_seed(0)  # the same weights and adapter in every run: their warm-up losses compare
    m = throughput.run_ours(
        scale.arch,
        split,
        device=device,
        steps=scale.throughput_steps,
        packing=True,
        attn=attn,
        kernels=kernels,
        effective_batch_size=scale.throughput_batch,
    )
    peak = throughput.peak_flops(device)
    result.write_text(
        json.dumps(
            {
                "setting": kernels,
                "kernels": m.kernels,
                "attention": attn,
                "tokens_per_s": m.tokens / m.seconds,
                "mfu": m.flops / m.seconds / peak if peak else None,
                "peak_memory_gib": m.peak_memory_gib,
                "micro_batch_size": m.micro_batch_size,
                "timed_tokens": m.tokens,
                "seconds": m.seconds,
                "mean_length": float(split.lengths.mean()),
                "warmup_loss": m.warmup_loss,
            }
        )
    )


# ---------------------------------------------------------------------------------------------------------------
# Parts


def part_prepare(ctx: Context, part: Part) -> None:
    ran, prepared = ctx.worker("prepare")
    if prepared is None:
        raise RuntimeError(f"the preparation {ran.ended} and wrote nothing (see the log)")
    ctx.prepared = prepared
    part.rows.append(
        Row(
            "model, data, tasks",
            summary=f"{prepared['parameters'] / 1e6:,.1f}M parameters ({prepared['model_gib']:.1f} GiB) built in "
            f"{prepared['build_s']:.1f} s, saved in {prepared['save_s']:.1f} s on {prepared['device']}",
            numbers=prepared,
        )
    )


def part_throughput(ctx: Context, part: Part) -> None:
    committed = _committed_figures() if ctx.scale.arch == "llama2-7b" else {}
    for setting in ("none", "auto"):
        ran, measured = ctx.worker("throughput", setting, limit_s=150)
        label = "training.fused_kernels = " + ("'none'" if setting == "none" else "'auto' (the default)")
        if measured is None:
            part.rows.append(Row(label, "failed", f"the measurement {ran.ended}: {_last_error(ctx)}"))
            continue
        reference = committed.get("packed-varlen-liger" if measured["kernels"] == "liger" else "packed-varlen")
        numbers = {**measured, "committed": reference}
        mfu = f", MFU {measured['mfu']:.1%}" if measured["mfu"] is not None else ""
        summary = (
            f"{measured['tokens_per_s']:,.0f} tok/s{mfu}, peak {measured['peak_memory_gib']:.1f} GiB, "
            f"micro-batch {measured['micro_batch_size']}, kernels {measured['kernels']}"
        )
        if reference and measured["mfu"] is not None:
            numbers["mfu_vs_committed"] = measured["mfu"] / reference["mfu"]
            summary += f"; committed (H200): {reference['mfu']:.1%}, now {numbers['mfu_vs_committed']:.2f}x"
        if setting == "auto" and measured["mfu"] is not None:
            numbers["meets_target"] = measured["mfu"] >= MFU_TARGET
            summary += f"; target {MFU_TARGET:.0%}: {'met' if numbers['meets_target'] else 'not met'}"
        part.rows.append(Row(label, summary=summary, numbers=numbers))
    losses = [r.numbers["warmup_loss"] for r in part.rows if r.status == "ok"]
    if len(losses) == 2:
        difference = abs(losses[1] - losses[0]) / abs(losses[0])
        fused = part.rows[1].numbers["kernels"] != "none"
        ok = difference < 1e-2 or not fused
        part.rows.append(
            Row(
                "same loss with and without fused kernels",
                "ok" if ok else "failed",
                None if ok else f"warm-up losses {losses[0]:.5f} and {losses[1]:.5f} differ by {difference:.2%}",
                f"warm-up step loss {losses[0]:.5f} vs {losses[1]:.5f} ({difference:.2e} relative)",
                {"relative_difference": difference},
            )
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


_VARIANTS_BF16 = {
    "LoRA": "{}",
    "DoRA": "{ use_dora = true }",
    "rsLoRA": "{ use_rslora = true }",
    "PiSSA (4 iterations of randomised SVD)": '{ init_lora_weights = "pissa_niter_4" }',
}
_VARIANTS_NF4 = {"QLoRA nf4": "{}", "QLoRA nf4 + DoRA": "{ use_dora = true }"}


def part_variants(ctx: Context, part: Part) -> None:
    """Each variant as a point of a block (the base model loads once per quantisation); LoftQ alone: a call that
    cannot proceed (LoftQ without CUDA) ends its call."""
    scale = ctx.scale
    training = {"steps": scale.variant_steps, "batch": scale.variant_batch, "micro": scale.variant_micro}
    groups = [("variants-bf16", _VARIANTS_BF16, "none"), ("variants-nf4", _VARIANTS_NF4, "nf4")]
    records: dict[str, Any] = {}
    for name, variants, quantization in groups:
        experiment = _experiment(ctx, name, space=_choice_space(variants), quantization=quantization, **training)
        points = [str(i) for i in range(1, len(variants) + 1)]
        found = _eval(ctx, experiment, points, limit_s=240)
        records.update(zip(variants, found, strict=True))
    # LoftQ's initialisation is a full SVD of each adapted weight: on the top 2 layers only, to stay short.
    top = ctx.prepared["layers"]
    experiment = _experiment(ctx, "variants-loftq", space=_choice_space(_VARIANTS_NF4), quantization="nf4", **training)
    layers = f"model.layers_to_transform=[{top - 2}, {top - 1}]"
    records["LoftQ (nf4, top 2 layers)"] = _eval(
        ctx, experiment, ["1"], sets=["lora.init_lora_weights=loftq", layers], limit_s=180
    )[0]
    reference = records["LoRA"]
    for variant, record in records.items():
        row = _record_row(variant, record)
        comparable = variant != "LoRA" and "top 2 layers" not in variant  # LoftQ adapts 2 layers, not all
        if row.status == "ok" and reference.get("status") == "OK" and comparable:
            step = row.numbers["train_step_seconds"] / reference["metrics"]["train_step_seconds"]
            memory = row.numbers["peak_memory_gib"] / reference["metrics"]["peak_memory_gib"]
            row.numbers |= {"step_time_vs_lora": step, "peak_memory_vs_lora": memory}
            row.summary += f"; vs LoRA: step {step:.2f}x, memory {memory:.2f}x"
        part.rows.append(row)


def part_block(ctx: Context, part: Part) -> None:
    """Two identical points in one call, with the paper's settings (128 sequences a step, micro-batch found)."""
    experiment = _experiment(ctx, "block", steps=ctx.scale.block_steps, batch=ctx.scale.block_batch, micro=0)
    first, second = _eval(ctx, experiment, ["-4", "-4"], limit_s=240)
    for index, record in enumerate((first, second), start=1):
        row = _record_row(f"point {index} of 2", record)
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


def part_torchrun(ctx: Context, part: Part) -> None:
    training = {"steps": ctx.scale.variant_steps, "batch": ctx.scale.variant_batch, "micro": ctx.scale.variant_micro}
    experiment = _experiment(ctx, "torchrun", **training)
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=1"]
    [record] = _eval(ctx, experiment, ["-4"], launcher=launcher, limit_s=180)
    part.rows.append(_record_row("torchrun --nproc-per-node=1", record))


def part_objective(ctx: Context, part: Part) -> None:
    """A benchmark objective: every evaluation scores the local multiple-choice task (2 requests an item)."""
    objective = (
        '[objective]\nname = "benchmark"\ndirection = "maximize"\n\n[objective.benchmark]\ntask = "tiny_mc"\n'
        f'metric = "acc"\ninclude_path = "{ctx.prepared["tasks"]}"\nbatch_size = 32\n'
    )
    experiment = _experiment(ctx, "objective", steps=1, batch=ctx.scale.variant_batch, micro=0, extra=objective)
    [record] = _eval(ctx, experiment, ["-4"], limit_s=180)
    row = _record_row("benchmark objective tiny_mc:acc", record)
    if row.status == "ok":
        requests = 2 * ctx.scale.benchmark_items
        seconds = record["timings"]["benchmark_s"]
        row.numbers |= {"requests": requests, "benchmark_s": seconds, "requests_per_s": requests / seconds}
        row.summary = (
            f"{requests / seconds:,.0f} log-likelihood requests/s ({requests} in {seconds:.1f} s, lm-eval's set-up "
            f"included), acc {record['metrics']['benchmark:tiny_mc:acc']:.3f}"
        )
    part.rows.append(row)


def part_adapter(ctx: Context, part: Part) -> None:
    """An evaluation saves its adapter; ``downstream`` scores the base model and the adapter on a local task."""
    training = {"steps": ctx.scale.variant_steps, "batch": ctx.scale.variant_batch, "micro": ctx.scale.variant_micro}
    experiment = _experiment(ctx, "adapter", save_adapter=True, **training)
    [record] = _eval(ctx, experiment, ["-3"], limit_s=180)
    row = _record_row("evaluation saving its adapter", record)
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
        part.rows.append(Row("downstream scores the adapter", "failed", f"downstream {ran.ended}: {_last_error(ctx)}"))
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
    """Batched generation of the base model (and of the adapter part's adapter, when it saved one)."""
    experiment = _experiment(ctx, "answers", steps=1, batch=ctx.scale.variant_batch, micro=0)
    out = ctx.work / "runs" / "answers.jsonl"
    adapter = ["--adapter", str(ctx.adapter)] if ctx.adapter else []
    ran = ctx.blackbox(
        "answers", "--experiment", str(experiment), "--questions", ctx.prepared["questions"], *adapter,
        "--out", str(out), "--max-new-tokens", str(ctx.scale.new_tokens), "--batch-size", str(ctx.scale.questions),
        limit_s=180,
    )  # fmt: skip
    lines = [json.loads(line) for line in out.read_text().splitlines()] if out.is_file() else []
    if ran.returncode != 0 or not lines:
        part.rows.append(Row("batched answers", "failed", f"answers {ran.ended}: {_last_error(ctx)}"))
        return
    for model in dict.fromkeys(line["model"] for line in lines):
        mine = [line["timings"] for line in lines if line["model"] == model]
        tokens, seconds = sum(t["new_tokens"] for t in mine), sum(t["seconds"] for t in mine)
        part.rows.append(
            Row(
                f"batched answers: {model}",
                summary=f"{tokens / seconds:,.0f} new tokens/s ({len(mine)} answers in one batch, {tokens} tokens)",
                numbers={
                    "answers": len(mine),
                    "new_tokens": tokens,
                    "seconds": seconds,
                    "tokens_per_s": tokens / seconds,
                },
            )
        )


PARTS: dict[str, Callable[[Context, Part], None]] = {
    "prepare": part_prepare,
    "throughput": part_throughput,
    "variants": part_variants,
    "block": part_block,
    "torchrun": part_torchrun,
    "objective": part_objective,
    "adapter": part_adapter,
    "answers": part_answers,
}


# ---------------------------------------------------------------------------------------------------------------
# Experiments and evaluations


def _choice_space(variants: dict[str, str]) -> str:
    values = ", ".join(variants.values())
    return (
        f'[[space]]\nname = "lora"\ntype = "I"\nlower = 1\nupper = {len(variants)}\nx0 = 1\ndecode = "choice"\n'
        f"values = [{values}]\n\n[hyperparameters]\nlearning_rate = 1e-4\n"
    )


_LEARNING_RATE_SPACE = (
    '[[space]]\nname = "learning_rate"\ntype = "R"\nlower = -5\nupper = -2\nx0 = -4\ndecode = "log10"\n\n'
    "[hyperparameters]\n"
)


def _experiment(
    ctx: Context,
    name: str,
    *,
    steps: int,
    batch: int,
    micro: int,
    space: str = _LEARNING_RATE_SPACE,
    quantization: str = "none",
    save_adapter: bool = False,
    extra: str = "",
) -> Path:
    """An experiment with the paper's settings (paper_exp2's: Alpaca template, 512 tokens, r 8 on q_proj,v_proj,
    cosine schedule, warm-up 3%, seed 42) on the prepared model and data, ``steps`` steps of ``batch`` sequences."""
    prepared = ctx.prepared
    text = f"""# Written by benchmarks/gpu_check.py: the paper's evaluation, a few steps of it.
[study]
name = "gpu-check-{name}"
budget = 10
outputs = ["OBJ:objective", "EXTRA_O:run_id"]

{space}lora_r = 8
lora_alpha = 16
lora_dropout = 0.05

[model]
name_or_path = "{prepared["model"]}"
target_modules = ["q_proj", "v_proj"]
quantization = "{quantization}"
attn_implementation = "{ctx.scale.attention}"

[data]
train = "{prepared["train"]}"
validation = "{prepared["validation"]}"
template = "alpaca"
max_length = {ctx.scale.max_length}

[training]
max_steps = {steps}
effective_batch_size = {batch}
micro_batch_size = {micro}
lr_scheduler = "cosine"
warmup_ratio = 0.03
seed = 42
log_every_steps = 1
autocast = "{ctx.scale.autocast}"

[validation]
batch_size = 4

[records]
dir = "{ctx.work / "runs" / name}"
save_adapter = {"true" if save_adapter else "false"}

{extra}"""
    path = ctx.work / f"{name}.toml"
    path.write_text(text)
    return path


def _eval(
    ctx: Context,
    experiment: Path,
    points: list[str],
    *,
    sets: list[str] | None = None,
    launcher: list[str] | None = None,
    limit_s: float | None = None,
) -> list[dict[str, Any]]:
    """``lora-blackbox eval`` of a block of points, as NOMAD calls it; each point's record (as a dict), or a stand-in
    that says why there is none. A stdout that is not one result line per point fails every point."""
    point_file = ctx.work / f"{experiment.stem}-points.txt"
    point_file.write_text("".join(p + "\n" for p in points))
    overrides = [word for item in sets or [] for word in ("--set", item)]
    ran = ctx.blackbox(
        "eval", "--experiment", str(experiment), *overrides, str(point_file), launcher=launcher, limit_s=limit_s
    )
    from blackbox.core.record import RecordStore

    store = RecordStore(ctx.work / "runs" / experiment.stem)
    found = {r.block_index: r.as_dict() for r in store.records() if r.point_file == str(point_file.resolve())}
    lines = ran.stdout.splitlines()
    records = []
    for index in range(len(points)):
        record = found.get(index) or {"status": "NO RECORD", "error": f"eval {ran.ended}: {_last_error(ctx)}"}
        if ran.returncode == 0 and len(lines) != len(points):
            record = {**record, "status": "BAD STDOUT", "error": f"{len(lines)} stdout lines for {len(points)} points"}
        records.append(record)
    return records


def _record_row(check: str, record: dict[str, Any]) -> Row:
    """A row from an evaluation's record: OK with its step time and peak memory, or failed with its one line."""
    if record.get("status") != "OK":
        return Row(check, "failed", f"{record.get('status')}: {one_line(record.get('error'))}")
    metrics, memory = record["metrics"], record["memory"]
    numbers = {
        "train_step_seconds": metrics["train_step_seconds"],
        "train_first_step_seconds": metrics["train_first_step_seconds"],
        "peak_memory_gib": memory["peak_gib"],
        "micro_batch_size": metrics["micro_batch_size"],
        "validation_loss": metrics["validation_loss"],
        "fused_kernels": metrics.get("fused_kernels"),
        "precision": metrics["precision"],
        "attention": metrics["attention"],
        "timings": record["timings"],
    }
    summary = (
        f"step {metrics['train_step_seconds']:.2f} s (first {metrics['train_first_step_seconds']:.2f} s), "
        f"peak {memory['peak_gib']:.1f} GiB, micro-batch {metrics['micro_batch_size']}, "
        f"loss {metrics['validation_loss']:.4f}"
    )
    return Row(check, summary=summary, numbers=numbers)


def _last_error(ctx: Context) -> str:
    """The last line of the log that names an error: why a process ended without a result."""
    ctx.log.flush()
    text = Path(ctx.log.name).read_text(errors="replace").splitlines()[-200:]
    hits = [line for line in text if "Error" in line or "error" in line or "refused" in line]
    return one_line(hits[-1] if hits else "no error line in the log")


# ---------------------------------------------------------------------------------------------------------------
# The run


def run_parts(ctx: Context, names: list[str], report: dict[str, Any], write: Callable[[], None]) -> None:
    for name in names:
        part = Part(name)
        report["parts"].append(part)
        needed = _NEEDS_S[name] if ctx.scale is GPU else 5
        if ctx.remaining_s() < needed:
            part.status, part.error = "skipped", f"out of time: {ctx.remaining_s():.0f} s left, about {needed} s needed"
        elif name != "prepare" and not ctx.prepared:
            part.status, part.error = "skipped", "no model: the preparation failed"
        else:
            started = time.monotonic()
            ctx.log.write(f"\n===== part {name}\n")
            try:
                PARTS[name](ctx, part)
            # A benchmark harness's boundary: a part that breaks is reported in one line and the next one runs.
            except Exception as e:  # noqa: BLE001
                part.status, part.error = "error", one_line(f"{type(e).__name__}: {e}")
            part.seconds = time.monotonic() - started
            if part.status == "ok" and any(row.status == "failed" for row in part.rows):
                part.status = "failed"
        print(f"{name:10} {part.status:8} {part.seconds:6.1f} s  {part.error or ''}", flush=True)
        write()


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="the tiny architecture on any device: every code path")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu-check")), help="default: $OUT")
    parser.add_argument("--work", type=Path, help="models, data and records (default: a temporary folder)")
    parser.add_argument("--parts", default=",".join(PARTS), help="a comma-separated subset, in PARTS' order")
    parser.add_argument("--budget-s", type=float, help="stop starting parts after this (default: 420; dry run: 900)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--scale", choices=["gpu", "dry-run"], help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("kernels", nargs="?", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        scale = DRY_RUN if args.scale == "dry-run" else GPU
        if args.worker == "prepare":
            worker_prepare(scale, args.work, args.result)
        else:
            worker_throughput(scale, args.kernels, args.result)
        return 0
    from machine import describe

    scale = DRY_RUN if args.dry_run else GPU
    names = [n for n in PARTS if n in args.parts.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.work or Path(tempfile.mkdtemp(prefix="gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    env = {k: v for k, v in os.environ.items() if k not in _CALLERS_VARIABLES}
    env |= {
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
    if args.dry_run:
        # One thread: a tiny model gains nothing from more, and on a shared CPU two threads of each process wait on
        # each other (measured on a loaded 2-core VM: 186 against 3,436 tokens/s of one training step).
        env |= {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
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

    def write() -> None:
        report["seconds"] = time.monotonic() - started
        json_path.write_text(json.dumps(report, indent=1, default=lambda o: asdict(o)))

    with (args.out / "gpu_check.log").open("w", encoding="utf-8") as log:
        ctx = Context(scale, work, log, started + report["budget_s"], env)
        run_parts(ctx, names, report, write)
    write()
    table_path.write_text(table(report))
    print("\n" + table(report), flush=True)
    return 0


# Variables of the calling shell that would change what the parts run: a study's, an experiment's, MLflow's.
_CALLERS_VARIABLES = {"LORA_BLACKBOX_ANSWER_FINISHED", "LORA_BLACKBOX_EXPERIMENT", "MLFLOW_TRACKING_URI"}


if __name__ == "__main__":
    sys.exit(main())
