"""Votes as the results read them: blind pairwise ratings of two models' answers to one question, by a person or a
judge model, and the votes of a votes file, read only.

The votes file (``votes.sqlite`` beside the answers, ``folders.VOTES_FILE``) is written by the rating page's store,
:mod:`blackbox.assessment.compare.votes`, which also keeps its rater links and the study's secret; the results read
its ``votes`` table here, and nothing else of it.

A vote names its two models in sorted order (``model_a < model_b``) and says which won: ``a``, ``b``, ``tie``
(equally good) or ``both_bad``; ``a_shown_first`` keeps where ``model_a``'s answer was shown (left, or first to a
judge), to look for position bias.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Sequence
from contextlib import closing
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from blackbox.core.errors import SetupError

Verdict = Literal["a", "b", "tie", "both_bad"]
JUDGE_PREFIX = "judge:"
"""Raters whose name starts so are judge models (``judge:<model>``); the others are people."""


@dataclass(frozen=True)
class Vote:
    rater: str
    question_id: str
    model_a: str
    model_b: str
    verdict: Verdict
    a_shown_first: bool
    detail: str = ""  # a judge's raw verdicts
    voted_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    @property
    def winner(self) -> str | None:
        """The winning model's label; None for a tie or both bad."""
        return {"a": self.model_a, "b": self.model_b}.get(self.verdict)

    @property
    def is_judge(self) -> bool:
        return self.rater.startswith(JUDGE_PREFIX)


def fetch_votes(connection: sqlite3.Connection) -> list[Vote]:
    """Every vote of an open votes file, in the order they were cast."""
    rows = connection.execute(
        "SELECT rater, question_id, model_a, model_b, verdict, a_shown_first, detail, voted_at FROM votes ORDER BY id"
    )
    return [Vote(r, q, a, b, v, bool(first), d, t) for r, q, a, b, v, first, d, t in rows]


def read_votes(path: Path) -> list[Vote]:
    """Every vote of a votes file, in the order they were cast (the file is only read).

    Raises:
        SetupError: the file is missing or is not a votes file.
    """
    if not path.is_file():
        raise SetupError(f"no votes file {path}")
    try:
        with closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=30)) as connection:
            return fetch_votes(connection)
    except sqlite3.DatabaseError as e:
        raise SetupError(f"{path} is not a votes file: {e}") from e


def judge_detail(a_first: str | None, b_first: str | None) -> str:
    """A judge vote's ``detail``: its raw verdict (``A``, ``B``, ``C`` or none) in each order, model_a shown first
    (``a_first``), then model_b shown first."""
    return f"a_first={a_first or 'none'} b_first={b_first or 'none'}"


def parse_judge_detail(detail: str) -> tuple[str | None, str | None] | None:
    """The two raw verdicts of :func:`judge_detail`'s text (None for none); None when ``detail`` is not one."""
    found = re.fullmatch(r"a_first=(A|B|C|none) b_first=(A|B|C|none)", detail)
    if not found:
        return None
    a_first, b_first = found.groups()
    return (None if a_first == "none" else a_first, None if b_first == "none" else b_first)


def raters(votes: Sequence[Vote]) -> list[str]:
    """The raters of ``votes``, people first, each once, in the order they first voted."""
    names = list(dict.fromkeys(v.rater for v in votes))
    return [n for n in names if not n.startswith(JUDGE_PREFIX)] + [n for n in names if n.startswith(JUDGE_PREFIX)]
