"""Validation: the token-weighted mean cross-entropy of the response tokens of the whole split."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from blackbox.training.batches import loss_sum, micro_batches
from blackbox.training.data import TokenizedSplit
from blackbox.training.distributed import SINGLE, World
from blackbox.training.precision import Precision


@dataclass(frozen=True)
class ValidationStats:
    loss: float  # mean over all target tokens of the split (not a mean of batch means)
    target_tokens: int
    seconds: float


def validate(
    *,
    model: Any,
    split: TokenizedSplit,
    batch_size: int,
    device: torch.device,
    precision: Precision,
    pad_id: int,
    packed: bool,
    world: World = SINGLE,
) -> ValidationStats:
    """Mean token cross-entropy of ``model`` on ``split``, prompts masked, dropout off; with several ranks
    each takes its share of the batches and the sums are reduced: one loss over the whole set."""
    started = time.perf_counter()
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=device)
    tokens = 0
    # Sorted by length, so that batches hold similar lengths; the sum does not depend on the order.
    batches = micro_batches(split, np.arange(len(split)), micro_batch_size=batch_size, pad_id=pad_id, packed=packed)
    with torch.inference_mode():
        for batch in world.share(batches):
            batch = batch.to(device)
            with precision.autocast_context(device):
                total += loss_sum(model, batch).double()
            tokens += batch.target_tokens
    counts = world.sum(torch.stack([total, torch.tensor(float(tokens), dtype=torch.float64, device=device)]))
    total, tokens = counts[0], int(counts[1].item())
    return ValidationStats(loss=float(total) / tokens, target_tokens=tokens, seconds=time.perf_counter() - started)
