"""Padding-free attention for packed batches: PyTorch's own variable-length flash attention.

A packed micro-batch is one row of several examples; ``cu_seq_lens`` gives where each starts. With
``attn_implementation = "varlen"`` each example attends causally to itself only and no work is spent
on padding or on masked cross-example blocks (SDPA on a packed row computes the whole row and masks).
``torch.nn.attention.varlen.varlen_attn`` needs CUDA; elsewhere the same function runs a per-example
SDPA, which is exact and lets the CPU tests check the plumbing. That stand-in first checks the kernel's input
contract (:func:`check_flash_inputs`: fp16/bf16 only, shapes, contiguity, head size, int32 cumulative lengths) and
raises as the kernel raises, so that a CPU run fails where a GPU would: a CPU stand-in that accepted fp32 let
QLoRA pass every CPU test while it failed on every GPU (issue 30).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import itertools
from collections.abc import Iterator
from typing import Any

import torch

NAME = "varlen"
# What PyTorch's flash kernel takes (aten/src/ATen/native/transformers/cuda/flash_attn/flash_api.cpp,
# mha_varlen_fwd): half-precision inputs, a head size of at most 256 that is a multiple of 8.
FLASH_DTYPES = (torch.float16, torch.bfloat16)
FLASH_MAX_HEAD_SIZE = 256


def varlen_available() -> bool:
    """Whether this torch has ``torch.nn.attention.varlen`` (the flash kernel needs CUDA on top)."""
    try:
        from torch.nn.attention.varlen import varlen_attn  # noqa: F401
    except ImportError:
        return False
    return True


@functools.cache
def register() -> None:
    """Make ``attn_implementation="varlen"`` known to transformers (once per process)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(NAME, varlen_attention_forward)
    # The kernel takes sequence boundaries, not a mask: no mask is built for it.
    AttentionMaskInterface.register(NAME, _no_mask)


def _no_mask(*args: Any, **kwargs: Any) -> None:
    return None


@contextlib.contextmanager
def padded_batches(model: Any) -> Iterator[None]:
    """``model`` (a transformers model, or a peft model on one) with SDPA attention while the block runs, when it
    trains with ``varlen``, which takes packed batches only: for scoring it on padded batches (lm-eval)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if getattr(base.config, "_attn_implementation", None) != NAME:
        yield
        return
    base.set_attn_implementation("sdpa")
    try:
        yield
    finally:
        base.set_attn_implementation(NAME)


def varlen_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function interface: query [1, H, T, D], key/value [1, H_kv, T, D];
    returns [1, T, H, D]. Needs ``cu_seq_lens_q`` and ``max_length_q`` among the model's kwargs."""
    cu_seq_lens = kwargs.get("cu_seq_lens_q")
    max_length = kwargs.get("max_length_q")
    if cu_seq_lens is None or max_length is None or query.shape[0] != 1:
        raise ValueError(
            "attn_implementation 'varlen' needs packed batches (one row, with cu_seq_lens_q and max_length_q): "
            "set training.packing = true, or use 'sdpa'"
        )
    if dropout:
        raise ValueError("attn_implementation 'varlen' does not apply attention dropout")
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))  # [T, heads, D]
    if torch.is_autocast_enabled(q.device.type):
        # Under autocast attention computes in its dtype, as SDPA does (on autocast's lower-precision list; this
        # kernel is not): with fp32 weights (the paper's, with bf16 autocast) RoPE's fp32 cos/sin, or a 4-bit
        # layer's output cast back to its input's dtype, hand fp32 to the kernel, which takes fp16/bf16 only.
        dtype = torch.get_autocast_dtype(q.device.type)
        q, k, v = (t.to(dtype) for t in (q, k, v))
    scale = scaling if scaling is not None else q.shape[-1] ** -0.5
    cu = cu_seq_lens.to(torch.int32)
    if q.is_cuda:
        out = _flash(q, k, v, cu, int(max_length), scale)
    else:
        out = _flash_stand_in(q, k, v, cu, int(max_length), scale)
    return out[None], None


def _flash(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu: torch.Tensor, max_len: int, scale: float
) -> torch.Tensor:
    from torch.nn.attention import varlen

    # Its signature changed across torch releases: typed loosely, arguments chosen by inspection.
    varlen_attn: Any = varlen.varlen_attn

    parameters = inspect.signature(varlen_attn).parameters
    kwargs: dict[str, Any] = {}
    # Causal: a (-1, 0) window in newer releases, is_causal in older ones.
    if "window_size" in parameters:
        kwargs["window_size"] = (-1, 0)
    else:
        kwargs["is_causal"] = True
    if "scale" in parameters:
        kwargs["scale"] = scale
    elif abs(scale - q.shape[-1] ** -0.5) > 1e-12:
        raise ValueError("this torch's varlen_attn cannot take a custom attention scale: use 'sdpa'")
    if k.shape[1] != q.shape[1]:  # grouped-query attention
        if "enable_gqa" in parameters:
            kwargs["enable_gqa"] = True
        else:
            k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
            v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
    result: torch.Tensor = varlen_attn(q, k, v, cu, cu, max_len, max_len, **kwargs)
    return result


def check_flash_inputs(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seq_lens: torch.Tensor, max_length: int
) -> None:
    """The input contract of the variable-length flash kernel, raised in its own words (``RuntimeError``, as a
    ``TORCH_CHECK`` of ``mha_varlen_fwd`` raises): q ``[T, H, D]``, k and v ``[T_k, H_kv, D]``, all fp16 or all bf16,
    last dimension contiguous, ``H`` a multiple of ``H_kv``, ``D`` at most 256 and a multiple of 8; ``cu_seq_lens``
    int32, contiguous, at least 2 values. Also what the kernel trusts without checking (it reads out of bounds or
    computes garbage instead): boundaries from 0 to ``T``, never decreasing, no example longer than ``max_length``.
    """
    if q.dtype not in FLASH_DTYPES:
        raise RuntimeError("FlashAttention only support fp16 and bf16 data type")
    if k.dtype != q.dtype:
        raise RuntimeError("query and key must have the same dtype")
    if v.dtype != q.dtype:
        raise RuntimeError("query and value must have the same dtype")
    if cu_seq_lens.dtype != torch.int32:
        raise RuntimeError("cu_seqlens_q must have dtype int32")
    if q.dim() != 3 or k.dim() != 3 or v.dim() != 3:
        raise RuntimeError(f"query, key and value must be 3-d [tokens, heads, head size], got {q.shape}, {k.shape}")
    if any(t.stride(-1) != 1 for t in (q, k, v)):
        raise RuntimeError("Input tensor must have contiguous last dimension")
    if not cu_seq_lens.is_contiguous():
        raise RuntimeError("cu_seqlens_q must be contiguous")
    if cu_seq_lens.numel() < 2:
        raise RuntimeError("batch size must be positive")
    heads, head_size = q.shape[1], q.shape[2]
    if head_size > FLASH_MAX_HEAD_SIZE:
        raise RuntimeError("FlashAttention forward only supports head dimension at most 256")
    if heads % k.shape[1] != 0:
        raise RuntimeError("Number of heads in key/value must divide number of heads in query")
    if head_size % 8 != 0:
        raise RuntimeError("head_size must be a multiple of 8, this is ensured by padding!")
    if k.shape != v.shape or k.shape[2] != head_size:
        raise RuntimeError(f"key {tuple(k.shape)} and value {tuple(v.shape)} must be [tokens, heads, {head_size}]")
    bounds = cu_seq_lens.tolist()
    lengths = [end - start for start, end in itertools.pairwise(bounds)]
    if bounds[0] != 0 or bounds[-1] != q.shape[0] or min(lengths) < 0:
        raise RuntimeError(f"cu_seqlens must rise from 0 to the {q.shape[0]} tokens, got {bounds}")
    if max(lengths) > max_length:
        raise RuntimeError(f"max_seqlen_q {max_length} is below the longest sequence ({max(lengths)} tokens)")


def _flash_stand_in(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu: torch.Tensor, max_len: int, scale: float
) -> torch.Tensor:
    """The kernel's result on any device: its input contract checked, then one causal SDPA per example (exact)."""
    check_flash_inputs(q, k, v, cu, max_len)
    out = torch.empty_like(q)
    for start, end in itertools.pairwise(cu.tolist()):
        # [heads, length, D] per example.
        qs, ks, vs = (t[start:end].transpose(0, 1) for t in (q, k, v))
        piece = torch.nn.functional.scaled_dot_product_attention(
            qs, ks, vs, is_causal=True, scale=scale, enable_gqa=ks.shape[0] != qs.shape[0]
        )
        out[start:end] = piece.transpose(0, 1)
    return out
