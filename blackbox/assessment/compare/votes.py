"""The votes store of the rating page: one SQLite file (``votes.sqlite`` beside the answers,
``folders.VOTES_FILE``) holding the votes, the rater links and the study's secret, written by
``lora-blackbox compare`` (the page, its judges, its link commands). The results read its votes through
:mod:`blackbox.reports.votes` (what a :class:`~blackbox.reports.votes.Vote` is).

Each vote is its own transaction in write-ahead-log mode: a vote is on disk when the page that cast it moves on,
whatever kills the server afterwards. A rater votes on a (question, pair of models) once; a second vote on it is
ignored.

Rater links: a study whose page is reached over a network gives each rater a secret link (``/r/TOKEN``) instead
of a name field. The table ``raters`` keeps each rater's name and the SHA-256 of their token, never the token
itself (it is shown once, when the link is made); votes name the rater. A revoked link stops working at once; the
rater's votes stay. While the file holds any rater link, the page takes votes through links only.

The study's secret (32 random bytes, made with the file, table ``secret``) decides which side each answer is shown
on and signs the page's form tokens: nobody without the file can predict a rater's sides or forge a vote's form.
It never leaves the file and the page's process.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import sqlite3
import unicodedata
from collections.abc import Iterator
from contextlib import closing, contextmanager
from datetime import UTC, datetime
from pathlib import Path

from blackbox.core.errors import SetupError
from blackbox.reports.votes import Vote

RATER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._@-]{0,39}")
"""A person's name as a rater (after :func:`normal_name`): 1 to 40 ASCII letters, digits, spaces and ``._@-``,
starting with a letter or a digit. ASCII only, so that no two names look alike (a Cyrillic ``а`` for a Latin
``a``); no ``:`` (``judge:`` names judge models)."""
SCHEMA_VERSION = 3  # 2: the raters table (rater links); 3: the study's secret

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
CREATE TABLE IF NOT EXISTS secret (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    value BLOB NOT NULL
);
PRAGMA user_version = {SCHEMA_VERSION};
"""


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


def study_secret(connection: sqlite3.Connection) -> bytes:
    """The study's secret: made (random) with the first call on a file, the same ever after."""
    with connection:
        connection.execute("BEGIN IMMEDIATE")
        connection.execute("INSERT OR IGNORE INTO secret (id, value) VALUES (1, ?)", (secrets.token_bytes(32),))
        (value,) = connection.execute("SELECT value FROM secret WHERE id = 1").fetchone()
    return bytes(value)


def normal_name(text: str) -> str:
    """``text`` as a rater's name is kept: NFKC-normalised (full-width letters, ligatures and other compatibility
    forms become their plain letters), without spaces at its ends; :data:`RATER_NAME` says whether it is one."""
    return unicodedata.normalize("NFKC", text).strip()


def is_rater_name(name: str) -> bool:
    return RATER_NAME.fullmatch(name) is not None


def name_rule(name: str) -> str:
    """Why ``name`` is not a rater's name (:data:`RATER_NAME`)."""
    return f"{name!r} is not a rater's name: 1 to 40 ASCII letters, digits, spaces, '.', '_', '@' or '-'"


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def add_rater_link(connection: sqlite3.Connection, name: str) -> str | None:
    """A new secret token for rater ``name`` (their link is ``/r/TOKEN``), of which only the hash is stored; None
    when they have a valid link already (revoke it first for a new one). A revoked rater gets a new link.

    Raises:
        ValueError: ``name`` is not a rater's name (callers check user input with :func:`is_rater_name`).
    """
    if not is_rater_name(name):
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
