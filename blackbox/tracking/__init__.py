"""MLflow tracking: every evaluation an MLflow run, nested under one parent run per study folder.

Tracking is on when ``$MLFLOW_TRACKING_URI`` is set, when the experiment says ``[tracking] mlflow = true``
(then, without a URI, a SQLite store in the study folder: ``mlflow.db``, artifacts in ``mlartifacts/``), or
when ``study``/``optuna`` get ``--mlflow URI``. It uses MLflow's client API (``MlflowClient``), never the
fluent API's active-run stack, and imports mlflow only when tracking is on.

- A study driver (``lora-blackbox study``, ``run_nomad.sh``; ``lora-blackbox optuna``) finds or creates the
  parent run of its study folder (:func:`start_study`) and hands its id to the blackbox calls in
  ``$LORA_BLACKBOX_MLFLOW_PARENT_RUN_ID``, the URI in ``$MLFLOW_TRACKING_URI`` and the solver in
  ``$LORA_BLACKBOX_SOLVER``. A call without a parent id (a ``nomad`` started by hand) finds or creates the
  parent itself. The parent's id is kept in the study folder (``mlflow_parent.json``), so that a resumed
  study, by whatever driver, goes on in the same parent run.
- Each evaluation (:class:`Tracker`, used by ``training.objective``) is a child run, named by the
  evaluation's run id: parameters are the decoded hyperparameters and the experiment's fixed settings;
  metrics the training loss per step (``train_step_loss``), the learning curve (``checkpoint_loss`` by step, with
  ``[validation] checkpoints``) and every number of the record; tags the status,
  run id, point line, solver, evaluation number and device; artifacts ``eval.log``, ``record.json`` and the
  adapter when saved. The record names the child run (``mlflow_run_id``).
- The parent run carries the study's settings, every evaluation's objective and the best so far (metrics
  ``objective`` and ``best_objective``, step: the evaluation number), and the best point (``best.*`` tags).

Tracking never costs an evaluation: the errors of a tracking server or store (MLflow's, the HTTP client's,
the file system's) are caught in one place (:meth:`Tracker._guard`), give one warning per call on stderr,
and turn tracking off for the rest of the call; requests time out after seconds, not minutes (see
:func:`config.client_settings`). Nothing reaches stdout, the optimizer's channel: mlflow's "View run" lines are
switched off and whatever it prints goes to stderr.

The modules: ``config`` (whether tracking is on and where, the environment, the client's settings), ``values``
(what a run carries: the experiment's settings, a record's numbers, the best point's tags) and ``runs`` (the MLflow
runs: :class:`Tracker`, :class:`StudyTracking`, :func:`start_study`; the only module that imports mlflow).
"""

from blackbox.tracking.config import ENV_EXPERIMENT_NAME, ENV_PARENT_RUN, ENV_SOLVER, ENV_TRACKING_URI, tracking_uri
from blackbox.tracking.runs import StudyTracking, Tracker, start_study
from blackbox.tracking.values import best_tags, numbers_of, settings_of

__all__ = [
    "ENV_EXPERIMENT_NAME",
    "ENV_PARENT_RUN",
    "ENV_SOLVER",
    "ENV_TRACKING_URI",
    "StudyTracking",
    "Tracker",
    "best_tags",
    "numbers_of",
    "settings_of",
    "start_study",
    "tracking_uri",
]
