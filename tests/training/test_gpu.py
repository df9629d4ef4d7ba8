"""Checks that need CUDA: the flash variable-length kernel, bf16 training, the auto micro-batch search."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from blackbox.training.batches import loss_sum, pack, pad
from blackbox.training.data import Row, tokenize_rows
from blackbox.training.testing import instruction_rows
from tests.points import point_file

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


@pytest.fixture(scope="module")
def split_and_models(tiny_model: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from blackbox.training import attention

    attention.register()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    rows = [Row(r["instruction"], r["context"], r["response"]) for r in instruction_rows(16, seed=7)]
    split = tokenize_rows(rows, tokenizer, template="alpaca", max_length=128)
    models = {
        attn: AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.bfloat16, attn_implementation=attn).cuda()
        for attn in ("sdpa", "varlen")
    }
    return split, models, tokenizer.eos_token_id


def test_flash_varlen_matches_padded_sdpa_forward_and_backward(split_and_models) -> None:
    split, models, pad_id = split_and_models
    examples = [split.example(i) for i in range(len(split))]
    losses, grads = {}, {}
    for attn, batch in (("sdpa", pad(examples, pad_id=pad_id)), ("varlen", pack(examples, pad_id=pad_id))):
        model = models[attn]
        embeddings = model.get_input_embeddings().weight
        embeddings.requires_grad_(True)
        loss = loss_sum(model, batch.to(torch.device("cuda"))) / batch.target_tokens
        loss.backward()
        losses[attn] = float(loss.detach())
        grads[attn] = embeddings.grad.float().clone()
        embeddings.grad = None
        embeddings.requires_grad_(False)
    assert abs(losses["varlen"] - losses["sdpa"]) < 2e-2 * abs(losses["sdpa"])
    cosine = torch.nn.functional.cosine_similarity(grads["varlen"].flatten(), grads["sdpa"].flatten(), dim=0)
    assert cosine > 0.99


def test_eval_on_the_gpu_picks_bf16_and_varlen(tmp_path, tiny_experiment, run_blackbox) -> None:
    points = point_file(tmp_path, "2 -2 0.1")
    result = run_blackbox(["eval", "-e", str(tiny_experiment), "--set", "training.micro_batch_size=0", str(points)])
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    value = float(result.stdout.split()[0])
    assert 0 < value < 10
    from tests.records import read_records

    [record] = read_records(tmp_path / "runs" / "records.jsonl")
    assert record["device"].startswith("cuda") and record["status"] == "OK"
    assert record["metrics"]["precision"] == "bfloat16 weights, no autocast"  # bf16 on a GPU that has it
    assert record["metrics"]["attention"] == "varlen"  # variable-length flash attention on packed batches
    assert record["metrics"]["train_padding_share"] == 0.0
