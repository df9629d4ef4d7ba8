"""The pairs a rater is shown: every question with every two models that answered it, in one shuffled order that
every rater follows (so that raters overlap, which the agreement figure needs), each pair once per rater. Where
each answer goes (left or right) is drawn per rater and pair from the study's secret (a keyed hash, HMAC-SHA256):
a reloaded page or a restarted server shows the same screen again, and nobody without the votes file can tell
which model a rater sees on which side.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from blackbox.core.errors import SetupError

ORDER_SEED = 0


@dataclass(frozen=True)
class Pair:
    question_id: str
    model_a: str  # model_a < model_b
    model_b: str

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.question_id, self.model_a, self.model_b)


@dataclass(frozen=True)
class Answers:
    """The answers file read for comparison: questions in file order, and each model's answer to each."""

    questions: dict[str, str]  # id -> question
    texts: dict[tuple[str, str], str]  # (question id, model) -> answer
    models: list[str]
    pairs: list[Pair]  # the order in which raters see them


def index_answers(lines: Sequence[dict[str, Any]]) -> Answers:
    """Questions, answers and the pairs to rate, from an answers file's lines.

    Raises:
        SetupError: a model answered a question twice, or there are fewer than two models to compare.
    """
    questions: dict[str, str] = {}
    texts: dict[tuple[str, str], str] = {}
    for line in lines:
        key = (line["question_id"], line["model"])
        if key in texts:
            raise SetupError(f"model {key[1]!r} answered question {key[0]!r} twice in the answers file")
        questions.setdefault(line["question_id"], str(line.get("question", "")))
        texts[key] = str(line.get("answer", ""))
    models = sorted({model for _, model in texts})
    if len(models) < 2:
        raise SetupError(f"comparing needs the answers of two models or more, the file has {models}")
    pairs = [
        Pair(q, a, b)
        for q in questions
        for a, b in itertools.combinations(models, 2)
        if (q, a) in texts and (q, b) in texts
    ]
    random.Random(ORDER_SEED).shuffle(pairs)
    return Answers(questions, texts, models, pairs)


def next_pair(answers: Answers, done: set[tuple[str, str, str]]) -> int | None:
    """The index of the first pair the rater has not rated; None when they rated them all."""
    return next((i for i, pair in enumerate(answers.pairs) if pair.key not in done), None)


def pair_index(text: str, count: int) -> int | None:
    """The pair number a form sent (ASCII digits only, below ``count``); None for anything else."""
    if re.fullmatch(r"[0-9]{1,9}", text) is None:  # not str.isdigit(): it takes "²", which int() refuses
        return None
    index = int(text)
    return index if index < count else None


def a_shown_first(secret: bytes, rater: str, pair: Pair) -> bool:
    """Whether model_a's answer is shown first (left) to this rater: a fair coin of the study's ``secret``
    (:func:`blackbox.assessment.compare.votes.study_secret`), the same at every visit."""
    message = "\0".join(("side", rater, *pair.key)).encode()
    return hmac.new(secret, message, hashlib.sha256).digest()[0] % 2 == 0
