"""Learning curves: the validation loss at checkpoints of a training, and where a training was stopped early.

With ``[validation] checkpoints`` (fractions of the training steps, e.g. ``[0.25, 0.5, 0.75]``) an evaluation
validates at those steps on a fixed subset of the validation rows (``checkpoint_rows``: the first rows of the
split, the same for every point, so that curves compare), and keeps every measure as a :class:`CurvePoint` of its
record. The final validation still runs on the whole validation split. A stopping rule or an Optuna pruner
(``blackbox.core.early_stopping``) may stop the training at a checkpoint: the record then says where and why
(:class:`Stop`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class CurvePoint:
    """The validation loss on the checkpoint rows after ``step`` optimizer steps and ``train_tokens`` training
    tokens (real tokens, padding excluded). ``train_seconds``: the training's wall seconds up to that step (its
    checkpoints' validations left out); ``seconds``: this checkpoint's validation. None in records from before
    they were measured."""

    step: int
    train_tokens: int
    loss: float
    train_seconds: float | None = None
    seconds: float | None = None


@dataclass(frozen=True)
class Stop:
    """Where and why a training stopped early: at the checkpoint of ``step`` out of ``total_steps``, by ``rule``
    (``median``, ``incumbent``, ``optuna:<pruner>``), for ``reason`` (in words)."""

    step: int
    total_steps: int
    rule: str
    reason: str


def checkpoint_steps(total_steps: int, fractions: Sequence[float]) -> tuple[int, ...]:
    """The steps at which a training of ``total_steps`` validates: the first step at or after each fraction
    (``ceil``), without duplicates, and never the last step (the final validation follows it).

    Example::

        checkpoint_steps(16, (0.25, 0.5, 0.75))  # (4, 8, 12)
        checkpoint_steps(2, (0.25, 0.5, 0.75))  # (1,)
    """
    steps = {max(1, math.ceil(f * total_steps - 1e-9)) for f in fractions}
    return tuple(sorted(s for s in steps if s < total_steps))


def curve_from_dicts(items: Sequence[object]) -> tuple[CurvePoint, ...]:
    """A curve as read from JSON (a list of objects).

    Raises:
        ValueError: an item is not a curve point.
    """
    try:
        return tuple(
            CurvePoint(
                int(i["step"]),  # type: ignore[index]
                int(i["train_tokens"]),  # type: ignore[index]
                float(i["loss"]),  # type: ignore[index]
                _seconds(i.get("train_seconds")),  # type: ignore[attr-defined]
                _seconds(i.get("seconds")),  # type: ignore[attr-defined]
            )
            for i in items
        )
    except (AttributeError, KeyError, TypeError) as e:
        raise ValueError(f"not a learning curve: {items!r}") from e


def _seconds(value: object) -> float | None:
    return None if value is None else float(value)  # type: ignore[arg-type]


def stop_from_dict(item: object) -> Stop | None:
    """A :class:`Stop` as read from JSON (None: not stopped).

    Raises:
        ValueError: not a stop.
    """
    if item is None:
        return None
    try:
        return Stop(int(item["step"]), int(item["total_steps"]), str(item["rule"]), str(item["reason"]))  # type: ignore[index]
    except (KeyError, TypeError) as e:
        raise ValueError(f"not a stop: {item!r}") from e
