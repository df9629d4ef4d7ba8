"""What blind pairwise votes say (``lora-blackbox compare --results``, and a section of ``lora-blackbox report``):
win rates of each model against each other with 95% confidence intervals, Bradley-Terry strengths, votes per
rater, how often raters agree, and the raters' position bias (how often the answer shown first wins).

How they are counted: :data:`CONVENTIONS`.
"""

from __future__ import annotations

import csv
import html
import io
import itertools
import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from blackbox.reports.votes import JUDGE_PREFIX, Vote, parse_judge_detail, raters

CONVENTIONS = (
    'A tie and "both bad" count half a win for each model (as Chatbot Arena counts ties). Win rates carry Wilson '
    "95% score intervals over the votes of the pair. Bradley-Terry strengths are fitted with Hunter's MM algorithm "
    "(2004), ties as half wins, with one virtual tie per pair of models as a prior (a model that never won keeps a "
    "finite strength), scaled so that the base model's strength is 1 (without one: their geometric mean). "
    "Agreement counts the pairs (question, two models) that two or more people rated, the verdict read as one of "
    "three choices (one model, the other, neither): the share of rater pairs that agree, and Fleiss' kappa. "
    "Position bias: of the verdicts for one answer, the share for the answer shown first (left on the page; for "
    "a judge, each of its two verdicts per pair, one in each order), with its Wilson 95% interval: 50% is no bias."
)
Z95 = 1.959963984540054
BASE = "base"


def wilson_interval(successes: float, n: float, z: float = Z95) -> tuple[float, float]:
    """Wilson's score interval of a proportion (``successes`` may hold halves: ties); (0, 1) when n is 0."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def bradley_terry(
    models: Sequence[str], wins: dict[tuple[str, str], float], *, prior: float = 1.0, iterations: int = 10_000
) -> dict[str, float]:
    """Bradley-Terry strengths p (P(i beats j) = p_i / (p_i + p_j)) by Hunter's MM algorithm.

    Args:
        wins: ``wins[(i, j)]``: how often i beat j (a tie counted as half a win each way).
        prior: virtual ties added between every two models (0: the plain maximum-likelihood fit).

    Returns:
        Strengths scaled to a geometric mean of 1.
    """
    k = len(models)
    index = {m: i for i, m in enumerate(models)}
    w = np.full((k, k), prior / 2)
    np.fill_diagonal(w, 0.0)
    for (i, j), count in wins.items():
        w[index[i], index[j]] += count
    games = w + w.T
    won = w.sum(axis=1)
    p = np.ones(k)
    for _ in range(iterations):
        denominator = (games / (p[:, None] + p[None, :])).sum(axis=1)
        updated = np.where(denominator > 0, won / np.where(denominator > 0, denominator, 1), p)
        updated = np.maximum(updated, 1e-300)
        updated /= math.exp(float(np.mean(np.log(updated))))
        converged = float(np.max(np.abs(np.log(updated) - np.log(p)))) < 1e-12
        p = updated
        if converged:
            break
    return {m: float(p[index[m]]) for m in models}


def fleiss_kappa(counts: Sequence[Sequence[int]]) -> float:
    """Fleiss' kappa of items rated by any number (at least 2) of raters: ``counts[item][category]``.

    Returns nan when chance agreement is 1 (every rating in one category).
    """
    table = np.asarray(counts, dtype=float)
    n = table.sum(axis=1)
    agreement = ((table * (table - 1)).sum(axis=1) / (n * (n - 1))).mean()
    shares = table.sum(axis=0) / table.sum()
    chance = float((shares**2).sum())
    return math.nan if chance == 1 else float((agreement - chance) / (1 - chance))


@dataclass(frozen=True)
class PairResult:
    """One model against another over their shared votes: ``first``'s point of view."""

    first: str
    second: str
    votes: int
    wins: int
    losses: int
    ties: int
    both_bad: int

    @property
    def win_rate(self) -> float:
        return (self.wins + 0.5 * (self.ties + self.both_bad)) / self.votes if self.votes else math.nan

    @property
    def interval(self) -> tuple[float, float]:
        return wilson_interval(self.wins + 0.5 * (self.ties + self.both_bad), self.votes)


@dataclass(frozen=True)
class Agreement:
    items: int  # (question, pair) rated by two or more people
    rater_pairs: int  # pairs of their votes on the same item
    share: float  # of those rater pairs that agree (nan without any)
    kappa: float  # Fleiss' kappa (nan without items)


@dataclass(frozen=True)
class PositionBias:
    """How often the answer shown first wins: a person's left answer, or the answer a judge saw as A."""

    first: int  # verdicts for the answer shown first
    second: int  # verdicts for the answer shown second
    neither: int  # ties, both bad, and a judge's replies without a verdict
    pairs: int | None  # a judge: the pairs asked in both orders (None for people)
    consistent: int | None  # a judge: the pairs whose two orders chose the same model

    @property
    def share(self) -> float:
        """Of the verdicts for one answer, the share for the answer shown first (nan without any)."""
        decided = self.first + self.second
        return self.first / decided if decided else math.nan

    @property
    def interval(self) -> tuple[float, float]:
        return wilson_interval(self.first, self.first + self.second)


def position_bias(votes: Sequence[Vote]) -> PositionBias:
    """The position bias of one group's votes: people's from where each answer was shown, a judge's from its raw
    verdicts in both orders (:func:`blackbox.reports.votes.parse_judge_detail`)."""
    counts: Counter[str] = Counter()
    pairs = consistent = 0
    judged = bool(votes) and all(v.is_judge for v in votes)
    for v in votes:
        if not judged:
            winner_first = {"a": v.a_shown_first, "b": not v.a_shown_first}.get(v.verdict)
            counts["neither" if winner_first is None else "first" if winner_first else "second"] += 1
            continue
        verdicts = parse_judge_detail(v.detail)
        if verdicts is None:
            continue
        for verdict in verdicts:
            counts[{"A": "first", "B": "second"}.get(verdict or "", "neither")] += 1
        pairs += 1
        consistent += verdicts in (("A", "B"), ("B", "A"))  # the same model, shown first and then second
    return PositionBias(
        counts["first"], counts["second"], counts["neither"], pairs if judged else None, consistent if judged else None
    )


@dataclass(frozen=True)
class Preferences:
    """The results of one group of raters (people, or one judge)."""

    group: str
    votes: int
    models: list[str]  # by Bradley-Terry strength, strongest first
    strengths: dict[str, float]  # base model = 1 when present
    overall: dict[str, PairResult]  # each model against all the others (second: "all")
    pairs: list[PairResult]  # each ordered pair of models that met
    per_rater: dict[str, int]
    agreement: Agreement | None  # people only
    position: PositionBias


def preferences(votes: Sequence[Vote], group: str) -> Preferences:
    """Win rates, strengths, votes per rater and agreement of ``votes`` (one group of raters)."""
    models = sorted({m for v in votes for m in (v.model_a, v.model_b)})
    tally: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)
    wins: dict[tuple[str, str], float] = defaultdict(float)
    for v in votes:
        for me, other, mine in ((v.model_a, v.model_b, "a"), (v.model_b, v.model_a, "b")):
            outcome = "win" if v.verdict == mine else v.verdict if v.verdict in ("tie", "both_bad") else "loss"
            tally[(me, other)][outcome] += 1
            wins[(me, other)] += 1.0 if outcome == "win" else 0.5 if outcome in ("tie", "both_bad") else 0.0
    strengths = bradley_terry(models, wins) if models else {}
    if BASE in strengths:
        strengths = {m: s / strengths[BASE] for m, s in strengths.items()}
    ordered = sorted(models, key=lambda m: -strengths[m])

    def result(first: str, second: str, counts: Counter[str]) -> PairResult:
        return PairResult(
            first, second, sum(counts.values()), counts["win"], counts["loss"], counts["tie"], counts["both_bad"]
        )

    pairs = [result(f, s, tally[(f, s)]) for f in ordered for s in ordered if f != s and tally[(f, s)]]
    overall = {}
    for m in ordered:
        pooled: Counter[str] = Counter()
        for other in models:
            pooled.update(tally[(m, other)])
        overall[m] = result(m, "all", pooled)
    people = [v for v in votes if not v.rater.startswith(JUDGE_PREFIX)]
    return Preferences(
        group=group,
        votes=len(votes),
        models=ordered,
        strengths=strengths,
        overall=overall,
        pairs=pairs,
        per_rater=dict(Counter(v.rater for v in votes).most_common()),
        agreement=agreement(people) if people else None,
        position=position_bias(votes),
    )


def agreement(votes: Sequence[Vote]) -> Agreement:
    """How often raters agree on the items (question, pair) that several of them rated."""
    by_item: dict[tuple[str, str, str], list[str]] = defaultdict(list)
    for v in votes:
        by_item[(v.question_id, v.model_a, v.model_b)].append(v.verdict if v.verdict in ("a", "b") else "neither")
    shared = [choices for choices in by_item.values() if len(choices) >= 2]
    pairs = [(x, y) for choices in shared for x, y in itertools.combinations(choices, 2)]
    share = sum(x == y for x, y in pairs) / len(pairs) if pairs else math.nan
    counts = [[choices.count(c) for c in ("a", "b", "neither")] for choices in shared]
    return Agreement(len(shared), len(pairs), share, fleiss_kappa(counts) if counts else math.nan)


def group_preferences(votes: Sequence[Vote]) -> list[Preferences]:
    """The results of the people (every rater not named ``judge:...``), then of each judge model apart."""
    groups = []
    people = [v for v in votes if not v.is_judge]
    if people:
        groups.append(preferences(people, "people"))
    for rater in raters(votes):
        if rater.startswith(JUDGE_PREFIX):
            groups.append(preferences([v for v in votes if v.rater == rater], rater))
    return groups


def preferences_summary(prefs: Preferences) -> dict[str, Any]:
    """A group's results as JSON-ready values (the report's summary.json); undefined numbers as None."""

    def finite(value: float) -> float | None:
        return value if math.isfinite(value) else None

    def pair(result: PairResult) -> dict[str, Any]:
        low, high = result.interval
        return {
            "model": result.first,
            "against": result.second,
            "votes": result.votes,
            "wins": result.wins,
            "losses": result.losses,
            "ties": result.ties,
            "both_bad": result.both_bad,
            "win_rate": finite(result.win_rate),
            "ci95": [low, high],
        }

    a = prefs.agreement
    position = prefs.position
    return {
        "group": prefs.group,
        "votes": prefs.votes,
        "strengths": prefs.strengths,
        "models": [pair(prefs.overall[m]) for m in prefs.models],
        "pairs": [pair(p) for p in prefs.pairs],
        "votes_per_rater": prefs.per_rater,
        "agreement": None
        if a is None
        else {
            "items": a.items,
            "rater_pairs": a.rater_pairs,
            "share": finite(a.share),
            "fleiss_kappa": finite(a.kappa),
        },
        "position_bias": {
            "first": position.first,
            "second": position.second,
            "neither": position.neither,
            "share_first": finite(position.share),
            "ci95": list(position.interval),
            "pairs_in_both_orders": position.pairs,
            "consistent_pairs": position.consistent,
        },
    }


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
"""How a cell that a spreadsheet would run as a formula begins (OWASP's "CSV Injection")."""


def safe_cell(value: object) -> str:
    """``value`` as a CSV cell no spreadsheet runs: text that begins like a formula gets a leading ``'``, which
    spreadsheets show as text (OWASP's rule; model names, question ids and raters come from files and people)."""
    text = str(value)
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def votes_csv(votes: Sequence[Vote]) -> str:
    """One row per vote: who, which question and models, the verdict and its winner, where model_a was shown; every
    cell made safe for spreadsheets (:func:`safe_cell`)."""
    out = io.StringIO()
    # Rows end in CR LF (RFC 4180), so that a cell holding a CR is quoted too: a bare CR ends a row in spreadsheets,
    # and what follows it would begin a cell of its own (a formula).
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(
        ["rater", "question_id", "model_a", "model_b", "verdict", "winner", "a_shown_first", "voted_at", "detail"]
    )
    for v in votes:
        cells = (v.rater, v.question_id, v.model_a, v.model_b, v.verdict, v.winner or "", int(v.a_shown_first))
        writer.writerow([safe_cell(cell) for cell in (*cells, v.voted_at, v.detail)])
    return out.getvalue()


def _percent(value: float) -> str:
    return "-" if math.isnan(value) else f"{100 * value:.1f}%"


def _rate(result: PairResult) -> str:
    low, high = result.interval
    return f"{_percent(result.win_rate)} [{_percent(low)}, {_percent(high)}]"


def results_rows(prefs: Preferences) -> dict[str, list[list[str]]]:
    """The tables of a group's results as rows of text (the header first): ``models``, ``pairs``, ``raters``."""
    models = [
        ["model", "Bradley-Terry strength", "win rate vs all [95% CI]", "votes", "wins", "losses", "ties", "both bad"]
    ]
    for m in prefs.models:
        o = prefs.overall[m]
        models.append(
            [m, f"{prefs.strengths[m]:.3g}", _rate(o), *map(str, (o.votes, o.wins, o.losses, o.ties, o.both_bad))]
        )
    pairs = [["model", "against", "win rate [95% CI]", "votes", "wins", "losses", "ties", "both bad"]]
    for p in prefs.pairs:
        pairs.append([p.first, p.second, _rate(p), *map(str, (p.votes, p.wins, p.losses, p.ties, p.both_bad))])
    rater_rows = [["rater", "votes"], *[[r, str(n)] for r, n in prefs.per_rater.items()]]
    return {"models": models, "pairs": pairs, "raters": rater_rows}


def agreement_text(prefs: Preferences) -> str:
    a = prefs.agreement
    if a is None or a.items == 0:
        return "Agreement: no pair was rated by two or more people."
    kappa = "-" if math.isnan(a.kappa) else f"{a.kappa:.2f}"
    return (
        f"Agreement: {a.items} pairs rated by two or more people; {_percent(a.share)} of {a.rater_pairs} "
        f"rater pairs agree (model A, model B, or neither); Fleiss' kappa {kappa}."
    )


def position_text(prefs: Preferences) -> str:
    position = prefs.position
    shown = "shown first (A)" if position.pairs is not None else "shown left"
    decided = position.first + position.second
    if decided == 0:
        text = f"Position bias: no verdict for one answer ({position.neither} ties, both bad or none)."
    else:
        low, high = position.interval
        text = (
            f"Position bias: the answer {shown} won {_percent(position.share)} [{_percent(low)}, {_percent(high)}] "
            f"of {decided} verdicts for one answer (50%: no bias; {position.neither} ties, both bad or none)."
        )
    if position.pairs:
        text += f" Both orders chose the same model in {position.consistent} of {position.pairs} pairs."
    return text


def results_text(groups: Sequence[Preferences]) -> str:
    """The results as plain-text tables (``compare --results``)."""
    if not groups:
        return "No votes yet.\n"
    parts = []
    for prefs in groups:
        parts.append(f"== {prefs.group}: {prefs.votes} votes")
        for name, rows in results_rows(prefs).items():
            widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
            parts.append("")
            parts += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
            del name
        parts += ["", position_text(prefs)]
        if prefs.group == "people":
            parts.append(agreement_text(prefs))
        parts.append("")
    return "\n".join(parts) + "\n"


def results_html(groups: Sequence[Preferences]) -> str:
    """The results as HTML tables (the report's section and the rating page's results), all text escaped."""
    if not groups:
        return "<p>No votes yet.</p>"
    parts = [f"<p>{html.escape(CONVENTIONS)}</p>"]
    for prefs in groups:
        parts.append(f"<h3>{html.escape(prefs.group)}: {prefs.votes} votes</h3>")
        for name, rows in results_rows(prefs).items():
            head = "".join(f"<th>{html.escape(h)}</th>" for h in rows[0])
            body = "\n".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows[1:])
            table_id = f"preferences-{name}"
            parts.append(f'<table class="{table_id}"><thead><tr>{head}</tr></thead><tbody>\n{body}\n</tbody></table>')
        parts.append(f'<p class="position-bias">{html.escape(position_text(prefs))}</p>')
        if prefs.group == "people":
            parts.append(f"<p>{html.escape(agreement_text(prefs))}</p>")
    return "\n".join(parts)
