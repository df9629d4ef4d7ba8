"""Learning curves and early stopping in one evaluation on the tiny model, in this process: a curve changes no
result, and a judge that stops at a checkpoint gives a STOPPED record with fewer steps and its curve."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import pytest

from blackbox.core.curves import CurvePoint
from blackbox.core.early_stopping import Verdict
from blackbox.core.experiment import load_experiment
from blackbox.core.failures import Status, value_of_stopped
from blackbox.core.record import RecordStore

pytestmark = pytest.mark.slow

CURVE = ["validation.checkpoints=[0.25, 0.5, 0.75]", "validation.checkpoint_rows=16"]


class _StopAtFirst:
    """A judge that stops every training at its first checkpoint and keeps what it saw."""

    def __init__(self) -> None:
        self.seen: list[list[CurvePoint]] = []

    def decide(self, curve: Sequence[CurvePoint]) -> Verdict | None:
        self.seen.append(list(curve))
        return Verdict("test", "stopped by the test")


def test_a_curve_changes_no_result_and_a_judge_stops_at_a_checkpoint(tmp_path: Path, make_experiment) -> None:
    from blackbox.training.objective import Evaluator

    path = make_experiment(space="lr", steps=8)
    plain = Evaluator(load_experiment(str(path))).evaluate_line("-2")
    evaluator = Evaluator(load_experiment(str(path), CURVE))
    with_curve = evaluator.evaluate_line("-2")
    assert plain.status is with_curve.status is Status.OK and not plain.curve
    # Validating at a checkpoint draws no random number and changes no weight: the same result, exactly.
    assert with_curve.metrics["validation_loss"] == plain.metrics["validation_loss"]
    assert [p.step for p in with_curve.curve] == [2, 4, 6]
    assert [p.train_tokens for p in with_curve.curve] == sorted({p.train_tokens for p in with_curve.curve})
    assert with_curve.metrics["checkpoint_rows"] == 16 and with_curve.timings["checkpoint_s"] > 0
    assert with_curve.fingerprint == plain.fingerprint

    judge = _StopAtFirst()
    stopped = evaluator.evaluate_line("-4", judge=judge)
    assert stopped.status is Status.STOPPED and stopped.counted and stopped.error is None
    assert stopped.metrics["train_steps"] == 2 and "validation_loss" not in stopped.metrics
    assert stopped.stopped is not None and (stopped.stopped.step, stopped.stopped.total_steps) == (2, 8)
    assert (stopped.stopped.rule, stopped.stopped.reason) == ("test", "stopped by the test")
    assert [len(curve) for curve in judge.seen] == [1] and stopped.curve == tuple(judge.seen[0])
    # What the solver receives: its checkpoint loss, never as good as the incumbent's value.
    incumbent = min(plain.metrics["validation_loss"], with_curve.metrics["validation_loss"])
    expected = value_of_stopped(stopped.curve[0].loss, incumbent)
    assert stopped.output("OBJ") == expected > incumbent
    assert RecordStore(tmp_path / "runs").records()[-1].status is Status.STOPPED
    assert math.isfinite(stopped.metrics["train_loss"])
