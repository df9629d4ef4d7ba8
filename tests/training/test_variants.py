"""LoRA variants on the tiny model: each setting of ``[lora]`` and each ``target_modules`` preset builds the adapter
it names (peft's config, the parameters and their shapes, the scaling, the initialisation), and points of
different variants evaluated one after another in one call (the block mode) give what each gives alone."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch

from blackbox.core.errors import ConfigError
from blackbox.core.experiment import LoraVariantConfig, ModelConfig, TrainingConfig, load_experiment
from blackbox.core.space import HyperParams
from blackbox.training.model import attach_lora, detach_lora, load_base_model
from blackbox.training.objective import Evaluator
from blackbox.training.precision import Precision
from tests.points import point_file

FP32 = Precision(torch.float32, None)
CPU = torch.device("cpu")
HPARAMS = HyperParams(lora_r=4, lora_alpha=8, lora_dropout=0.0, learning_rate=1e-3)


@pytest.fixture(scope="module")
def base(tiny_model: Path):
    return load_base_model(ModelConfig(name_or_path=str(tiny_model)), TrainingConfig(), CPU, FP32)


def _adapted(model) -> dict[str, torch.nn.Module]:
    return {name: module for name, module in model.named_modules() if hasattr(module, "lora_A")}


def _attached(base, tiny_model: Path, *, target_modules=("q_proj", "v_proj"), **lora):
    torch.manual_seed(0)
    config = ModelConfig(name_or_path=str(tiny_model), target_modules=target_modules)
    return attach_lora(base, HPARAMS, config, LoraVariantConfig(**lora))


def test_dora_rslora_and_the_initialisations_are_the_adapters_they_name(base, tiny_model: Path) -> None:
    weights = {n: p.detach().clone() for n, p in base.named_parameters()}
    plain = _attached(base, tiny_model)
    layers = _adapted(plain)
    q = plain.base_model.model.model.layers[0].self_attn.q_proj
    assert {name.rsplit(".", 1)[-1] for name in layers} == {"q_proj", "v_proj"} and len(layers) == 4
    assert q.scaling["default"] == 8 / 4  # alpha / r
    assert not q.lora_B["default"].weight.any()  # peft's default: the adapter starts as a no-op
    assert q.lora_A["default"].weight.abs().max() <= 1 / math.sqrt(q.in_features)  # Kaiming-uniform, a = sqrt(5)
    plain_trainable = {n for n, p in plain.named_parameters() if p.requires_grad}
    detach_lora(plain)

    dora = _attached(base, tiny_model, use_dora=True)
    config = dora.peft_config["default"]
    assert config.use_dora and not config.use_rslora
    magnitudes = {n: p for n, p in dora.named_parameters() if "lora_magnitude_vector" in n}
    assert len(magnitudes) == 4 and all(p.requires_grad for p in magnitudes.values())
    q = dora.base_model.model.model.layers[0].self_attn.q_proj
    # DoRA's magnitude: one value per output feature, the norm of each row of the base weight.
    assert q.lora_magnitude_vector["default"].weight.shape == (q.out_features,)
    torch.testing.assert_close(q.lora_magnitude_vector["default"].weight, q.base_layer.weight.norm(dim=1))
    assert {n for n, p in dora.named_parameters() if p.requires_grad} - plain_trainable == set(magnitudes)
    detach_lora(dora)

    rslora = _attached(base, tiny_model, use_rslora=True)
    assert rslora.peft_config["default"].use_rslora
    assert _adapted(rslora)["base_model.model.model.layers.0.self_attn.q_proj"].scaling["default"] == 8 / math.sqrt(4)
    detach_lora(rslora)

    gaussian = _attached(base, tiny_model, init_lora_weights="gaussian")
    assert gaussian.peft_config["default"].init_lora_weights == "gaussian"
    a = torch.cat([m.lora_A["default"].weight.flatten() for m in _adapted(gaussian).values()])
    assert abs(a.std().item() - 1 / 4) < 0.03  # N(0, 1/r)
    assert not any(m.lora_B["default"].weight.any() for m in _adapted(gaussian).values())
    detach_lora(gaussian)
    # None of these touched the base model.
    assert all(torch.equal(p, weights[n]) for n, p in base.named_parameters())


@pytest.mark.parametrize("init", ["pissa", "pissa_niter_2", "olora"])
def test_pissa_and_olora_move_part_of_each_weight_into_the_adapter(tiny_model: Path, init: str) -> None:
    """The adapter starts from a decomposition of the weight: base + scaling * B A is the original weight, and the
    base model holds the residual (which is why a point of these variants gets the base model loaded again)."""
    assert LoraVariantConfig(init_lora_weights=init).changes_base_model
    base = load_base_model(ModelConfig(name_or_path=str(tiny_model)), TrainingConfig(), CPU, FP32)
    original = base.model.layers[1].self_attn.v_proj.weight.detach().clone()
    model = _attached(base, tiny_model, init_lora_weights=init)
    assert model.peft_config["default"].init_lora_weights == init
    v = model.base_model.model.model.layers[1].self_attn.v_proj
    a, b = v.lora_A["default"].weight, v.lora_B["default"].weight
    assert b.abs().sum() > 0 and a.shape == (4, v.in_features) and b.shape == (v.out_features, 4)
    assert not torch.allclose(v.base_layer.weight, original)
    torch.testing.assert_close(v.base_layer.weight + v.scaling["default"] * b @ a, original, atol=1e-5, rtol=1e-4)


def test_target_presets_and_trained_biases(base, tiny_model: Path) -> None:
    for preset, expected in [
        ("attention", {"q_proj", "k_proj", "v_proj", "o_proj"}),
        ("mlp", {"gate_proj", "up_proj", "down_proj"}),
        ("all-linear", {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}),
    ]:
        model = _attached(base, tiny_model, target_modules=preset)
        assert {name.rsplit(".", 1)[-1] for name in _adapted(model)} == expected, preset
        assert "lm_head" not in {name.rsplit(".", 1)[-1] for name in _adapted(model)}
        detach_lora(model)
    # peft refuses its own "all-linear" with layers_to_transform; the preset names the layers instead.
    config = ModelConfig(name_or_path=str(tiny_model), target_modules="all-linear", layers_to_transform=(1,))
    model = attach_lora(base, HPARAMS, config)
    assert {name.split(".layers.")[1].split(".")[0] for name in _adapted(model)} == {"1"} and len(_adapted(model)) == 7
    detach_lora(model)
    # Llama has no biases; a model with attention biases trains them with bias = "all" or "lora_only".
    from transformers import LlamaConfig, LlamaForCausalLM

    biased = LlamaForCausalLM(
        LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                    attention_bias=True)
    )  # fmt: skip
    biased.requires_grad_(False)
    prefix = "base_model.model.model.layers.0.self_attn."
    lora_layers = {f"{prefix}q_proj.base_layer.bias", f"{prefix}v_proj.base_layer.bias"}
    for bias, expected in [
        ("all", lora_layers | {f"{prefix}k_proj.bias", f"{prefix}o_proj.bias"}),
        ("lora_only", lora_layers),
    ]:
        assert LoraVariantConfig(bias=bias).changes_base_model
        model = attach_lora(biased, HPARAMS, ModelConfig(name_or_path="x"), LoraVariantConfig(bias=bias))
        assert model.peft_config["default"].bias == bias
        assert {n for n, p in model.named_parameters() if p.requires_grad and n.endswith("bias")} == expected
        detach_lora(model).requires_grad_(False)


def test_variants_in_one_call_give_what_each_gives_alone(make_experiment) -> None:
    """The block mode: PiSSA (which changes the base model), then plain LoRA on the same evaluator (one model load
    per call, packed batches); plain LoRA alone gives the same loss, and the records hold the settings."""
    experiment = load_experiment(str(make_experiment(space="variants", steps=2)), ["records.save_adapter=true"])
    pissa, plain = "2 2 -2 3 1", "2 2 -2 1 2"
    evaluator = Evaluator(experiment)
    records = [evaluator.evaluate_line(line) for line in (pissa, plain)]
    assert [r.status.value for r in records] == ["OK"] * 2, [r.error for r in records]
    alone = Evaluator(experiment).evaluate_line(plain)
    assert alone.metrics["validation_loss"] == records[1].metrics["validation_loss"]
    assert alone.metrics["train_loss"] == records[1].metrics["train_loss"]
    assert records[0].hparams == {
        "lora_r": 4,
        "lora_alpha": 4,  # 2 * sqrt(4)
        "lora_dropout": 0.0,
        "learning_rate": 0.01,
        "lora": {"init_lora_weights": "pissa"},
        "model.target_modules": ["q_proj", "v_proj"],
    }
    assert records[1].hparams is not None and records[1].hparams["model.target_modules"] == "attention"
    # The point after PiSSA got the base model loaded again.
    assert "model_load_s" in records[1].timings
    # PiSSA's adapter is saved converted: a plain LoRA adapter of rank 2r on the original base model.
    saved = json.loads((Path(records[0].run_dir or "") / "adapter" / "adapter_config.json").read_text())
    assert (saved["r"], saved["init_lora_weights"]) == (8, True)
    assert not (Path(records[0].run_dir or "") / "adapter-initial").exists()
    assert all(math.isfinite(r.metrics["validation_loss"]) for r in records)
    # The records file holds the same settings, as JSON.
    lines = (experiment.records_dir / "records.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["hparams"]["lora"] == {"init_lora_weights": "pissa"}


def test_qlora_with_dora_trains(tmp_path: Path, make_experiment) -> None:
    path = make_experiment(space="rank_lr", steps=2)
    with pytest.raises(ConfigError, match=r"pissa.*needs model.quantization = 'none'"):
        load_experiment(str(make_experiment(tmp_path / "variants.toml", space="variants")), ["model.quantization=nf4"])
    experiment = load_experiment(str(path), ["model.quantization=nf4", "lora.use_dora=true"])
    plain = load_experiment(str(path), ["model.quantization=nf4"])
    record = Evaluator(experiment).evaluate_line("2 -2")  # DoRA on 4-bit q/v projections
    assert record.status.value == "OK", record.error
    assert math.isfinite(record.metrics["validation_loss"])
    # q and v of both layers: 64 + 32 magnitudes each, on top of A and B (r = 4)
    lora_ab = 2 * (4 * (64 + 64) + 4 * (64 + 32))
    assert record.metrics["trainable_params"] == lora_ab + 2 * (64 + 32)
    assert experiment.fingerprint() != plain.fingerprint()


@pytest.mark.skipif(torch.cuda.is_available(), reason="LoftQ runs on CUDA: its refusal elsewhere cannot be seen here")
def test_loftq_is_refused_without_cuda(make_experiment) -> None:
    path = make_experiment(space="rank_lr", steps=2)
    loftq = load_experiment(str(path), ["model.quantization=nf4", "lora.init_lora_weights=loftq"])
    refused = Evaluator(loftq).evaluate_line("2 -2")  # the call cannot proceed: recorded, for the caller to end it
    assert refused.status.value == "NOT_RUN" and re.search(r"loftq.*needs CUDA", refused.error or ""), refused.error


def test_dora_with_data_parallel_ranks_gives_the_objective_of_one_process(
    tmp_path, make_experiment, run_blackbox
) -> None:
    """torchrun with two gloo ranks: DoRA's magnitudes get their gradients summed across ranks like A and B."""
    experiment = make_experiment(space="variants", steps=2)
    points = point_file(tmp_path, "1 1 -2 2 1")
    env = {"LORA_BLACKBOX_LEASE_DIR": str(tmp_path / "leases")}
    ranks = run_blackbox(["eval", "-e", str(experiment), "--gpus-per-eval", "2", str(points)], env=env)
    assert ranks.returncode == 0, ranks.stderr.decode()[-3000:]
    one = Evaluator(load_experiment(str(experiment))).evaluate_line("1 1 -2 2 1")
    assert one.hparams is not None and one.hparams["lora"] == {"use_dora": True}
    assert abs(float(ranks.stdout.split()[0]) - one.metrics["validation_loss"]) < 1e-5
