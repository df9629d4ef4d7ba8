import json
from pathlib import Path

import numpy as np
import pytest

from blackbox.core.errors import SetupError
from blackbox.core.experiment import DataConfig
from blackbox.training import embedded
from blackbox.training.data import (
    ALPACA_WITH_CONTEXT,
    Row,
    load_split_rows,
    prepare_splits,
    prompt_formatter,
    rows_from_records,
    tokenize_rows,
)


@pytest.fixture(scope="module")
def tokenizer(tiny_tokenizer):
    return tiny_tokenizer


def test_alpaca_and_dolly_fields() -> None:
    alpaca = rows_from_records([{"instruction": "i", "input": "c", "output": "o", "text": "t"}], source="a")
    dolly = rows_from_records([{"instruction": "i", "context": "c", "response": "o", "category": "x"}], source="d")
    assert alpaca == dolly == [Row("i", "c", "o")]
    assert rows_from_records([{"instruction": "i", "input": None, "output": "o"}], source="a") == [Row("i", "", "o")]


def test_missing_field_is_a_clear_error() -> None:
    with pytest.raises(SetupError, match=r"has fields \['instruction', 'question'\]; expected"):
        rows_from_records([{"instruction": "i", "question": "q"}], source="bad.jsonl")


def test_the_paper_prompt() -> None:
    format_prompt = prompt_formatter("alpaca", tokenizer=None)
    assert format_prompt(Row("Sum it.", "1 2", "3")) == (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\nSum it.\n\n#### Context:\n1 2\n\n### Response:"
    )
    assert format_prompt(Row("Hi.", "", "Hello")) == (
        "Below is an instruction that describes a task. "
        "Write a response that appropriately completes the request.\n\n### Instruction:\nHi.\n\n### Response:"
    )
    assert "#### Context:" in ALPACA_WITH_CONTEXT


def test_tokens_are_prompt_then_response_then_eos(tokenizer) -> None:
    rows = [Row("Repeat the word apple twice.", "", "apple apple"), Row("Give the first word.", "a b", "a")]
    split = tokenize_rows(rows, tokenizer, template="alpaca", max_length=512)
    for i, row in enumerate(rows):
        ids, prompt_length = split.example(i)
        prompt = tokenizer(prompt_formatter("alpaca", tokenizer)(row))["input_ids"]
        response = tokenizer(row.response, add_special_tokens=False)["input_ids"]
        assert ids.tolist() == prompt + response + [tokenizer.eos_token_id]
        assert prompt_length == len(prompt)
        assert ids[0] == tokenizer.bos_token_id
    assert split.target_tokens == sum(
        len(tokenizer(r.response, add_special_tokens=False)["input_ids"]) + 1 for r in rows
    )


def test_truncation_keeps_only_examples_with_a_target(tokenizer) -> None:
    rows = [Row("x " * 200, "", "short"), Row("Hi.", "", "a " * 300)]
    split = tokenize_rows(rows, tokenizer, template="alpaca", max_length=64)
    assert len(split) == 1
    ids, prompt_length = split.example(0)
    assert len(ids) == 64 and prompt_length < 64


def test_holdout_is_disjoint_deterministic_and_deduplicated(tmp_path: Path) -> None:
    rows = [{"instruction": f"q{i % 90}", "context": "", "response": f"a{i % 90}"} for i in range(100)]
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = DataConfig(train=(str(path),), holdout_fraction=0.2, split_seed=3)
    train, validation = load_split_rows(config)
    assert len(train) + len(validation) == 90  # 10 exact duplicates dropped
    assert len(validation) == 18 and not set(train) & set(validation)
    assert load_split_rows(config) == (train, validation)
    assert load_split_rows(config.model_copy(update={"split_seed": 4})) != (train, validation)


def test_tokenised_data_is_cached_and_keyed_by_content(tokenizer, tiny_data, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("LORA_BLACKBOX_CACHE", str(tmp_path / "cache"))
    train, validation = tiny_data
    config = DataConfig(train=(str(train),), validation=(str(validation),), max_length=128)
    first = prepare_splits(config, tokenizer)
    second = prepare_splits(config, tokenizer)
    assert not first.from_cache and second.from_cache and first.key == second.key
    for a, b in ((first.train, second.train), (first.validation, second.validation)):
        assert np.array_equal(a.ids, b.ids) and np.array_equal(a.offsets, b.offsets)
        assert np.array_equal(a.prompt_lengths, b.prompt_lengths)
    shorter = prepare_splits(config.model_copy(update={"max_length": 64}), tokenizer)
    assert shorter.key != first.key and not shorter.from_cache
    fewer = prepare_splits(config.model_copy(update={"max_train_rows": 10}), tokenizer)
    assert fewer.key != first.key and len(fewer.train) == 10


def test_a_warm_cache_of_local_files_reads_no_row(tokenizer, tiny_data, tmp_path, monkeypatch) -> None:
    import blackbox.training.data as data

    monkeypatch.setenv("LORA_BLACKBOX_CACHE", str(tmp_path / "cache"))
    train = tmp_path / "train.jsonl"
    train.write_bytes(tiny_data[0].read_bytes())
    config = DataConfig(train=(str(train),), validation=(str(tiny_data[1]),), max_length=128)
    first = prepare_splits(config, tokenizer)

    def no_rows(config):
        raise AssertionError("rows were read although the cache is warm")

    with monkeypatch.context() as patch:
        patch.setattr(data, "load_split_rows", no_rows)
        again = prepare_splits(config, tokenizer)
    assert again.from_cache and again.key == first.key
    # New content: the stamp changes, the rows are read again and tokenised anew.
    lines = train.read_text().splitlines(keepends=True)
    train.write_text("".join(lines[:-5]))
    changed = prepare_splits(config, tokenizer)
    assert not changed.from_cache and changed.key != first.key and len(changed.train) < len(first.train)


def test_missing_local_file_is_a_setup_error(tokenizer) -> None:
    with pytest.raises(SetupError, match="does not exist"):
        prepare_splits(DataConfig(train=("/nonexistent/train.jsonl",)), tokenizer)


def test_hub_names_fail_fast_offline(tokenizer) -> None:
    with pytest.raises(SetupError, match="tatsu-lab/alpaca"):
        prepare_splits(DataConfig(train=("tatsu-lab/alpaca",)), tokenizer)


def test_embedded_chitchat_splits_share_no_conversation() -> None:
    train = embedded.embedded_rows("embedded:chitchat/train")
    validation = embedded.embedded_rows("embedded:chitchat/validation")
    assert len(train) > 50_000 and len(validation) > 5_000
    train_texts = {text for row in train for text in (row[0], row[2])}
    shared = [row for row in validation if row[0] in train_texts and row[2] in train_texts]
    assert len(shared) < 0.01 * len(validation)  # only stock phrases ("hi", "lol") recur across conversations
