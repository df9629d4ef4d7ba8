"""What an MLflow run carries: the experiment's settings as flat parameters, every number of a record as metrics,
the parent run's tags of the best evaluation, and a record's objective."""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

from blackbox.core.record import EvalRecord

if TYPE_CHECKING:
    from blackbox.core.experiment import Experiment


def settings_of(experiment: Experiment) -> dict[str, Any]:
    """The experiment's fixed settings as flat parameters (``training.max_steps``, ``model.name_or_path``, ...;
    the search space as one JSON text). Where records go is not a setting of the study."""
    data = experiment.model_dump(mode="json", exclude={"records", "tracking", "downstream"})
    flat: dict[str, Any] = {"experiment.fingerprint": experiment.fingerprint()}
    for section, values in data.items():
        if isinstance(values, dict):
            flat.update({f"{section}.{k}": v for k, v in values.items() if v is not None and v != ""})
        else:
            flat[section] = json.dumps(values)
    return flat


def numbers_of(record: EvalRecord) -> dict[str, float]:
    """Every number of a record as MLflow metrics: its metrics, timings (``time.<phase>``) and memory
    (``memory.<what>``)."""
    numbers: dict[str, float] = {}
    groups = (("", record.metrics), ("time.", record.timings), ("memory.", record.memory))
    for prefix, values in groups:
        for key, value in values.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                numbers[prefix + key.replace(":", ".")] = float(value)
    return numbers


def best_tags(record: EvalRecord) -> dict[str, str]:
    """The parent run's tags for its best evaluation so far."""
    tags = {
        "best.run_id": record.run_id,
        "best.mlflow_run_id": record.mlflow_run_id or "",
        "best.point": " ".join(repr(v) for v in record.point or ()),
        "best.output_line": record.output_line,
    }
    tags.update({f"best.{k}": repr(v) for k, v in (record.hparams or {}).items()})
    return {k: v for k, v in tags.items() if v}


def objective_of(record: EvalRecord) -> float | None:
    """The OBJ output of a finished, full-fidelity record (inf when diverged), else None."""
    if not record.status.finished or not record.full_fidelity:
        return None
    value = record.output("OBJ")
    return None if value is None or math.isnan(value) else value


def as_text(value: Any, limit: int) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text[:limit]
