from pathlib import Path

import numpy as np
import pytest
import torch

from blackbox.training.batches import loss_sum, micro_batches, pack, pad, step_indices, steps_per_epoch
from blackbox.training.data import Row, tokenize_rows
from blackbox.training.testing import instruction_rows


@pytest.fixture(scope="module")
def model_and_split(tiny_model: Path, tiny_tokenizer):
    from transformers import AutoModelForCausalLM

    tokenizer = tiny_tokenizer
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32, attn_implementation="sdpa")
    model.eval()
    rows = [Row(r["instruction"], r["context"], r["response"]) for r in instruction_rows(12, seed=5)]
    return model, tokenize_rows(rows, tokenizer, template="alpaca", max_length=128), tokenizer.eos_token_id


def _loss(model, batch) -> tuple[float, int]:
    with torch.no_grad():
        return float(loss_sum(model, batch)), batch.target_tokens


def test_padded_and_packed_batches_give_the_loss_of_each_example_alone(model_and_split) -> None:
    model, split, pad_id = model_and_split
    examples = [split.example(i) for i in range(len(split))]
    alone = [_loss(model, pad([e], pad_id=pad_id)) for e in examples]
    reference = sum(s for s, _ in alone), sum(n for _, n in alone)
    padded = _loss(model, pad(examples, pad_id=pad_id))
    packed = _loss(model, pack(examples, pad_id=pad_id))
    assert padded[1] == packed[1] == reference[1]
    torch.testing.assert_close(padded[0], reference[0], rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(packed[0], reference[0], rtol=1e-5, atol=1e-4)


def test_packed_batch_has_no_padding_and_no_cross_example_target(model_and_split) -> None:
    _, split, pad_id = model_and_split
    examples = [split.example(i) for i in range(4)]
    batch = pack(examples, pad_id=pad_id)
    assert batch.input_ids.shape == (1, sum(len(ids) for ids, _ in examples)) == (1, batch.real_tokens)
    starts = np.cumsum([0] + [len(ids) for ids, _ in examples[:-1]])
    assert (batch.position_ids[0, starts] == 0).all()
    assert (batch.labels[0, starts] == -100).all()


def test_micro_batches_group_lengths_and_keep_every_example(model_and_split) -> None:
    _, split, pad_id = model_and_split
    indices = np.arange(len(split))
    batches = micro_batches(split, indices, micro_batch_size=4, pad_id=pad_id, packed=False)
    assert sum(b.input_ids.shape[0] for b in batches) == len(split)
    assert sum(b.target_tokens for b in batches) == split.target_tokens
    widths = [b.input_ids.shape[1] for b in batches]
    assert widths == sorted(widths, reverse=True)


def test_step_plan_visits_every_example_once_per_epoch() -> None:
    plan = step_indices(10, 4, seed=1)
    epoch = [next(plan) for _ in range(steps_per_epoch(10, 4))]
    assert [len(s) for s in epoch] == [4, 4, 2]
    assert sorted(np.concatenate(epoch).tolist()) == list(range(10))
    again = step_indices(10, 4, seed=1)
    assert all(np.array_equal(a, next(again)) for a in epoch)


def test_varlen_attention_gives_the_loss_of_each_example_alone(tiny_model: Path, model_and_split) -> None:
    """The plumbing of the padding-free kernel (sequence boundaries through transformers into attention.py),
    checked on the CPU, where it runs one SDPA per example after checking the kernel's contract (bf16 or fp16
    only); on CUDA the same path calls the flash kernel."""
    from transformers import AutoModelForCausalLM

    from blackbox.training import attention

    _, split, pad_id = model_and_split
    attention.register()
    models = {
        attn: AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.bfloat16, attn_implementation=attn).eval()
        for attn in ("sdpa", "varlen")
    }
    varlen_model = models["varlen"]
    examples = [split.example(i) for i in range(len(split))]
    reference = _loss(models["sdpa"], pad(examples, pad_id=pad_id))
    packed = _loss(varlen_model, pack(examples, pad_id=pad_id))
    assert packed[1] == reference[1]
    torch.testing.assert_close(packed[0], reference[0], rtol=1e-2, atol=0.0)  # bf16: 3 significant digits
    with pytest.raises(ValueError, match="packed batches"):
        _loss(varlen_model, pad(examples, pad_id=pad_id))
