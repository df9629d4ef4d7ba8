"""The variable-length flash attention's CPU stand-in keeps the kernel's input contract (issue 30): what the CUDA
kernel refuses, the stand-in refuses in the kernel's words, so that a CPU run fails where a GPU run would; and QLoRA,
which once reached the kernel in fp32 on every GPU, trains through it."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from blackbox.core.errors import SetupError
from blackbox.core.experiment import ModelConfig, TrainingConfig, load_experiment
from blackbox.training import attention
from blackbox.training.model import resolve_attention
from blackbox.training.objective import Evaluator
from blackbox.training.precision import Precision

BF16 = torch.bfloat16
CPU, CUDA = torch.device("cpu"), torch.device("cuda")  # a device object only: nothing runs on it here


def _inputs(*, tokens: int = 10, heads: int = 4, kv_heads: int = 2, size: int = 16, dtype=BF16):
    q = torch.randn(tokens, heads, size, dtype=dtype)
    k, v = (torch.randn(tokens, kv_heads, size, dtype=dtype) for _ in range(2))
    return q, k, v, torch.tensor([0, 4, tokens], dtype=torch.int32)


def test_the_stand_in_gives_the_attention_of_each_example_alone() -> None:
    q, k, v, cu = _inputs()
    out, _ = attention.varlen_attention_forward(
        torch.nn.Module(), *(t.transpose(0, 1)[None] for t in (q, k, v)), None, cu_seq_lens_q=cu, max_length_q=6
    )
    first = torch.nn.functional.scaled_dot_product_attention(
        *(t[:4].transpose(0, 1) for t in (q, k, v)), is_causal=True, enable_gqa=True
    )
    torch.testing.assert_close(out[0, :4], first.transpose(0, 1))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda q, k, v, cu: (q.float(), k.float(), v.float(), cu), "only support fp16 and bf16 data type"),
        (lambda q, k, v, cu: (q, k.half(), v, cu), "query and key must have the same dtype"),
        (lambda q, k, v, cu: (q, k, v, cu.long()), "cu_seqlens_q must have dtype int32"),
        (lambda q, k, v, cu: (q[..., ::2], k[..., ::2], v[..., ::2], cu), "contiguous last dimension"),
        (lambda q, k, v, cu: (q[:, :3], k, v, cu), "must divide number of heads"),
        (lambda q, k, v, cu: (q[..., :12], k[..., :12], v[..., :12], cu), "multiple of 8"),
        (lambda q, k, v, cu: (q, k, v, torch.tensor([0, 6, 4, 10], dtype=torch.int32)), "rise from 0"),
        (lambda q, k, v, cu: (q, k, v, torch.tensor([0, 10], dtype=torch.int32)), "below the longest"),
    ],
    ids=["fp32", "mixed-dtypes", "int64-lengths", "strided", "heads", "head-size", "decreasing", "max-length"],
)
def test_the_stand_in_refuses_what_the_kernel_refuses(change, message) -> None:
    q, k, v, cu = change(*_inputs())
    with pytest.raises(RuntimeError, match=message):
        attention.check_flash_inputs(q, k, v, cu, 6)


def test_under_autocast_the_kernel_gets_the_autocast_dtype() -> None:
    """fp32 projections (fp32 weights: RoPE's cos/sin are fp32) reach the kernel in autocast's dtype, as SDPA's do."""
    q, k, v, cu = _inputs(dtype=torch.float32)
    packed = [t.transpose(0, 1)[None] for t in (q, k, v)]
    with pytest.raises(RuntimeError, match="only support fp16 and bf16"):
        attention.varlen_attention_forward(torch.nn.Module(), *packed, None, cu_seq_lens_q=cu, max_length_q=6)
    with torch.autocast("cpu", dtype=BF16):
        out, _ = attention.varlen_attention_forward(torch.nn.Module(), *packed, None, cu_seq_lens_q=cu, max_length_q=6)
    assert out.dtype == BF16


def test_a_head_size_over_256_is_refused() -> None:
    q, k, v, cu = _inputs(size=264)
    with pytest.raises(RuntimeError, match="head dimension at most 256"):
        attention.check_flash_inputs(q, k, v, cu, 6)


@pytest.mark.parametrize(
    "settings",
    [
        ["model.dtype=bfloat16"],
        ["model.dtype=bfloat16", "lora.use_dora=true"],
        ["model.dtype=float32", "training.autocast=bfloat16"],
    ],
    ids=["nf4", "nf4-dora", "nf4-fp32-weights-bf16-autocast"],
)
def test_qlora_trains_through_the_flash_contract(make_experiment, settings: list[str]) -> None:
    """QLoRA as CUDA trains it (bf16 compute, packed batches, 'varlen'), on the CPU through the kernel's stand-in:
    before issue 30, peft's k-bit preparation cast the norms and embeddings to fp32, so the hidden states reached
    the kernel in fp32 and every QLoRA training on a GPU failed. With the paper's fp32 weights and bf16 autocast,
    RoPE's fp32 cos/sin (and a 4-bit layer's output, cast back to its fp32 input's dtype) made the projections fp32
    again: attention takes autocast's dtype, as SDPA does."""
    path = make_experiment(space="rank_lr", steps=2)
    varlen = ["model.quantization=nf4", "model.attn_implementation=varlen"]
    experiment = load_experiment(str(path), [*varlen, *settings])
    record = Evaluator(experiment).evaluate_line("2 -2")
    assert record.status.value == "OK", record.error
    assert record.metrics["attention"] == "varlen" and math.isfinite(record.metrics["validation_loss"])


def test_auto_gives_flash_attention_to_half_precision_compute_only(tiny_model: Path) -> None:
    config, training = ModelConfig(name_or_path=str(tiny_model)), TrainingConfig()
    fp32, autocast = Precision(torch.float32, None), Precision(torch.float32, BF16)
    flash = "varlen" if attention.varlen_available() else "sdpa"
    assert resolve_attention(config, training, CUDA, Precision(BF16, None)) == flash
    assert resolve_attention(config, training, CUDA, autocast) == flash  # the paper's fp32 weights, bf16 autocast
    assert resolve_attention(config, training, CUDA, fp32) == "sdpa"  # the kernel would refuse fp32
    assert resolve_attention(config, training, CPU, Precision(BF16, None)) == "sdpa"
    varlen = config.model_copy(update={"attn_implementation": "varlen"})
    with pytest.raises(SetupError, match=r"'varlen' \(flash attention\) computes in bfloat16 or float16 only.*float32"):
        resolve_attention(varlen, training, CPU, fp32)
    assert resolve_attention(varlen, training, CPU, autocast) == "varlen"
