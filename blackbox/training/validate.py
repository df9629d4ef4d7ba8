"""Validation: the token-weighted mean cross-entropy of the response tokens of the whole split; and the loss of each
example of a split (a test split's, for intervals over its examples)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from blackbox.training.batches import IGNORE_INDEX, loss_sum, micro_batches, pad
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


@dataclass(frozen=True)
class ExampleLosses:
    """The loss of each example of a split: the sum of its target tokens' cross-entropy, and their count."""

    loss_sums: np.ndarray  # float64, one per example, in the split's order
    target_tokens: np.ndarray  # int64, one per example
    seconds: float

    @property
    def loss(self) -> float:
        """The token-weighted mean over the split, as :func:`validate` computes it."""
        return float(self.loss_sums.sum() / self.target_tokens.sum())


def example_losses(
    *, model: Any, split: TokenizedSplit, batch_size: int, device: torch.device, precision: Precision, pad_id: int
) -> ExampleLosses:
    """The loss of each example of ``split`` (prompts masked, dropout off), for intervals over examples (a test
    split's loss and the difference of two models on it). Padded batches: a padded row's loss is its example's."""
    started = time.perf_counter()
    model.eval()
    order = np.argsort(-split.lengths, kind="stable")  # similar lengths together: little padding
    sums = np.zeros(len(split), dtype=np.float64)
    counts = np.zeros(len(split), dtype=np.int64)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            indices = order[start : start + batch_size]
            batch = pad([split.example(int(i)) for i in indices], pad_id=pad_id).to(device)
            with precision.autocast_context(device):
                logits = model(input_ids=batch.input_ids, use_cache=False).logits
            labels = batch.labels[:, 1:]
            losses = torch.nn.functional.cross_entropy(
                logits[:, :-1].float().transpose(1, 2), labels, ignore_index=IGNORE_INDEX, reduction="none"
            )
            sums[indices] = losses.double().sum(dim=1).cpu().numpy()
            counts[indices] = (labels != IGNORE_INDEX).sum(dim=1).cpu().numpy()
    return ExampleLosses(sums, counts, time.perf_counter() - started)
