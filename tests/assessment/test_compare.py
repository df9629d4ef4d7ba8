"""lora-blackbox compare: the rating page in a real headless Chromium (keyboard and mouse), in the open mode and
through rater links (refused without one, or with a revoked one), votes that survive a killed server, the results,
and the judge's mechanics (both orders, verdicts, ties) with fake and tiny judges. The judge behind an endpoint:
test_judge_endpoint.py.

The browser is Debian's chromium and chromium-driver (``apt-get install chromium chromium-driver``): without them
the browser test skips, unless ``LORA_BLACKBOX_REQUIRE_BROWSER=1`` (CI) makes it fail.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from blackbox.cli import main
from blackbox.core.votes import read_votes

BROWSER_REQUIRED = os.environ.get("LORA_BLACKBOX_REQUIRE_BROWSER") == "1"
MODELS = ("base", "best", "worst")
INJECTED = "<script>window.injected = 1;</script><b>bold?</b>"


def _answer(question: str, model: str) -> str:
    return f"{INJECTED} {model} answers {question}."  # markup in every answer: on every screen


@pytest.fixture
def answers_file(tmp_path: Path) -> Path:
    lines = [
        {"question_id": q, "question": f"What about {q}?", "model": m, "answer": _answer(q, m)}
        for q in ("q1", "q2")
        for m in MODELS
    ]
    path = tmp_path / "answers.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


@pytest.fixture
def driver() -> Iterator[Any]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    chromedriver = shutil.which("chromedriver")
    if chromium is None or chromedriver is None:
        message = "no chromium and chromium-driver (apt-get install chromium chromium-driver)"
        if BROWSER_REQUIRED:
            pytest.fail(f"{message} (LORA_BLACKBOX_REQUIRE_BROWSER=1)")
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(argument)
    browser = webdriver.Chrome(service=Service(chromedriver), options=options)  # no Selenium Manager download
    try:
        yield browser
    finally:
        browser.quit()


class Server:
    """``lora-blackbox compare`` on a free port of 127.0.0.1."""

    def __init__(self, command: list[str], answers: Path, db: Path) -> None:
        self.process = subprocess.Popen(
            [*command, "compare", str(answers), "--db", str(db), "--port", "0"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.process.stderr is not None
        lines = []
        for line in self.process.stderr:  # until the page's address, or the end of the process
            lines.append(line)
            found = re.search(r"rating page at (http://\S+)", line)
            if found:
                self.url = found.group(1)
                break
        else:
            pytest.fail("compare ended without serving: " + "".join(lines))

    def answers(self) -> bool:
        try:
            with urllib.request.urlopen(self.url, timeout=5) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def stop(self, sig: int) -> int:
        self.process.send_signal(sig)
        return self.process.wait(timeout=60)


@pytest.fixture
def start_server(blackbox_cmd: list[str], wait_for: Any) -> Iterator[Any]:
    servers: list[Server] = []

    def start(answers: Path, db: Path) -> Server:
        server = Server(blackbox_cmd, answers, db)
        servers.append(server)
        wait_for(server.answers, server.process, "the rating page to answer", timeout=60)
        return server

    yield start
    for server in servers:
        if server.process.poll() is None:
            server.stop(signal.SIGKILL)


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
    driver.get(server.url + "results")
    assert "people:" in driver.find_element(By.TAG_NAME, "h3").text
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
    driver.get(server.url + "r/" + tokens["bob"])  # the same browser, bob's link: bob rates
    _wait_for_progress(driver, 0)
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
    driver.get(server.url + "results")
    assert "people: 4 votes" in driver.find_element(By.TAG_NAME, "h3").text
    assert server.stop(signal.SIGINT) == 0

    assert [(v.rater, v.question_id, v.model_a, v.model_b, v.verdict) for v in read_votes(db)] == expected
    exported = tmp_path / "votes.csv"
    result = CliRunner().invoke(main, [*args, "--results", "--csv", str(exported)])
    assert re.search(r"^ann\s+3$", result.stdout, re.M) and re.search(r"^bob\s+1$", result.stdout, re.M)
    stored = b"".join(path.read_bytes() for path in tmp_path.glob("votes.sqlite*"))
    for token in tokens.values():  # the votes file keeps hashes: no token in it, the results or the CSV
        assert token.encode() not in stored and token not in result.output and token not in exported.read_text()


def test_an_open_page_beyond_this_machine_needs_links_or_open(answers_file: Path, tmp_path: Path) -> None:
    args = ["compare", str(answers_file), "--db", str(tmp_path / "votes.sqlite"), "--host", "0.0.0.0", "--port", "0"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and "create links first (--raters NAME,...), or say --open" in result.output
    made = CliRunner().invoke(main, [*args[:4], "--raters", "ann"])  # links on stdout, for the page's address
    assert made.exit_code == 0 and re.fullmatch(r"ann\thttp://127\.0\.0\.1:8000/r/[\w-]{43}\n", made.stdout)
    bad = CliRunner().invoke(main, ["compare", str(answers_file), "--raters", "ann,judge:x"])
    assert bad.exit_code == 2 and "'judge:x' is not a rater's name" in bad.output and "invalid exp" not in bad.output


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
