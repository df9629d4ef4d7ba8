"""Votes: blind pairwise ratings of two models' answers to one question, by a person or a judge model.

They live in one SQLite file (``votes.sqlite`` beside the answers, ``folders.VOTES_FILE``), written by
``lora-blackbox compare`` and read by its results and by ``lora-blackbox report``. Each vote is its own
transaction in write-ahead-log mode: a vote is on disk when the page that cast it moves on, whatever kills the
server afterwards. A rater votes on a (question, pair of models) once; a second vote on it is ignored.

A vote names its two models in sorted order (``model_a < model_b``) and says which won: ``a``, ``b``, ``tie``
(equally good) or ``both_bad``; ``a_shown_first`` keeps where ``model_a``'s answer was shown (left, or first to a
judge), to look for position bias.

Rater links: a study whose page is reached over a network gives each rater a secret link (``/r/TOKEN``) instead
of a name field. The table ``raters`` keeps each rater's name and the SHA-256 of their token, never the token
itself (it is shown once, when the link is made); votes name the rater. A revoked link stops working at once; the
rater's votes stay. While the file holds any rater link, the page takes votes through links only.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from blackbox.core.errors import SetupError

Verdict = Literal["a", "b", "tie", "both_bad"]
VERDICTS: tuple[Verdict, ...] = ("a", "b", "tie", "both_bad")
JUDGE_PREFIX = "judge:"
"""Raters whose name starts so are judge models (``judge:<model>``); the others are people."""
RATER_NAME = re.compile(r"^[\w][\w .@-]{0,39}$")
"""A rater's name: up to 40 letters, digits, spaces and ``._@-`` (no ``:``: ``judge:`` names judge models)."""
SCHEMA_VERSION = 2  # 2: the raters table (rater links)

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS votes (
    id INTEGER PRIMARY KEY,
    rater TEXT NOT NULL,
    question_id TEXT NOT NULL,
    model_a TEXT NOT NULL,
    model_b TEXT NOT NULL,
    verdict TEXT NOT NULL CHECK (verdict IN ('a', 'b', 'tie', 'both_bad')),
    a_shown_first INTEGER NOT NULL,
    detail TEXT NOT NULL DEFAULT '',
    voted_at TEXT NOT NULL,
    CHECK (model_a < model_b),
    UNIQUE (rater, question_id, model_a, model_b)
);
CREATE TABLE IF NOT EXISTS raters (
    name TEXT PRIMARY KEY,
    token_sha256 TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL,
    revoked_at TEXT
);
PRAGMA user_version = {SCHEMA_VERSION};
"""


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


@contextmanager
def votes_db(path: Path) -> Iterator[sqlite3.Connection]:
    """A connection to the votes file, created when missing, closed when the block ends.

    Raises:
        SetupError: the file cannot be opened or is not a votes file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with closing(sqlite3.connect(path, timeout=30, isolation_level=None)) as connection:
            connection.execute("PRAGMA journal_mode = WAL")
            connection.execute("PRAGMA synchronous = FULL")  # a vote survives a power cut too
            connection.executescript(_SCHEMA)
            yield connection
    except sqlite3.DatabaseError as e:
        raise SetupError(f"{path} is not a votes file that can be written: {e}") from e


def add_vote(connection: sqlite3.Connection, vote: Vote) -> bool:
    """Store a vote in a transaction of its own; False when the rater had voted on that pair already."""
    if not vote.model_a < vote.model_b:
        raise ValueError(f"a vote names its models in sorted order, got {vote.model_a!r}, {vote.model_b!r}")
    with connection:  # BEGIN ... COMMIT
        connection.execute("BEGIN IMMEDIATE")
        cursor = connection.execute(
            "INSERT OR IGNORE INTO votes (rater, question_id, model_a, model_b, verdict, a_shown_first, detail,"
            " voted_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                vote.rater,
                vote.question_id,
                vote.model_a,
                vote.model_b,
                vote.verdict,
                int(vote.a_shown_first),
                vote.detail,
                vote.voted_at,
            ),
        )
    return cursor.rowcount == 1


def rated(connection: sqlite3.Connection, rater: str) -> set[tuple[str, str, str]]:
    """The (question id, model_a, model_b) a rater has voted on."""
    rows = connection.execute("SELECT question_id, model_a, model_b FROM votes WHERE rater = ?", (rater,))
    return {(q, a, b) for q, a, b in rows}


def fetch_votes(connection: sqlite3.Connection) -> list[Vote]:
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


def name_rule(name: str) -> str:
    """Why ``name`` is not a rater's name (:data:`RATER_NAME`)."""
    return f"{name!r} is not a rater's name: up to 40 letters, digits, spaces, '.', '_', '@' or '-'"


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def add_rater_link(connection: sqlite3.Connection, name: str) -> str | None:
    """A new secret token for rater ``name`` (their link is ``/r/TOKEN``), of which only the hash is stored; None
    when they have a valid link already (revoke it first for a new one). A revoked rater gets a new link.

    Raises:
        ValueError: ``name`` is not a rater's name (callers check user input with :data:`RATER_NAME`).
    """
    if not RATER_NAME.match(name):
        raise ValueError(name_rule(name))
    token = secrets.token_urlsafe(32)  # 256 random bits
    now = datetime.now(UTC).isoformat(timespec="seconds")
    with connection:
        connection.execute("BEGIN IMMEDIATE")
        row = connection.execute("SELECT revoked_at FROM raters WHERE name = ?", (name,)).fetchone()
        if row is not None and row[0] is None:
            return None
        connection.execute(
            "INSERT INTO raters (name, token_sha256, created_at, revoked_at) VALUES (?, ?, ?, NULL)"
            " ON CONFLICT (name) DO UPDATE SET token_sha256 = excluded.token_sha256,"
            " created_at = excluded.created_at, revoked_at = NULL",
            (name, _token_hash(token), now),
        )
    return token


def revoke_rater_link(connection: sqlite3.Connection, name: str) -> bool:
    """Revoke rater ``name``'s link (their votes stay); False when they have no valid link."""
    now = datetime.now(UTC).isoformat(timespec="seconds")
    with connection:
        cursor = connection.execute(
            "UPDATE raters SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL", (now, name)
        )
    return cursor.rowcount == 1


def rater_of_link(connection: sqlite3.Connection, token: str) -> str | None:
    """The rater whose valid (not revoked) link carries ``token``; None for any other token."""
    row = connection.execute(
        "SELECT name FROM raters WHERE token_sha256 = ? AND revoked_at IS NULL", (_token_hash(token),)
    ).fetchone()
    return None if row is None else str(row[0])


def links_required(connection: sqlite3.Connection) -> bool:
    """Whether the page takes votes through rater links only: the file holds a rater link (revoked ones count)."""
    return connection.execute("SELECT 1 FROM raters LIMIT 1").fetchone() is not None


def sorted_pair(first: str, second: str) -> tuple[str, str]:
    return (first, second) if first < second else (second, first)


def raters(votes: Sequence[Vote]) -> list[str]:
    """The raters of ``votes``, people first, each once, in the order they first voted."""
    names = list(dict.fromkeys(v.rater for v in votes))
    return [n for n in names if not n.startswith(JUDGE_PREFIX)] + [n for n in names if n.startswith(JUDGE_PREFIX)]
