"""An evaluation's adapter again, for an evaluation that saved none: its point retrained with the experiment it
ran (same hyperparameters, data, seed and precision), its adapter saved this time.

The retraining is an evaluation of its own, recorded in the study folder's ``retrained/`` (not among the study's
records: it spends no budget); its validation loss is checked against the recorded one, which it reproduces on
the same machine and library versions (deterministic kernels aside).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence
from pathlib import Path

from blackbox.assessment.selection import Candidate
from blackbox.core.errors import ConfigError
from blackbox.core.folders import RETRAINED_DIR

logger = logging.getLogger(__name__)

REPRODUCED_WITHIN = 1e-3
"""Relative difference of validation losses under which a retraining counts as reproducing the evaluation."""


@dataclasses.dataclass(frozen=True)
class Retrained:
    candidate: Candidate  # with its new adapter
    recorded_loss: float
    retrained_loss: float

    @property
    def reproduced(self) -> bool:
        return math.isclose(self.recorded_loss, self.retrained_loss, rel_tol=REPRODUCED_WITHIN)


def retrain(candidates: list[Candidate], study_dir: Path) -> list[Retrained]:
    """Train each candidate's point again and save its adapter; one base model load per experiment.

    Raises:
        ConfigError: a candidate is not an evaluation with a point and an experiment, or its retraining failed.
        SetupError: the model or the data cannot be loaded.
    """
    from blackbox.core.failures import Status, raise_if_call_ends
    from blackbox.training.objective import Evaluator

    evaluators: dict[str, Evaluator] = {}
    results = []
    for candidate in candidates:
        evaluation, experiment = candidate.evaluation, candidate.experiment
        if evaluation is None or evaluation.point is None or experiment is None:
            raise ConfigError(f"{candidate.describe()}: only an evaluation of a study (point and experiment) retrains")
        fingerprint = experiment.fingerprint()
        if fingerprint not in evaluators:
            records = experiment.records.model_copy(
                update={"dir": str(study_dir / RETRAINED_DIR), "save_adapter": True}
            )
            evaluators[fingerprint] = Evaluator(experiment.model_copy(update={"records": records}))
        line = " ".join(repr(v) for v in evaluation.point)
        logger.info("retraining %s: point %s", candidate.describe(), line)
        record = evaluators[fingerprint].evaluate_line(line)
        raise_if_call_ends(record.status, record.error)  # a model that cannot load, a Ctrl-C
        if record.status is not Status.OK or record.run_dir is None:
            raise ConfigError(f"retraining {candidate.describe()} failed: {record.status.value}: {record.error}")
        recorded = float(evaluation.metrics["validation_loss"])
        retrained = float(record.metrics["validation_loss"])
        rerun = dataclasses.replace(candidate, adapter=Path(record.run_dir) / "adapter", retrained_loss=retrained)
        result = Retrained(rerun, recorded, retrained)
        log = logger.info if result.reproduced else logger.warning
        log("retrained %s: validation loss %.6f (recorded %.6f)", candidate.label, retrained, recorded)
        results.append(result)
    return results


def with_adapters(candidates: Sequence[Candidate], study_dir: Path | None, *, retrain_missing: bool) -> list[Candidate]:
    """The candidates, each evaluation that saved no adapter retrained to get it (``retrain_missing``).

    Raises:
        ConfigError: an evaluation has no adapter and ``retrain_missing`` is off.
    """
    missing = [c for c in candidates if c.adapter is None and c.evaluation is not None]
    if missing and not retrain_missing:
        raise ConfigError(
            "no saved adapter for " + ", ".join(c.describe() for c in missing) + " (the study ran with "
            "records.save_adapter = false): add --retrain to train these points again and save their adapters"
        )
    if not missing:
        return list(candidates)
    assert study_dir is not None  # evaluations come from a study folder
    retrained = {r.candidate.label: r.candidate for r in retrain(missing, study_dir)}
    return [retrained.get(c.label, c) if c in missing else c for c in candidates]
