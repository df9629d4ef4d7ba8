"""Point files exactly as NOMAD writes them.

One point per line, values separated and padded by any amount of whitespace; reals with 14
decimals, integers in C++'s default 6-significant-digit format (``1.23457e+06``), ``-0``.
A blank line is a point evaluated elsewhere: it gets no output line.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from blackbox.errors import PointError, SetupError

# Decimal or scientific notation only: Python's float() would also take "1_000", "nan" or "infinity".
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


def read_point_lines(path: Path) -> list[str]:
    """The lines of a point file, blank ones included (they keep their place but get no output).

    Raises:
        SetupError: the file cannot be read. This fails the whole call.
    """
    try:
        data = path.read_bytes()
    except OSError as e:
        raise SetupError(f"cannot read point file {path}: {e.strerror or e}") from e
    # Undecodable bytes fail their own line (as "not a number"), not the whole call.
    return data.decode("utf-8", errors="replace").splitlines()


def parse_point(line: str) -> tuple[float, ...]:
    """The numbers of one non-blank line.

    Raises:
        PointError: a token is not a finite decimal number.
    """
    values = []
    for position, token in enumerate(line.split(), start=1):
        if not _NUMBER.fullmatch(token):
            raise PointError(f"value {position} is not a number: {token!r}")
        value = float(token)
        if not math.isfinite(value):
            raise PointError(f"value {position} is not finite: {token!r}")
        values.append(value)
    return tuple(values)


@dataclass(frozen=True)
class PointSource:
    """Where a point came from: a line of an optimizer's point file, or nothing (Python API)."""

    line: str | None = None
    values: tuple[float, ...] | None = None
    file: str | None = None
    block_index: int | None = None  # 0-based index of the line in the file

    @property
    def label(self) -> str:
        return str(self.block_index + 1) if self.block_index is not None else "-"
