"""training.fused_kernels: "auto" (the default) gives liger's kernels only where they were measured to pay and can
apply, and says in one log line why not elsewhere; "liger" fails where it cannot apply."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import pytest
import torch

from blackbox.core.errors import SetupError
from blackbox.core.experiment import ModelConfig, TrainingConfig
from blackbox.training.model import choose_fused_kernels, load_base_model
from blackbox.training.precision import Precision

FP32, BF16 = Precision(torch.float32, None), Precision(torch.bfloat16, None)
CPU, CUDA = torch.device("cpu"), torch.device("cuda")  # a device object only: nothing runs on it here
LIGER = importlib.util.find_spec("liger_kernel") is not None


@pytest.fixture(scope="module")
def llama(tiny_model: Path):
    """The tiny Llama with bf16 weights, as CUDA loads a model by default."""
    return load_base_model(ModelConfig(name_or_path=str(tiny_model)), TrainingConfig(fused_kernels="none"), CPU, BF16)


def test_auto_on_the_cpu_loads_no_fused_kernels_and_says_why(tiny_model: Path, caplog) -> None:
    caplog.set_level(logging.INFO, logger="blackbox")
    load_base_model(ModelConfig(name_or_path=str(tiny_model)), TrainingConfig(), CPU, FP32)
    said = [r.getMessage() for r in caplog.records if "fused kernels" in r.getMessage()]
    why = "liger's Triton kernels need CUDA, this is cpu"
    assert said == [f"fused kernels: none (training.fused_kernels = 'auto': {why})"]


def test_auto_gives_liger_to_llama_training_on_cuda_only(llama) -> None:
    kernels, why = choose_fused_kernels("auto", llama, CUDA, quantized=False)
    assert (kernels, "liger-kernel does not import" in why) == (("liger", False) if LIGER else ("none", True))
    assert choose_fused_kernels("auto", llama, CPU, quantized=False)[0] == "none"
    quantised, why = choose_fused_kernels("auto", llama, CUDA, quantized=True)
    assert quantised == "none" and "quantised" in why
    inference, why = choose_fused_kernels("auto", llama, CUDA, quantized=False, for_training=False)
    assert inference == "none" and "inference" in why


def test_auto_leaves_fp32_weights_unfused(tiny_model: Path) -> None:
    """The paper's experiments keep fp32 weights (with bf16 autocast): liger was measured on bf16 weights only."""
    fp32 = load_base_model(ModelConfig(name_or_path=str(tiny_model)), TrainingConfig(fused_kernels="none"), CPU, FP32)
    assert choose_fused_kernels("auto", fp32, CUDA, quantized=False) == (
        "none",
        "float32 weights (liger was measured on bf16 weights only)",
    )


def test_auto_leaves_other_architectures_unfused(tmp_path: Path) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=64))
    kernels, why = choose_fused_kernels("auto", gpt2, CUDA, quantized=False)
    assert kernels == "none" and "'gpt2'" in why


def test_explicit_settings_are_kept(llama) -> None:
    assert choose_fused_kernels("none", llama, CUDA, quantized=False) == ("none", "as set")
    assert choose_fused_kernels("liger", llama, CPU, quantized=False) == ("liger", "as set")


def test_liger_on_the_cpu_fails_the_load_in_one_line(tiny_model: Path) -> None:
    with pytest.raises(SetupError, match=r"^training.fused_kernels = 'liger' needs CUDA \(Triton kernels\)$"):
        load_base_model(ModelConfig(name_or_path=str(tiny_model)), TrainingConfig(fused_kernels="liger"), CPU, FP32)
