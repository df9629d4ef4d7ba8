"""Padding-free attention for packed batches: PyTorch's own variable-length flash attention.

A packed micro-batch is one row of several examples; ``cu_seq_lens`` gives where each starts. With
``attn_implementation = "varlen"`` each example attends causally to itself only and no work is spent
on padding or on masked cross-example blocks (SDPA on a packed row computes the whole row and masks).
``torch.nn.attention.varlen.varlen_attn`` needs CUDA; elsewhere the same function runs a per-example
SDPA, which is exact and lets the CPU tests check the plumbing.
"""

from __future__ import annotations

import functools
import inspect
import itertools
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

    # Its signature changed across torch releases: typed loosely, chosen by inspection below.
    varlen_attn: Any = varlen.varlen_attn
    result: torch.Tensor

    parameters = inspect.signature(varlen_attn).parameters
    if "window_size" in parameters:  # newer torch: causal as a window, grouped-query attention built in
        result = varlen_attn(
            q, k, v, cu, cu, max_len, max_len, scale=scale, window_size=(-1, 0), enable_gqa=k.shape[1] != q.shape[1]
        )
        return result
    # Older signature: no scale and no grouped-query option.
    if k.shape[1] != q.shape[1]:
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
    if "scale" in parameters:
        result = varlen_attn(q, k, v, cu, cu, max_len, max_len, is_causal=True, scale=scale)
    elif abs(scale - q.shape[-1] ** -0.5) > 1e-12:
        raise ValueError("this torch's varlen_attn cannot take a custom attention scale: use 'sdpa'")
    else:
        result = varlen_attn(q, k, v, cu, cu, max_len, max_len, is_causal=True)
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
