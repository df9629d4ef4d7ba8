"""lora-blackbox compare: the rating page in a real headless Chromium (keyboard and mouse), in the open mode and
through rater links (refused without one, or with a revoked one), votes that survive a killed server, no vote
posted by another site through a rater's browser, no link that takes over another rater's browser; and the judge's
mechanics (both orders, verdicts, ties) with fake and tiny judges. The page's checks by plain HTTP:
test_page_guards.py; the judge behind an endpoint: test_judge_endpoint.py. Fixtures: conftest.py.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import re
import signal
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from blackbox.cli import main
from blackbox.reports.votes import read_votes
from tests.assessment.rating import INJECTED, make_links


def _screen(browser: Any) -> tuple[str, str, str]:
    """The question id and the models whose answers are shown left and right, read from the page."""
    from selenium.webdriver.common.by import By

    texts = [browser.find_element(By.ID, f"answer-{side}").text for side in "ab"]
    found = [re.search(r"(\w+) answers (q\d)\.", t) for t in texts]
    assert found[0] and found[1]
    return found[0].group(2), found[0].group(1), found[1].group(1)


def _rate(browser: Any, how: str, *, done: int) -> tuple[str, str, str]:
    """Rate the pair on screen: ``key:X`` presses a key, ``click:ID`` clicks a button; returns what was shown."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    shown = _screen(browser)
    kind, _, what = how.partition(":")
    if kind == "key":
        ActionChains(browser).send_keys(what).perform()
    else:
        browser.find_element(By.ID, what).click()
    _wait_for_progress(browser, done + 1)
    return shown


def _wait_for_progress(browser: Any, done: int) -> None:
    """Wait until the page says ``done`` pairs are rated (the next page loaded)."""
    _wait_for_text(browser, "progress", f"{done} of 6 rated")


def _wait_for_text(browser: Any, element_id: str | None, text: str) -> None:
    """Wait until the element ``element_id`` (None: the page's body) of the page shows ``text``: the next page, after
    a click or a key that submits."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    where = (By.ID, element_id) if element_id else (By.TAG_NAME, "body")
    WebDriverWait(browser, 30, ignored_exceptions=(NoSuchElementException, StaleElementReferenceException)).until(
        lambda b: text in b.find_element(*where).text
    )


def _expected(shown: tuple[str, str, str], choice: str, rater: str) -> tuple[str, str, str, str, str]:
    question, left, right = shown
    a, b = sorted((left, right))
    verdict = {"left": "a" if left == a else "b", "right": "a" if right == a else "b"}.get(choice, choice)
    return (rater, question, a, b, verdict)


def test_people_rate_in_a_browser_and_lose_nothing_when_the_server_dies(
    driver: Any, start_server: Any, answers_file: Path, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    db = tmp_path / "votes.sqlite"
    server = start_server(answers_file, db)
    driver.get(server.url)
    driver.find_element(By.ID, "rater").send_keys("ann", Keys.ENTER)  # the name, by keyboard
    _wait_for_progress(driver, 0)
    # Answers are text: the injected markup shows as text and its script never ran.
    assert INJECTED in driver.find_element(By.ID, "answer-a").text
    assert driver.execute_script("return window.injected === undefined")
    assert not driver.find_elements(By.CSS_SELECTOR, ".text b")
    expected = []
    seen = set()
    for done, (how, choice) in enumerate([("key:1", "left"), ("click:choice-tie", "tie"), ("key:b", "right")]):
        shown = _rate(driver, how, done=done)
        seen.add((shown[0], *sorted(shown[1:])))
        expected.append(_expected(shown, choice, "ann"))
    # The server dies (SIGKILL: no shutdown of any kind): the votes are on disk already.
    server.stop(signal.SIGKILL)
    assert [(v.rater, v.question_id, v.model_a, v.model_b, v.verdict) for v in read_votes(db)] == expected
    server = start_server(answers_file, db)  # the same command again (another free port)
    driver.get(server.url + "rate?rater=ann")
    assert "3 of 6 rated" in driver.find_element(By.ID, "progress").text  # where she was
    shown = _rate(driver, "click:choice-both_bad", done=3)
    assert (shown[0], *sorted(shown[1:])) not in seen  # a new pair: never the same pair twice
    expected.append(_expected(shown, "both_bad", "ann"))
    # A second rater, through the first page; the pairs come in the same order for everyone.
    driver.get(server.url)
    driver.find_element(By.ID, "rater").send_keys("bob")
    driver.find_element(By.ID, "start").click()
    _wait_for_progress(driver, 0)
    for done, (how, choice) in enumerate([("key:2", "right"), ("key:x", "both_bad")]):
        expected.append(_expected(_rate(driver, how, done=done), choice, "bob"))
    driver.get(server.url + "results")  # the results are the organiser's, on the command line: no rater's page
    assert "for the study's organiser" in driver.find_element(By.ID, "refused").text
    assert server.stop(signal.SIGINT) == 0  # Ctrl-C: a clean stop

    votes = read_votes(db)
    assert [(v.rater, v.question_id, v.model_a, v.model_b, v.verdict) for v in votes] == expected
    result = CliRunner().invoke(main, ["compare", str(answers_file), "--db", str(db), "--results"])
    assert result.exit_code == 0, result.output
    assert f"== people: {len(votes)} votes" in result.stdout
    assert re.search(r"^ann\s+4$", result.stdout, re.M) and re.search(r"^bob\s+2$", result.stdout, re.M)
    assert "Agreement: 2 pairs rated by two or more people" in result.stdout


def _post_vote(url: str, fields: dict[str, str], cookie: str = "") -> int:
    """POST a vote as a script would (no browser): the HTTP status."""
    request = urllib.request.Request(url + "vote", data=urllib.parse.urlencode(fields).encode(), method="POST")
    if cookie:
        request.add_header("Cookie", f"rater_link={cookie}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as e:
        return e.code


def test_raters_vote_through_their_links_only(
    driver: Any, start_server: Any, answers_file: Path, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    db, links = tmp_path / "votes.sqlite", tmp_path / "links.tsv"
    args = ["compare", str(answers_file), "--db", str(db)]
    made = CliRunner().invoke(main, [*args, "--raters", "ann,bob", "--links", str(links), "--url", "https://x.org"])
    assert made.exit_code == 0, made.output
    assert made.stdout == "" and links.stat().st_mode & 0o777 == 0o600  # the links went to the file alone
    tokens = {}
    for line in links.read_text().splitlines():
        name, link = line.split("\t")
        assert link.startswith("https://x.org/r/")
        tokens[name] = link.removeprefix("https://x.org/r/")
    assert set(tokens) == {"ann", "bob"}
    again = CliRunner().invoke(main, [*args, "--raters", "ann"])  # a link is made once: no second one
    assert again.exit_code == 0 and again.stdout == "" and "ann has a link already" in again.output

    server = start_server(answers_file, db)
    driver.get(server.url + "r/" + tokens["ann"])
    _wait_for_progress(driver, 0)
    assert driver.current_url == server.url + "rate"  # the token left the address bar for a cookie
    assert driver.find_element(By.ID, "rater-name").text == "ann"
    expected = [_expected(_rate(driver, "key:1", done=0), "left", "ann")]
    expected.append(_expected(_rate(driver, "key:x", done=1), "both_bad", "ann"))
    driver.get(server.url + "r/" + tokens["bob"])  # the same browser, bob's link: it asks, then bob rates
    driver.find_element(By.ID, "switch-rater").click()
    _wait_for_progress(driver, 0)
    assert driver.find_element(By.ID, "rater-name").text == "bob"
    expected.append(_expected(_rate(driver, "key:2", done=0), "right", "bob"))

    # Bob's page shows his next pair; his link is revoked meanwhile: his vote is refused, and so is his page.
    revoked = CliRunner().invoke(main, [*args, "--revoke", "bob"])
    assert revoked.exit_code == 0, revoked.output
    driver.find_element(By.ID, "choice-tie").click()
    _wait_for_text(driver, None, "personal links only")  # the refusal's page, once the vote's request has answered
    for page in ("rate", "r/" + tokens["bob"], "results", "votes.csv"):
        driver.get(server.url + page)
        assert "Not allowed" in driver.title or "personal links only" in driver.page_source, page
    # Carol has no link: by name, by a made-up link, or by a script, she is refused everywhere.
    driver.delete_all_cookies()
    driver.get(server.url)
    assert driver.find_elements(By.ID, "links-only") and not driver.find_elements(By.ID, "rater")
    driver.get(server.url + "rate?rater=carol")
    assert driver.find_element(By.ID, "refused").text.startswith("This page takes votes through personal links")
    driver.get(server.url + "r/" + "x" * 43)
    assert "not valid" in driver.find_element(By.ID, "refused").text
    assert _post_vote(server.url, {"rater": "carol", "pair": "0", "verdict": "left"}) == 403
    assert _post_vote(server.url, {"pair": "5", "verdict": "left"}, cookie=tokens["bob"]) == 403

    server.stop(signal.SIGKILL)  # nothing lost: every vote was on disk before its next page
    assert [(v.rater, v.question_id, v.model_a, v.model_b, v.verdict) for v in read_votes(db)] == expected
    server = start_server(answers_file, db)
    driver.get(server.url + "r/" + tokens["ann"])
    assert "2 of 6 rated" in driver.find_element(By.ID, "progress").text  # where she was
    expected.append(_expected(_rate(driver, "click:choice-tie", done=2), "tie", "ann"))
    assert server.stop(signal.SIGINT) == 0

    assert [(v.rater, v.question_id, v.model_a, v.model_b, v.verdict) for v in read_votes(db)] == expected
    exported = tmp_path / "votes.csv"
    result = CliRunner().invoke(main, [*args, "--results", "--csv", str(exported)])
    assert re.search(r"^ann\s+3$", result.stdout, re.M) and re.search(r"^bob\s+1$", result.stdout, re.M)
    stored = b"".join(path.read_bytes() for path in tmp_path.glob("votes.sqlite*"))
    for token in tokens.values():  # the votes file keeps hashes: no token in it, the results or the CSV
        assert token.encode() not in stored and token not in result.output and token not in exported.read_text()


class _Page(http.server.BaseHTTPRequestHandler):
    """Another site's page: one form, posting to the rating page."""

    def do_GET(self) -> None:
        page = self.server.page  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(page)))
        self.end_headers()
        self.wfile.write(page)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def other_site() -> Iterator[Any]:
    """``other_site(address, action, fields)``: the address of a page served from ``address`` (another origin than
    the rating page) whose button ``go`` posts ``fields`` to ``action``, as a page of another site would."""
    servers: list[http.server.ThreadingHTTPServer] = []

    def serve(address: str, action: str, fields: dict[str, str]) -> str:
        server = http.server.ThreadingHTTPServer((address, 0), _Page)
        hidden = "".join(f'<input type="hidden" name="{k}" value="{v}">' for k, v in fields.items())
        form = f'<form method="post" action="{action}">{hidden}<button id="go">Win a prize</button></form>'
        server.page = f"<!DOCTYPE html><title>Prizes</title>{form}".encode()  # type: ignore[attr-defined]
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://{address}:{server.server_address[1]}/"

    yield serve
    for server in servers:
        server.shutdown()
        server.server_close()


def test_another_site_cannot_vote_through_a_raters_browser(
    driver: Any, start_server: Any, answers_file: Path, tmp_path: Path, other_site: Any
) -> None:
    from selenium.webdriver.common.by import By

    db = tmp_path / "votes.sqlite"
    server = start_server(answers_file, db)  # the open mode: a name is all a vote needs
    driver.get(server.url + "rate?rater=ann")
    _rate(driver, "key:1", done=0)
    # A page of another site (127.0.0.2: another host) with the form ann's page would post
    page = other_site("127.0.0.2", server.url + "vote", {"rater": "ann", "pair": "1", "verdict": "left"})
    driver.get(page)
    driver.find_element(By.ID, "go").click()
    _wait_for_text(driver, None, "came from another site")
    assert len(read_votes(db)) == 1  # ann's own vote only


def test_a_link_never_takes_over_another_raters_browser(
    driver: Any, start_server: Any, answers_file: Path, tmp_path: Path, other_site: Any
) -> None:
    from selenium.webdriver.common.by import By

    db = tmp_path / "votes.sqlite"
    tokens = make_links(answers_file, db, "ann,mallory")
    server = start_server(answers_file, db)
    driver.get(server.url + "r/" + tokens["ann"])
    _wait_for_progress(driver, 0)
    # Mallory gets ann to open Mallory's own link (login CSRF): the page asks, and this browser goes on as ann.
    driver.get(server.url + "r/" + tokens["mallory"])
    assert driver.find_element(By.ID, "current").text == "ann" and driver.find_element(By.ID, "switch-rater")
    driver.get(server.url + "rate")
    assert driver.find_element(By.ID, "rater-name").text == "ann"
    # A bad link logs nobody out.
    driver.get(server.url + "r/" + "x" * 43)
    assert "not valid" in driver.find_element(By.ID, "refused").text
    driver.get(server.url + "rate")
    assert driver.find_element(By.ID, "rater-name").text == "ann"
    # Another port of this host is the same site, so ann's cookie (SameSite=Lax) goes along with its form: refused.
    page = other_site("127.0.0.1", server.url + "vote", {"pair": "0", "verdict": "left"})
    driver.get(page)
    driver.find_element(By.ID, "go").click()
    _wait_for_text(driver, None, "came from another site")
    assert read_votes(db) == []


def test_a_page_beyond_this_machine_needs_links_or_open_and_warns_of_plain_http(
    start_server: Any, answers_file: Path, tmp_path: Path
) -> None:
    db = tmp_path / "votes.sqlite"
    args = ["compare", str(answers_file), "--db", str(db), "--host", "0.0.0.0", "--port", "0"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and "create links first (--raters NAME,...), or say --open" in result.output
    made = CliRunner().invoke(main, [*args[:4], "--raters", "ann"])  # links on stdout, for the page's address
    assert made.exit_code == 0 and re.fullmatch(r"ann\thttp://127\.0\.0\.1:8000/r/[\w-]{43}\n", made.stdout)
    bad = CliRunner().invoke(main, ["compare", str(answers_file), "--raters", "ann,judge:x"])
    assert bad.exit_code == 2 and "'judge:x' is not a rater's name" in bad.output and "invalid exp" not in bad.output
    # Links served on a network address without TLS: a warning (and the page, on this machine's addresses).
    server = start_server(answers_file, db, "--host", "0.0.0.0")
    assert "the page serves rater links over plain HTTP on 0.0.0.0" in server.log
    assert server.stop(signal.SIGINT) == 0


def test_rater_names_are_normalised_and_ascii(answers_file: Path, tmp_path: Path) -> None:
    from blackbox.assessment.compare.votes import is_rater_name, normal_name

    assert normal_name(" \uff41\uff4e\uff4e ") == "ann" and normal_name("\ufb01ona") == "fiona"  # full-width, fi
    assert all(is_rater_name(n) for n in ("alice", "Ann-Marie O.", "bob@lab.org", "r2_d2", "7" * 40))
    assert not any(is_rater_name(n) for n in ("", " ann", "-x", "=1+1", "judge:m", "a" * 41, "Jos\u00e9"))
    assert not is_rater_name(normal_name("\u0430lice"))  # a Cyrillic a: looks like alice, is someone else
    args = ["compare", str(answers_file), "--db", str(tmp_path / "votes.sqlite"), "--raters"]
    made = CliRunner().invoke(main, [*args, "\uff41\uff4e\uff4e"])
    assert made.exit_code == 0 and made.stdout.startswith("ann\thttp://"), made.output
    look_alike = CliRunner().invoke(main, [*args, "\u0430lice"])
    assert look_alike.exit_code == 2 and "1 to 40 ASCII letters" in look_alike.output


def test_the_links_file_is_private_and_never_a_symbolic_link(answers_file: Path, tmp_path: Path) -> None:
    db = tmp_path / "votes.sqlite"
    args = ["compare", str(answers_file), "--db", str(db), "--raters"]
    links = tmp_path / "links.tsv"
    links.write_text("# our raters\n")
    links.chmod(0o644)  # a file that others can read already
    made = CliRunner().invoke(main, [*args, "ann", "--links", str(links)])
    assert made.exit_code == 0, made.output
    assert links.stat().st_mode & 0o777 == 0o600 and "was readable by others (mode 644)" in made.output
    assert re.fullmatch(r"# our raters\nann\thttp://\S+/r/[\w-]{43}\n", links.read_text())
    target = tmp_path / "elsewhere.tsv"
    target.write_text("")
    target.chmod(0o644)
    symlink = tmp_path / "symlink.tsv"
    symlink.symlink_to(target)
    refused = CliRunner().invoke(main, [*args, "bob", "--links", str(symlink)])
    assert refused.exit_code == 1 and refused.stdout == ""
    assert refused.stderr.strip().splitlines() == [
        f"lora-blackbox ERROR: --links {symlink} is a symbolic link: refused (name the file itself)"
    ]
    assert target.read_text() == "" and target.stat().st_mode & 0o777 == 0o644  # not followed
    again = CliRunner().invoke(main, [*args, "bob"])  # the refused file cost bob no link: he gets one now
    assert again.exit_code == 0 and again.stdout.startswith("bob\thttp://")


def test_the_sides_come_from_the_studys_secret_not_from_the_names(tmp_path: Path) -> None:
    from blackbox.assessment.compare.pairs import Pair, a_shown_first
    from blackbox.assessment.compare.votes import study_secret, votes_db

    pairs = [Pair(f"q{i}", "base", "best") for i in range(64)]

    def sides(db: Path) -> list[bool]:
        with votes_db(db) as connection:
            secret = study_secret(connection)
        return [a_shown_first(secret, "ann", pair) for pair in pairs]

    first = sides(tmp_path / "one.sqlite")
    assert sides(tmp_path / "one.sqlite") == first  # the same study: the same screens at every visit
    assert 8 < sum(first) < 56  # a fair coin (outside: chance 1e-10)
    # The same rater and pairs in another study get other sides (the same with chance 2^-64), and the public hash
    # of name and pair that chose them before agrees by chance only: nobody predicts them from the names.
    assert sides(tmp_path / "two.sqlite") != first
    public = [hashlib.sha256("\0".join(("ann", *pair.key)).encode()).digest()[0] % 2 == 0 for pair in pairs]
    assert public != first


def test_judge_asks_both_orders_and_keeps_only_consistent_verdicts(answers_file: Path, tmp_path: Path) -> None:
    from blackbox.assessment.answers import read_answers
    from blackbox.assessment.compare.judge import combine, judge_pairs, parse_verdict
    from blackbox.assessment.compare.pairs import index_answers

    assert parse_verdict("A is fine. [[B]] no, final: [[A]]") == "A" and parse_verdict("no verdict") is None
    assert (combine("A", "B"), combine("B", "A"), combine("A", "A"), combine("C", "C"), combine(None, "B")) == (
        "a", "b", "tie", "tie", "tie",
    )  # fmt: skip
    answers = index_answers(read_answers(answers_file))
    asked: list[str] = []

    def prefers_best(prompts: Any) -> list[str]:
        # A judge that likes the model "best", wherever it is shown, and else says A (position bias)
        asked.extend(prompts)
        replies = []
        for prompt in prompts:
            first = prompt.split("[The Start of Assistant B's Answer]")[0]
            second = prompt.split("[The Start of Assistant B's Answer]")[1]
            replies.append("[[A]]" if "best answers" in first else "[[B]]" if "best answers" in second else "[[A]]")
        return replies

    db = tmp_path / "judge.sqlite"
    assert judge_pairs(answers, db, model="fake", ask=prefers_best, chunk=4) == 6
    assert len(asked) == 12  # two orders of each of the 6 pairs
    votes = read_votes(db)
    assert {v.rater for v in votes} == {"judge:fake"}
    for v in votes:
        expected = "a" if v.model_a == "best" else "b" if v.model_b == "best" else "tie"  # base/worst: A, A: a tie
        assert v.verdict == expected, v
    assert judge_pairs(answers, db, model="fake", ask=prefers_best) == 0  # nothing left: resumes, asks nothing
    assert len(asked) == 12


def test_judge_with_the_tiny_model(answers_file: Path, tiny_model: Path, tmp_path: Path) -> None:
    db = tmp_path / "votes.sqlite"
    args = ["compare", str(answers_file), "--db", str(db), "--judge", str(tiny_model), "--judge-max-new-tokens", "6"]
    result = CliRunner().invoke(main, [*args, "--csv", str(tmp_path / "votes.csv")])
    assert result.exit_code == 0, result.output
    votes = read_votes(db)
    assert len(votes) == 6 and {v.rater for v in votes} == {f"judge:{tiny_model}"}
    assert all(re.fullmatch(r"a_first=(A|B|C|none) b_first=(A|B|C|none)", v.detail) for v in votes)
    assert f"== judge:{tiny_model}: 6 votes" in result.stdout and "Bradley-Terry" in result.stdout
    assert len((tmp_path / "votes.csv").read_text().splitlines()) == 7


def test_compare_and_answers_refuse_what_they_cannot_do(tmp_path: Path) -> None:
    one_model = tmp_path / "answers.jsonl"
    one_model.write_text(json.dumps({"question_id": "q1", "question": "?", "model": "base", "answer": "!"}) + "\n")
    result = CliRunner().invoke(main, ["compare", str(one_model), "--results"])
    assert result.exit_code == 1 and "two models or more" in result.output
    questions = tmp_path / "q.txt"
    questions.write_text("Why?\n")
    result = CliRunner().invoke(main, ["answers", "--best", "--questions", str(questions)])
    assert result.exit_code == 2 and "give STUDY_DIR" in result.output
