"""Helpers of the rating page's tests: answers whose model shows in their text, the page served by
``lora-blackbox compare`` on a free port of 127.0.0.1, rater links, and requests as a script (not a browser) makes
them, any Host header included."""

from __future__ import annotations

import http.client
import json
import re
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from blackbox.cli import main

MODELS = ("base", "best", "worst")
INJECTED = "<script>window.injected = 1;</script><b>bold?</b>"


def answer_text(question: str, model: str) -> str:
    return f"{INJECTED} {model} answers {question}."  # markup in every answer: on every screen


def write_answers(folder: Path) -> Path:
    lines = [
        {"question_id": q, "question": f"What about {q}?", "model": m, "answer": answer_text(q, m)}
        for q in ("q1", "q2")
        for m in MODELS
    ]
    path = folder / "answers.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def make_links(answers: Path, db: Path, names: str) -> dict[str, str]:
    """Rater links for ``names`` (NAME,...): each rater's token."""
    made = CliRunner().invoke(main, ["compare", str(answers), "--db", str(db), "--raters", names])
    assert made.exit_code == 0, made.output
    return dict(re.findall(r"^(\S+)\thttp://\S+/r/(\S+)$", made.stdout, re.M))


class Server:
    """``lora-blackbox compare`` on a free port (of 127.0.0.1 unless ``args`` say otherwise); ``log``: its stderr
    up to the line giving its address."""

    def __init__(self, command: list[str], answers: Path, db: Path, args: tuple[str, ...] = ()) -> None:
        self.process = subprocess.Popen(
            [*command, "compare", str(answers), "--db", str(db), "--port", "0", *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.process.stderr is not None
        self.log = ""
        for line in self.process.stderr:  # until the page's address, or the end of the process
            self.log += line
            found = re.search(r"rating page at http://\S+:(\d+)/", line)
            if found:
                self.port = int(found.group(1))
                self.url = f"http://127.0.0.1:{self.port}/"
                break
        else:
            pytest.fail("compare ended without serving: " + self.log)

    def answers(self) -> bool:
        try:
            return get(self.url, "")[0] == 200
        except OSError:
            return False

    def stop(self, sig: int) -> int:
        self.process.send_signal(sig)
        return self.process.wait(timeout=60)


def request(
    url: str, path: str, *, method: str = "GET", headers: dict[str, str] | None = None, body: bytes = b""
) -> tuple[int, str]:
    """One request to the page at ``url`` (``headers`` may name another Host): the status and the body's text."""
    host, port = re.fullmatch(r"http://([^/]+):(\d+)/", url).groups()  # type: ignore[union-attr]
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        connection.request(method, "/" + path, body=body or None, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read().decode(errors="replace")
    finally:
        connection.close()


def get(url: str, path: str, *, cookie: str = "", host: str = "") -> tuple[int, str]:
    headers = {"Cookie": cookie} if cookie else {}
    if host:
        headers["Host"] = host
    return request(url, path, headers=headers)


def form_token(page: str) -> str:
    """The token of the form on a page."""
    found = re.search(r'name="token" value="([0-9a-f]+)"', page)
    assert found, page
    return found.group(1)
