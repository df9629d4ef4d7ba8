"""The learning curve of one training: validation at its checkpoints on fixed rows, and a judge's verdict there.

``training.train`` calls :meth:`LearningCurve.after_step` after every optimizer step (its ``Checkpoints`` hook).
At a checkpoint (``[validation] checkpoints``, fractions of the training steps) the curve validates the model on
its rows (the first ``checkpoint_rows`` of the validation split), keeps the loss as a ``CurvePoint``, and asks its
judge (``core.early_stopping``) whether the training stops there.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import torch

from blackbox.core.curves import CurvePoint, checkpoint_steps
from blackbox.core.early_stopping import Judge, Verdict
from blackbox.core.errors import TrainingDiverged
from blackbox.training.data import TokenizedSplit
from blackbox.training.distributed import SINGLE, World
from blackbox.training.precision import Precision
from blackbox.training.validate import validate

logger = logging.getLogger(__name__)


class LearningCurve:
    """Validates ``model`` on ``rows`` at the checkpoints of its training and asks ``judge`` (None: nobody, the
    curve is only measured) whether to stop there. Under torchrun every rank validates its share, rank 0 alone
    asks the judge, and all ranks stop together."""

    def __init__(
        self,
        *,
        model: Any,
        rows: TokenizedSplit,
        fractions: Sequence[float],
        judge: Judge | None,
        batch_size: int,
        device: torch.device,
        precision: Precision,
        pad_id: int,
        packed: bool,
        world: World = SINGLE,
    ) -> None:
        self.model, self.rows, self.fractions, self.judge = model, rows, tuple(fractions), judge
        self.batch_size, self.device, self.precision, self.pad_id, self.packed = (
            batch_size,
            device,
            precision,
            pad_id,
            packed,
        )
        self.world = world
        self.points: list[CurvePoint] = []
        self.verdict: Verdict | None = None

    def after_step(self, step: int, total_steps: int, train_tokens: int, train_seconds: float) -> bool:
        """Validate at a checkpoint and return whether the training stops there (False between checkpoints)."""
        if step not in checkpoint_steps(total_steps, self.fractions):
            return False
        result = validate(
            model=self.model,
            split=self.rows,
            batch_size=self.batch_size,
            device=self.device,
            precision=self.precision,
            pad_id=self.pad_id,
            packed=self.packed,
            world=self.world,
        )
        self.model.train()  # validate() left it in evaluation mode
        if not math.isfinite(result.loss):
            raise TrainingDiverged(f"checkpoint validation loss is {result.loss} at step {step}/{total_steps}")
        point = CurvePoint(step, train_tokens, result.loss, train_seconds=train_seconds, seconds=result.seconds)
        self.points.append(point)
        logger.info(
            "checkpoint at step %d/%d: loss %.6f on %d rows (%.1f s)",
            step,
            total_steps,
            result.loss,
            len(self.rows),
            result.seconds,
        )
        verdict = self.judge.decide(self.points) if self.judge is not None and self.world.main else None
        if not self.world.any(verdict is not None, self.device):
            return False
        self.verdict = verdict
        if verdict is not None:
            logger.info("stopped early by the %s rule: %s", verdict.rule, verdict.reason)
        return True
