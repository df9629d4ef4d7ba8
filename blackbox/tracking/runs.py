"""The MLflow runs: an evaluation's child run (:class:`Tracker`), the study's parent run (:class:`StudyTracking`,
:func:`start_study`), and the one place where tracking fails (:meth:`Tracker._guard`). The only module that imports
mlflow, and only when tracking is on."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from blackbox.core.extras import missing, require
from blackbox.core.failures import run_status, study_run_status
from blackbox.core.files import write_text_atomic
from blackbox.core.folders import MLFLOW_ARTIFACTS_DIR, MLFLOW_PARENT_FILE, MLFLOW_STORE_FILE
from blackbox.core.record import EvalRecord, RecordStore
from blackbox.tracking.config import (
    ENV_EXPERIMENT_NAME,
    ENV_PARENT_RUN,
    ENV_SOLVER,
    ENV_TRACKING_URI,
    client_settings,
    safe_uri,
    tracking_uri,
)
from blackbox.tracking.values import as_text, best_tags, numbers_of, objective_of, settings_of

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

    from blackbox.core.experiment import Experiment

logger = logging.getLogger(__name__)

# MLflow's batch limits (log_batch): metrics, parameters and tags per request.
_BATCH_METRICS, _BATCH_PARAMS = 1000, 100
_MAX_TAG_CHARS = 5000
_PARENT_TAG = "mlflow.parentRunId"
_RUN_NAME_TAG = "mlflow.runName"


def _tracking_errors() -> tuple[type[BaseException], ...]:
    """What a tracking server or store raises: MLflow's errors, the HTTP client's (connection refused, timeouts,
    retries exhausted), the database's of a local store, and the file system's (artifacts, the parent file)."""
    import requests
    from mlflow.exceptions import MlflowException

    errors: list[type[BaseException]] = [MlflowException, requests.RequestException, OSError]
    with contextlib.suppress(ImportError):  # a local SQLite store; mlflow wraps most of its errors
        from sqlalchemy.exc import SQLAlchemyError

        errors.append(SQLAlchemyError)
    return tuple(errors)


@dataclass
class Tracker:
    """MLflow tracking for one process's evaluations (one blackbox call, one Optuna study in process).

    Example::

        tracker = Tracker.for_experiment(experiment)  # None when tracking is off
        mlflow_run_id = tracker.start_evaluation(run_id, hparams, point_line=line)
        ...  # train, validate, write the record (with mlflow_run_id)
        tracker.finish_evaluation(record, step_losses=losses)

    Any tracking failure is logged once as a warning and ends tracking for this process's call.
    """

    uri: str
    experiment: Experiment
    study_dir: Path
    solver: str = "external"
    disabled: bool = False
    _client: MlflowClient | None = field(default=None, repr=False)
    _experiment_id: str | None = None
    _parent_run_id: str | None = None

    @classmethod
    def for_experiment(cls, experiment: Experiment, *, uri: str | None = None) -> Tracker | None:
        """The tracker of ``experiment``'s evaluations, or None when tracking is off (mlflow is not imported)."""
        uri = tracking_uri(experiment, uri)
        if uri is None:
            return None
        why = missing("mlflow", purpose=f"MLflow tracking (at {uri})")
        if why:  # tracking never costs an evaluation: one warning, no tracking
            logger.warning("%s; the evaluations are not tracked", why)
            return None
        return cls(
            uri=uri,
            experiment=experiment,
            study_dir=experiment.records_dir.resolve(),
            solver=os.environ.get(ENV_SOLVER) or "external",
        )

    # -- evaluations ---------------------------------------------------------------------------------------

    def start_evaluation(self, run_id: str, hparams: dict[str, float], *, point_line: str | None) -> str | None:
        """Create the child run of an evaluation (under the study's parent run) with its parameters; returns its
        MLflow run id, or None when tracking is off or failed."""
        if self.disabled:
            return None
        with self._guard("starting the evaluation's run"):
            from mlflow.entities import Param

            client = self._connect()
            tags = {
                _RUN_NAME_TAG: run_id,
                _PARENT_TAG: self.parent_run_id(),
                "lora_blackbox.run_id": run_id,
                "solver": self.solver,
                "point_line": " ".join((point_line or "").split()),
            }
            run = client.create_run(self._experiment(), tags=tags, run_name=run_id)
            params = {**settings_of(self.experiment), **{f"hparams.{k}": v for k, v in hparams.items()}}
            items = [Param(k, as_text(v, 6000)) for k, v in params.items()]
            for start in range(0, len(items), _BATCH_PARAMS):
                client.log_batch(run.info.run_id, params=items[start : start + _BATCH_PARAMS])
            return str(run.info.run_id)
        return None

    def finish_evaluation(self, record: EvalRecord, *, step_losses: Sequence[float] = ()) -> None:
        """Log an evaluation's record (metrics, tags, artifacts) to its child run and end it; update the parent
        run's objective history and best point. Called after the record is written."""
        if record.mlflow_run_id is None or self.disabled:
            return
        run_id = record.mlflow_run_id
        with self._guard("logging the evaluation"):
            from mlflow.entities import Metric, RunTag

            client = self._connect()
            now_ms = int(time.time() * 1000)
            number, objective, best = self._standing(record)
            metrics = [Metric("train_step_loss", float(v), now_ms, step) for step, v in enumerate(step_losses, 1)]
            # The learning curve ([validation] checkpoints): the loss on the checkpoint rows, by training step.
            metrics += [Metric("checkpoint_loss", p.loss, now_ms, p.step) for p in record.curve]
            metrics += [Metric(k, v, now_ms, 0) for k, v in numbers_of(record).items()]
            tags = {
                "status": record.status.value,
                "evaluation": str(number),
                "device": record.device or "",
                "error": record.error or "",
                "output_line": record.output_line,
            }
            run_tags = [RunTag(k, as_text(v, _MAX_TAG_CHARS)) for k, v in tags.items() if v]
            for start in range(0, len(metrics), _BATCH_METRICS):
                client.log_batch(run_id, metrics=metrics[start : start + _BATCH_METRICS])
            client.log_batch(run_id, tags=run_tags)
            self._log_artifacts(client, run_id, Path(record.run_dir) if record.run_dir else None)
            client.set_terminated(run_id, status=run_status(record.status))
            parent = self.parent_run_id()
            if objective is not None:
                parent_metrics = [Metric("objective", objective, now_ms, number)]
                best_objective = objective_of(best) if best is not None else None
                if best_objective is not None:
                    parent_metrics.append(Metric("best_objective", best_objective, now_ms, number))
                client.log_batch(parent, metrics=parent_metrics)
            if best is not None and best.run_id == record.run_id:
                best_run = [RunTag(k, as_text(v, _MAX_TAG_CHARS)) for k, v in best_tags(record).items()]
                client.log_batch(parent, tags=best_run)

    def _log_artifacts(self, client: MlflowClient, run_id: str, run_dir: Path | None) -> None:
        if run_dir is None or not run_dir.is_dir():
            return
        for name in ("eval.log", "record.json", "traceback.txt"):
            if (run_dir / name).is_file():
                client.log_artifact(run_id, str(run_dir / name))
        if (run_dir / "adapter").is_dir():
            client.log_artifacts(run_id, str(run_dir / "adapter"), artifact_path="adapter")

    def _standing(self, record: EvalRecord) -> tuple[int, float | None, EvalRecord | None]:
        """This evaluation's number in the study (its position among the counted records), its objective
        (None when it has none: failed, or low fidelity), and the study's best record so far."""
        counted = [r for r in RecordStore(self.study_dir).records() if r.counted]
        ids = [r.run_id for r in counted]
        number = ids.index(record.run_id) + 1 if record.run_id in ids else len(ids)
        valid = [r for r in counted if objective_of(r) is not None]
        best = min(valid, key=lambda r: objective_of(r) or math.inf, default=None)
        return number, objective_of(record), best

    # -- the parent run ------------------------------------------------------------------------------------

    def parent_run_id(self) -> str:
        """The study's parent run: ``$LORA_BLACKBOX_MLFLOW_PARENT_RUN_ID``, else the one of the study folder
        (``mlflow_parent.json``), else a new one, remembered there."""
        if self._parent_run_id is None:
            self._parent_run_id = os.environ.get(ENV_PARENT_RUN) or self.find_or_create_parent()
        return self._parent_run_id

    def find_or_create_parent(self, *, settings: dict[str, Any] | None = None) -> str:
        """The parent run of the study folder, created when the folder has none for this tracking URI (under an
        exclusive lock: parallel evaluations of a hand-started study share one)."""
        client = self._connect()
        self.study_dir.mkdir(parents=True, exist_ok=True)
        path = self.study_dir / MLFLOW_PARENT_FILE
        with _locked(self.study_dir / f".{MLFLOW_PARENT_FILE}.lock"):
            known = _read_json(path)
            if known.get("tracking_uri") == self.uri and known.get("run_id"):
                run_id = str(known["run_id"])
                if _run_exists(client, run_id):
                    return run_id
                logger.warning("the MLflow parent run %s of %s is gone: a new one is made", run_id, self.study_dir)
            run = client.create_run(
                self._experiment(),
                run_name=f"{self.experiment.study.name} ({self.solver})",
                tags={"solver": self.solver, "study_dir": str(self.study_dir), "lora_blackbox.parent": "true"},
            )
            run_id = str(run.info.run_id)
            from mlflow.entities import Param

            params = [Param(k, as_text(v, 6000)) for k, v in (settings or settings_of(self.experiment)).items()]
            for start in range(0, len(params), _BATCH_PARAMS):
                client.log_batch(run_id, params=params[start : start + _BATCH_PARAMS])
            write_text_atomic(path, json.dumps({"tracking_uri": self.uri, "run_id": run_id}) + "\n")
            logger.info("MLflow: parent run %s of %s at %s", run_id, self.study_dir, safe_uri(self.uri))
            return run_id

    # -- plumbing ------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _guard(self, what: str) -> Iterator[None]:
        """The one place where tracking fails: the body's tracking errors are logged once (a warning on
        stderr) and turn tracking off for the rest of this process's call (callers check ``disabled`` first).
        Whatever mlflow prints goes to stderr."""
        client_settings()
        errors = _tracking_errors()
        with contextlib.redirect_stdout(sys.stderr):
            try:
                yield
            except errors as e:
                self.disabled = True
                logger.warning(
                    "MLflow tracking at %s failed %s (%s: %s); this call goes on without tracking, its "
                    "evaluations are recorded as usual",
                    safe_uri(self.uri),
                    what,
                    type(e).__name__,
                    " ".join(str(e).split())[:240],
                )

    def _connect(self) -> MlflowClient:
        if self._client is None:
            client_settings()
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.uri)
        return self._client

    def _experiment(self) -> str:
        """The MLflow experiment of the study: ``$MLFLOW_EXPERIMENT_NAME``, else the study's name."""
        if self._experiment_id is None:
            from mlflow.exceptions import MlflowException

            client = self._connect()
            name = os.environ.get(ENV_EXPERIMENT_NAME) or self.experiment.study.name
            found = client.get_experiment_by_name(name)
            if found is None:
                location = None
                if self.uri == f"sqlite:///{self.study_dir / MLFLOW_STORE_FILE}":  # the study folder's own store
                    location = (self.study_dir / MLFLOW_ARTIFACTS_DIR).as_uri()
                try:
                    self._experiment_id = client.create_experiment(name, artifact_location=location)
                except MlflowException:  # another evaluation created it meanwhile
                    found = client.get_experiment_by_name(name)
                    if found is None:
                        raise
            if found is not None:
                self._experiment_id = str(found.experiment_id)
        assert self._experiment_id is not None
        return self._experiment_id


@dataclass
class StudyTracking:
    """A study driver's side of tracking: the parent run, and the environment its blackbox calls need."""

    tracker: Tracker
    parent_run_id: str

    @property
    def env(self) -> dict[str, str]:
        return {
            ENV_TRACKING_URI: self.tracker.uri,
            ENV_PARENT_RUN: self.parent_run_id,
            ENV_SOLVER: self.tracker.solver,
        }

    @contextlib.contextmanager
    def environment(self) -> Iterator[None]:
        """This process's environment carries :attr:`env` while the block runs (for evaluations in this
        process, and the subprocesses it starts), and is restored after it."""
        saved = {name: os.environ.get(name) for name in self.env}
        os.environ.update(self.env)
        try:
            yield
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value

    def log_file(self, path: Path) -> None:
        """Keep a file of the study (NOMAD's parameter file) as an artifact of the parent run."""
        if self.tracker.disabled:
            return
        with self.tracker._guard("logging a file of the study"):
            self.tracker._connect().log_artifact(self.parent_run_id, str(path))

    def end(self, *, interrupted: bool) -> None:
        """End the parent run with the failure policy's status (``failures.study_run_status``: KILLED when the
        study was interrupted, a rerun reopens it)."""
        if self.tracker.disabled:
            return
        with self.tracker._guard("ending the study's run"):
            status = study_run_status(interrupted=interrupted)
            self.tracker._connect().set_terminated(self.parent_run_id, status=status)


def start_study(
    experiment: Experiment, study_dir: Path, *, solver: str, settings: dict[str, Any], uri: str | None = None
) -> StudyTracking | None:
    """Find or create (or reopen) the parent run of a study folder, for a study driver; None when tracking is
    off or the tracking server fails (one warning: the study runs untracked).

    Args:
        experiment: the study's experiment (its name is the MLflow experiment's, its settings the parent's).
        study_dir: the study folder (its records and ``mlflow_parent.json``).
        solver: ``nomad``, ``optuna-tpe``, ...: a tag of the parent and of every evaluation.
        settings: the study's own settings (budget, sampler, seed, ...), parameters of the parent run.
        uri: ``--mlflow URI``; else ``$MLFLOW_TRACKING_URI``, else ``[tracking] mlflow``.

    Raises:
        SetupError: tracking is asked for and mlflow is not installed (the line names its install command).
    """
    uri = tracking_uri(experiment, uri)
    if uri is None:
        return None
    require("mlflow", purpose=f"MLflow tracking (at {uri})")
    tracker = Tracker(uri=uri, experiment=experiment, study_dir=study_dir.resolve(), solver=solver)
    with tracker._guard("creating the study's parent run"):
        client = tracker._connect()
        run_id = tracker.find_or_create_parent(settings={**settings_of(experiment), **settings})
        tracker._parent_run_id = run_id
        if client.get_run(run_id).info.status != "RUNNING":
            client.update_run(run_id, status="RUNNING")  # a resumed study
        return StudyTracking(tracker, run_id)
    return None


def _run_exists(client: MlflowClient, run_id: str) -> bool:
    """Whether the run exists and is not deleted; a failing server raises (the caller's guard takes it)."""
    from mlflow.exceptions import MlflowException

    try:
        return bool(client.get_run(run_id).info.lifecycle_stage == "active")
    except MlflowException as e:
        if e.error_code == "RESOURCE_DOES_NOT_EXIST":
            return False
        raise


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
