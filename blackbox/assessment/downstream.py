"""Benchmark scores of the base model and of chosen adapters (``lora-blackbox downstream``).

The base model is loaded once; each adapter is put on it, scored on every benchmark, and taken off again. The
base model itself is scored first, as every table's reference. Each score is appended to ``downstream.jsonl``
at once (one JSON line per model and benchmark), so an interrupted call keeps what it scored.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from blackbox.assessment.selection import BASE, Candidate
from blackbox.core.errors import ConfigError
from blackbox.core.experiment import BenchmarkConfig, Experiment
from blackbox.core.record import append_json_line, now

logger = logging.getLogger(__name__)


def benchmarks_from_options(
    tasks: str | None,
    *,
    include_path: str,
    num_fewshot: int | None,
    limit: float,
    batch_size: int,
    defaults: Sequence[BenchmarkConfig],
    decoding: str | None = None,
) -> list[BenchmarkConfig]:
    """The benchmarks of ``--tasks`` (``task`` or ``task:metric``, comma-separated; no metric: the task's first),
    else the experiment's ``[[downstream]]`` list, each with the options given (``decoding``: ``task`` or
    ``model``, :class:`BenchmarkConfig`'s).

    Raises:
        ConfigError: no benchmark at all.
    """
    overrides: dict[str, Any] = {"batch_size": batch_size}
    if include_path:
        overrides["include_path"] = include_path
    if num_fewshot is not None:
        overrides["num_fewshot"] = num_fewshot
    if limit:
        overrides["limit"] = limit
    if decoding is not None:
        overrides["decoding"] = decoding
    if tasks:
        found = []
        for item in (t.strip() for t in tasks.split(",")):
            if item:
                task, _, metric = item.partition(":")
                found.append(BenchmarkConfig(task=task, metric=metric, **overrides))
        return found
    if not defaults:
        raise ConfigError("no benchmark to score: give --tasks, or list them in the experiment's [[downstream]]")
    return [b.model_copy(update=overrides) for b in defaults]


def score_models(
    experiment: Experiment,
    candidates: Sequence[Candidate],
    benchmarks: Sequence[BenchmarkConfig],
    *,
    out_file: Path,
    allow_code_execution: bool = False,
    on_row: Callable[[dict[str, Any]], None] = lambda row: None,
) -> list[dict[str, Any]]:
    """Score the base model of ``experiment`` and every candidate (each with its adapter:
    ``retrain.with_adapters``) on every benchmark; append each score to ``out_file`` and return the rows.

    Raises:
        ConfigError: a candidate of another base model, or without adapter.
        SetupError: the model cannot be loaded, or a benchmark is unknown.
    """
    from blackbox.training.adapters import adapter_applied, load_for_inference
    from blackbox.training.benchmarks import Scorer

    for candidate in candidates:
        if candidate.experiment is not None and candidate.experiment.model != experiment.model:
            raise ConfigError(
                f"{candidate.describe()} adapts {candidate.experiment.model.name_or_path}, not "
                f"{experiment.model.name_or_path}: score adapters of different base models in separate calls"
            )
        if candidate.adapter is None:
            raise ConfigError(f"{candidate.describe()} has no adapter to score")
    models = [Candidate(BASE, None), *candidates]

    loaded = load_for_inference(experiment)
    scorer = Scorer(loaded.tokenizer, experiment.data, allow_code_execution=allow_code_execution)
    scorer.check(benchmarks)
    rows = []
    for candidate in models:
        started = time.perf_counter()
        with adapter_applied(loaded.model, candidate.adapter) as model:
            load_s = time.perf_counter() - started
            for benchmark in benchmarks:
                score = scorer.score(model, benchmark)
                row = _row(candidate, score.as_dict(), benchmark, load_s)
                append_json_line(out_file, json.dumps(row))
                on_row(row)
                rows.append(row)
    return rows


def _row(
    candidate: Candidate, score: dict[str, Any], benchmark: BenchmarkConfig, adapter_load_s: float
) -> dict[str, Any]:
    evaluation = candidate.evaluation
    metrics = evaluation.metrics if evaluation else {}
    return {
        "label": candidate.label,
        "run_id": candidate.run_id,
        "adapter": str(candidate.adapter) if candidate.adapter else None,
        "benchmark": benchmark.label or benchmark.task,
        **score,
        "objective": candidate.objective if candidate.objective is None or math.isfinite(candidate.objective) else None,
        "validation_loss": metrics.get("validation_loss"),
        "hparams": candidate.hparams,
        "retrained": candidate.retrained_loss is not None,
        "retrained_validation_loss": candidate.retrained_loss,
        "adapter_load_s": adapter_load_s,
        "scored_at": now(),
    }


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """The scores as a text table: one line per model, one column per benchmark (value ± stderr)."""
    keys = list(dict.fromkeys(row["key"].removeprefix("benchmark:") for row in rows))
    models: dict[str, dict[str, Any]] = {}
    for row in rows:
        model = models.setdefault(row["label"], {"row": row, "scores": {}})
        error = f" ± {row['stderr']:.3f}" if row["stderr"] is not None else ""
        model["scores"][row["key"].removeprefix("benchmark:")] = f"{row['value']:.4f}{error}"
    header = ["model", "run", "val. loss", *keys]
    lines = [header]
    for label, model in models.items():
        row = model["row"]
        loss = row["validation_loss"]
        lines.append(
            [
                label,
                row["run_id"] or "-",
                f"{loss:.4f}" if loss is not None else "-",
                *(model["scores"].get(k, "-") for k in keys),
            ]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() for line in lines)
