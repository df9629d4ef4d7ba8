"""Answers through vLLM (``lora-blackbox answers --engine vllm``): the base model loaded once in vLLM's engine,
each saved adapter applied per request through vLLM's LoRA support (``enable_lora``, a ``LoRARequest`` per
adapter). The one module that imports vllm, an optional dependency on a machine with a GPU that vLLM supports.

The prompts are the experiment's, tokenised by its tokenizer as on the transformers path; each question draws
its random numbers from its own seed. The answers are not those of the transformers path (another sampler), and
an adapter that vLLM ignored would answer as the base model: ``blackbox.assessment.answers`` checks that every
adapter changes the answers.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from blackbox.core.errors import SetupError
from blackbox.core.experiment import Experiment
from blackbox.core.extras import require
from blackbox.training.generation import Generated, Sampling
from blackbox.training.model import load_tokenizer, model_location

logger = logging.getLogger(__name__)

MAX_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)
"""The values vLLM takes for ``max_lora_rank`` (its ``LoRAConfig``): the smallest one that holds every adapter."""


def adapter_rank(adapter: Path) -> int:
    """The largest LoRA rank of a saved adapter (its ``r`` and ``rank_pattern``).

    Raises:
        SetupError: the adapter has no readable ``adapter_config.json``, or is one vLLM cannot apply (DoRA).
    """
    try:
        config = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise SetupError(f"cannot read the adapter's configuration in {adapter}: {e}") from e
    if config.get("use_dora"):
        raise SetupError(f"{adapter} is a DoRA adapter, which vLLM cannot apply: use --engine transformers")
    ranks = [int(config.get("r", 8)), *(int(r) for r in (config.get("rank_pattern") or {}).values())]
    return max(ranks)


def max_lora_rank(ranks: Sequence[int]) -> int:
    """vLLM's ``max_lora_rank`` for adapters of these ranks.

    Raises:
        SetupError: a rank is above what vLLM takes.
    """
    largest = max(ranks, default=1)
    fitting = [rank for rank in MAX_LORA_RANKS if rank >= largest]
    if not fitting:
        raise SetupError(f"vLLM applies LoRA ranks up to {MAX_LORA_RANKS[-1]}, an adapter has rank {largest}")
    return fitting[0]


class VllmModel:
    """The experiment's base model in vLLM, ready for the adapters ``adapters``.

    Raises:
        SetupError: vLLM is not installed, an adapter cannot be applied, or the model cannot be loaded.
    """

    def __init__(self, experiment: Experiment, *, adapters: Sequence[Path], seed: int) -> None:
        started = time.perf_counter()
        ranks = [adapter_rank(adapter) for adapter in adapters]
        require("vllm", purpose="answers --engine vllm (a machine with a GPU that vLLM supports)")
        from vllm import LLM

        if experiment.model.quantization != "none":
            logger.warning("vLLM loads the base model unquantised (model.quantization=%s is not applied)",
                           experiment.model.quantization)  # fmt: skip
        self.tokenizer = load_tokenizer(experiment.model)
        options: dict[str, Any] = {}
        if adapters:
            options = {"enable_lora": True, "max_loras": 1, "max_lora_rank": max_lora_rank(ranks)}
        location = model_location(experiment.model)
        try:
            self._llm = LLM(
                model=location,
                tokenizer=location,
                revision=experiment.model.revision or None,
                dtype=experiment.model.dtype,
                seed=seed,
                **options,
            )
        except (OSError, ValueError, RuntimeError) as e:
            raise SetupError(f"vLLM cannot load {experiment.model.name_or_path!r}: {e}") from e
        self._adapter_ids = {adapter: index for index, adapter in enumerate(adapters, start=1)}
        self.load_seconds = time.perf_counter() - started

    def generate(
        self, prompts: Sequence[str], *, adapter: Path | None, sampling: Sampling, seed: int, add_special_tokens: bool
    ) -> list[Generated]:
        """The answers of the base model with ``adapter`` (None: without one) to ``prompts``, in order."""
        from vllm import SamplingParams
        from vllm.lora.request import LoRARequest

        encoded = self.tokenizer(list(prompts), add_special_tokens=add_special_tokens)["input_ids"]
        params = [
            SamplingParams(
                n=1,
                max_tokens=sampling.max_new_tokens,
                temperature=0.0 if sampling.greedy else sampling.temperature,
                top_p=1.0 if sampling.greedy else sampling.top_p,
                top_k=-1 if sampling.greedy or not sampling.top_k else sampling.top_k,  # vLLM: -1 = no top-k cut
                seed=(seed * 1_000_003 + index) % 2**63,  # a seed per question: its answer depends on nothing else
            )
            for index in range(len(encoded))
        ]
        request = None
        if adapter is not None:
            request = LoRARequest(f"adapter-{self._adapter_ids[adapter]}", self._adapter_ids[adapter], str(adapter))
        started = time.perf_counter()
        outputs = self._llm.generate(
            [{"prompt_token_ids": ids} for ids in encoded], params, lora_request=request, use_tqdm=False
        )
        seconds = (time.perf_counter() - started) / max(len(outputs), 1)
        answers = []
        for output in outputs:
            completion = output.outputs[0]
            # An answer that ended on the end-of-sequence token (no stop string) counts it among its token ids.
            ended = completion.finish_reason == "stop" and completion.stop_reason is None
            answers.append(Generated(completion.text.strip(), len(completion.token_ids) - int(ended), seconds))
        return answers
