"""Whether evaluations are tracked and where (``--mlflow``, ``$MLFLOW_TRACKING_URI``, ``[tracking] mlflow``), the
environment that carries a study's tracking to its blackbox calls, and the MLflow client's settings."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from blackbox.core.folders import MLFLOW_STORE_FILE

if TYPE_CHECKING:
    from blackbox.core.experiment import Experiment

ENV_TRACKING_URI = "MLFLOW_TRACKING_URI"
ENV_EXPERIMENT_NAME = "MLFLOW_EXPERIMENT_NAME"
ENV_PARENT_RUN = "LORA_BLACKBOX_MLFLOW_PARENT_RUN_ID"
ENV_SOLVER = "LORA_BLACKBOX_SOLVER"


def tracking_uri(experiment: Experiment, explicit: str | None = None) -> str | None:
    """Where evaluations of ``experiment`` are tracked, or None when tracking is off: ``explicit``
    (``--mlflow``), else ``$MLFLOW_TRACKING_URI``, else with ``[tracking] mlflow = true`` a SQLite store in
    the study folder (MLflow's own default, ``sqlite:///mlflow.db``, put where every call of the study finds it)."""
    uri = explicit or os.environ.get(ENV_TRACKING_URI)
    if uri:
        return uri
    if experiment.tracking.mlflow:
        return f"sqlite:///{experiment.records_dir.resolve() / MLFLOW_STORE_FILE}"
    return None


def client_settings() -> None:
    """Settings of the MLflow client for this process and its children, before mlflow is imported; a user's
    own values win. A tracking server that is down or hangs costs seconds once per call (one retry, a 5 s
    timeout), not MLflow's default of 7 retries with exponential backoff and 120 s timeouts."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    # mlflow prints "View run ... at: URL" on stdout when a run ends: stdout is the optimizer's.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")


def safe_uri(uri: str) -> str:
    """The URI without credentials (``https://user:token@host`` -> ``https://host``)."""
    scheme, sep, rest = uri.partition("://")
    if not sep or "@" not in rest.split("/", 1)[0]:
        return uri
    return f"{scheme}://{rest.split('@', 1)[1]}"
