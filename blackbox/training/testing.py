"""Tiny but real models and instruction data, built offline in seconds: for tests, benchmarks and smoke
checks of a set-up.

The model is a Llama of about 0.2M parameters with a byte-level BPE tokenizer trained here. It is
briefly pretrained on text in the Alpaca prompt format, so that LoRA fine-tuning on the instruction
data then moves its validation loss clearly with the learning rate (a random model barely responds).

Example::

    from blackbox.training.testing import build_tiny_model, write_instruction_files
    model_dir = build_tiny_model(tmp / "tiny")
    train, validation = write_instruction_files(tmp / "data")

Experiments on it come from one template of the repository (``tests/assets``), see :func:`write_experiment`.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

_WORDS = (
    "apple river stone cloud green quick lamp music paper tiger orange silver window garden bread "
    "mountain pencil rabbit summer winter coffee planet yellow forest candle bridge rocket violet "
    "thunder meadow castle harbor lemon marble feather"
).split()

_TASKS: dict[str, Callable[[list[str]], tuple[str, str, str]]] = {
    "repeat": lambda w: (f"Repeat the word {w[0]} twice.", "", f"{w[0]} {w[0]}"),
    "upper": lambda w: (f"Write {w[0]} in capital letters.", "", w[0].upper()),
    "first": lambda w: ("Give the first word of the list.", " ".join(w[:3]), w[0]),
    "last": lambda w: ("Give the last word of the list.", " ".join(w[:3]), w[2]),
    "reverse": lambda w: ("Reverse the order of the words.", " ".join(w[:3]), " ".join(reversed(w[:3]))),
    "count": lambda w: (
        "How many words are in the list?",
        " ".join(w[: len(w[0]) % 4 + 1]),
        str(len(w[0]) % 4 + 1),
    ),
}


def instruction_rows(n: int, *, seed: int, tasks: tuple[str, ...] = tuple(_TASKS)) -> list[dict[str, str]]:
    """Dolly-style rows (instruction, context, response) of small, learnable word tasks."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        words = rng.sample(_WORDS, 4)
        instruction, context, response = _TASKS[rng.choice(tasks)](words)
        rows.append({"instruction": instruction, "context": context, "response": response})
    return rows


def write_instruction_files(folder: Path, *, n_train: int = 256, n_validation: int = 64) -> tuple[Path, Path]:
    """A Dolly-style JSON Lines training file and an Alpaca-style JSON validation file."""
    folder.mkdir(parents=True, exist_ok=True)
    train = folder / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in instruction_rows(n_train, seed=1)))
    validation = folder / "validation.json"
    seen = {json.dumps(r) for r in instruction_rows(n_train, seed=1)}
    unseen = [r for r in instruction_rows(4 * n_validation, seed=2) if json.dumps(r) not in seen]
    alpaca = [
        {"instruction": r["instruction"], "input": r["context"], "output": r["response"]} for r in unseen[:n_validation]
    ]
    validation.write_text(json.dumps(alpaca, indent=1))
    return train, validation


def build_tiny_model(folder: Path, *, pretrain_steps: int = 300, seed: int = 0) -> Path:
    """Train a tokenizer, build a tiny Llama, pretrain it briefly, and save both to ``folder``."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from blackbox.training.data import ALPACA_WITH_CONTEXT, ALPACA_WITHOUT_CONTEXT

    # Pretraining text: the prompt format with tasks the fine-tuning data mostly lacks.
    corpus = []
    for row in instruction_rows(2000, seed=seed + 100, tasks=("repeat", "upper", "first")):
        template = ALPACA_WITH_CONTEXT if row["context"] else ALPACA_WITHOUT_CONTEXT
        corpus.append(template.format(**row) + row["response"])

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(
        [*corpus, " ".join(_WORDS), " ".join(_WORDS).upper()],
        trainers.BpeTrainer(
            vocab_size=384,
            special_tokens=["<s>", "</s>", "<pad>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    bos, eos, pad = (bpe.token_to_id(t) for t in ("<s>", "</s>", "<pad>"))
    bpe.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", pad_token="<pad>")

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=bpe.get_vocab_size(),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=pad,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    texts = [[*tokenizer(t)["input_ids"][:160], eos] for t in corpus]
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    rng = random.Random(seed)
    model.train()
    for _ in range(pretrain_steps):
        batch = rng.sample(texts, 16)
        width = max(len(t) for t in batch)
        ids = torch.tensor([t + [pad] * (width - len(t)) for t in batch])
        labels = torch.tensor([t + [-100] * (width - len(t)) for t in batch])
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def write_experiment(path: Path, *, template: Path, space: Path, **values: object) -> Path:
    """An experiment file from a template with a ``{space}`` placeholder and a search-space snippet, the other
    placeholders filled from ``values`` (the repository's: ``tests/assets/tiny_experiment.toml`` and
    ``tests/assets/spaces/*.toml``, shared by the tests and the benchmarks)."""
    text = template.read_text().format(space=space.read_text(), **values)
    path.write_text(text)
    return path


def write_benchmark_tasks(folder: Path, *, n_items: int = 24, seed: int = 3) -> Path:
    """Three lm-eval tasks over the word tasks, in a folder for ``include_path``: ``tiny_mc`` (which of two
    responses answers the Alpaca prompt, by log-likelihood: ``acc``), ``tiny_gen`` (the response written
    greedily up to a newline: ``exact_match``) and ``tiny_ll`` (the perplexity of the right responses: a score
    that any change of the model moves)."""
    from blackbox.training.data import Row, prompt_formatter

    folder.mkdir(parents=True, exist_ok=True)
    render = prompt_formatter("alpaca", None)
    rows = instruction_rows(2 * n_items, seed=seed)
    rng = random.Random(seed)
    items = []
    for row, other in zip(rows[:n_items], rows[n_items:], strict=True):
        label = rng.randrange(2)
        choices = [other["response"]] if other["response"] != row["response"] else [row["response"] + "!"]
        choices.insert(label, row["response"])
        prompt = render(Row(row["instruction"], row["context"], row["response"]))
        items.append({"prompt": prompt, "choices": choices, "label": label, "answer": row["response"]})
    data = folder / "items.jsonl"
    data.write_text("".join(json.dumps(item) + "\n" for item in items))
    common = (
        f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {json.dumps(str(data))}\ntest_split: test\n"
    )
    (folder / "tiny_mc.yaml").write_text(
        "task: tiny_mc\n" + common + "output_type: multiple_choice\n"
        'doc_to_text: "{{prompt}}"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: "{{label}}"\n'
        'target_delimiter: ""\nmetric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n'
    )
    (folder / "tiny_gen.yaml").write_text(
        "task: tiny_gen\n" + common + "output_type: generate_until\n"
        'doc_to_text: "{{prompt}}"\ndoc_to_target: "{{answer}}"\ntarget_delimiter: ""\n'
        'generation_kwargs:\n  until: ["\\n"]\n  max_gen_toks: 8\n  do_sample: false\n'
        "metric_list:\n  - metric: exact_match\n    aggregation: mean\n    higher_is_better: true\n"
    )
    (folder / "tiny_ll.yaml").write_text(
        "task: tiny_ll\n" + common + "output_type: loglikelihood\n"
        'doc_to_text: "{{prompt}}"\ndoc_to_target: "{{answer}}"\ntarget_delimiter: ""\n'
        "metric_list:\n  - metric: perplexity\n    aggregation: perplexity\n    higher_is_better: false\n"
    )
    return folder
