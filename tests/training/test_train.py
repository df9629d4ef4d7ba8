"""The training loop on the tiny model: it learns, and how a step is cut does not change what it learns."""

from pathlib import Path

import pytest
import torch

from blackbox.core.experiment import ModelConfig, TrainingConfig
from blackbox.core.space import HyperParams
from blackbox.training.data import DataConfig, prepare_splits
from blackbox.training.model import attach_lora, detach_lora, load_base_model, load_tokenizer
from blackbox.training.precision import Precision
from blackbox.training.train import train
from blackbox.training.validate import example_losses, validate

FP32 = Precision(torch.float32, None)
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def setup(tiny_model: Path, tiny_data):
    model_config = ModelConfig(name_or_path=str(tiny_model))
    tokenizer = load_tokenizer(model_config)
    data = DataConfig(train=(str(tiny_data[0]),), validation=(str(tiny_data[1]),), max_length=128)
    splits = prepare_splits(data, tokenizer)
    base = load_base_model(model_config, TrainingConfig(), CPU, FP32)
    return model_config, splits, base, tokenizer.eos_token_id


def _run(setup, *, learning_rate=1e-2, packed=False, **training) -> tuple[float, float]:
    model_config, splits, base, pad_id = setup
    torch.manual_seed(0)
    model = attach_lora(base, HyperParams(8, 16, 0.0, learning_rate), model_config)
    try:
        config = TrainingConfig(max_steps=10, effective_batch_size=16, seed=0, packing=packed, **training)
        stats = train(
            model=model,
            split=splits.train,
            learning_rate=learning_rate,
            config=config,
            device=CPU,
            precision=FP32,
            pad_id=pad_id,
        )
        result = validate(
            model=model, split=splits.validation, batch_size=8, device=CPU, precision=FP32, pad_id=pad_id, packed=packed
        )
        return stats.train_loss, result.loss
    finally:
        detach_lora(model)


def test_loss_falls_and_depends_on_the_learning_rate(setup) -> None:
    _, splits, base, pad_id = setup
    before = validate(
        model=base, split=splits.validation, batch_size=8, device=CPU, precision=FP32, pad_id=pad_id, packed=False
    ).loss
    _, tiny_lr = _run(setup, learning_rate=1e-5)
    _, good_lr = _run(setup, learning_rate=1e-2)
    assert good_lr < before - 0.1
    assert abs(tiny_lr - before) < 0.05 < abs(good_lr - tiny_lr)


def test_micro_batch_size_does_not_change_the_result(setup) -> None:
    # The loss of a step is normalised by its target tokens, so gradient accumulation is exact.
    whole = _run(setup, micro_batch_size=16)
    cut = _run(setup, micro_batch_size=3)
    packed = _run(setup, micro_batch_size=5, packed=True)
    torch.testing.assert_close(cut, whole, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(packed, whole, rtol=1e-4, atol=1e-4)


def test_the_base_model_is_unchanged_after_a_point(setup) -> None:
    _, _, base, _ = setup
    before = {k: v.clone() for k, v in base.state_dict().items()}
    _run(setup)
    after = base.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


class _MemoryLimit(torch.nn.Module):
    """The model behind a device memory limit: a pass over more than ``tokens`` tokens runs out of memory,
    as it would on a GPU (the CPU has no recoverable out-of-memory error)."""

    def __init__(self, model, tokens: int) -> None:
        super().__init__()
        self.model = model
        self.tokens = tokens
        self.refused = 0

    def forward(self, input_ids, **kwargs):
        if input_ids.numel() > self.tokens:
            self.refused += 1
            raise torch.OutOfMemoryError(f"{input_ids.numel()} tokens do not fit")
        return self.model(input_ids=input_ids, **kwargs)


def test_auto_micro_batch_halves_until_a_step_fits(setup) -> None:
    model_config, splits, base, pad_id = setup
    results = {}
    for limit in (None, 300):
        torch.manual_seed(0)
        model = attach_lora(base, HyperParams(8, 16, 0.0, 1e-2), model_config)
        wrapped = _MemoryLimit(model, limit or 10**9)
        try:
            config = TrainingConfig(max_steps=4, effective_batch_size=16, micro_batch_size=0, seed=0)
            stats = train(
                model=wrapped,
                split=splits.train,
                learning_rate=1e-2,
                config=config,
                device=CPU,
                precision=FP32,
                pad_id=pad_id,
            )
        finally:
            detach_lora(model)
        results[limit] = (stats, wrapped.refused)
    (free, refused_free), (limited, refused) = results[None], results[300]
    assert refused_free == 0 and free.micro_batch_size == 8
    assert refused > 0 and limited.micro_batch_size < 8
    # Exact accumulation: the smaller micro-batches learn the same thing.
    assert abs(limited.train_loss - free.train_loss) < 1e-4


def test_fidelity_trains_a_fraction_of_the_steps(setup) -> None:
    model_config, splits, base, pad_id = setup
    torch.manual_seed(0)
    model = attach_lora(base, HyperParams(8, 16, 0.0, 1e-2), model_config)
    try:
        config = TrainingConfig(max_steps=10, effective_batch_size=16, seed=0)
        stats = train(
            model=model,
            split=splits.train,
            learning_rate=1e-2,
            config=config,
            device=CPU,
            precision=FP32,
            pad_id=pad_id,
            fidelity=0.25,
        )
    finally:
        detach_lora(model)
    assert stats.steps == 3
    # A fraction of the validation set is its first examples, whole and in order (always the same ones).
    head, first = splits.validation.head(5), [splits.validation.example(i) for i in range(5)]
    assert len(head) == 5 and len(splits.validation) > 5
    assert head.ids.tolist() == [token for ids, _ in first for token in ids.tolist()]
    assert head.prompt_lengths.tolist() == [prompt for _, prompt in first]
    assert head.offsets.tolist() == splits.validation.offsets[:6].tolist()


def test_activation_checkpointing_learns_the_same(tiny_model: Path, tiny_data) -> None:
    model_config = ModelConfig(name_or_path=str(tiny_model))
    tokenizer = load_tokenizer(model_config)
    splits = prepare_splits(
        DataConfig(train=(str(tiny_data[0]),), validation=(str(tiny_data[1]),), max_length=128), tokenizer
    )
    losses, forwards = [], [0, 0]  # calls of the first layer's attention, without and with checkpointing
    for checkpointing in (False, True):
        training = TrainingConfig(max_steps=4, effective_batch_size=16, seed=0, gradient_checkpointing=checkpointing)
        base = load_base_model(model_config, training, CPU, FP32)
        # Checkpointing is on when a decoder layer's attention (its LoRA) runs twice: forward, and again in backward.
        count = int(checkpointing)
        base.model.layers[0].self_attn.register_forward_hook(
            lambda *_, i=count: forwards.__setitem__(i, forwards[i] + 1)
        )
        torch.manual_seed(0)
        model = attach_lora(base, HyperParams(8, 16, 0.0, 1e-2), model_config)
        stats = train(
            model=model,
            split=splits.train,
            learning_rate=1e-2,
            config=training,
            device=CPU,
            precision=FP32,
            pad_id=tokenizer.eos_token_id,
        )
        losses.append(stats.train_loss)
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=1e-5)
    assert forwards[0] > 0 and forwards[1] == 2 * forwards[0], forwards


def test_example_losses_add_up_to_the_validation_loss(setup) -> None:
    _, splits, base, pad_id = setup
    split = splits.validation
    whole = validate(model=base, split=split, batch_size=8, device=CPU, precision=FP32, pad_id=pad_id, packed=True)
    each = example_losses(model=base, split=split, batch_size=5, device=CPU, precision=FP32, pad_id=pad_id)
    assert len(each.loss_sums) == len(each.target_tokens) == len(split)
    assert each.target_tokens.sum() == whole.target_tokens == split.target_tokens
    assert each.loss == pytest.approx(whole.loss, rel=1e-5)
    # Each example's loss is its own, whatever batch it was padded into.
    alone = example_losses(model=base, split=split.head(3), batch_size=1, device=CPU, precision=FP32, pad_id=pad_id)
    torch.testing.assert_close(alone.loss_sums, each.loss_sums[:3], rtol=1e-5, atol=1e-5)
