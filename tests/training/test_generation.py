"""Batched generation: the static KV cache and compiled decoding (CUDA's default) give today's greedy answers token for
token, for a base model and for a LoRA adapter on it (issue 30); on the CPU, where the default stays the growing
cache, they run when asked (compiled with torch.compile's eager backend: the same graph capture, no code generation)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from blackbox.training.generation import Decoding, Sampling, default_decoding, generate
from blackbox.training.precision import Precision
from blackbox.training.testing import instruction_rows

CPU = torch.device("cpu")
DECODINGS = {
    "static": Decoding("static"),
    "static, compiled": Decoding("static", compiled=True, backend="eager", mode="default"),
}


@pytest.fixture(scope="module")
def models(tiny_model: Path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    torch.manual_seed(0)
    adapted = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    # init_lora_weights=False: B is random too, so that the adapter changes the answers.
    adapted = get_peft_model(adapted, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    return tokenizer, {"base": base, "adapter": adapted.eval()}


def _answers(model, tokenizer, prompts, decoding: Decoding | None) -> list[tuple[str, int]]:
    sampling = Sampling(max_new_tokens=12, greedy=True, batch_size=3)
    answers = generate(
        model, tokenizer, prompts, sampling=sampling, seed=0, device=CPU, precision=Precision(torch.float32, None),
        add_special_tokens=True, decoding=decoding,
    )  # fmt: skip
    return [(a.text, a.new_tokens) for a in answers]


@pytest.mark.parametrize("name", ["base", "adapter"])
def test_static_cache_and_compiled_decoding_give_the_same_greedy_answers(models, name: str) -> None:
    tokenizer, loaded = models
    # 5 prompts of different lengths: two batches (3 and 2), left-padded to their longest.
    prompts = [row["instruction"] for row in instruction_rows(5, seed=11)]
    assert len({len(tokenizer(p)["input_ids"]) for p in prompts}) > 1
    today = _answers(loaded[name], tokenizer, prompts, None)  # the CPU's default: the growing cache
    assert all(tokens > 0 for _, tokens in today)
    compiled = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    for label, decoding in DECODINGS.items():
        assert _answers(loaded[name], tokenizer, prompts, decoding) == today, label
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > compiled  # the decoding step was compiled
    if name == "adapter":
        assert today != _answers(loaded["base"], tokenizer, prompts, None)  # the adapter is applied


def test_the_default_decoding_is_static_and_compiled_on_cuda_only() -> None:
    assert default_decoding(torch.device("cuda")) == Decoding("static", compiled=True)
    assert default_decoding(CPU) == Decoding("dynamic", compiled=False)
    with pytest.raises(ValueError, match="needs the static cache"):
        Decoding("dynamic", compiled=True)
