"""Early stopping: at each checkpoint of a training, whether it can still win, from the study's finished evaluations.

The training loop (``training.train``) calls a hook at its checkpoints (``[validation] checkpoints``); the hook
measures the learning curve and asks a :class:`Judge` whether the training stops there. Two judges exist: the
experiment's ``[stopping]`` rule over the study's records (:class:`StudyRule`, for NOMAD's studies and any other
caller of ``lora-blackbox eval``), and an Optuna trial with its study's pruner (``studies.pruning``, for
``lora-blackbox optuna --pruner``). A stopped evaluation is recorded STOPPED with its curve and where it stopped
(``core.curves.Stop``), and its objective is ``failures.value_of_stopped``'s.

The rules compare like with like: the finished (OK) evaluations of the same experiment (its fingerprint) in the
study's records folder whose curves were measured on the same checkpoint rows, each by its lowest checkpoint loss
up to the same training step (a point with other total steps, e.g. another ``training.epochs``, compares by its
last checkpoint before that step). The training's own value is its lowest checkpoint loss so far (as Optuna's
``MedianPruner`` takes a trial's best intermediate value), so that one noisy checkpoint does not stop it.

- ``median`` (the median stopping rule of Google Vizier, Golovin et al. 2017, as Optuna's ``MedianPruner``):
  stop when it is worse than the median of the finished evaluations at that step;
- ``incumbent``: stop when it is worse than the incumbent's (the finished evaluation of lowest objective among
  those with a curve) at that step;
- ``asha`` (asynchronous successive halving, Li et al. 2020, as Ray Tune's and Syne Tune's stopping variants of
  it): the checkpoints are rungs, and a training goes on from a rung only while it is among the best ``1/eta`` of
  every evaluation of the study that reached that rung, stopped ones included.

Both stop only when ``margin`` allows (worse by more than ``margin`` times the reference; ties never stop), and
never before ``min_finished`` finished evaluations have a value at that step. A NaN checkpoint loss stops (it
cannot win); NaN values of finished evaluations are left out.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from blackbox.core.curves import CurvePoint
from blackbox.core.experiment import Experiment
from blackbox.core.failures import Status
from blackbox.core.record import EvalRecord, RecordStore


@dataclass(frozen=True)
class Verdict:
    """Why a training stops at a checkpoint: the ``rule`` that decided (``median``, ``incumbent``,
    ``optuna:hyperband``, ...) and its ``reason`` in words."""

    rule: str
    reason: str


class Judge(Protocol):
    """Decides at each checkpoint whether the training stops there."""

    def decide(self, curve: Sequence[CurvePoint]) -> Verdict | None:
        """``curve``: the learning curve so far, its last point the checkpoint just measured. Returns why the
        training stops there, or None: it goes on."""
        ...


def best_loss(curve: Sequence[CurvePoint], step: int) -> float | None:
    """The lowest loss of ``curve`` at or before ``step`` (NaN values left out); None when it has none."""
    losses = [p.loss for p in curve if p.step <= step and not math.isnan(p.loss)]
    return min(losses) if losses else None


def median_rule(loss: float, others: Sequence[float], *, min_finished: int, margin: float = 0.0) -> str | None:
    """The median stopping rule. ``loss``: the training's lowest checkpoint loss so far; ``others``: the finished
    evaluations' at the same step (NaN values left out). Returns why it stops, or None."""
    values = [v for v in others if not math.isnan(v)]
    if len(values) < min_finished:
        return None
    if math.isnan(loss):
        return "its checkpoint loss is nan"
    median = statistics.median(values)
    if _worse(loss, median, margin):
        return f"its best checkpoint loss {loss:.6g} is worse than the median {median:.6g} of {len(values)} finished"
    return None


def incumbent_rule(
    loss: float, incumbent: float | None, *, finished: int, min_finished: int, margin: float = 0.0
) -> str | None:
    """The rule against the incumbent's curve. ``loss``: the training's lowest checkpoint loss so far;
    ``incumbent``: the incumbent's at the same step (None: it has none); ``finished``: how many finished evaluations
    have a value at that step. Returns why it stops, or None."""
    if finished < min_finished or incumbent is None or math.isnan(incumbent):
        return None
    if math.isnan(loss):
        return "its checkpoint loss is nan"
    if _worse(loss, incumbent, margin):
        return f"its best checkpoint loss {loss:.6g} is worse than the incumbent's {incumbent:.6g}"
    return None


def asha_rule(loss: float, others: Sequence[float], *, eta: float, min_values: int, margin: float = 0.0) -> str | None:
    """Asynchronous successive halving (Li et al. 2020, ASHA), as a stopping rule: the checkpoints are the rungs,
    and a training goes on from a rung only while it is among the best ``1/eta`` of the values recorded there
    (``others``: every evaluation of the study that reached the rung, stopped ones included; NaN values left
    out). Its cut-off is the ``max(1, floor(n / eta))``-th lowest of the ``n`` values, its own included; no stop
    while the rung holds fewer than ``min_values``. Returns why it stops, or None."""
    values = sorted(v for v in others if not math.isnan(v))
    if len(values) + 1 < max(min_values, 2):
        return None
    if math.isnan(loss):
        return "its checkpoint loss is nan"
    ranked = sorted([*values, loss])
    keep = max(1, math.floor(len(ranked) / eta))
    cutoff = ranked[keep - 1]
    if _worse(loss, cutoff, margin):
        return (
            f"its best checkpoint loss {loss:.6g} is not among the best {keep} of {len(ranked)} at this rung "
            f"(cut-off {cutoff:.6g}, eta {eta:g})"
        )
    return None


def _worse(loss: float, reference: float, margin: float) -> bool:
    """Worse than ``reference`` by more than ``margin`` of it (strictly: a tie is not worse)."""
    return loss > reference + margin * abs(reference)


def incumbent_objective(records: Iterable[EvalRecord], fingerprint: str) -> float | None:
    """The lowest objective (as the solver received it) of the finished evaluations of ``fingerprint``; None when
    there is none."""
    values = [_objective(r) for r in records if r.status is Status.OK and r.fingerprint == fingerprint]
    finite = [v for v in values if v is not None and not math.isnan(v)]
    return min(finite) if finite else None


def _objective(record: EvalRecord) -> float | None:
    value = record.metrics.get("objective", record.metrics.get("validation_loss"))
    return float(value) if isinstance(value, int | float) else None


class StudyRule:
    """The experiment's ``[stopping]`` rule over the finished evaluations in its records folder (a :class:`Judge`).

    Example::

        rule = StudyRule(experiment)
        rule.decide([CurvePoint(step=4, train_tokens=2048, loss=3.2)])  # a Verdict, or None
    """

    def __init__(self, experiment: Experiment, *, checkpoint_rows: int, store: RecordStore | None = None) -> None:
        self.config = experiment.stopping
        self.fingerprint = experiment.fingerprint()
        self.checkpoint_rows = checkpoint_rows  # how many rows this evaluation's checkpoints validate on
        self.store = store or RecordStore.of(experiment)

    def finished(self) -> list[EvalRecord]:
        """The finished evaluations whose curves compare with this one's: OK, same experiment, same rows."""
        return [r for r in self._comparable() if r.status is Status.OK]

    def reached(self, step: int) -> list[EvalRecord]:
        """The evaluations whose curves compare with this one's and reached ``step``: finished ones, and those
        stopped at or after it (ASHA's rung)."""
        return [
            r
            for r in self._comparable()
            if r.status is Status.OK or (r.status is Status.STOPPED and r.curve and r.curve[-1].step >= step)
        ]

    def _comparable(self) -> list[EvalRecord]:
        return [
            r
            for r in self.store.records()
            if r.fingerprint == self.fingerprint
            and r.curve
            and r.metrics.get("checkpoint_rows") == self.checkpoint_rows
        ]

    def decide(self, curve: Sequence[CurvePoint]) -> Verdict | None:
        step = curve[-1].step
        own = best_loss(curve, step)
        loss = math.nan if own is None else own
        finished = self.finished()
        rule, settings = self.config.rule, self.config
        reason = None
        if rule == "median":
            others = [v for v in (best_loss(r.curve, step) for r in finished) if v is not None]
            reason = median_rule(loss, others, min_finished=settings.min_finished, margin=settings.margin)
        elif rule == "asha":
            others = [v for v in (best_loss(r.curve, step) for r in self.reached(step)) if v is not None]
            reason = asha_rule(loss, others, eta=settings.eta, min_values=settings.min_finished, margin=settings.margin)
        elif rule == "incumbent":
            with_values = [r for r in finished if best_loss(r.curve, step) is not None]
            best = min(with_values, key=lambda r: _objective(r) or math.inf, default=None)
            incumbent = best_loss(best.curve, step) if best is not None else None
            reason = incumbent_rule(
                loss,
                incumbent,
                finished=len(with_values),
                min_finished=settings.min_finished,
                margin=settings.margin,
            )
        return Verdict(rule, f"{reason} at step {step}") if reason else None
