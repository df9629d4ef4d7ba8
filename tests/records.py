"""The records file as a user's script reads it: JSON lines, one object each (not through the package's typed
store, so that tests check the file's format itself)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_records(path: Path) -> list[dict[str, Any]]:
    """Every complete record of a ``records.jsonl`` file, in order; a torn last line is skipped."""
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records
