"""The stopping rules on synthetic curves (``blackbox.core.early_stopping``): each rule, the minimum count, ties, NaN;
the study's rule over records; where the checkpoints fall. Fast: no model, no process."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from blackbox.core.curves import CurvePoint, checkpoint_steps
from blackbox.core.early_stopping import (
    StudyRule,
    asha_rule,
    best_loss,
    incumbent_objective,
    incumbent_rule,
    median_rule,
)
from blackbox.core.experiment import load_experiment
from blackbox.core.failures import Status
from blackbox.core.point import PointSource
from blackbox.core.record import RecordStore, build_record

NAN = math.nan


@pytest.mark.parametrize(
    ("total", "fractions", "steps"),
    [
        (16, (0.25, 0.5, 0.75), (4, 8, 12)),
        (10, (0.25, 0.5, 0.75), (3, 5, 8)),  # the first step at or after each fraction
        (2, (0.25, 0.5, 0.75), (1,)),  # no duplicates, never the last step (the final validation follows)
        (1, (0.5,), ()),
    ],
)
def test_checkpoint_steps(total: int, fractions: tuple[float, ...], steps: tuple[int, ...]) -> None:
    assert checkpoint_steps(total, fractions) == steps


def test_the_median_rule() -> None:
    others = [1.0, 2.0, 3.0]
    assert median_rule(2.5, others, min_finished=3) is not None  # worse than the median, 2.0
    assert median_rule(1.5, others, min_finished=3) is None
    assert median_rule(2.0, others, min_finished=3) is None  # a tie goes on
    assert median_rule(2.5, others, min_finished=4) is None  # not enough finished evaluations
    assert median_rule(2.5, others, min_finished=3, margin=0.3) is None  # within 30% of the median
    assert median_rule(2.7, others, min_finished=3, margin=0.3) is not None


def test_the_median_rule_with_nan() -> None:
    assert median_rule(NAN, [1.0, 2.0], min_finished=2) == "its checkpoint loss is nan"
    assert median_rule(NAN, [1.0, 2.0], min_finished=3) is None  # the minimum count first
    # NaN values of finished evaluations are left out: they neither count nor move the median.
    assert median_rule(2.5, [1.0, 2.0, NAN], min_finished=3) is None
    assert median_rule(1.8, [1.0, 2.0, NAN, 3.0], min_finished=3) is None


def test_the_incumbent_rule() -> None:
    assert incumbent_rule(1.2, 1.0, finished=1, min_finished=1) is not None
    assert incumbent_rule(1.0, 1.0, finished=1, min_finished=1) is None  # a tie goes on
    assert incumbent_rule(1.2, 1.0, finished=1, min_finished=2) is None
    assert incumbent_rule(1.04, 1.0, finished=3, min_finished=1, margin=0.05) is None
    assert incumbent_rule(1.06, 1.0, finished=3, min_finished=1, margin=0.05) is not None
    assert incumbent_rule(1.2, None, finished=3, min_finished=1) is None  # the incumbent has no curve there
    assert incumbent_rule(1.2, NAN, finished=3, min_finished=1) is None
    assert incumbent_rule(NAN, 1.0, finished=1, min_finished=1) == "its checkpoint loss is nan"


def test_the_asha_rule() -> None:
    rung = [1.0, 2.0, 3.0, 4.0, 5.0]  # with its own value, 6 at the rung: eta 2 keeps the best 3, eta 3 the best 2
    assert asha_rule(2.5, rung, eta=2, min_values=2) is None  # 1, 2, 2.5 go on
    assert asha_rule(3.5, rung, eta=2, min_values=2) is not None
    assert asha_rule(2.5, rung, eta=3, min_values=2) is not None  # only 1 and 2 go on
    assert asha_rule(3.0, rung, eta=2, min_values=2) is None  # a tie with the cut-off goes on
    assert asha_rule(9.0, [1.0], eta=2, min_values=3) is None  # 2 values at the rung: fewer than min_values
    assert asha_rule(9.0, [1.0], eta=2, min_values=2) is not None  # the best 1 of 2 goes on
    assert asha_rule(3.5, rung, eta=2, min_values=2, margin=0.2) is None  # within 20% of the cut-off 3.0
    assert asha_rule(NAN, rung, eta=2, min_values=2) == "its checkpoint loss is nan"
    assert asha_rule(2.5, [*rung, NAN], eta=2, min_values=2) is None  # NaN values are left out


def test_asha_counts_stopped_evaluations_that_reached_the_rung(experiment, tmp_path: Path) -> None:
    store = RecordStore(tmp_path)
    asha = StudyRule(
        experiment.model_copy(update={"stopping": experiment.stopping.model_copy(update={"rule": "asha", "eta": 1.5})}),
        checkpoint_rows=8,
    )
    _finished(store, experiment, 1.0, [2.0, 1.5, 1.2])
    points = (CurvePoint(4, 100, 3.0), CurvePoint(8, 200, 2.8))
    stop = {"step": 8, "total_steps": 16, "rule": "asha", "reason": "r"}
    metrics = {"checkpoint_rows": 8, "objective": 2.8}
    stopped = build_record(experiment, Status.STOPPED, PointSource(), metrics=metrics, curve=points)
    store.append(stopped.__class__.from_dict({**stopped.as_dict(), "stopped": stop}))
    assert len(asha.reached(8)) == 2 and len(asha.reached(12)) == 1  # the stopped one reached step 8, not 12
    # At step 4 the rung holds 2.0 and the stopped 3.0: with its own value, the best 2 of 3 go on (without the
    # stopped one, the best 1 of 2 would, and 2.5 would stop).
    assert asha.decide([CurvePoint(4, 100, 2.5)]) is None
    assert asha.decide([CurvePoint(4, 100, 3.5)]) is not None


def test_a_curve_by_step() -> None:
    curve = [CurvePoint(4, 100, 2.0), CurvePoint(8, 200, 1.5), CurvePoint(12, 300, 1.7), CurvePoint(14, 350, NAN)]
    assert best_loss(curve, 3) is None
    assert best_loss(curve, 4) == 2.0
    assert best_loss(curve, 10) == 1.5  # another training's checkpoints: its best before that step
    assert best_loss(curve, 14) == 1.5


def _finished(store: RecordStore, experiment, loss: float, curve: list[float], *, rows: int = 8) -> None:
    points = tuple(CurvePoint(4 * (i + 1), 100 * (i + 1), v) for i, v in enumerate(curve))
    metrics = {"validation_loss": loss, "objective": loss, "checkpoint_rows": rows}
    store.append(build_record(experiment, Status.OK, PointSource(), metrics=metrics, curve=points))


@pytest.fixture
def experiment(tmp_path: Path):
    return load_experiment(
        "demo",
        [
            f"records.dir={tmp_path}",
            'study.outputs=["OBJ:validation_loss"]',
            "validation.checkpoints=[0.25, 0.5, 0.75]",
            "stopping.rule=median",
            "stopping.min_finished=2",
        ],
    )


def test_the_studys_rule_reads_its_finished_evaluations(experiment, tmp_path: Path) -> None:
    store = RecordStore(tmp_path)
    rule = StudyRule(experiment, checkpoint_rows=8)
    at_4 = [CurvePoint(4, 100, 2.5)]
    assert rule.decide(at_4) is None  # no finished evaluation yet
    _finished(store, experiment, 1.0, [2.0, 1.5, 1.2])
    assert rule.decide(at_4) is None  # one: fewer than min_finished
    _finished(store, experiment, 1.1, [2.2, 1.6, 1.3], rows=16)  # other rows: not comparable, not counted
    assert rule.decide(at_4) is None
    _finished(store, experiment, 1.1, [2.2, 1.6, 1.3])
    verdict = rule.decide(at_4)
    assert verdict is not None and verdict.rule == "median" and "median 2.1 of 2 finished at step 4" in verdict.reason
    assert rule.decide([CurvePoint(4, 100, 2.1)]) is None  # a tie with the median
    # Failures and other experiments' evaluations do not count.
    store.append(build_record(experiment, Status.ERROR, PointSource()))
    other = load_experiment(
        "demo", [f"records.dir={tmp_path}", 'study.outputs=["OBJ:validation_loss"]', "training.max_steps=8"]
    )
    _finished(store, other, 0.1, [0.1, 0.1, 0.1])
    assert rule.finished() and all(r.fingerprint == experiment.fingerprint() for r in rule.finished())
    assert incumbent_objective(store.records(), experiment.fingerprint()) == 1.0
    # The incumbent rule: against the best evaluation's curve (1.0: 2.0 at step 4, 1.5 by step 8).
    incumbent = StudyRule(experiment.model_copy(update={"stopping": experiment.stopping.model_copy(
        update={"rule": "incumbent"})}), checkpoint_rows=8)  # fmt: skip
    assert incumbent.decide([CurvePoint(4, 100, 2.05)]) is not None
    assert incumbent.decide([CurvePoint(4, 100, 1.9)]) is None
    assert incumbent.decide([CurvePoint(4, 100, 2.05), CurvePoint(8, 200, 1.4)]) is None  # its best so far counts
