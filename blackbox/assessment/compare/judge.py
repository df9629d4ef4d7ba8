"""A judge model rates the pairs when no people are at hand: MT-Bench's pairwise prompt (Zheng et al. 2023,
"Judging LLM-as-a-Judge", prompt ``pair-v2``), asked in both orders to cancel position bias. The judge is a local
model (transformers: :func:`judge_with_model`) or one behind an OpenAI-compatible endpoint (``openai:MODEL``:
:func:`judge_with_endpoint`); both get the same prompts and are read the same way.

The verdict of each order is the last of ``[[A]]``, ``[[B]]``, ``[[C]]`` in the reply. A model wins when it is
preferred in both orders; anything else (a tie, opposite verdicts, or a reply without a verdict) is a tie,
MT-Bench's conservative rule. The judge's votes are stored as rater ``judge:<model>``, each with both raw
verdicts (``detail``: ``a_first=A b_first=none``), from which the results count its position bias.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from pathlib import Path

from blackbox.assessment.compare.pairs import Answers, Pair
from blackbox.assessment.compare.votes import add_vote, rated, votes_db
from blackbox.reports.votes import JUDGE_PREFIX, Verdict, Vote, judge_detail

logger = logging.getLogger(__name__)

SYSTEM_PROMPT = (
    "Please act as an impartial judge and evaluate the quality of the responses provided by two AI assistants to "
    "the user question displayed below. You should choose the assistant that follows the user's instructions and "
    "answers the user's question better. Your evaluation should consider factors such as the helpfulness, "
    "relevance, accuracy, depth, creativity, and level of detail of their responses. Begin your evaluation by "
    "comparing the two responses and provide a short explanation. Avoid any position biases and ensure that the "
    "order in which the responses were presented does not influence your decision. Do not allow the length of the "
    "responses to influence your evaluation. Do not favor certain names of the assistants. Be as objective as "
    "possible. After providing your explanation, output your final verdict by strictly following this format: "
    '"[[A]]" if assistant A is better, "[[B]]" if assistant B is better, and "[[C]]" for a tie.'
)
USER_PROMPT = (
    "[User Question]\n{question}\n\n"
    "[The Start of Assistant A's Answer]\n{answer_a}\n[The End of Assistant A's Answer]\n\n"
    "[The Start of Assistant B's Answer]\n{answer_b}\n[The End of Assistant B's Answer]"
)
_VERDICT = re.compile(r"\[\[([ABC])\]\]")

Ask = Callable[[Sequence[str]], list[str]]
"""The judge model: its replies to user messages (``SYSTEM_PROMPT`` as the system message)."""


def parse_verdict(reply: str) -> str | None:
    """``A``, ``B`` or ``C`` (tie): the reply's last verdict; None when it gives none."""
    found = _VERDICT.findall(reply)
    return found[-1] if found else None


def combine(a_first: str | None, b_first: str | None) -> Verdict:
    """One vote from the verdicts of both orders (model_a shown as A, then model_b shown as A)."""
    first = {"A": "a", "B": "b"}.get(a_first or "", "tie")
    second = {"A": "b", "B": "a"}.get(b_first or "", "tie")
    return first if first == second and first in ("a", "b") else "tie"  # type: ignore[return-value]


def judge_rater(model: str) -> str:
    return JUDGE_PREFIX + model


def judge_pairs(answers: Answers, db: Path, *, model: str, ask: Ask, chunk: int = 16) -> int:
    """Ask the judge about every pair it has not rated yet, ``chunk`` pairs (two prompts each) at a time, storing
    each chunk's votes as they come: an interrupted judge resumes. Returns the number of new votes."""
    rater = judge_rater(model)
    with votes_db(db) as connection:
        done = rated(connection, rater)
    todo = [pair for pair in answers.pairs if pair.key not in done]
    logger.info("%s: %d of %d pairs to rate", rater, len(todo), len(answers.pairs))
    added = 0
    for start in range(0, len(todo), chunk):
        pairs = todo[start : start + chunk]
        replies = ask([prompt for pair in pairs for prompt in _prompts(answers, pair)])
        with votes_db(db) as connection:
            for index, pair in enumerate(pairs):
                a_first, b_first = (parse_verdict(r) for r in replies[2 * index : 2 * index + 2])
                detail = judge_detail(a_first, b_first)
                vote = Vote(
                    rater, pair.question_id, pair.model_a, pair.model_b, combine(a_first, b_first), True, detail
                )
                added += add_vote(connection, vote)
        logger.info("%s: %d of %d pairs rated", rater, start + len(pairs), len(todo))
    return added


def _prompts(answers: Answers, pair: Pair) -> tuple[str, str]:
    question = answers.questions[pair.question_id]
    a, b = (answers.texts[(pair.question_id, m)] for m in (pair.model_a, pair.model_b))
    return (
        USER_PROMPT.format(question=question, answer_a=a, answer_b=b),
        USER_PROMPT.format(question=question, answer_a=b, answer_b=a),
    )


def judge_with_model(
    answers: Answers, db: Path, *, model: str, device: str = "auto", max_new_tokens: int = 512, batch_size: int = 8
) -> int:
    """Rate every pair not rated yet with a local judge model (transformers: a hub id or a folder); returns the
    number of new votes."""
    from blackbox.training.judge import ask, load_judge

    judge = load_judge(model, device=device)
    logger.info("judge %s loaded in %.1f s", model, judge.load_seconds)
    return judge_pairs(
        answers,
        db,
        model=model,
        ask=lambda prompts: ask(
            judge, prompts, system=SYSTEM_PROMPT, max_new_tokens=max_new_tokens, batch_size=batch_size
        ),
    )


ENDPOINT_PREFIX = "openai:"
"""``--judge openai:MODEL``: the judge is MODEL behind an OpenAI-compatible endpoint."""


def judge_with_endpoint(
    answers: Answers,
    db: Path,
    *,
    model: str,
    url: str | None,
    api_key_env: str,
    max_new_tokens: int = 512,
    concurrency: int = 8,
    requests_per_minute: float = 0,
    retries: int = 6,
    timeout_s: float = 600,
    allow_http: bool = False,
) -> int:
    """Rate every pair not rated yet with ``model`` behind an OpenAI-compatible endpoint (``url``: its base URL,
    ``.../v1``; None: the openai client's default); its votes are rater ``judge:openai:MODEL``. Returns the
    number of new votes. The API key goes over plain HTTP to a loopback address only, unless ``allow_http``.

    Raises:
        SetupError: the openai package is missing, or the endpoint fails a request after its retries.
        OptionError: the key would go over plain HTTP to another machine without ``allow_http``.
    """
    from blackbox.assessment.compare.endpoint import Endpoint

    endpoint = Endpoint(
        model,
        url=url,
        api_key_env=api_key_env,
        system=SYSTEM_PROMPT,
        max_new_tokens=max_new_tokens,
        concurrency=concurrency,
        requests_per_minute=requests_per_minute,
        retries=retries,
        timeout_s=timeout_s,
        allow_http=allow_http,
    )
    with endpoint:
        # A chunk of pairs is twice as many prompts: two rounds of requests in flight between stored votes.
        return judge_pairs(answers, db, model=ENDPOINT_PREFIX + model, ask=endpoint.ask, chunk=concurrency)
