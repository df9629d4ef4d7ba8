"""The parts of benchmarks/gpu_check.py that measure in a process of their own, with torch in it (docs/gpu.md):

prepare   the 7B-architecture model with random weights, saved once for every later part; a small model of the
          same vocabulary for the study; the tokenizer, data, tasks and questions
training  the paper's LoRA training (throughput.py's method) with today's default and each option that could
          raise its MFU, side by side in one process on one model built in memory (not loaded): no fused
          kernels, the default (``training.fused_kernels = "auto"``), liger's fused linear cross-entropy,
          torch.compile of the decoder layers, FlashAttention 3 through torch; the same warm-up loss in each
decoding  batched greedy answers of the base model with the decodings the ``answers`` part did not use
          (the growing cache; the static cache uncompiled): new tokens/s, side by side

  python benchmarks/gpu_check_workers.py training --work DIR --scale gpu --settings none --result out.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Scale:
    """How big each part is: the GPU run's, or the dry run's (every code path, in seconds on a CPU)."""

    arch: str  # a key of throughput.ARCHITECTURES
    max_length: int  # of a sequence (the paper's 512); lengths follow instruction data's below it
    autocast: str  # training.autocast: the default, or none where bf16 autocast slows a tiny model down
    # model.attn_implementation: the default (on CUDA: "varlen" for packed batches), or "varlen" on the CPU too,
    # whose per-example stand-in checks the kernel's contract (bf16 weights, then: model.dtype below)
    attention: str
    dtype: str  # model.dtype: the default ("auto": bf16 on CUDA), or bf16 where the dry run takes "varlen"
    throughput_examples: int
    throughput_batch: int  # sequences per optimizer step (the paper's 128)
    throughput_steps: int  # timed optimizer steps after the warm-up step
    compile_backend: str  # torch.compile's for the compiled option: inductor; the dry run captures the graphs only
    train_rows: int
    validation_rows: int
    variant_steps: int
    adapter_steps: int  # the adapter part's training: enough for its adapter to move bf16 scores (see part_adapter)
    variant_batch: int  # sequences per step of the variants (fixed micro-batch: comparable memory)
    variant_micro: int
    block_batch: int  # sequences per step of the block's points (the paper's 128), automatic micro-batch
    block_steps: int
    benchmark_items: int  # items of the local multiple-choice task: 2 log-likelihood requests each
    questions: int  # 2 batches of answer_batch: the first warms up (and compiles), the second is timed
    answer_batch: int
    new_tokens: int
    study_steps: int  # training steps of each evaluation of the study (checkpoints at a quarter, half, 3/4)
    study_budget: int
    budget_s: float


GPU = Scale(
    arch="llama2-7b",
    max_length=512,
    autocast="auto",
    attention="auto",
    dtype="auto",
    throughput_examples=2048,
    throughput_batch=128,
    throughput_steps=2,
    compile_backend="inductor",
    train_rows=1024,
    validation_rows=64,
    variant_steps=3,
    adapter_steps=3,
    variant_batch=32,
    variant_micro=8,
    block_batch=128,
    block_steps=2,
    benchmark_items=256,
    questions=64,
    answer_batch=32,
    new_tokens=128,
    study_steps=8,
    study_budget=6,
    budget_s=420,
)
DRY_RUN = Scale(
    arch="llama-tiny",
    max_length=128,
    autocast="none",
    attention="varlen",
    dtype="bfloat16",
    throughput_examples=64,
    throughput_batch=16,
    throughput_steps=1,
    compile_backend="eager",
    train_rows=48,
    validation_rows=16,
    variant_steps=2,
    adapter_steps=8,
    variant_batch=8,
    variant_micro=4,
    block_batch=16,
    block_steps=1,
    benchmark_items=8,
    questions=8,
    answer_batch=4,
    new_tokens=8,
    study_steps=8,
    study_budget=6,
    budget_s=900,
)
# The study's model on the GPU: the 7B's vocabulary (the same tokenizer), 2 small layers. A study proves the path
# (NOMAD, an evaluation a process, CUDA training, early stopping, kill -9 and resume), not the model's speed.
STUDY_ARCHITECTURE: dict[str, Any] = {
    "hidden_size": 256,
    "intermediate_size": 688,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "vocab_size": 32000,
    "tie_word_embeddings": False,
}


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
    ids = {name: tokenizer.convert_tokens_to_ids(name) for name in ("<s>", "</s>", "<pad>")}
    special = {"bos_token_id": ids["<s>"], "eos_token_id": ids["</s>"], "pad_token_id": ids["<pad>"]}
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    folders, seconds = {}, {}
    # The study's model: small (its evaluations are NOMAD's, one process each), the same tokenizer. The dry run's
    # model is small already: the study uses it.
    models = {"model": architecture} | ({"study-model": STUDY_ARCHITECTURE} if scale is GPU else {})
    for name, shape in models.items():
        folder = work / name
        tokenizer.save_pretrained(folder)
        config = LlamaConfig(**shape, max_position_embeddings=4096, **special)
        torch.manual_seed(0)
        built = time.perf_counter()
        with torch.device(device):
            model = LlamaForCausalLM._from_config(config, dtype=dtype)
        saved = time.perf_counter()
        model.save_pretrained(folder)
        seconds[name] = (saved - built, time.perf_counter() - saved)
        folders[name] = folder
        if name == "model":
            parameters, layers = sum(p.numel() for p in model.parameters()), config.num_hidden_layers
        del model
    data = work / "data"
    data.mkdir(exist_ok=True)
    # Sorted: a fast tokenizer's vocabulary comes in a different order in every process (a hash map), and the data
    # rows, drawn from it with a fixed seed, must be the same in every run.
    filler = sorted(t for t in tokenizer.get_vocab() if t.startswith("w") and t[1:].isdigit())
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
    summary = {
        "device": str(device),
        "gpu": _gpu(device),
        "cuda": torch.version.cuda,
        "work": str(work),
        "model": str(folders["model"]),
        "study_model": str(folders.get("study-model", folders["model"])),
        "parameters": parameters,
        "model_gib": sum(f.stat().st_size for f in folders["model"].glob("*.safetensors")) / 1024**3,
        "build_s": seconds["model"][0],
        "save_s": seconds["model"][1],
        "seconds": time.perf_counter() - started,
        "train": str(data / "train.jsonl"),
        "validation": str(data / "validation.jsonl"),
        "tasks": str(tasks),
        "questions": str(questions),
        "layers": layers,
    }
    result.write_text(json.dumps(summary, indent=1))


def _gpu(device: Any) -> dict[str, Any] | None:
    import torch

    if device.type != "cuda":
        return None
    properties = torch.cuda.get_device_properties(device)
    return {
        "name": properties.name,
        "memory_gib": properties.total_memory / 1024**3,
        "capability": f"{properties.major}.{properties.minor}",
        "multiprocessors": properties.multi_processor_count,
    }


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


# ---------------------------------------------------------------------------------------------------------------
# Training: today's default and the options that could raise its MFU, side by side


# Two processes, because liger patches transformers' Llama module for the whole process: the default and the
# options on top of it (FlashAttention 3 last: its activation is process-wide too), then the unfused ones. The same
# seed builds the same weights in both: the warm-up losses compare.
TRAINING_PROCESSES = (
    ("auto", "auto + fused linear cross-entropy", "auto + FlashAttention 3"),
    ("none", "none + torch.compile of the decoder layers"),
)


def worker_training(scale: Scale, settings: list[str], result: Path) -> None:
    """Each of ``settings`` on one model built in memory: a fresh adapter (same seed) on the same weights, a warm-up
    step that finds the micro-batch, then timed steps; written after each setting. A setting that cannot apply
    here is said in one line; one that fails does not stop the next."""
    import throughput
    import torch

    from blackbox.training import attention

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    # What "auto" picks for packed batches on CUDA; the dry run takes it on the CPU too (the kernel's stand-in),
    # in bf16, the kernel's dtype.
    varlen = (device.type == "cuda" and attention.varlen_available()) or scale.attention == attention.NAME
    attn = attention.NAME if varlen else "sdpa"
    dtype = torch.bfloat16 if device.type == "cuda" or varlen else torch.float32
    vocab_size = throughput.ARCHITECTURES[scale.arch]["vocab_size"]
    split = throughput.synthetic_split(scale.throughput_examples, vocab_size, seed=0, max_length=scale.max_length)
    torch.manual_seed(0)
    base = throughput.build_model(scale.arch, dtype=dtype, device=device, attn=attn)
    rows: list[dict[str, Any]] = []
    for setting in settings:
        started = time.perf_counter()
        try:
            row = _training_setting(setting, base, split, scale=scale, device=device, attn=attn)
        except _NotHere as e:
            row = {"setting": setting, "status": "skipped", "error": str(e)}
        # A benchmark's boundary: a setting that fails is reported in one line and the next one is measured.
        except Exception as e:  # noqa: BLE001
            traceback.print_exc()
            row = {"setting": setting, "status": "failed", "error": f"{type(e).__name__}: {e}"}
            throughput._free(device)
        row["seconds_total"] = time.perf_counter() - started
        rows.append(row)
        result.write_text(json.dumps({"attention": attn, "mean_length": float(split.lengths.mean()), "rows": rows}))


class _NotHere(Exception):
    """A setting that cannot apply on this machine (the reason is its message)."""


def _training_setting(setting: str, base: Any, split: Any, *, scale: Scale, device: Any, attn: str) -> dict[str, Any]:
    import numpy as np
    import throughput
    import torch

    from blackbox.core.experiment import TrainingConfig
    from blackbox.training import train as training
    from blackbox.training.batches import step_indices
    from blackbox.training.model import apply_fused_kernels, choose_fused_kernels
    from blackbox.training.precision import Precision

    kernels = choose_fused_kernels(setting.split(" ")[0], base, device, quantized=False)[0]
    if "cross-entropy" in setting and kernels != "liger":
        raise _NotHere("liger's fused linear cross-entropy is a Triton kernel: it needs CUDA and liger-kernel")
    if "FlashAttention 3" in setting:
        _activate_flash_attention_3(device, attn)
    apply_fused_kernels(base, kernels, device)  # liger's patch stays: the later settings are liger's too
    torch.manual_seed(0)  # the same adapter in every setting: their warm-up losses compare
    model = throughput.attach_lora(base)
    layers = model.get_base_model().model.layers
    originals = list(layers)
    if "torch.compile" in setting:
        for i, layer in enumerate(originals):
            # dynamic: packed micro-batches differ in length; one graph serves them all
            layers[i] = torch.compile(layer, backend=scale.compile_backend, dynamic=True)
    precision = Precision(next(base.parameters()).dtype, None)
    config = TrainingConfig(
        max_steps=1, effective_batch_size=scale.throughput_batch, micro_batch_size=0, packing=True, seed=0
    )
    n_params = sum(p.numel() for p in model.parameters())
    with _loss("cross-entropy" in setting):
        compiled = time.perf_counter()
        warm = training.train(
            model=model, split=split, learning_rate=1e-4, config=config, device=device, precision=precision, pad_id=0
        )  # warm-up step: finds the micro-batch (and compiles)
        warmup_s = time.perf_counter() - compiled
        config = config.model_copy(
            update={"max_steps": scale.throughput_steps, "micro_batch_size": warm.micro_batch_size, "seed": 1}
        )
        throughput._reset_memory(device)
        stats = training.train(
            model=model, split=split, learning_rate=1e-4, config=config, device=device, precision=precision, pad_id=0
        )
        throughput._synchronize(device)
    for i, layer in enumerate(originals):
        layers[i] = layer
    model.unload()  # the base model again, for the next setting
    plan = step_indices(len(split), config.effective_batch_size, config.seed)
    lengths = split.lengths[np.concatenate([next(plan) for _ in range(scale.throughput_steps)])]
    flops = sum(throughput.flops_per_sequence(n_params, throughput.ARCHITECTURES[scale.arch], int(n)) for n in lengths)
    peak = throughput.peak_flops(device)
    attention_flops = sum(12.0 * base.config.num_hidden_layers * base.config.hidden_size * int(n) ** 2 for n in lengths)
    throughput._free(device)
    return {
        "setting": setting,
        "status": "ok",
        "kernels": kernels,
        "tokens_per_s": stats.real_tokens / stats.seconds,
        "mfu": flops / stats.seconds / peak if peak else None,
        "attention_flops_share": attention_flops / flops,
        "peak_memory_gib": throughput._peak_memory(device),
        "micro_batch_size": stats.micro_batch_size,
        "timed_tokens": stats.real_tokens,
        "seconds": stats.seconds,
        "warmup_s": warmup_s,
        "warmup_loss": warm.losses[0],
    }


@contextlib.contextmanager
def _loss(fused: bool) -> Iterator[None]:
    """The training loop's loss, or liger's fused linear cross-entropy in its place (the same sum over the same
    targets, without the logits tensor): swapped where the loop looks it up, for this measurement only."""
    from blackbox.training import train as training

    if not fused:
        yield
        return
    from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

    fused_loss = LigerFusedLinearCrossEntropyLoss(reduction="sum")

    def loss_sum(model: Any, batch: Any) -> Any:
        base = model.get_base_model()
        hidden = base.model(
            input_ids=batch.input_ids,
            position_ids=batch.position_ids,
            use_cache=False,
            cu_seq_lens_q=batch.cu_seq_lens,
            cu_seq_lens_k=batch.cu_seq_lens,
            max_length_q=batch.max_length,
            max_length_k=batch.max_length,
        ).last_hidden_state
        targets = batch.labels[0, batch.logit_positions + 1]
        return fused_loss(base.lm_head.weight, hidden[0, batch.logit_positions], targets)

    original: Callable[..., Any] = training.loss_sum
    training.loss_sum = loss_sum  # type: ignore[assignment]
    try:
        yield
    finally:
        training.loss_sum = original  # type: ignore[assignment]


def _activate_flash_attention_3(device: Any, attn: str) -> None:
    """FlashAttention 3 (Hopper) in place of FlashAttention 2 under torch's varlen kernel, where torch can take it:
    torch's registry (torch.nn.attention.activate_flash_attention_impl) with the flash_attn_interface module of
    flash-attention 3's Hopper build."""
    import importlib.util

    import torch

    if device.type != "cuda" or torch.cuda.get_device_capability(device)[0] != 9:
        raise _NotHere("FlashAttention 3 is Hopper's (compute capability 9.x): not this device")
    if attn != "varlen":
        raise _NotHere("the model does not train with the varlen attention here")
    activate = getattr(torch.nn.attention, "activate_flash_attention_impl", None)
    if activate is None:
        raise _NotHere(f"torch {torch.__version__} has no activate_flash_attention_impl (torch's FA3 registry)")
    if importlib.util.find_spec("flash_attn_interface") is None:
        raise _NotHere("flash_attn_interface (flash-attention 3's Hopper build) is not installed: torch ships the hook")
    activate("FA3")


# ---------------------------------------------------------------------------------------------------------------
# Decoding: the decodings the answers part did not use, side by side


def worker_decoding(scale: Scale, experiment: Path, questions: Path, result: Path) -> None:
    """Batched greedy answers of the experiment's base model to the prepared questions (2 batches), with the
    growing cache and with the static cache uncompiled: new tokens/s of the second batch (the first warms up)."""
    from blackbox.core.experiment import load_experiment
    from blackbox.training.adapters import load_for_inference
    from blackbox.training.data import Row, adds_special_tokens, prompt_formatter
    from blackbox.training.generation import Decoding, Sampling, generate

    settings = load_experiment(str(experiment))
    loaded = load_for_inference(settings)
    # The prompts the answers part asked: the questions in the experiment's template
    template = settings.data.template
    prompt = prompt_formatter(template, loaded.tokenizer)
    asked = [prompt(Row(json.loads(line)["question"], "", "")) for line in questions.read_text().splitlines()]
    sampling = Sampling(max_new_tokens=scale.new_tokens, greedy=True, batch_size=scale.answer_batch)
    rows = []
    for decoding in (Decoding("dynamic"), Decoding("static")):
        answers = generate(
            loaded.model, loaded.tokenizer, asked, sampling=sampling, seed=0, device=loaded.device,
            precision=loaded.precision, add_special_tokens=adds_special_tokens(template), decoding=decoding,
        )  # fmt: skip
        first, later = answers[: scale.answer_batch], answers[scale.answer_batch :]
        tokens, seconds = sum(a.new_tokens for a in later), sum(a.seconds for a in later)
        rows.append(
            {
                "decoding": decoding.describe(),
                "tokens_per_s": tokens / seconds if seconds else math.nan,
                "first_batch_tokens_per_s": sum(a.new_tokens for a in first) / sum(a.seconds for a in first),
                "new_tokens": tokens,
            }
        )
        result.write_text(json.dumps({"rows": rows}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("worker", choices=["prepare", "training", "decoding"])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--scale", choices=["gpu", "dry-run"], required=True)
    parser.add_argument("--result", type=Path, required=True)
    parser.add_argument("--settings", help="training: the settings, comma-separated, in order")
    parser.add_argument("--experiment", type=Path, help="decoding: the experiment whose base model answers")
    args = parser.parse_args()
    scale = DRY_RUN if args.scale == "dry-run" else GPU
    if args.worker == "prepare":
        worker_prepare(scale, args.work, args.result)
    elif args.worker == "training":
        worker_training(scale, args.settings.split(","), args.result)
    else:
        worker_decoding(scale, args.experiment, args.work / "questions.jsonl", args.result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
