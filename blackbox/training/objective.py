"""One evaluation, top to bottom: point -> hyperparameters -> LoRA training -> validation -> record.

This is the only place where a failure of one point becomes a record status. The base model, the
tokenizer and the data are loaded once per :class:`Evaluator` (once per call of ``eval``) and shared
by its points; every point gets a fresh LoRA adapter, seeded as if it ran in a process of its own.

The steps, in the order they run: the point's line is decoded into hyperparameters here; ``training_run`` trains
and validates them into metrics; the record (and the running marker before it) is written here, from the
``attempt`` (its run folder, ``eval.log``, versions); ``memory`` frees what a point leaves and measures its peak.
"""

from __future__ import annotations

import contextlib
import logging
import time
import traceback
from typing import Any

import psutil
import torch

from blackbox.core.early_stopping import Judge
from blackbox.core.errors import PointError, RecordsError, SetupError
from blackbox.core.experiment import Experiment, write_snapshot
from blackbox.core.failures import Status, status_of
from blackbox.core.point import PointSource, parse_point, shorten
from blackbox.core.record import RUNNING_FILE, EvalRecord, RecordStore, build_record, writing_records
from blackbox.core.space import HyperParams, SearchSpace
from blackbox.tracking import Tracker
from blackbox.training import distributed
from blackbox.training.attempt import Attempt, describe_failure, log_to, versions
from blackbox.training.benchmarks import Scorer
from blackbox.training.data import prepare_splits
from blackbox.training.distributed import world_from_env
from blackbox.training.memory import measure_memory, release_memory, reset_peak_memory
from blackbox.training.model import choose_fused_kernels, load_base_model, load_tokenizer, resolve_device
from blackbox.training.precision import Precision, resolve_precision
from blackbox.training.training_run import Loaded, train_and_validate

__all__ = ["Evaluator"]

logger = logging.getLogger(__name__)


class Evaluator:
    """Evaluates points of one experiment in this process and records each evaluation.

    Example::

        evaluator = Evaluator(load_experiment("demo"))
        record = evaluator.evaluate_line("2 -4 1")
        record.status, record.metrics["validation_loss"]
    """

    def __init__(self, experiment: Experiment) -> None:
        self.experiment = experiment
        self.space = SearchSpace.from_experiment(experiment)
        self.store = RecordStore.of(experiment)
        self.records_dir = self.store.folder
        self._loaded: Loaded | None = None
        # Under torchrun every rank evaluates the same points together; rank 0 alone records and prints.
        self.world = world_from_env()
        self.tracker = Tracker.for_experiment(experiment) if self.world.main else None  # None: tracking is off
        self._startup_s: float | None = time.time() - psutil.Process().create_time()

    def evaluate_line(
        self, line: str, *, point_file: str | None = None, block_index: int | None = None, judge: Judge | None = None
    ) -> EvalRecord:
        """Evaluate one non-blank line of a point file and return its record. An invalid point is recorded and
        fails alone; a model that cannot load is recorded NOT_RUN (the caller ends the call: ``failures.call_after``).
        ``judge``: who decides at the checkpoints (:meth:`evaluate`).

        Raises:
            RecordsError: the record cannot be written.
        """
        source = PointSource(line=line, file=point_file, block_index=block_index)
        try:
            values = parse_point(line)
            hparams = self.space.decode(values)
        except PointError as e:
            logger.error("point %s (%s) is invalid: %s", source.label, shorten(repr(line.strip())), e)
            record = self._record(Status.INVALID_POINT, source, error=str(e))
            if self.world.main:
                self.store.append(record)
            return record
        return self.evaluate(hparams, PointSource(line, values, point_file, block_index), judge=judge)

    def evaluate(
        self, hparams: HyperParams, source: PointSource | None = None, *, judge: Judge | None = None
    ) -> EvalRecord:
        """Train and validate one set of hyperparameters; write and return its record, whatever ended it: a Ctrl-C
        (INTERRUPTED) or a model that cannot load (NOT_RUN) is recorded and returned, not raised.

        With ``[validation] checkpoints`` the training validates at its checkpoints (a learning curve), and ``judge``
        may stop it there (STOPPED): an Optuna trial's pruner (``studies.pruning``), or by default the experiment's
        ``[stopping]`` rule (``core.early_stopping.StudyRule``; none when its rule is ``none``).

        Raises:
            RecordsError: the record cannot be written.
        """
        attempt = Attempt.start(self.store, hparams, source or PointSource(), create=self.world.main)
        attempt.judge = judge
        if self.world.main:
            self.store.mark_running(self._marker(attempt))
        try:
            return self._evaluate(hparams, attempt)
        finally:
            if self.tracker is not None and attempt.record is not None:  # after eval.log is complete
                self.tracker.finish_evaluation(attempt.record, step_losses=attempt.step_losses)

    def _evaluate(self, hparams: HyperParams, attempt: Attempt) -> EvalRecord:
        with log_to(attempt, self.records_dir) if self.world.main else contextlib.nullcontext():
            logger.info("evaluation %s: %s", attempt.run_id, hparams)
            try:
                if self.tracker is not None:  # its MLflow run (None when tracking fails: a warning, no failure)
                    attempt.mlflow_run_id = self.tracker.start_evaluation(
                        attempt.run_id, hparams.as_dict(), point_line=attempt.source.line
                    )
                loaded = self._load(attempt.timings)
                reset_peak_memory(loaded.device)
                metrics = train_and_validate(
                    hparams, loaded, attempt, experiment=self.experiment, world=self.world, store=self.store
                )
                attempt.metrics.update(metrics)
                if attempt.stop is not None:  # a judge stopped it at a checkpoint: it cannot win
                    return self._finish(attempt, Status.STOPPED, None)
            # The one boundary of an evaluation: the failure policy (blackbox.core.failures) decides what a failure
            # of this point is (its status); what that status means for the call is decided by the caller, from
            # the record (failures.call_after): a Ctrl-C or a model that cannot load is recorded here, not raised.
            except BaseException as error:
                status = status_of(error)
                if status is None:
                    raise
                return self._finish(attempt, status, describe_failure(error, status), traceback.format_exc())
            return self._finish(attempt, Status.OK, None)

    def _load(self, timings: dict[str, float]) -> Loaded:
        """Load the tokenizer, the data and the base model on the first call; reuse them afterwards (the base model
        is loaded again after a point whose adapter changed it)."""
        if self._loaded is not None:
            if self._loaded.base_model is None:
                self._loaded.base_model = self._load_base_model(self._loaded.device, self._loaded.precision, timings)
            return self._loaded
        config = self.experiment
        if self.world.main:
            with writing_records(self.records_dir):
                write_snapshot(config)
        device = resolve_device(config.training.device, local_rank=self.world.local_rank)
        distributed.start(self.world, device)
        precision = resolve_precision(config.model, config.training, device)
        started = time.perf_counter()
        tokenizer = load_tokenizer(config.model)
        timings["tokenizer_load_s"] = time.perf_counter() - started
        started = time.perf_counter()
        # The test split is read only by an evaluation that computes its loss: a solver's evaluations never load it.
        data = (
            config.data if config.validation.test else config.data.model_copy(update={"test": (), "max_test_rows": 0})
        )
        splits = prepare_splits(data, tokenizer)
        timings["data_prep_s"] = time.perf_counter() - started
        logger.info("data: %d train / %d validation examples", len(splits.train), len(splits.validation))
        base_model = self._load_base_model(device, precision, timings)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        scorer = None
        if config.benchmarks:
            if self.world.size > 1:
                raise SetupError("benchmark objectives and constraints do not run under torchrun yet: one process")
            scorer = Scorer(tokenizer, config.data)
            scorer.check(config.benchmarks)  # an unknown task fails the call before any training
        kernels, _ = choose_fused_kernels(
            config.training.fused_kernels, base_model, device, quantized=config.model.quantization != "none"
        )
        self._loaded = Loaded(tokenizer, splits, base_model, device, precision, pad_id, scorer, kernels)
        return self._loaded

    def _load_base_model(self, device: torch.device, precision: Precision, timings: dict[str, float]) -> Any:
        config = self.experiment
        started = time.perf_counter()
        base_model = load_base_model(config.model, config.training, device, precision)
        timings["model_load_s"] = time.perf_counter() - started
        logger.info("model %s loaded on %s in %.1f s", config.model.name_or_path, device, timings["model_load_s"])
        return base_model

    def _finish(
        self, attempt: Attempt, status: Status, error: str | None, traceback_text: str | None = None
    ) -> EvalRecord:
        """Write the record of an attempt (its run folder and the records file) and return it."""
        device = self._loaded.device if self._loaded is not None else None
        if device is not None:
            # A failed point's tensors are freed with its traceback, which is gone once the caller's
            # except clause ends; the allocator cache is emptied here, and again before the next point.
            release_memory(device)
        if status in (Status.ERROR, Status.OOM) and traceback_text and self.world.main:
            with writing_records(self.records_dir):
                (attempt.run_dir / "traceback.txt").write_text(traceback_text)
            if status is Status.ERROR:
                logger.error("evaluation %s failed:\n%s", attempt.run_id, traceback_text.rstrip())
        # NOT_RUN: the call fails, and its one error line says why; STOPPED is no error (the curve's log says why).
        if status not in (Status.OK, Status.NOT_RUN, Status.STOPPED):
            logger.error("evaluation %s: %s: %s", attempt.run_id, status.value, error)
        attempt.timings["total_s"] = time.perf_counter() - attempt.started
        attempt.metrics["total_seconds"] = attempt.timings["total_s"]
        memory = measure_memory(device)
        attempt.metrics["peak_memory_gib"] = memory["peak_gib"]
        record = self._record(
            status,
            attempt.source,
            run_id=attempt.run_id,
            error=error,
            hparams=attempt.hparams.as_dict(),
            metrics=attempt.metrics,
            timings=attempt.timings,
            memory=memory,
            run_dir=str(attempt.run_dir),
            started_at=attempt.started_at,
            mlflow_run_id=attempt.mlflow_run_id,
            curve=attempt.curve,
            stopped=attempt.stop,
        )
        attempt.record = record
        if self.world.main:
            try:
                if attempt.log_failure is not None:  # its eval.log could not be written: nor can the rest be
                    raise RecordsError(self.records_dir, attempt.log_failure)
                self.store.write_run_record(record)
                self.store.append(record)
            except RecordsError:
                # Not killed: unrecorded because of the records folder (the call fails and says so). Removing a
                # file needs no room, so the folder is not taken for a killed evaluation later.
                with contextlib.suppress(OSError):
                    (attempt.run_dir / RUNNING_FILE).unlink()
                raise
        return record

    def _marker(self, attempt: Attempt) -> EvalRecord:
        """What an evaluation is taken for should it never record its end (``record.RUNNING_FILE``)."""
        return build_record(
            self.experiment,
            Status.KILLED,
            attempt.source,
            run_id=attempt.run_id,
            hparams=attempt.hparams.as_dict(),
            run_dir=str(attempt.run_dir),
            started_at=attempt.started_at,
        )

    def _record(self, status: Status, source: PointSource, **fields: Any) -> EvalRecord:
        """The record of an evaluation by this process: what ``record.build_record`` needs, plus this process's
        start-up time (on its first record only), device and library versions."""
        timings = fields.pop("timings", {})
        if self._startup_s is not None:
            timings["startup_s"] = self._startup_s  # counted once: for the first evaluation of the process
            self._startup_s = None
        device = self._loaded.device if self._loaded else None
        return build_record(
            self.experiment,
            status,
            source,
            timings=timings,
            device=str(device) if device else None,
            versions=versions(),
            **fields,
        )
