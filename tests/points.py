"""Point files as NOMAD writes them, for the tests: one point per line, each ending with a newline."""

from __future__ import annotations

from pathlib import Path


def point_file(folder: Path, *lines: str, name: str = "x.txt") -> Path:
    """A point file ``folder/name`` holding ``lines`` (an empty one is a blank line: a point evaluated elsewhere)."""
    path = folder / name
    path.write_text("".join(line + "\n" for line in lines))
    return path
