"""One evaluation, top to bottom: point -> hyperparameters -> LoRA training -> validation -> record.

This is the only place where a failure of one point becomes a record status. The base model, the
tokenizer and the data are loaded once per :class:`Evaluator` (once per call of ``eval``) and shared
by its points; every point gets a fresh LoRA adapter, seeded as if it ran in a process of its own.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import math
import platform
import sys
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import torch

from blackbox._version import __version__
from blackbox.core.errors import PointError, RecordsError, SetupError, TrainingDiverged
from blackbox.core.experiment import Experiment, write_snapshot
from blackbox.core.failures import Status, status_of
from blackbox.core.logs import adopt_library_loggers, hand_over
from blackbox.core.point import PointSource, parse_point, shorten
from blackbox.core.record import RUNNING_FILE, EvalRecord, RecordStore, build_record, new_run_id, now, writing_records
from blackbox.core.space import HyperParams, SearchSpace
from blackbox.tracking import Tracker
from blackbox.training import distributed
from blackbox.training.benchmarks import Scorer, base_score
from blackbox.training.data import Splits, prepare_splits
from blackbox.training.distributed import world_from_env
from blackbox.training.model import (
    attach_lora,
    count_parameters,
    detach_lora,
    load_base_model,
    load_tokenizer,
    resolve_device,
    save_adapter,
    save_initial_adapter,
)
from blackbox.training.precision import Precision, resolve_precision
from blackbox.training.train import train
from blackbox.training.validate import validate

logger = logging.getLogger(__name__)

_GIB = 1024**3


@dataclass
class _Loaded:
    """What all points of a call share."""

    tokenizer: Any
    splits: Splits
    base_model: Any  # None after a point that changed it: loaded again for the next one
    device: torch.device
    precision: Precision
    pad_id: int
    scorer: Scorer | None  # when the experiment scores benchmarks (its objective or constraints)


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
        self._loaded: _Loaded | None = None
        # Under torchrun every rank evaluates the same points together; rank 0 alone records and prints.
        self.world = world_from_env()
        self.tracker = Tracker.for_experiment(experiment) if self.world.main else None  # None: tracking is off
        self._startup_s: float | None = time.time() - psutil.Process().create_time()

    def evaluate_line(self, line: str, *, point_file: str | None = None, block_index: int | None = None) -> EvalRecord:
        """Evaluate one non-blank line of a point file and return its record. An invalid point is recorded and
        fails alone; a model that cannot load is recorded NOT_RUN (the caller ends the call: ``failures.call_after``).

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
        return self.evaluate(hparams, PointSource(line, values, point_file, block_index))

    def evaluate(self, hparams: HyperParams, source: PointSource | None = None) -> EvalRecord:
        """Train and validate one set of hyperparameters; write and return its record, whatever ended it: a Ctrl-C
        (INTERRUPTED) or a model that cannot load (NOT_RUN) is recorded and returned, not raised.

        Raises:
            RecordsError: the record cannot be written.
        """
        attempt = _Attempt.start(self.store, hparams, source or PointSource(), create=self.world.main)
        if self.world.main:
            self.store.mark_running(self._marker(attempt))
        try:
            return self._evaluate(hparams, attempt)
        finally:
            if self.tracker is not None and attempt.record is not None:  # after eval.log is complete
                self.tracker.finish_evaluation(attempt.record, step_losses=attempt.step_losses)

    def _evaluate(self, hparams: HyperParams, attempt: _Attempt) -> EvalRecord:
        with _log_to(attempt, self.records_dir) if self.world.main else contextlib.nullcontext():
            logger.info("evaluation %s: %s", attempt.run_id, hparams)
            try:
                if self.tracker is not None:  # its MLflow run (None when tracking fails: a warning, no failure)
                    attempt.mlflow_run_id = self.tracker.start_evaluation(
                        attempt.run_id, hparams.as_dict(), point_line=attempt.source.line
                    )
                loaded = self._load(attempt.timings)
                _reset_peak_memory(loaded.device)
                attempt.metrics.update(self._train_and_validate(hparams, loaded, attempt))
            # The one boundary of an evaluation: the failure policy (blackbox.core.failures) decides what a failure
            # of this point is (its status); what that status means for the call is decided by the caller, from
            # the record (failures.call_after): a Ctrl-C or a model that cannot load is recorded here, not raised.
            except BaseException as error:
                status = status_of(error)
                if status is None:
                    raise
                return self._finish(attempt, status, _describe(error, status), traceback.format_exc())
            return self._finish(attempt, Status.OK, None)

    def _train_and_validate(self, hparams: HyperParams, loaded: _Loaded, attempt: _Attempt) -> dict[str, Any]:
        # The experiment this point trains with: its settings (training.epochs, lora.use_dora, ...) applied.
        config = self.experiment.with_settings(hparams.settings)
        _seed_everything(config.training.seed)
        model = None
        try:
            model = attach_lora(loaded.base_model, hparams, config.model, config.lora)
            if self.world.size > 1:
                torch.manual_seed(config.training.seed + self.world.rank)  # same adapter, own dropout per rank
            attention = getattr(model.config, "_attn_implementation", None)
            saves = config.records.save_adapter and self.world.main
            initial = save_initial_adapter(model, config.lora, attempt.run_dir / "adapter-initial") if saves else None
            trainable, _ = count_parameters(model)
            stats = train(
                model=model,
                split=loaded.splits.train,
                learning_rate=hparams.learning_rate,
                config=config.training,
                device=loaded.device,
                precision=loaded.precision,
                pad_id=loaded.pad_id,
                fidelity=config.fidelity.train,
                world=self.world,
            )
            attempt.timings["train_s"] = stats.seconds
            attempt.step_losses = stats.losses
            validation = loaded.splits.validation
            validation = validation.head(math.ceil(len(validation) * config.fidelity.validation))
            result = validate(
                model=model,
                split=validation,
                batch_size=config.validation.batch_size,
                device=loaded.device,
                precision=loaded.precision,
                pad_id=loaded.pad_id,
                packed=config.training.packing,
                world=self.world,
            )
            attempt.timings["validation_s"] = result.seconds
            if not math.isfinite(result.loss):
                raise TrainingDiverged(f"validation loss is {result.loss}")
            if saves:
                with writing_records(self.records_dir):
                    save_adapter(model, attempt.run_dir / "adapter", initial=initial)
            scores = self._score_benchmarks(model, loaded, attempt) if loaded.scorer else {}
        finally:
            if model is not None:
                loaded.base_model = detach_lora(model)
                model = None
            if config.lora.changes_base_model:
                # PiSSA and OLoRA moved part of the adapted weights into the adapter, trained biases changed: the
                # next point of the call gets the base model loaded again (see _load).
                loaded.base_model = None
            _release_memory(loaded.device)
        logger.info("validation loss %.6f (train loss %.4f)", result.loss, stats.train_loss)
        metrics = {
            "validation_loss": result.loss,
            "validation_tokens": result.target_tokens,
            "validation_seconds": result.seconds,
            "train_loss": stats.train_loss,
            "train_last_loss": stats.last_loss,
            "train_steps": stats.steps,
            "train_tokens": stats.real_tokens,
            "train_padding_share": 1 - stats.real_tokens / stats.padded_tokens,
            "train_target_tokens": stats.target_tokens,
            "train_seconds": stats.seconds,
            "tokens_per_second": stats.real_tokens / stats.seconds if stats.seconds else 0.0,
            "trainable_params": trainable,
            "micro_batch_size": stats.micro_batch_size,
            "precision": loaded.precision.describe(),
            "attention": attention,
            "fidelity_train": config.fidelity.train,
            "fidelity_validation": config.fidelity.validation,
            **scores,
        }
        metrics["objective"] = config.objective.value(metrics)
        return metrics

    def _score_benchmarks(self, model: Any, loaded: _Loaded, attempt: _Attempt) -> dict[str, Any]:
        """The scores of the experiment's benchmarks (objective and constraints) of the model just trained, and
        the value of each constraint; their time is the phase ``benchmark_s``."""
        assert loaded.scorer is not None
        started = time.perf_counter()
        scores: dict[str, float | None] = {}
        values: dict[str, float] = {}
        for benchmark in self.experiment.benchmarks:
            score = loaded.scorer.score(model, benchmark)
            scores[benchmark.key] = values[benchmark.key] = score.value
            scores[f"{benchmark.key}:stderr"] = score.stderr
        for constraint in self.experiment.constraints:
            base = None
            if constraint.relative_to_base:
                base = base_score(loaded.scorer, model, constraint.benchmark, self.experiment, self.records_dir)
                scores[f"{constraint.benchmark.key}:base"] = base
            scores[constraint.metric] = constraint.value(values[constraint.benchmark.key], base)
        attempt.timings["benchmark_s"] = time.perf_counter() - started
        return scores

    def _load(self, timings: dict[str, float]) -> _Loaded:
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
        splits = prepare_splits(config.data, tokenizer)
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
        self._loaded = _Loaded(tokenizer, splits, base_model, device, precision, pad_id, scorer)
        return self._loaded

    def _load_base_model(self, device: torch.device, precision: Precision, timings: dict[str, float]) -> Any:
        config = self.experiment
        started = time.perf_counter()
        base_model = load_base_model(config.model, config.training, device, precision)
        timings["model_load_s"] = time.perf_counter() - started
        logger.info("model %s loaded on %s in %.1f s", config.model.name_or_path, device, timings["model_load_s"])
        return base_model

    def _finish(
        self, attempt: _Attempt, status: Status, error: str | None, traceback_text: str | None = None
    ) -> EvalRecord:
        """Write the record of an attempt (its run folder and the records file) and return it."""
        device = self._loaded.device if self._loaded is not None else None
        if device is not None:
            # A failed point's tensors are freed with its traceback, which is gone once the caller's
            # except clause ends; the allocator cache is emptied here, and again before the next point.
            _release_memory(device)
        if status in (Status.ERROR, Status.OOM) and traceback_text and self.world.main:
            with writing_records(self.records_dir):
                (attempt.run_dir / "traceback.txt").write_text(traceback_text)
            if status is Status.ERROR:
                logger.error("evaluation %s failed:\n%s", attempt.run_id, traceback_text.rstrip())
        if status not in (Status.OK, Status.NOT_RUN):  # NOT_RUN: the call fails, and its one error line says why
            logger.error("evaluation %s: %s: %s", attempt.run_id, status.value, error)
        attempt.timings["total_s"] = time.perf_counter() - attempt.started
        attempt.metrics["total_seconds"] = attempt.timings["total_s"]
        memory = _memory(device)
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

    def _marker(self, attempt: _Attempt) -> EvalRecord:
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
            versions=_versions(),
            **fields,
        )


@dataclass
class _Attempt:
    """One evaluation while it runs: its identity, folder, and what it has measured so far."""

    run_id: str
    run_dir: Path
    hparams: HyperParams
    source: PointSource
    started: float
    started_at: str
    metrics: dict[str, Any]
    timings: dict[str, float]
    log_failure: OSError | None = None  # the first error writing eval.log (full disk): it fails the call
    mlflow_run_id: str | None = None  # its MLflow run, when tracked
    step_losses: tuple[float, ...] = ()
    record: EvalRecord | None = None  # once written

    @classmethod
    def start(cls, store: RecordStore, hparams: HyperParams, source: PointSource, *, create: bool) -> _Attempt:
        run_id = new_run_id()
        run_dir = store.run_dir(run_id)
        if create:
            with writing_records(store.folder):
                run_dir.mkdir(parents=True, exist_ok=True)
        return cls(run_id, run_dir, hparams, source, time.perf_counter(), now(), {"run_id": run_id}, {})


def _describe(error: BaseException, status: Status) -> str:
    """The record's error text of a failed evaluation."""
    if status is Status.OOM:
        return f"out of memory: {error}"
    if status in (Status.ERROR,):
        return f"{type(error).__name__}: {error}"
    return str(error) or status.value.lower()


def _seed_everything(seed: int) -> None:
    """The same RNG state before every point, so a point gives the same result in any position."""
    from transformers import set_seed

    set_seed(seed)


def _reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _release_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    _trim_heap()


def _trim_heap() -> None:
    """Give the freed heap back to the system (glibc's malloc_trim). glibc keeps what a point freed; the
    next point, with other tensor sizes, cannot always reuse it, and the resident memory of a block then
    grows. Measured on the demo (benchmarks/block_memory.py): 2.36 GiB resident between points without,
    1.07 GiB with. A no-op off Linux and where the C library has no malloc_trim (musl)."""
    if sys.platform != "linux":
        return
    malloc_trim = getattr(ctypes.CDLL(None), "malloc_trim", None)  # the symbols already loaded: libc's
    if malloc_trim is not None:
        malloc_trim(0)


def _memory(device: torch.device | None) -> dict[str, float]:
    """Peak device memory of this point (GPU), or the process's resident memory (CPU)."""
    rss = psutil.Process().memory_info().rss / _GIB
    memory = {"process_rss_gib": rss}
    if device is not None and device.type == "cuda":
        memory["peak_gib"] = torch.cuda.max_memory_allocated(device) / _GIB
    else:
        import resource

        # ru_maxrss is the high-water mark of the whole process (kB on Linux), not of this point.
        memory["peak_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / _GIB
    return memory


class _RunLog(logging.FileHandler):
    """An evaluation's eval.log. A write error (full disk) is kept for the attempt, which then fails the call
    with one line (``RecordsError``), instead of logging's "--- Logging error ---" traceback per message."""

    def __init__(self, attempt: _Attempt) -> None:
        super().__init__(attempt.run_dir / "eval.log", encoding="utf-8")
        self.attempt = attempt

    def handleError(self, record: logging.LogRecord) -> None:  # logging's name
        error = sys.exc_info()[1]
        if not isinstance(error, OSError):
            super().handleError(record)
        elif self.attempt.log_failure is None:
            self.attempt.log_failure = error


@contextlib.contextmanager
def _log_to(attempt: _Attempt, records_dir: Path) -> Iterator[None]:
    """Write every log record of one evaluation into its run folder's ``eval.log``: the package's, and the
    libraries' logs and warnings (``blackbox.core.logs``); the first evaluation of a call gets those logged since
    the call started (the libraries' import-time warnings) at its top."""
    with writing_records(records_dir):
        handler = _RunLog(attempt)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    root = logging.getLogger()
    adopt_library_loggers()
    hand_over(handler)
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        with contextlib.suppress(OSError):  # a failed write is the attempt's log_failure already
            handler.close()


def _versions() -> dict[str, str]:
    import peft
    import transformers

    versions = {
        "blackbox": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
    }
    if torch.cuda.is_available():
        versions["cuda"] = str(torch.version.cuda)
        versions["gpu"] = torch.cuda.get_device_name()
    return versions
