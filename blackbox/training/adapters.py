"""Saved adapters on a base model loaded once: for scoring them on benchmarks and asking them questions."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from blackbox.core.experiment import Experiment
from blackbox.training.model import load_base_model, load_tokenizer, resolve_device
from blackbox.training.precision import Precision, resolve_precision


@dataclass
class InferenceModel:
    """The base model of an experiment in eval mode, with its tokenizer, on its device."""

    model: Any
    tokenizer: Any
    device: torch.device
    precision: Precision
    load_seconds: float


def load_for_inference(experiment: Experiment) -> InferenceModel:
    """The experiment's base model and tokenizer, as its evaluations load them (device, precision,
    quantisation), in eval mode.

    Raises:
        SetupError: the model cannot be loaded.
    """
    started = time.perf_counter()
    device = resolve_device(experiment.training.device)
    precision = resolve_precision(experiment.model, experiment.training, device)
    tokenizer = load_tokenizer(experiment.model)
    model = load_base_model(experiment.model, experiment.training, device, precision, for_training=False)
    model.eval()
    return InferenceModel(model, tokenizer, device, precision, time.perf_counter() - started)


@contextmanager
def adapter_applied(base_model: Any, adapter: Path | None) -> Iterator[Any]:
    """The base model with a saved adapter on it (``None``: the base model itself), in eval mode; the adapter is
    removed again when the block ends, leaving the base model as it was."""
    if adapter is None:
        yield base_model
        return
    from peft import PeftModel

    model = PeftModel.from_pretrained(base_model, str(adapter), is_trainable=False)
    model.eval()
    try:
        yield model
    finally:
        model.unload()
