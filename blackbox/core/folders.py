"""What a study folder holds, by name: the one place for the file names the blackbox, the study drivers and
the reports share.

A study folder (``runs/<study>/`` by default, a NOMAD study's folder under ``run_nomad.sh``) holds the
blackbox's records and one folder per evaluation; NOMAD's parameter file, cache, stats and hot-restart
file; an Optuna study's storage; MLflow's parent run id (and a local store, when one is used); and the
driver's stop request while a stopping study winds down.
"""

from __future__ import annotations

RECORDS_FILE = "records.jsonl"
"""Every evaluation's record, one JSON line each (``blackbox.core.record``)."""
EVALS_DIR = "evals"
"""One folder per evaluation, named by its run id: ``eval.log``, ``record.json``, ``adapter/``."""
TEST_LOSSES_FILE = "test_losses.json"
"""In an evaluation's folder, with ``[validation] test``: the loss sum and target tokens of each test example."""
PARAM_COPY = "param.txt"
"""The NOMAD parameter file the study runs (a copy: a resumed study is checked against it)."""
CACHE_FILE = "cache.txt"
STATS_FILE = "stats.txt"
HOT_RESTART_FILE = "hotrestart.txt"
OPTUNA_STORAGE_FILE = "optuna.db"
"""An Optuna study's default SQLite storage."""
LOCK_FILE = "study.lock"
"""Locked (``flock``) while a NOMAD study runs in the folder; names the driver's pid (``studies.guard``)."""
MLFLOW_PARENT_FILE = "mlflow_parent.json"
"""The study's MLflow parent run (tracking URI and run id), reused on resume (``blackbox.tracking``)."""
MLFLOW_STORE_FILE = "mlflow.db"
MLFLOW_ARTIFACTS_DIR = "mlartifacts"
"""The study folder's own MLflow store (``[tracking] mlflow = true`` without a tracking URI) and its artifacts."""
STOP_FILE = "stop-requested"
"""Present while a NOMAD study stops after a Ctrl-C (``blackbox.core.stopping``)."""
EXPERIMENTS_DIR = "experiments"
"""The experiments a study's evaluations ran, one JSON file per fingerprint: what ``downstream``, ``answers`` and
a retraining load again."""
DOWNSTREAM_FILE = "downstream.jsonl"
"""Benchmark scores of the base model and of adapters (``lora-blackbox downstream``), one JSON line each."""
BASE_SCORES_FILE = "base_scores.json"
"""The base model's scores of a study's benchmark constraints, computed once and shared by its evaluations."""
RETRAINED_DIR = "retrained"
"""Evaluations retrained with their recorded hyperparameters and seed to get their adapter back (``--retrain``)."""
ANSWERS_FILE = "answers.jsonl"
"""Answers of the base model and of adapters to a question file (``lora-blackbox answers``), one JSON line each."""
VOTES_FILE = "votes.sqlite"
"""Blind pairwise ratings of those answers by people and judge models (``lora-blackbox compare``), beside the
answers file; ``lora-blackbox report`` adds their results when the study folder holds one."""
