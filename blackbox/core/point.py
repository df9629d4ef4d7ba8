"""Point files exactly as NOMAD writes them.

One point per line, values separated and padded by any amount of whitespace; reals with 14
decimals, integers in C++'s default 6-significant-digit format (``1.23457e+06``), ``-0``.
A blank line is a point evaluated elsewhere: it gets no output line. Lines end at ``\n`` only, as NOMAD
and every solver count them (a trailing ``\r`` of a CRLF file is dropped); other characters that Python
takes as line breaks (``\v \f \x1c-\x1e \x85 U+2028 U+2029``) are part of their line: whitespace
between its values, never a second point.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from blackbox.core.errors import PointError, SetupError

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
    text = data.decode("utf-8", errors="replace")
    if not text:
        return []
    lines = text.removesuffix("\n").split("\n")  # not str.splitlines(): see the module's docstring
    return [line.removesuffix("\r") for line in lines]


def format_number(value: float) -> str:
    """A coordinate as parameter files and messages show it: ``2``, not ``2.0``; reals exactly (``repr``)."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def format_point(point: tuple[float, ...] | list[float]) -> str:
    """A point as one line of a point file."""
    return " ".join(format_number(v) for v in point)


SHOWN_CHARS = 200
"""How much of an invalid line messages and records show: NOMAD's lines are far shorter (a 1024-byte buffer)."""


def shorten(text: str, limit: int = SHOWN_CHARS) -> str:
    """``text``, or its first ``limit`` characters and its length when it is longer (a garbage line can be
    megabytes long: it is neither echoed nor stored whole)."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


def parse_point(line: str) -> tuple[float, ...]:
    """The numbers of one non-blank line.

    Raises:
        PointError: a token is not a finite decimal number.
    """
    values = []
    for position, token in enumerate(line.split(), start=1):
        if not _NUMBER.fullmatch(token):
            raise PointError(f"value {position} is not a number: {shorten(repr(token))}")
        value = float(token)
        if not math.isfinite(value):
            raise PointError(f"value {position} is not finite: {shorten(repr(token))}")
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
