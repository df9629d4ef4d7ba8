"""A judge model: any causal language model (hub id or folder) loaded with transformers, asked in its chat
template, answering greedily. What it is asked and how its verdicts are read: ``blackbox.assessment.compare.judge``."""

from __future__ import annotations

import time
from collections.abc import Sequence

from blackbox.core.experiment import ModelConfig, TrainingConfig
from blackbox.training.adapters import InferenceModel
from blackbox.training.generation import Sampling, chat_prompt, generate
from blackbox.training.model import load_base_model, load_tokenizer, resolve_device
from blackbox.training.precision import resolve_precision


def load_judge(name_or_path: str, *, device: str = "auto") -> InferenceModel:
    """The judge model in eval mode on ``device`` (auto: CUDA when there is one), precision as for training.

    Raises:
        SetupError: the model cannot be loaded.
    """
    started = time.perf_counter()
    # sdpa: generation pads its batches, which the padding-free attention of packed training does not take.
    config = ModelConfig(name_or_path=name_or_path, attn_implementation="sdpa")
    training = TrainingConfig(device=device)
    target = resolve_device(training.device)
    precision = resolve_precision(config, training, target)
    tokenizer = load_tokenizer(config)
    model = load_base_model(config, training, target, precision, for_training=False)
    model.eval()
    return InferenceModel(model, tokenizer, target, precision, time.perf_counter() - started)


def ask(
    judge: InferenceModel, questions: Sequence[str], *, system: str, max_new_tokens: int, batch_size: int
) -> list[str]:
    """The judge's greedy reply to each question (a one-turn chat with ``system`` as its system message)."""
    prompts = [chat_prompt(judge.tokenizer, question, system=system) for question in questions]
    add_special = prompts[0][1] if prompts else True
    replies = generate(
        judge.model,
        judge.tokenizer,
        [text for text, _ in prompts],
        sampling=Sampling(max_new_tokens=max_new_tokens, greedy=True, batch_size=batch_size),
        seed=0,
        device=judge.device,
        precision=judge.precision,
        add_special_tokens=add_special,
    )
    return [reply.text for reply in replies]
