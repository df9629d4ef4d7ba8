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
    adds_special_tokens,
    load_split_rows,
    load_test_rows,
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


def test_stanford_alpacas_prompt_and_the_raw_question() -> None:
    """Template alpaca_input: Stanford Alpaca's own prompt, as the reference study trained its experiment 1
    (train_with_LoRa.py); raw: the question alone, as it asked its human-study questions."""
    format_prompt = prompt_formatter("alpaca_input", tokenizer=None)
    assert format_prompt(Row("Sum it.", "1 2", "3")) == (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\nSum it.\n\n### Input:\n1 2\n\n### Response:"
    )
    assert format_prompt(Row("Hi.", "", "Hello")) == prompt_formatter("alpaca", tokenizer=None)(Row("Hi.", "", "Hello"))
    raw = prompt_formatter("raw", tokenizer=None)
    assert raw(Row("What if the Beatles had never formed?", "", "")) == "What if the Beatles had never formed?"
    assert adds_special_tokens("raw") and adds_special_tokens("alpaca_input") and not adds_special_tokens("chat")


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


def test_a_test_split_is_disjoint_from_training_and_validation(tmp_path: Path) -> None:
    def write(name: str, numbers: range) -> str:
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(json.dumps({"instruction": f"q{i}", "response": f"a{i}"}) + "\n" for i in numbers))
        return str(path)

    config = DataConfig(
        train=(write("train", range(0, 50)),),
        validation=(write("validation", range(50, 70)),),
        test=(write("test", range(45, 100)),),  # q45..q49 are training rows, q50..q69 validation rows
        max_test_rows=20,
    )
    train, validation = load_split_rows(config)
    test = load_test_rows(config, train, validation)
    assert test is not None and len(test) == 20
    assert not set(test) & (set(train) | set(validation))
    assert {int(row.instruction[1:]) for row in test} <= set(range(70, 100))
    assert load_test_rows(config, train, validation) == test  # shuffled by split_seed, the same every time
    # The training and validation rows are those of the same data without a test split.
    assert load_split_rows(config.model_copy(update={"test": (), "max_test_rows": 0})) == (train, validation)
    assert load_test_rows(config.model_copy(update={"test": ()}), train, validation) is None
    with pytest.raises(SetupError, match="no test row"):
        load_test_rows(config.model_copy(update={"test": config.train}), train, validation)


def test_the_test_split_is_tokenised_and_cached_apart(tokenizer, tiny_data, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("LORA_BLACKBOX_CACHE", str(tmp_path / "cache"))
    train, validation = tiny_data
    config = DataConfig(train=(str(train),), validation=(str(validation),), max_length=128)
    without = prepare_splits(config, tokenizer)
    assert without.test is None
    test_file = tmp_path / "test.jsonl"
    test_file.write_text("".join(json.dumps({"instruction": f"t{i}", "response": f"r{i}"}) + "\n" for i in range(7)))
    with_test = config.model_copy(update={"test": (str(test_file),)})
    first, again = prepare_splits(with_test, tokenizer), prepare_splits(with_test, tokenizer)
    assert first.key != without.key and not first.from_cache and again.from_cache
    assert first.test is not None and again.test is not None and len(first.test) == len(again.test) == 7
    assert np.array_equal(first.test.ids, again.test.ids)
    assert np.array_equal(first.train.ids, without.train.ids)
    assert np.array_equal(first.validation.ids, without.validation.ids)


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


def test_embedded_chitchat_dev_and_test_halve_the_validation_conversations() -> None:
    validation = embedded.embedded_rows("embedded:chitchat/validation")
    dev = embedded.embedded_rows("embedded:chitchat/dev")
    test = embedded.embedded_rows("embedded:chitchat/test")
    assert sorted(dev + test) == sorted(validation)
    assert len(dev) > 5_000 and len(test) > 5_000
    # No conversation in both: a reply of one turn is the next turn's message, so shared conversations share text.
    dev_texts = {text for row in dev for text in (row[0], row[2])}
    shared = [row for row in test if row[0] in dev_texts and row[2] in dev_texts]
    assert len(shared) < 0.01 * len(test)


def test_embedded_chitchat_splits_share_no_conversation() -> None:
    train = embedded.embedded_rows("embedded:chitchat/train")
    validation = embedded.embedded_rows("embedded:chitchat/validation")
    assert len(train) > 50_000 and len(validation) > 5_000
    train_texts = {text for row in train for text in (row[0], row[2])}
    shared = [row for row in validation if row[0] in train_texts and row[2] in train_texts]
    assert len(shared) < 0.01 * len(validation)  # only stock phrases ("hi", "lol") recur across conversations


def test_a_capped_training_set_is_a_random_sample_of_many_conversations() -> None:
    # The demo's data: capped training rows beside a separate validation source. Its first 1,024 rows came from
    # a handful of long conversations; a seeded sample draws from hundreds.
    conversation_of = {
        Row(*row): conversation
        for conversation, rows in embedded.conversation_rows("embedded:chitchat/train").items()
        for row in rows
    }
    config = DataConfig(train=("embedded:chitchat/train",), validation=("embedded:chitchat/validation",))
    first = load_split_rows(config)[0][:1024]
    capped = config.model_copy(update={"max_train_rows": 1024})
    train, validation = load_split_rows(capped)
    assert len(train) == 1024 and len({conversation_of[row] for row in first}) < 40
    assert len({conversation_of[row] for row in train}) > 500
    assert load_split_rows(capped) == (train, validation)  # the same sample every time
    assert load_split_rows(capped.model_copy(update={"split_seed": 1}))[0] != train
    # The validation rows (the checkpoints' among them) do not depend on the cap.
    assert validation == load_split_rows(config)[1]
