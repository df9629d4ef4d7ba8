"""Answers of a model to prompts: batched sampling (or greedy decoding) on a model loaded once.

Prompts of a batch are left-padded, so that every answer continues its own prompt. Each batch draws its
random numbers from a generator seeded with ``(seed, batch index)``: the same prompts, settings, batch size and
seed give the same answers again, whatever ran before in the process.

How the decoding loop runs (:class:`Decoding`): on CUDA a static KV cache, allocated once for the longest prompt
plus the new tokens, and the decoding step compiled by transformers' own ``generate`` (torch.compile with CUDA
graphs: no Python between the kernels of a step, which is what a decoding step at batch 32 spends its time on);
elsewhere the cache that grows with every token, uncompiled (compiling on a CPU costs more than it saves). Both give
the same greedy answers (tested on the CPU, token for token).
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from blackbox.core.errors import SetupError
from blackbox.training.precision import Precision


@dataclass(frozen=True)
class Sampling:
    """How answers are drawn: temperature, nucleus (top-p) and top-k sampling (``top_k`` 0: no top-k cut), or greedy.
    ``lora-blackbox answers --preset paper`` draws as the reference study's human study did."""

    max_new_tokens: int = 256
    temperature: float = 0.9
    top_p: float = 0.9
    greedy: bool = False  # the most likely token at each step instead of sampling
    batch_size: int = 8
    top_k: int = 0

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Decoding:
    """The decoding loop: its KV cache (``dynamic``: grows by a token each step; ``static``: allocated once, for the
    longest prompt of the call plus the new tokens, so that every batch of a call has one shape) and whether
    transformers compiles the decoding step (``compiled``: a static cache only; ``backend`` and ``mode`` are
    torch.compile's: CUDA graphs on CUDA)."""

    cache: Literal["dynamic", "static"] = "dynamic"
    compiled: bool = False
    backend: str = "inductor"
    mode: str = "reduce-overhead"

    def __post_init__(self) -> None:
        if self.compiled and self.cache != "static":
            raise ValueError("compiled decoding needs the static cache (a dynamic one changes shape every step)")

    def describe(self) -> str:
        return f"{self.cache} cache" + (f", compiled ({self.backend}, {self.mode})" if self.compiled else "")


def default_decoding(device: torch.device) -> Decoding:
    """A static cache and compiled decoding on CUDA; the growing cache, uncompiled, elsewhere."""
    return Decoding("static", compiled=True) if device.type == "cuda" else Decoding()


@dataclass(frozen=True)
class Generated:
    text: str
    new_tokens: int  # tokens generated, the end-of-sequence token excluded
    seconds: float  # this answer's share of its batch's wall time


def generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    sampling: Sampling,
    seed: int,
    device: torch.device,
    precision: Precision,
    add_special_tokens: bool,
    decoding: Decoding | None = None,
) -> list[Generated]:
    """The model's continuation of every prompt, in order.

    Args:
        add_special_tokens: whether the tokenizer adds its special tokens (BOS) to a prompt: yes for plain text
            prompts, no for a chat template's text, which writes its own markers.
        decoding: how the decoding loop runs; None: :func:`default_decoding` for ``device``.

    Raises:
        SetupError: the tokenizer has neither a padding nor an end-of-sequence token.
    """
    eos_ids = _end_tokens(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else next(iter(eos_ids), None)
    if pad_id is None:
        raise SetupError("the tokenizer has no padding and no end-of-sequence token: answers could not be batched")
    encoded = tokenizer(list(prompts), add_special_tokens=add_special_tokens)["input_ids"]
    options: dict[str, Any] = {"max_new_tokens": sampling.max_new_tokens, "do_sample": not sampling.greedy}
    if not sampling.greedy:
        options |= {"temperature": sampling.temperature, "top_p": sampling.top_p, "top_k": sampling.top_k}
    longest = max((len(ids) for ids in encoded), default=0)
    options |= _decoding_options(decoding or default_decoding(device), device, longest + sampling.max_new_tokens)
    # On a CPU, autocast casts every weight at every step, which costs more than a decoding step saves (measured
    # on SmolLM2-135M: fp32 1.4-2.6x faster than bf16 autocast per token): fp32 there, the precision's autocast
    # elsewhere.
    on_cpu = device.type == "cpu"
    answers: list[Generated] = []
    for index, start in enumerate(range(0, len(encoded), sampling.batch_size)):
        batch = encoded[start : start + sampling.batch_size]
        width = max(len(ids) for ids in batch)
        input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, ids in enumerate(batch):
            input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, width - len(ids) :] = 1
        started = time.perf_counter()
        torch.manual_seed(_batch_seed(seed, index))  # all devices' generators: the answers depend on nothing else
        with torch.inference_mode(), contextlib.nullcontext() if on_cpu else precision.autocast_context(device):
            output = model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention_mask.to(device),
                pad_token_id=pad_id,
                eos_token_id=sorted(eos_ids) or None,
                use_cache=True,
                **options,
            )
        seconds = (time.perf_counter() - started) / len(batch)
        for new in output[:, width:].tolist():
            ends = [i for i, token in enumerate(new) if token in eos_ids]
            new = new[: ends[0]] if ends else new
            text = tokenizer.decode(new, skip_special_tokens=True).strip()
            answers.append(Generated(text, len(new), seconds))
    return answers


def _decoding_options(decoding: Decoding, device: torch.device, cache_length: int) -> dict[str, Any]:
    """``generate``'s arguments for ``decoding`` (transformers 5: ``cache_implementation``, ``compile_config``)."""
    if decoding.cache == "dynamic":
        return {"disable_compile": True}
    options: dict[str, Any] = {"cache_implementation": "static", "max_cache_len": cache_length}
    if not decoding.compiled:
        return options | {"disable_compile": True}
    from transformers import CompileConfig

    config = CompileConfig(backend=decoding.backend, mode=decoding.mode)
    # transformers compiles on accelerators only unless told otherwise: a CPU compiles when asked to (the tests).
    config._compile_all_devices = device.type != "cuda" or None  # type: ignore[assignment]  # typed None, takes True
    return options | {"compile_config": config}


def _end_tokens(model: Any, tokenizer: Any) -> set[int]:
    """The tokens that end an answer: the tokenizer's end of sequence and the model's generation config's (a chat
    model's end of turn)."""
    ends = {tokenizer.eos_token_id}
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ends |= set(configured) if isinstance(configured, list | tuple) else {configured}
    return {int(token) for token in ends if token is not None}


def _batch_seed(seed: int, index: int) -> int:
    return (seed * 1_000_003 + index) % 2**63


def chat_prompt(tokenizer: Any, user: str, *, system: str | None = None) -> tuple[str, bool]:
    """A one-turn prompt in the tokenizer's chat template, or the plain text when it has none; with whether the
    tokenizer should add its special tokens to it (:func:`generate`'s ``add_special_tokens``)."""
    if not getattr(tokenizer, "chat_template", None):
        return (f"{system}\n\n{user}" if system else user), True
    messages = [{"role": "system", "content": system}] if system else []
    text: str = tokenizer.apply_chat_template(
        [*messages, {"role": "user", "content": user}], tokenize=False, add_generation_prompt=True
    )
    return text, False
