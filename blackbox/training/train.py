"""The LoRA training loop, written out: steps, micro-batches, accumulation, clipping, schedule."""

from __future__ import annotations

import gc
import logging
import math
import statistics
import time
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from blackbox.core.errors import TrainingDiverged, TrainingTimeout
from blackbox.core.experiment import TrainingConfig
from blackbox.core.progress import format_duration
from blackbox.training.batches import Batch, loss_sum, micro_batches, step_indices, steps_per_epoch
from blackbox.training.data import TokenizedSplit
from blackbox.training.distributed import SINGLE, World
from blackbox.training.precision import Precision

logger = logging.getLogger(__name__)

CPU_MICRO_BATCH = 8

_SCHEDULES = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}


class Checkpoints(Protocol):
    """What the loop calls after every optimizer step (``training.checkpoints.LearningCurve``: at its checkpoints it
    validates and asks a judge whether the training goes on). Returns True to stop the training after ``step``;
    leaves the model in training mode. ``train_seconds``: the training's wall seconds so far, the hook's own left
    out."""

    def after_step(self, step: int, total_steps: int, train_tokens: int, train_seconds: float) -> bool: ...


@dataclass(frozen=True)
class TrainStats:
    steps: int  # the steps trained: total_steps, or fewer when the training was stopped at a checkpoint
    train_loss: float  # mean of the step losses, as the HF Trainer reports it
    last_loss: float
    target_tokens: int
    real_tokens: int
    padded_tokens: int  # tokens computed, padding included
    seconds: float
    micro_batch_size: int  # sequences per forward pass, as configured or as found by the auto search
    losses: tuple[float, ...] = ()  # the loss of every step (MLflow's loss curve; records keep the summary)
    total_steps: int = 0  # the steps it was to train
    stopped: bool = False  # stopped at a checkpoint (Checkpoints.after_step)
    checkpoint_seconds: float = 0.0  # spent in Checkpoints.after_step (not in ``seconds``)
    # The wall time of every step; the first includes the automatic micro-batch search and kernel compilation.
    step_seconds: tuple[float, ...] = ()

    @property
    def steady_step_seconds(self) -> float:
        """The median time of a step after the first (of the first, when it is the only one)."""
        later = self.step_seconds[1:] or self.step_seconds
        return statistics.median(later) if later else math.nan


def total_steps(num_examples: int, config: TrainingConfig, fidelity: float = 1.0) -> int:
    """``max_steps`` when set, else the steps of ``epochs`` epochs (a fraction of an epoch rounds up);
    times ``fidelity``, the fraction of a full run that a low-fidelity evaluation trains."""
    if config.max_steps is not None:
        full = config.max_steps
    else:
        full = math.ceil(config.epochs * steps_per_epoch(num_examples, config.effective_batch_size))
    return max(1, math.ceil(full * fidelity))


def train(
    *,
    model: Any,
    split: TokenizedSplit,
    learning_rate: float,
    config: TrainingConfig,
    device: torch.device,
    precision: Precision,
    pad_id: int,
    fidelity: float = 1.0,
    world: World = SINGLE,
    checkpoints: Checkpoints | None = None,
) -> TrainStats:
    """Train the trainable (LoRA) parameters of ``model`` in place, for ``fidelity`` of the full run; with
    ``checkpoints``, ask it after every step whether to stop there (the time it takes is not training time).

    Raises:
        TrainingDiverged: a step loss is NaN or infinite.
        TrainingTimeout: training ran past ``config.timeout_s``.

    With ``world.size`` > 1 (torchrun), each rank trains on its share of every step's micro-batches and
    the LoRA gradients are summed across ranks (see ``distributed``).
    """
    steps = total_steps(len(split), config, fidelity)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        params, lr=learning_rate, weight_decay=config.weight_decay, fused=device.type == "cuda"
    )
    from transformers import get_scheduler  # local: slow to import

    scheduler = get_scheduler(
        _SCHEDULES[config.lr_scheduler],
        optimizer,
        num_warmup_steps=math.ceil(config.warmup_ratio * steps),
        num_training_steps=steps,
    )
    plan = step_indices(len(split), config.effective_batch_size, config.seed)
    # 0 = auto: on CUDA the whole step in one pass, halved after each out-of-memory until it fits; elsewhere
    # (no recoverable out-of-memory error: the process is killed) a fixed, modest size.
    micro = config.micro_batch_size or (config.effective_batch_size if device.type == "cuda" else CPU_MICRO_BATCH)
    model.train()
    started = time.perf_counter()
    paused = 0.0  # seconds in the checkpoints' hook
    stopped = False
    losses: list[float] = []
    step_seconds: list[float] = []
    step_started = started
    step_loss = math.nan
    target_tokens = real_tokens = padded_tokens = 0
    for step in range(1, steps + 1):
        indices = next(plan)
        while True:
            batches = micro_batches(split, indices, micro_batch_size=micro, pad_id=pad_id, packed=config.packing)
            step_targets = sum(b.target_tokens for b in batches)
            out_of_memory = False
            try:
                accumulated = _accumulate_gradients(model, world.share(batches), step_targets, device, precision)
            except torch.OutOfMemoryError:
                if config.micro_batch_size or micro == 1:
                    raise
                out_of_memory = True
            # Ranks agree before going on: one rank out of memory makes all of them retry.
            if not world.any(out_of_memory, device):
                break
            # Outside the except clause: the failed pass's tensors are freed with its traceback.
            optimizer.zero_grad(set_to_none=True)
            gc.collect()
            torch.cuda.empty_cache()
            micro = max(1, micro // 2)
            logger.info("out of memory: micro-batch of %d sequences now", micro)
        world.sum_gradients(params)
        step_loss = float(world.sum(accumulated))
        if not math.isfinite(step_loss):
            optimizer.zero_grad(set_to_none=True)
            raise TrainingDiverged(f"training loss is {step_loss} at step {step}/{steps}")
        if config.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(step_loss)
        step_ended = time.perf_counter()
        step_seconds.append(step_ended - step_started)
        step_started = step_ended
        target_tokens += step_targets
        real_tokens += sum(b.real_tokens for b in batches)
        padded_tokens += sum(b.input_ids.numel() for b in batches)
        elapsed = time.perf_counter() - started - paused
        if step % config.log_every_steps == 0 or step == steps:
            eta = elapsed / step * (steps - step)
            logger.info(
                "step %d/%d loss %.4f lr %.3g %.0f tok/s ETA %s",
                step,
                steps,
                step_loss,
                scheduler.get_last_lr()[0],
                real_tokens / elapsed,
                format_duration(eta),
            )
        if checkpoints is not None:
            hook_started = time.perf_counter()
            stopped = checkpoints.after_step(step, steps, real_tokens, hook_started - started - paused)
            step_started = time.perf_counter()  # a step's time leaves the checkpoint's out
            paused += step_started - hook_started
            if stopped:
                logger.info("stopped at step %d/%d", step, steps)
                break
        if world.any(bool(config.timeout_s) and elapsed > config.timeout_s and step < steps, device):
            raise TrainingTimeout(f"training passed timeout_s={config.timeout_s:g} at step {step}/{steps}")
    return TrainStats(
        steps=len(losses),
        train_loss=sum(losses) / len(losses),
        last_loss=step_loss,
        target_tokens=target_tokens,
        real_tokens=real_tokens,
        padded_tokens=padded_tokens,
        seconds=time.perf_counter() - started - paused,
        micro_batch_size=micro,
        losses=tuple(losses),
        total_steps=steps,
        stopped=stopped,
        checkpoint_seconds=paused,
        step_seconds=tuple(step_seconds),
    )


def _accumulate_gradients(
    model: Any, batches: list[Batch], step_targets: int, device: torch.device, precision: Precision
) -> torch.Tensor:
    """Forward and backward over the micro-batches of one step; returns the step's loss."""
    accumulated = torch.zeros((), device=device)
    for batch in batches:
        batch = batch.to(device)
        with precision.autocast_context(device):
            # Normalised by the step's target tokens: the loss of a step does not depend on how it is cut.
            loss = loss_sum(model, batch) / max(step_targets, 1)
        loss.backward()
        accumulated += loss.detach()
    return accumulated
