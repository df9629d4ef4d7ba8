"""Instruction data: rows from files or the hub, prompt template, tokenisation, on-disk cache.

Knows nothing about hyperparameter optimisation. The flow is::

    sources -> rows (instruction, context, response) -> train/validation split (and a test split)
            -> prompt + response text -> token ids with the prompt masked -> cached arrays

The tokenised splits are cached on disk, keyed by a hash of the tokenizer, the template, the maximum
length and the rows themselves, so a second evaluation of the same experiment skips tokenisation.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from blackbox.core.cache import tokenized_dir
from blackbox.core.errors import SetupError
from blackbox.core.experiment import DATA_FILE_SUFFIXES, DataConfig
from blackbox.core.files import folder_published_at, write_text_atomic

logger = logging.getLogger(__name__)

CACHE_FORMAT = 2  # bump when the cached arrays change meaning (2: training rows in a random order)

LOCAL_SUFFIXES = DATA_FILE_SUFFIXES

# The Stanford Alpaca prompt as the reference study used it for the Alpaca + Dolly mix (its experiments 2 and 3,
# train/train_with_LoRa_mixed_data.py), with its "#### Context:" (four #): template "alpaca".
ALPACA_WITH_CONTEXT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n#### Context:\n{context}\n\n### Response:"
)
ALPACA_WITHOUT_CONTEXT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:"
)
# Stanford Alpaca's own prompt (tatsu-lab/stanford_alpaca train.py), with "### Input:", as the reference study trained
# its experiment 1 on Alpaca alone (train_with_LoRa.py): template "alpaca_input". Without an input it is the
# same as ALPACA_WITHOUT_CONTEXT.
ALPACA_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{context}\n\n### Response:"
)
RAW = "raw"
"""Not a training template: the instruction alone, as the reference study asked its human-study questions
(``lora-blackbox answers --preset paper``)."""


@dataclass(frozen=True)
class Row:
    instruction: str
    context: str
    response: str


@dataclass(frozen=True)
class TokenizedSplit:
    """Token ids of many examples, stored flat: example i is ids[offsets[i]:offsets[i+1]].

    The first ``prompt_lengths[i]`` tokens of an example are the prompt: they are inputs, not targets.
    """

    ids: np.ndarray  # int32, all examples concatenated
    offsets: np.ndarray  # int64, len(self) + 1
    prompt_lengths: np.ndarray  # int32

    def __len__(self) -> int:
        return len(self.prompt_lengths)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @property
    def target_tokens(self) -> int:
        return int(self.lengths.sum() - self.prompt_lengths.sum())

    def example(self, i: int) -> tuple[np.ndarray, int]:
        return self.ids[self.offsets[i] : self.offsets[i + 1]], int(self.prompt_lengths[i])

    def head(self, count: int) -> TokenizedSplit:
        """The first ``count`` examples (a view, no copy)."""
        count = min(count, len(self))
        end = int(self.offsets[count])
        return TokenizedSplit(self.ids[:end], self.offsets[: count + 1], self.prompt_lengths[:count])

    def subset(self, indices: Sequence[int] | np.ndarray) -> TokenizedSplit:
        examples = [self.example(int(i)) for i in indices]
        return _from_examples([ids for ids, _ in examples], [p for _, p in examples])


@dataclass(frozen=True)
class Splits:
    train: TokenizedSplit
    validation: TokenizedSplit
    key: str  # the cache key: identifies tokenizer, template, length and rows
    from_cache: bool
    test: TokenizedSplit | None = None  # when the data have a test split (data.test)


def prepare_splits(config: DataConfig, tokenizer: Any) -> Splits:
    """Rows, split, template and tokenisation, through the on-disk cache.

    When every source is a local file (or an embedded data set), a warm cache is found from the files'
    sizes and modification times alone, without reading a row; otherwise the rows are read and hashed.

    Raises:
        SetupError: a source cannot be read or lacks the fields of an instruction data set.
    """
    fingerprint = tokenizer_fingerprint(tokenizer)
    quick_key = _quick_key(config, fingerprint)
    if quick_key is not None:
        key = _read_alias(quick_key)
        if key is not None and _is_cached(key):
            return _load_cached(key)
    train_rows, validation_rows = load_split_rows(config)
    test_rows = load_test_rows(config, train_rows, validation_rows)
    key = _cache_key(config, fingerprint, train_rows, validation_rows, test_rows)
    if _is_cached(key):
        splits = _load_cached(key)
    else:
        splits = _tokenize_and_store(
            config, tokenizer, {"train": train_rows, "validation": validation_rows, "test": test_rows}, key
        )
    if quick_key is not None:
        _write_alias(quick_key, key)
    return splits


def _tokenize_and_store(config: DataConfig, tokenizer: Any, rows_of: dict[str, list[Row] | None], key: str) -> Splits:
    """Tokenise the rows of each split (``test``: None when the data have no test split) and cache the arrays."""
    started = time.perf_counter()
    splits = {
        name: tokenize_rows(
            rows, tokenizer, template=config.template, max_length=config.max_length, system_prompt=config.system_prompt
        )
        for name, rows in rows_of.items()
        if rows is not None
    }
    for name, split in splits.items():
        rows = rows_of[name] or []
        if len(split) == 0:
            raise SetupError(f"no {name} example has a response token within max_length={config.max_length}")
        if len(split) < len(rows):
            logger.warning(
                "%d of %d %s rows dropped: their prompt alone fills max_length=%d",
                len(rows) - len(split),
                len(rows),
                name,
                config.max_length,
            )
    folder = tokenized_dir() / key
    _store(folder, splits)
    logger.info(
        "tokenised %s examples in %.1f s (cached in %s)",
        " / ".join(f"{len(split)} {name}" for name, split in splits.items()),
        time.perf_counter() - started,
        folder,
    )
    return Splits(splits["train"], splits["validation"], key, False, splits.get("test"))


def _is_cached(key: str) -> bool:
    return (tokenized_dir() / key / "meta.json").is_file()


def _load_cached(key: str) -> Splits:
    folder = tokenized_dir() / key
    logger.info("tokenised data from cache %s", folder)
    test = _load_split(folder, "test") if (folder / "test_ids.npy").is_file() else None
    return Splits(_load_split(folder, "train"), _load_split(folder, "validation"), key, True, test)


def _quick_key(config: DataConfig, tokenizer_fingerprint: str) -> str | None:
    """A key from the settings and the sources' file stamps, or None when a source has no stamp (hub)."""
    stamps = [_source_stamp(s) for s in (*config.train, *config.validation, *config.test)]
    if any(stamp is None for stamp in stamps):
        return None
    # Without a test split, the settings as they were before data.test: the same key for the same data.
    settings = config.model_dump(mode="json", exclude=set() if config.test else {"test", "max_test_rows"})
    digest = hashlib.sha256(json.dumps([CACHE_FORMAT, settings, stamps]).encode())
    digest.update(tokenizer_fingerprint.encode())
    return digest.hexdigest()[:32]


def _source_stamp(source: str) -> str | None:
    """Path, size and modification time of a local source: changes whenever its content does."""
    from blackbox.training import embedded

    if embedded.is_embedded(source):
        path = embedded.data_file(source)
    else:
        path = Path(source).expanduser()
        if path.suffix.lower() not in LOCAL_SUFFIXES or not path.is_file():
            return None  # a hub name or a dataset folder: only its rows tell what it holds
    stat = path.stat()
    return f"{source}|{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"


def _read_alias(quick_key: str) -> str | None:
    try:
        return (tokenized_dir() / "by-source" / quick_key).read_text().strip() or None
    except FileNotFoundError:
        return None


def _write_alias(quick_key: str, key: str) -> None:
    folder = tokenized_dir() / "by-source"
    folder.mkdir(parents=True, exist_ok=True)
    write_text_atomic(folder / quick_key, key)


def load_split_rows(config: DataConfig) -> tuple[list[Row], list[Row]]:
    """Training and validation rows, disjoint when validation is held out of the training sources.

    A capped split (``max_train_rows``, ``max_validation_rows``) is a random sample of all its sources drawn
    from ``split_seed``, never their first rows (those of a conversational source are a few long conversations).
    """
    rows = _dedupe(load_rows(config.train))
    rng = np.random.default_rng(config.split_seed)
    if config.validation:
        train_rows = rows
        validation_rows = load_rows(config.validation)
        overlap = len(set(train_rows) & set(validation_rows))
        if overlap:
            logger.warning("%d validation rows also appear in the training data", overlap)
        validation_rows = [validation_rows[i] for i in rng.permutation(len(validation_rows))]
        if config.max_train_rows and config.max_train_rows < len(rows):
            # Its own generator: the validation rows (and every checkpoint's) stay those drawn before. The sample
            # keeps the sources' order; the training shuffles its examples itself (training.seed).
            sample = np.random.default_rng([config.split_seed, 2]).choice(
                len(rows), config.max_train_rows, replace=False
            )
            train_rows = [rows[i] for i in sorted(sample)]
    else:
        order = rng.permutation(len(rows))
        n_validation = max(1, round(len(rows) * config.holdout_fraction))
        if n_validation >= len(rows):
            raise SetupError(f"{len(rows)} rows are too few to hold out {config.holdout_fraction:.0%}")
        validation_rows = [rows[i] for i in order[:n_validation]]
        train_rows = [rows[i] for i in order[n_validation:]]
    if config.max_train_rows:
        train_rows = train_rows[: config.max_train_rows]
    if config.max_validation_rows:
        validation_rows = validation_rows[: config.max_validation_rows]
    return train_rows, validation_rows


def load_test_rows(config: DataConfig, train_rows: list[Row], validation_rows: list[Row]) -> list[Row] | None:
    """The rows of the test split (None without ``data.test``), shuffled by ``split_seed`` as validation rows are;
    rows that also appear in the training or the validation rows are dropped, so that the split is disjoint from
    both.

    Raises:
        SetupError: no test row is left.
    """
    if not config.test:
        return None
    rows = _dedupe(load_rows(config.test))
    seen = set(train_rows) | set(validation_rows)
    kept = [row for row in rows if row not in seen]
    if len(kept) < len(rows):
        logger.warning(
            "%d test rows dropped: they also appear in the training or validation rows", len(rows) - len(kept)
        )
    if not kept:
        raise SetupError(f"no test row of {list(config.test)} is left once rows of training and validation are dropped")
    # Its own generator: the training and validation splits are drawn as they were before data.test existed.
    rng = np.random.default_rng([config.split_seed, 1])
    kept = [kept[i] for i in rng.permutation(len(kept))]
    return kept[: config.max_test_rows] if config.max_test_rows else kept


def load_rows(sources: Sequence[str]) -> list[Row]:
    """The rows of every source, concatenated in order."""
    rows: list[Row] = []
    for source in sources:
        rows.extend(_load_source(source))
    return rows


def _load_source(source: str) -> list[Row]:
    from blackbox.training import embedded  # local: only the demo needs it

    if embedded.is_embedded(source):
        return [Row(*r) for r in embedded.embedded_rows(source)]
    records = _load_records(source)
    return rows_from_records(records, source=source)


def _load_records(source: str) -> list[dict[str, Any]]:
    """Records of a local JSON/JSONL/CSV/Parquet file, a local dataset folder, or a hub dataset."""
    import datasets  # local: slow to import

    path = Path(source).expanduser()
    builder = LOCAL_SUFFIXES.get(path.suffix.lower())
    if builder is not None and not path.is_file():
        raise SetupError(
            f"data file {path} does not exist (a relative path in an experiment file is read from that "
            "file's folder; on the command line, from the working directory)"
        )
    try:
        if builder is not None:
            dataset = datasets.load_dataset(builder, data_files=str(path), split="train")
        elif path.is_dir():
            dataset = datasets.load_dataset(str(path), split="train")
        else:
            dataset = datasets.load_dataset(source, split="train")
    # datasets raises many types (offline hub, unknown name, bad JSON); each means "cannot read this source".
    except Exception as e:
        raise SetupError(f"cannot load data source {source!r}: {type(e).__name__}: {e}") from e
    return list(dataset.to_list())


# Field names of the data sets the reference study used: Dolly (and its Alpaca+Dolly mix) and Alpaca.
_FIELD_SETS = (("instruction", "context", "response"), ("instruction", "input", "output"))


def rows_from_records(records: list[dict[str, Any]], *, source: str) -> list[Row]:
    """Map Dolly-style (instruction/context/response) or Alpaca-style (instruction/input/output) records.

    Raises:
        SetupError: a record lacks the instruction or the response field.
    """
    if not records:
        raise SetupError(f"data source {source!r} holds no rows")
    columns = set(records[0])
    fields = next((f for f in _FIELD_SETS if f[0] in columns and f[2] in columns), None)
    if fields is None:
        raise SetupError(
            f"data source {source!r} has fields {sorted(columns)}; expected 'instruction' and 'response' "
            "(and optionally 'context'), as in Dolly, or 'instruction' and 'output' (and optionally "
            "'input'), as in Alpaca"
        )
    instruction, context, response = fields
    rows = []
    for number, record in enumerate(records, start=1):
        if record.get(instruction) is None or record.get(response) is None:
            raise SetupError(f"data source {source!r}, row {number}: {instruction!r} or {response!r} missing")
        rows.append(Row(str(record[instruction]), str(record.get(context) or ""), str(record[response])))
    return rows


def _dedupe(rows: list[Row]) -> list[Row]:
    unique = list(dict.fromkeys(rows))  # keeps the first of each, in order
    if len(unique) < len(rows):
        logger.info("%d duplicate rows dropped", len(rows) - len(unique))
    return unique


def prompt_formatter(template: str, tokenizer: Any, *, system_prompt: str | None = None) -> Callable[[Row], str]:
    """The function that turns a row into its prompt text (the response follows it)."""
    if template in ("alpaca", "alpaca_input"):
        with_context = ALPACA_WITH_CONTEXT if template == "alpaca" else ALPACA_WITH_INPUT
        return lambda row: (with_context if row.context else ALPACA_WITHOUT_CONTEXT).format(
            instruction=row.instruction, context=row.context
        )
    if template == RAW:
        return lambda row: f"{row.instruction}\n\n{row.context}" if row.context else row.instruction
    if template == "chat":
        if not getattr(tokenizer, "chat_template", None):
            raise SetupError("template 'chat' needs a tokenizer with a chat template")

        system = [] if system_prompt is None else [{"role": "system", "content": system_prompt}]

        def chat(row: Row) -> str:
            content = f"{row.instruction}\n\n{row.context}" if row.context else row.instruction
            text: str = tokenizer.apply_chat_template(
                [*system, {"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
            )
            return text

        return chat
    raise SetupError(f"unknown template {template!r}")


def adds_special_tokens(template: str) -> bool:
    """Whether the tokenizer adds its special tokens to a prompt of ``template``: the Alpaca prompts and a raw
    instruction are plain text (the tokenizer adds BOS), a chat template writes its own markers."""
    return template != "chat"


def tokenize_rows(
    rows: Sequence[Row], tokenizer: Any, *, template: str, max_length: int, system_prompt: str | None = None
) -> TokenizedSplit:
    """Prompt ids, then response ids, then EOS; truncated to ``max_length``.

    Prompt and response are tokenised apart, so the boundary between input and target is exact and
    the response tokens are those the model generates after the prompt at inference time. Examples
    left with no response token after truncation are dropped.
    """
    if tokenizer.eos_token_id is None:
        raise SetupError("the tokenizer has no EOS token: responses could not end")
    format_prompt = prompt_formatter(template, tokenizer, system_prompt=system_prompt)
    add_special = adds_special_tokens(template)
    ids_list, prompt_lengths = [], []
    chunk = 2048
    for start in range(0, len(rows), chunk):
        part = rows[start : start + chunk]
        prompts = tokenizer([format_prompt(r) for r in part], add_special_tokens=add_special)["input_ids"]
        responses = tokenizer([r.response for r in part], add_special_tokens=False)["input_ids"]
        for prompt, response in zip(prompts, responses, strict=True):
            ids = (list(prompt) + list(response) + [tokenizer.eos_token_id])[:max_length]
            if len(ids) > len(prompt):
                ids_list.append(ids)
                prompt_lengths.append(len(prompt))
    return _from_examples(ids_list, prompt_lengths)


def _from_examples(ids_list: Sequence[Sequence[int] | np.ndarray], prompt_lengths: Sequence[int]) -> TokenizedSplit:
    lengths = np.fromiter((len(ids) for ids in ids_list), dtype=np.int64, count=len(ids_list))
    offsets = np.zeros(len(ids_list) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.fromiter((t for ids in ids_list for t in ids), dtype=np.int32, count=int(offsets[-1]))
    return TokenizedSplit(flat, offsets, np.asarray(prompt_lengths, dtype=np.int32))


def _cache_key(
    config: DataConfig, tokenizer_fingerprint: str, train: list[Row], validation: list[Row], test: list[Row] | None
) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps([CACHE_FORMAT, config.template, config.max_length, config.system_prompt]).encode())
    digest.update(tokenizer_fingerprint.encode())
    for rows in (train, validation, *([] if test is None else [test])):
        digest.update(b"\x00split")
        for row in rows:
            for text in (row.instruction, row.context, row.response):
                digest.update(text.encode())
                digest.update(b"\x00")
    return digest.hexdigest()[:32]


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A hash of everything that decides how the tokenizer maps text to ids, chat template included."""
    digest = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        digest.update(backend.to_str().encode())
    else:
        digest.update(json.dumps(tokenizer.get_vocab(), sort_keys=True).encode())
    digest.update(json.dumps([tokenizer.bos_token_id, tokenizer.eos_token_id]).encode())
    digest.update(str(getattr(tokenizer, "chat_template", None)).encode())
    return digest.hexdigest()


def _store(folder: Path, splits: dict[str, TokenizedSplit]) -> None:
    """Write the arrays to a temporary folder, then rename it: readers never see half a cache."""
    with folder_published_at(folder) as tmp:
        for name, split in splits.items():
            np.save(tmp / f"{name}_ids.npy", split.ids)
            np.save(tmp / f"{name}_offsets.npy", split.offsets)
            np.save(tmp / f"{name}_prompt_lengths.npy", split.prompt_lengths)
        meta = {"format": CACHE_FORMAT, **{name: len(split) for name, split in splits.items()}}
        (tmp / "meta.json").write_text(json.dumps(meta))


def _load_split(folder: Path, name: str) -> TokenizedSplit:
    return TokenizedSplit(
        np.load(folder / f"{name}_ids.npy"),
        np.load(folder / f"{name}_offsets.npy"),
        np.load(folder / f"{name}_prompt_lengths.npy"),
    )
