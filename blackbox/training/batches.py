"""Token ids to tensors: which examples each optimizer step sees, and how they are batched.

An optimizer step takes ``effective_batch_size`` examples of a seeded per-epoch permutation (the
last step of an epoch may take fewer). Inside a step the examples are sorted by length and cut into
micro-batches, so that padding is small; gradients of the micro-batches accumulate and the loss of the
step is normalised by its total number of target tokens, which makes it independent of how the step
is cut. A micro-batch is either padded on the right (no attention mask needed: attention is causal
and padding only follows real tokens) or packed into one row with restarting position ids.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from blackbox.training.data import TokenizedSplit

IGNORE_INDEX = -100


@dataclass(frozen=True)
class Batch:
    input_ids: torch.Tensor  # [rows, length]
    labels: torch.Tensor  # [rows, length]; labels[t] is the target predicted at position t - 1
    position_ids: torch.Tensor | None  # packed batches only: positions restart at each example
    target_tokens: int  # tokens that count in the loss
    real_tokens: int  # tokens that are not padding
    # Packed batches only: the positions whose logits are needed (the next token is a target). The
    # model computes logits for these alone: no LM-head work on prompt tokens.
    logit_positions: torch.Tensor | None = None
    # Packed batches only: where each example starts (int32, examples + 1), and the longest example,
    # for variable-length attention kernels.
    cu_seq_lens: torch.Tensor | None = None
    max_length: int = 0

    def to(self, device: torch.device) -> Batch:
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device, non_blocking=True)

        return Batch(
            self.input_ids.to(device, non_blocking=True),
            self.labels.to(device, non_blocking=True),
            move(self.position_ids),
            self.target_tokens,
            self.real_tokens,
            move(self.logit_positions),
            move(self.cu_seq_lens),
            self.max_length,
        )


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    return math.ceil(num_examples / batch_size)


def step_indices(num_examples: int, batch_size: int, seed: int) -> Iterator[np.ndarray]:
    """Example indices of each optimizer step, epoch after epoch, without end."""
    epoch = 0
    while True:
        order = np.random.default_rng([seed, epoch]).permutation(num_examples)
        for start in range(0, num_examples, batch_size):
            yield order[start : start + batch_size]
        epoch += 1


def micro_batches(
    split: TokenizedSplit, indices: np.ndarray, *, micro_batch_size: int, pad_id: int, packed: bool
) -> list[Batch]:
    """Cut the examples of one step into micro-batches of similar lengths, longest first."""
    lengths = split.lengths[indices]
    ordered = indices[np.argsort(-lengths, kind="stable")]
    build = pack if packed else pad
    return [
        build([split.example(int(i)) for i in ordered[start : start + micro_batch_size]], pad_id=pad_id)
        for start in range(0, len(ordered), micro_batch_size)
    ]


def pad(examples: list[tuple[np.ndarray, int]], *, pad_id: int) -> Batch:
    """Examples as rows, right-padded to the longest."""
    width = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    for row, (ids, prompt_length) in enumerate(examples):
        tensor = torch.from_numpy(ids.astype(np.int64))
        input_ids[row, : len(ids)] = tensor
        labels[row, prompt_length : len(ids)] = tensor[prompt_length:]
    return _batch(input_ids, labels, None, real_tokens=sum(len(ids) for ids, _ in examples))


def pack(examples: list[tuple[np.ndarray, int]], *, pad_id: int) -> Batch:
    """Examples concatenated in one row; position ids restart at each example (no padding at all)."""
    del pad_id  # nothing to pad
    input_ids = torch.from_numpy(np.concatenate([ids for ids, _ in examples]).astype(np.int64))
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    positions = torch.empty_like(input_ids)
    start = 0
    for ids, prompt_length in examples:
        end = start + len(ids)
        # The first token of an example is never a target (prompt_length >= 1), so no example learns
        # to predict its successor's first token.
        labels[start + max(prompt_length, 1) : end] = input_ids[start + max(prompt_length, 1) : end]
        positions[start:end] = torch.arange(len(ids))
        start = end
    lengths = torch.tensor([0] + [len(ids) for ids, _ in examples], dtype=torch.int32)
    batch = _batch(input_ids[None], labels[None], positions[None], real_tokens=start)
    return dataclasses.replace(
        batch,
        logit_positions=torch.nonzero(labels[1:] != IGNORE_INDEX).flatten(),
        cu_seq_lens=torch.cumsum(lengths, 0, dtype=torch.int32),
        max_length=int(lengths.max()),
    )


def _batch(
    input_ids: torch.Tensor, labels: torch.Tensor, position_ids: torch.Tensor | None, *, real_tokens: int
) -> Batch:
    target_tokens = int((labels[:, 1:] != IGNORE_INDEX).sum())
    return Batch(input_ids, labels, position_ids, target_tokens, real_tokens)


def loss_sum(model: Any, batch: Batch) -> torch.Tensor:
    """Sum of the cross-entropy (fp32) of every target token of the batch, each predicted one position
    earlier. Run it inside the autocast context, on a batch already on the model's device."""
    if batch.logit_positions is None:
        logits = model(input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False).logits
        return token_loss_sum(logits, batch.labels)
    logits = model(
        input_ids=batch.input_ids,
        position_ids=batch.position_ids,
        logits_to_keep=batch.logit_positions,
        use_cache=False,
        # Read by variable-length attention kernels (attention.py), ignored by SDPA, which masks instead.
        cu_seq_lens_q=batch.cu_seq_lens,
        cu_seq_lens_k=batch.cu_seq_lens,
        max_length_q=batch.max_length,
        max_length_k=batch.max_length,
    ).logits
    targets = batch.labels[0, batch.logit_positions + 1]
    return torch.nn.functional.cross_entropy(logits[0].float(), targets, reduction="sum")


def token_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum of the cross-entropy of every target token (fp32), predicted one position earlier."""
    vocab = logits.shape[-1]
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, vocab).float(),
        labels[:, 1:].reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )
