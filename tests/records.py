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


def recorded_run_ids(study_dir: Path) -> set[str]:
    """The run ids of a study folder's records: the evaluations that have ended (a folder under ``evals/`` may
    already belong to the next one)."""
    path = study_dir / "records.jsonl"
    return {r["run_id"] for r in read_records(path)} if path.exists() else set()
