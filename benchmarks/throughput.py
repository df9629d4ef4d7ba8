"""Training throughput of the project's LoRA step against the paper's settings, side by side.

Builds real Llama architectures with random weights (the values do not change the speed) and
synthetic token ids whose lengths follow instruction data (prompt + response like Alpaca/Dolly: mean
~200 tokens, a long tail cut at 512), then trains LoRA r 8 on q_proj,v_proj with:

- baseline: the paper's settings, HF Trainer, fp32 weights + bf16 autocast, batch 4 padded to the
  longest in the batch, 8 accumulation steps (SDPA attention, a stronger baseline than the paper's eager);
- ours: ``blackbox.training.train.train`` with bf16 weights, fused AdamW, micro-batches found automatically,
  and one of: padded length-grouped batches (SDPA), packed batches with SDPA's block mask, or packed
  batches with variable-length flash attention (``attn_implementation="varlen"``).

Reports real (non-padding) tokens per second, model-FLOP utilisation (4N per real token plus attention,
12·layers·hidden·length per token, as the anchor in shared/docs/PAPER.md; peak from a table), and
peak memory. Prints a table and writes JSON (after each run, so a cut-off run keeps its results).

    python benchmarks/throughput.py --models llama2-7b,llama-1b --out throughput.json      # GPU
    python benchmarks/throughput.py --models llama-1b-cpu --steps 2 --out cpu.json          # CPU
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

ARCHITECTURES: dict[str, dict[str, Any]] = {
    "llama2-7b": dict(
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        vocab_size=32000,
        tie_word_embeddings=False,
    ),
    # Llama-3.2-1B-like: grouped-query attention, large vocabulary, tied embeddings.
    "llama-1b": dict(
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
        tie_word_embeddings=True,
        rope_theta=500000.0,
    ),
    # The shape of the tests' tiny model: every code path in seconds on a CPU (benchmarks/gpu_check.py --dry-run).
    "llama-tiny": dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=1024,
        tie_word_embeddings=True,
    ),
    # The 1B shape reduced to run on a CPU in a minute.
    "llama-1b-cpu": dict(
        hidden_size=512,
        intermediate_size=2048,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=2,
        vocab_size=32000,
        tie_word_embeddings=True,
        rope_theta=500000.0,
    ),
}

# Dense bf16 tensor-core peak, FLOP/s.
PEAK_FLOPS = {"H100": 989.4e12, "H200": 989.4e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12}


def synthetic_lengths(n: int, seed: int, max_length: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """(prompt, total) lengths like Alpaca/Dolly with the Alpaca template: prompt ~40 template tokens
    plus a log-normal instruction and context, response log-normal with a long tail; cut at 512."""
    rng = np.random.default_rng(seed)
    prompt = 40 + rng.lognormal(mean=3.4, sigma=0.8, size=n)
    response = rng.lognormal(mean=4.4, sigma=0.9, size=n)
    prompt = np.clip(prompt, 41, max_length - 8).astype(np.int64)
    total = np.minimum(prompt + np.maximum(response, 1), max_length).astype(np.int64)
    return prompt, total


def synthetic_split(n: int, vocab: int, seed: int, max_length: int = 512) -> Any:
    from blackbox.training.data import TokenizedSplit

    prompt, total = synthetic_lengths(n, seed, max_length)
    rng = np.random.default_rng(seed + 1)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(total, out=offsets[1:])
    ids = rng.integers(3, vocab, size=int(offsets[-1]), dtype=np.int32)
    return TokenizedSplit(ids, offsets, prompt.astype(np.int32))


def build_model(name: str, *, dtype: torch.dtype, device: torch.device, attn: str) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    from blackbox.training import attention

    if attn == attention.NAME:
        attention.register()
    config = LlamaConfig(**ARCHITECTURES[name], max_position_embeddings=4096, attn_implementation=attn)
    config.use_cache = False
    with torch.device(device):
        model = LlamaForCausalLM._from_config(config, dtype=dtype)
    model.requires_grad_(False)
    return model


def attach_lora(model: Any) -> Any:
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, target_modules=["q_proj", "v_proj"]))


def flops_per_sequence(n_params: int, arch: dict[str, Any], length: int) -> float:
    return 4.0 * n_params * length + 12.0 * arch["num_hidden_layers"] * arch["hidden_size"] * length * length


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_FLOPS.items() if k in name), None)


@dataclass
class Measurement:
    tokens: int  # real (non-padding) tokens trained on in the timed part
    padded_tokens: int  # tokens computed, padding included
    flops: float
    seconds: float
    peak_memory_gib: float
    micro_batch_size: int
    kernels: str = "none"  # the fused kernels the model trained with
    warmup_loss: float = math.nan  # the loss of the warm-up step (the same weights and data: comparable across runs)


def run_ours(
    name: str,
    split: Any,
    *,
    device: torch.device,
    steps: int,
    packing: bool,
    attn: str,
    kernels: str = "none",
    effective_batch_size: int = 128,
) -> Measurement:
    """``kernels``: ``training.fused_kernels`` (``none``, ``liger``, or ``auto``: what the blackbox picks here)."""
    from blackbox.core.experiment import TrainingConfig
    from blackbox.training.model import apply_fused_kernels, choose_fused_kernels
    from blackbox.training.precision import Precision
    from blackbox.training.train import train

    precision = Precision(torch.bfloat16 if device.type == "cuda" else torch.float32, None)
    base = build_model(name, dtype=precision.weights, device=device, attn=attn)
    kernels, _ = choose_fused_kernels(kernels, base, device, quantized=False)
    apply_fused_kernels(base, kernels, device)
    model = attach_lora(base)
    n_params = sum(p.numel() for p in model.parameters())
    config = TrainingConfig(
        max_steps=1, effective_batch_size=effective_batch_size, micro_batch_size=0, packing=packing, seed=0
    )
    warm = train(
        model=model, split=split, learning_rate=1e-4, config=config, device=device, precision=precision, pad_id=0
    )  # warm-up step; finds the micro-batch that fits
    # Timed: other examples (another seed), the micro-batch the warm-up found.
    config = config.model_copy(update={"max_steps": steps, "micro_batch_size": warm.micro_batch_size, "seed": 1})
    _reset_memory(device)
    stats = train(
        model=model, split=split, learning_rate=1e-4, config=config, device=device, precision=precision, pad_id=0
    )
    _synchronize(device)
    from blackbox.training.batches import step_indices

    plan = step_indices(len(split), config.effective_batch_size, config.seed)
    timed = np.concatenate([next(plan) for _ in range(steps)])
    lengths = split.lengths[timed]
    assert int(lengths.sum()) == stats.real_tokens
    measurement = Measurement(
        tokens=stats.real_tokens,
        padded_tokens=stats.padded_tokens,
        flops=sum(flops_per_sequence(n_params, ARCHITECTURES[name], int(n)) for n in lengths),
        seconds=stats.seconds,
        peak_memory_gib=_peak_memory(device),
        micro_batch_size=stats.micro_batch_size,
        kernels=kernels,
        warmup_loss=warm.losses[0],
    )
    del model
    _free(device)
    return measurement


def run_baseline(name: str, split: Any, *, device: torch.device, steps: int) -> Measurement:
    """The paper's recipe: HF Trainer, fp32 weights + bf16 autocast, batch 4 padded, 8 accumulation steps."""
    from transformers import Trainer, TrainerCallback, TrainingArguments

    model = attach_lora(build_model(name, dtype=torch.float32, device=device, attn="sdpa"))
    n_params = sum(p.numel() for p in model.parameters())
    examples = [split.example(i) for i in range(len(split))]
    counted = {"real": 0, "padded": 0, "flops": 0.0}

    class Examples(torch.utils.data.Dataset):  # type: ignore[type-arg]
        def __len__(self) -> int:
            return len(examples)

        def __getitem__(self, i: int) -> dict[str, Any]:
            ids, prompt = examples[i]
            labels = ids.astype(np.int64).copy()
            labels[:prompt] = -100
            return {"input_ids": torch.from_numpy(ids.astype(np.int64)), "labels": torch.from_numpy(labels)}

    def collate(items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        ids = torch.nn.utils.rnn.pad_sequence([i["input_ids"] for i in items], batch_first=True, padding_value=0)
        labels = torch.nn.utils.rnn.pad_sequence([i["labels"] for i in items], batch_first=True, padding_value=-100)
        lengths = [len(i["input_ids"]) for i in items]
        counted["real"] += sum(lengths)
        counted["padded"] += ids.numel()
        counted["flops"] += sum(flops_per_sequence(n_params, ARCHITECTURES[name], n) for n in lengths)
        return {"input_ids": ids, "labels": labels, "attention_mask": ids.ne(0) | (labels != -100)}

    marks: list[tuple[float, int, int, float]] = []

    class Clock(TrainerCallback):  # type: ignore[misc]
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            _synchronize(device)
            marks.append((time.perf_counter(), counted["real"], counted["padded"], counted["flops"]))

    args = TrainingArguments(
        output_dir="/tmp/throughput-baseline",
        max_steps=steps + 1,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=8,
        learning_rate=1e-4,
        weight_decay=0.0,
        **_warmup(0.03),
        lr_scheduler_type="cosine",
        bf16=device.type == "cuda",
        tf32=device.type == "cuda" or None,
        optim="adamw_torch",
        logging_strategy="no",
        save_strategy="no",
        report_to=[],
        seed=42,
        dataloader_num_workers=0,
        use_cpu=device.type == "cpu",
    )
    _reset_memory(device)
    trainer = Trainer(model=model, args=args, train_dataset=Examples(), data_collator=collate, callbacks=[Clock()])
    trainer.train()
    (t0, r0, p0, f0), (t1, r1, p1, f1) = marks[0], marks[-1]  # the first step is warm-up
    measurement = Measurement(r1 - r0, p1 - p0, f1 - f0, t1 - t0, _peak_memory(device), 4)
    del trainer, model
    _free(device)
    return measurement


def _warmup(ratio: float) -> dict[str, float]:
    """transformers 5 folds warmup_ratio into warmup_steps (a float below 1 is a ratio)."""
    from transformers import TrainingArguments

    if "warmup_ratio" in TrainingArguments.__dataclass_fields__:
        return {"warmup_ratio": ratio}
    return {"warmup_steps": ratio}


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_memory(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1024**3
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def main() -> None:
    # As the blackbox sets it (cli.py): packed batches of varying length fragment the caching allocator.
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="llama2-7b,llama-1b")
    parser.add_argument("--variants", default="baseline,padded,packed-varlen,packed-varlen-liger")
    parser.add_argument("--steps", type=int, default=3, help="timed optimizer steps (after one warm-up step)")
    parser.add_argument("--examples", type=int, default=2048)
    parser.add_argument("--out", type=Path, default=Path("throughput.json"))
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    peak = peak_flops(device)
    import peft
    import transformers

    from blackbox.training import attention

    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "peak_flops": peak,
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
            "cuda": torch.version.cuda,
        },
        "varlen_available": attention.varlen_available(),
        "results": [],
    }
    runners: dict[str, Callable[[str, Any], Measurement]] = {
        "baseline": lambda m, s: run_baseline(m, s, device=device, steps=args.steps * 2),
        "padded": lambda m, s: run_ours(m, s, device=device, steps=args.steps, packing=False, attn="sdpa"),
        "packed-sdpa": lambda m, s: run_ours(m, s, device=device, steps=args.steps, packing=True, attn="sdpa"),
        "packed-varlen": lambda m, s: run_ours(m, s, device=device, steps=args.steps, packing=True, attn="varlen"),
        "packed-varlen-liger": lambda m, s: run_ours(
            m, s, device=device, steps=args.steps, packing=True, attn="varlen", kernels="liger"
        ),
    }
    variants = args.variants.split(",")
    # Liger patches transformers' Llama module for the whole process: its runs come last.
    pairs = [(m, v) for v in variants for m in args.models.split(",") if "liger" not in v]
    pairs += [(m, v) for v in variants for m in args.models.split(",") if "liger" in v]
    for name, variant in pairs:
        if "varlen" in variant and not (attention.varlen_available() and device.type == "cuda"):
            continue
        split = synthetic_split(args.examples, ARCHITECTURES[name]["vocab_size"], seed=0)
        lengths = split.lengths
        row: dict[str, Any] = {"model": name, "variant": variant, "mean_length": float(lengths.mean())}
        try:
            m = runners[variant](name, split)
        except Exception as e:  # noqa: BLE001 - a benchmark variant that fails is reported, the others still run
            row["error"] = f"{type(e).__name__}: {e}"[:500]
            _free(device)
        else:
            row.update(
                tokens_per_s=m.tokens / m.seconds,
                padding_share=1 - m.tokens / m.padded_tokens,
                mfu=(m.flops / m.seconds / peak) if peak else None,
                peak_memory_gib=m.peak_memory_gib,
                micro_batch_size=m.micro_batch_size,
                timed_tokens=m.tokens,
                seconds=m.seconds,
            )
        report["results"].append(row)
        args.out.write_text(json.dumps(report, indent=2))
        _print_row(row)
    for name in args.models.split(","):
        rows = {r["variant"]: r for r in report["results"] if r["model"] == name and "tokens_per_s" in r}
        if "baseline" in rows:
            for r in rows.values():
                r["speedup_vs_baseline"] = r["tokens_per_s"] / rows["baseline"]["tokens_per_s"]
    args.out.write_text(json.dumps(report, indent=2))
    _print_table(report)


def _print_row(row: dict[str, Any]) -> None:
    if "error" in row:
        print(f"{row['model']:14} {row['variant']:14} ERROR {row['error']}", flush=True)
    else:
        mfu = f"{row['mfu']:.1%}" if row["mfu"] is not None else "-"
        print(
            f"{row['model']:14} {row['variant']:14} {row['tokens_per_s']:10,.0f} tok/s  MFU {mfu:>6}  "
            f"peak {row['peak_memory_gib']:6.1f} GiB  micro {row['micro_batch_size']}",
            flush=True,
        )


def _print_table(report: dict[str, Any]) -> None:
    print(
        f"\n{report['device']}; torch {report['versions']['torch']}, transformers {report['versions']['transformers']}"
    )
    print("| model | variant | real tokens/s | vs baseline | MFU | peak memory GiB | padding |")
    print("|---|---|---|---|---|---|---|")
    for r in report["results"]:
        if "error" in r:
            print(f"| {r['model']} | {r['variant']} | error: {r['error'][:80]} | | | | |")
            continue
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "-"
        speedup = f"{r.get('speedup_vs_baseline', math.nan):.2f}x"
        print(
            f"| {r['model']} | {r['variant']} | {r['tokens_per_s']:,.0f} | {speedup} | {mfu} | "
            f"{r['peak_memory_gib']:.1f} | {r['padding_share']:.1%} |"
        )


if __name__ == "__main__":
    main()
