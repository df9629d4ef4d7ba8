"""Where lora-blackbox caches what it can compute again: converted models and tokenised data.

``$LORA_BLACKBOX_CACHE``, else ``$XDG_CACHE_HOME/lora-blackbox``, else ``~/.cache/lora-blackbox``. Holds
``models/`` (the demo's model, converted once from GGUF) and ``tokenized/`` (tokenised data sets, keyed by
the tokenizer, the template, the maximum length and the rows). The container runner mounts it.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_CACHE = "LORA_BLACKBOX_CACHE"


def cache_root() -> Path:
    """The cache folder (not created)."""
    configured = os.environ.get(ENV_CACHE)
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "lora-blackbox"


def models_dir() -> Path:
    return cache_root() / "models"


def tokenized_dir() -> Path:
    return cache_root() / "tokenized"
