"""One training run of a point, from its hyperparameters to its metrics: the point's experiment (its settings
applied), a fresh LoRA adapter on the base model that the points of a call share, the training (with a learning
curve at the checkpoints, where a judge may stop it), the validation, the test split and the benchmarks.
``training.objective.Evaluator`` runs it inside the one failure boundary of an evaluation."""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from blackbox.core.curves import Stop
from blackbox.core.early_stopping import Judge, StudyRule, Verdict, incumbent_objective
from blackbox.core.errors import SetupError, TrainingDiverged
from blackbox.core.experiment import Experiment
from blackbox.core.failures import value_of_stopped
from blackbox.core.files import write_text_atomic
from blackbox.core.folders import TEST_LOSSES_FILE
from blackbox.core.objectives import objective_metrics
from blackbox.core.record import RecordStore, writing_records
from blackbox.core.space import HyperParams
from blackbox.training.attempt import Attempt
from blackbox.training.benchmarks import Scorer, base_score
from blackbox.training.checkpoints import LearningCurve
from blackbox.training.data import Splits
from blackbox.training.distributed import World
from blackbox.training.memory import release_memory
from blackbox.training.model import attach_lora, count_parameters, detach_lora, save_adapter, save_initial_adapter
from blackbox.training.precision import Precision
from blackbox.training.train import TrainStats, train
from blackbox.training.validate import example_losses, validate

logger = logging.getLogger(__name__)


@dataclass
class Loaded:
    """What all points of a call share."""

    tokenizer: Any
    splits: Splits
    base_model: Any  # None after a point that changed it: loaded again for the next one
    device: torch.device
    precision: Precision
    pad_id: int
    scorer: Scorer | None  # when the experiment scores benchmarks (its objective or constraints)
    fused_kernels: str  # what training.fused_kernels gave the base model: "liger" or "none"


def train_and_validate(
    hparams: HyperParams, loaded: Loaded, attempt: Attempt, *, experiment: Experiment, world: World, store: RecordStore
) -> dict[str, Any]:
    """Train a fresh adapter of ``hparams`` on the shared base model and validate it; return the metrics of the
    point's record. What it measured on the way (phases, step losses, curve, where a judge stopped it) goes to
    ``attempt``; the base model is handed back to ``loaded`` (or dropped when the adapter changed it)."""
    # The experiment this point trains with: its settings (training.epochs, lora.use_dora, ...) applied.
    config = experiment.with_settings(hparams.settings)
    _seed_everything(config.training.seed)
    model = None
    curve = None
    try:
        model = attach_lora(loaded.base_model, hparams, config.model, config.lora)
        if world.size > 1:
            torch.manual_seed(config.training.seed + world.rank)  # same adapter, own dropout per rank
        attention = getattr(model.config, "_attn_implementation", None)
        saves = config.records.save_adapter and world.main
        initial = save_initial_adapter(model, config.lora, attempt.run_dir / "adapter-initial") if saves else None
        trainable, _ = count_parameters(model)
        curve = _learning_curve(model, loaded, config, attempt.judge, experiment=experiment, world=world, store=store)
        stats = train(
            model=model,
            split=loaded.splits.train,
            learning_rate=hparams.learning_rate,
            config=config.training,
            device=loaded.device,
            precision=loaded.precision,
            pad_id=loaded.pad_id,
            fidelity=config.fidelity.train,
            world=world,
            checkpoints=curve,
        )
        attempt.timings["train_s"] = stats.seconds
        attempt.step_losses = stats.losses
        metrics = _training_metrics(stats, loaded, config, trainable=trainable, attention=attention)
        if curve is not None:
            attempt.timings["checkpoint_s"] = stats.checkpoint_seconds
            metrics["checkpoint_rows"] = len(curve.rows)
            metrics["checkpoint_seconds"] = stats.checkpoint_seconds
        if stats.stopped:
            assert curve is not None  # only a learning curve stops a training
            verdict = curve.verdict or Verdict("?", "stopped by rank 0")  # other ranks do not record
            attempt.stop = Stop(stats.steps, stats.total_steps, verdict.rule, verdict.reason)
            # What the solver receives: never better than the incumbent (the failure policy says why).
            incumbent = incumbent_objective(store.records(), experiment.fingerprint())
            metrics["objective"] = value_of_stopped(curve.points[-1].loss, incumbent)
            return metrics
        validation = loaded.splits.validation
        validation = validation.head(math.ceil(len(validation) * config.fidelity.validation))
        result = validate(model=model, split=validation, **_validating(loaded, config, world))
        attempt.timings["validation_s"] = result.seconds
        if not math.isfinite(result.loss):
            raise TrainingDiverged(f"validation loss is {result.loss}")
        test = (
            _test(model, loaded, attempt, experiment=experiment, world=world, records_dir=store.folder)
            if config.validation.test
            else {}
        )
        if saves:
            with writing_records(store.folder):
                save_adapter(model, attempt.run_dir / "adapter", initial=initial)
        scores = (
            _score_benchmarks(model, loaded, attempt, experiment=experiment, records_dir=store.folder)
            if loaded.scorer
            else {}
        )
    finally:
        if curve is not None:  # kept whatever ended the training (a diverged one's too)
            attempt.curve = tuple(curve.points)
        if model is not None:
            loaded.base_model = detach_lora(model)
            model = None
        if config.lora.changes_base_model:
            # PiSSA and OLoRA moved part of the adapted weights into the adapter, trained biases changed: the
            # next point of the call gets the base model loaded again (see Evaluator._load).
            loaded.base_model = None
        release_memory(loaded.device)
    logger.info("validation loss %.6f (train loss %.4f)", result.loss, stats.train_loss)
    metrics |= {
        "validation_loss": result.loss,
        "validation_tokens": result.target_tokens,
        "validation_seconds": result.seconds,
        **test,
        **scores,
    }
    metrics |= objective_metrics(config.all_objectives, metrics)  # with several objectives, each one's value
    return metrics


def _learning_curve(
    model: Any,
    loaded: Loaded,
    config: Experiment,
    judge: Judge | None,
    *,
    experiment: Experiment,
    world: World,
    store: RecordStore,
) -> LearningCurve | None:
    """The learning curve of a training, with ``[validation] checkpoints`` (None without): it validates on the
    first ``checkpoint_rows`` of the validation split, and ``judge`` (by default the experiment's ``[stopping]``
    rule) decides there."""
    if not config.validation.checkpoints:
        return None
    validation = loaded.splits.validation
    rows = validation.head(config.validation.checkpoint_rows or len(validation))
    if judge is None and experiment.stopping.rule != "none":
        judge = StudyRule(experiment, checkpoint_rows=len(rows), store=store)
    return LearningCurve(
        model=model,
        rows=rows,
        fractions=config.validation.checkpoints,
        judge=judge,
        **_validating(loaded, config, world),
    )


def _validating(loaded: Loaded, config: Experiment, world: World) -> dict[str, Any]:
    """How a split is validated, the same for the validation loss and the learning curve's checkpoints."""
    return {
        "batch_size": config.validation.batch_size,
        "device": loaded.device,
        "precision": loaded.precision,
        "pad_id": loaded.pad_id,
        "packed": config.training.packing,
        "world": world,
    }


def _test(
    model: Any, loaded: Loaded, attempt: Attempt, *, experiment: Experiment, world: World, records_dir: Path
) -> dict[str, Any]:
    """The loss of the test split (``[validation] test``), a metric that no output can print: a solver never
    sees it. The loss of each test example goes to the run folder (``test_losses.json``, in the split's order),
    for intervals over examples. Every rank computes it whole (no collective): rank 0 records it."""
    split = loaded.splits.test
    if split is None:  # the experiment checks that data.test is given
        raise SetupError("validation.test needs a test split (data.test)")
    losses = example_losses(
        model=model,
        split=split,
        batch_size=experiment.validation.batch_size,
        device=loaded.device,
        precision=loaded.precision,
        pad_id=loaded.pad_id,
    )
    attempt.timings["test_s"] = losses.seconds
    if world.main:
        with writing_records(records_dir):
            write_text_atomic(
                attempt.run_dir / TEST_LOSSES_FILE,
                json.dumps(
                    {
                        "loss_sums": [round(float(v), 5) for v in losses.loss_sums],
                        "target_tokens": losses.target_tokens.tolist(),
                    }
                ),
            )
    logger.info("test loss %.6f (%d examples)", losses.loss, len(split))
    return {
        "test_loss": losses.loss,
        "test_examples": len(split),
        "test_tokens": int(losses.target_tokens.sum()),
        "test_seconds": losses.seconds,
    }


def _score_benchmarks(
    model: Any, loaded: Loaded, attempt: Attempt, *, experiment: Experiment, records_dir: Path
) -> dict[str, Any]:
    """The scores of the experiment's benchmarks (objective and constraints) of the model just trained, and
    the value of each constraint; their time is the phase ``benchmark_s``."""
    assert loaded.scorer is not None
    started = time.perf_counter()
    scores: dict[str, float | None] = {}
    values: dict[str, float] = {}
    for benchmark in experiment.benchmarks:
        score = loaded.scorer.score(model, benchmark)
        scores[benchmark.key] = values[benchmark.key] = score.value
        scores[f"{benchmark.key}:stderr"] = score.stderr
    for constraint in experiment.constraints:
        base = None
        if constraint.relative_to_base:
            base = base_score(loaded.scorer, model, constraint.benchmark, experiment, records_dir)
            scores[f"{constraint.benchmark.key}:base"] = base
        scores[constraint.metric] = constraint.value(values[constraint.benchmark.key], base)
    attempt.timings["benchmark_s"] = time.perf_counter() - started
    return scores


def _training_metrics(
    stats: TrainStats,
    loaded: Loaded,
    config: Experiment,
    *,
    trainable: int,
    attention: str | None,
) -> dict[str, Any]:
    """What a training measured: its metrics in a record, whether it ran to its end or was stopped early."""
    return {
        "train_loss": stats.train_loss,
        "train_last_loss": stats.last_loss,
        "train_steps": stats.steps,
        "train_tokens": stats.real_tokens,
        "train_padding_share": 1 - stats.real_tokens / stats.padded_tokens,
        "train_target_tokens": stats.target_tokens,
        "train_seconds": stats.seconds,
        "train_first_step_seconds": stats.step_seconds[0] if stats.step_seconds else None,
        "train_step_seconds": stats.steady_step_seconds,
        "tokens_per_second": stats.real_tokens / stats.seconds if stats.seconds else 0.0,
        "trainable_params": trainable,
        "micro_batch_size": stats.micro_batch_size,
        "precision": loaded.precision.describe(),
        "attention": attention,
        "fused_kernels": loaded.fused_kernels,
        "fidelity_train": config.fidelity.train,
        "fidelity_validation": config.fidelity.validation,
    }


def _seed_everything(seed: int) -> None:
    """The same RNG state before every point, so a point gives the same result in any position."""
    from transformers import set_seed

    set_seed(seed)
