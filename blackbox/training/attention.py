"""Padding-free attention for packed batches: PyTorch's own variable-length flash attention.

A packed micro-batch is one row of several examples; ``cu_seq_lens`` gives where each starts. With
``attn_implementation = "varlen"`` each example attends causally to itself only and no work is spent
on padding or on masked cross-example blocks (SDPA on a packed row computes the whole row and masks).
``torch.nn.attention.varlen.varlen_attn`` needs CUDA; elsewhere the same function runs a per-example
SDPA, which is exact and lets the CPU tests check the plumbing.
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
    scale = scaling if scaling is not None else q.shape[-1] ** -0.5
    if q.is_cuda:
        out = _flash(q, k, v, cu_seq_lens.to(torch.int32), int(max_length), scale)
    else:
        out = _per_example_sdpa(q, k, v, cu_seq_lens, scale)
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


def _per_example_sdpa(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu: torch.Tensor, scale: float
) -> torch.Tensor:
    out = torch.empty_like(q)
    for start, end in itertools.pairwise(cu.tolist()):
        # [heads, length, D] per example.
        qs, ks, vs = (t[start:end].transpose(0, 1) for t in (q, k, v))
        piece = torch.nn.functional.scaled_dot_product_attention(
            qs, ks, vs, is_causal=True, scale=scale, enable_gqa=ks.shape[0] != qs.shape[0]
        )
        out[start:end] = piece.transpose(0, 1)
    return out
