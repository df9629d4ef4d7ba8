"""A judge behind an OpenAI-compatible endpoint (``compare --judge openai:MODEL``), answered by a real server on
127.0.0.1: ``transformers serve`` with a tiny judge made here. The judge is the tiny test model taught in a few
dozen steps to reply ``[[A]]`` when the answer it reads says "best" and ``[[B]]`` otherwise; its chat template
shows it answer A alone (two layers of 64 units read no 900-token prompt). So it prefers the model "best" in both
orders, and prefers the second answer between the two others: its votes and position bias are known exactly.
"""

from __future__ import annotations

import http.server
import json
import os
import random
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from blackbox.reports.votes import read_votes

MODELS = ("base", "best", "worst")
# The judge reads only what its chat template keeps of the prompt: assistant A's answer.
JUDGE_TEMPLATE = (
    "{%- set text = messages[-1]['content'].split(\"[The Start of Assistant A's Answer]\")[-1]"
    '.split("[The End of Assistant A\'s Answer]")[0] -%}'
    "{{ bos_token }}Answer:{{ text }}Verdict:"
)


def _answer(question: str, model: str) -> str:
    return f"{model} answers {question}."


@pytest.fixture(scope="module")
def tiny_judge(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model, taught to reply [[A]] to an answer A that says "best", else [[B]]."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = tmp_path_factory.mktemp("judges") / "tiny-judge"
    shutil.copytree(tiny_model, folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.chat_template = JUDGE_TEMPLATE
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(folder)
    examples = []
    for name in (*MODELS, "other"):
        for question in range(1, 10):
            answer = _answer(f"q{question}", name)
            user = f"[The Start of Assistant A's Answer]\n{answer}\n[The End of Assistant A's Answer]"
            prompt = tokenizer.apply_chat_template([{"role": "user", "content": user}], add_generation_prompt=True)
            prompt = list(prompt["input_ids"] if hasattr(prompt, "keys") else prompt)
            verdict = tokenizer("[[A]]" if name == "best" else "[[B]]", add_special_tokens=False)["input_ids"]
            examples.append((prompt, [*verdict, tokenizer.eos_token_id]))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    rng = random.Random(0)
    model.train()
    for _ in range(60):
        batch = rng.sample(examples, 8)
        width = max(len(p) + len(t) for p, t in batch)
        pad = [tokenizer.pad_token_id] * width
        ids = torch.tensor([(p + t + pad)[:width] for p, t in batch])
        labels = torch.tensor([([-100] * len(p) + t + [-100] * width)[:width] for p, t in batch])
        model(input_ids=ids, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(folder)
    return folder


@pytest.fixture
def judge_server(tiny_judge: Path, tmp_path: Path, wait_for: Any) -> Iterator[tuple[str, Path]]:
    """``transformers serve`` of the tiny judge on a free port of 127.0.0.1: its /v1 URL and its log."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = tmp_path / "server.log"
    serve = [sys.executable, "-c", "from transformers.cli.transformers import main; main()"]
    with log.open("w") as out:
        process = subprocess.Popen(
            [*serve, "serve", str(tiny_judge), "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
    try:
        wait_for(lambda: _healthy(port), process, "transformers serve to answer", timeout=240)
        yield f"http://127.0.0.1:{port}/v1", log
    finally:
        process.terminate()
        process.wait(timeout=60)


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def _answers_file(folder: Path) -> Path:
    lines = [
        {"question_id": q, "question": f"What about {q}?", "model": m, "answer": _answer(q, m)}
        for q in ("q1", "q2")
        for m in MODELS
    ]
    path = folder / "answers.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def test_a_judge_behind_a_real_endpoint(
    judge_server: tuple[str, Path], tiny_judge: Path, blackbox_cmd: list[str], tmp_path: Path
) -> None:
    url, server_log = judge_server
    key = "sk-test-" + secrets.token_hex(16)
    env = {**os.environ, "LORA_BLACKBOX_TEST_JUDGE_KEY": key}
    answers, db, exported = _answers_file(tmp_path), tmp_path / "votes.sqlite", tmp_path / "votes.csv"
    command = [*blackbox_cmd, "compare", str(answers), "--db", str(db), "--judge", f"openai:{tiny_judge}"]
    command += ["--judge-url", url, "--judge-api-key-env", "LORA_BLACKBOX_TEST_JUDGE_KEY"]
    command += ["--judge-max-new-tokens", "8", "--judge-batch-size", "3", "--judge-rpm", "6000"]
    first = subprocess.run([*command, "--csv", str(exported)], env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr
    rater = f"judge:openai:{tiny_judge}"
    votes = read_votes(db)
    assert len(votes) == 6 and {v.rater for v in votes} == {rater}
    for v in votes:  # "best" wins in both orders; between the others the judge always says B: a tie
        if "best" in (v.model_a, v.model_b):
            detail = "a_first=A b_first=B" if v.model_a == "best" else "a_first=B b_first=A"
            assert (v.winner, v.detail) == ("best", detail)
        else:
            assert (v.verdict, v.detail) == ("tie", "a_first=B b_first=B")
    # Position bias: 4 of 12 verdicts for the answer shown first (the 4 where "best" was A).
    assert "the answer shown first (A) won 33.3% [13.8%, 60.9%] of 12 verdicts" in first.stdout
    assert "Both orders chose the same model in 4 of 6 pairs." in first.stdout
    assert server_log.read_text().count("POST /v1/chat/completions") == 12  # both orders of 6 pairs

    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "0 new votes" in again.stderr  # resumed: nothing asked again
    assert server_log.read_text().count("POST /v1/chat/completions") == 12
    # The key went to the server only: not in any file here, the server's log included, nor in any output.
    for path in tmp_path.rglob("*"):
        assert not path.is_file() or key.encode() not in path.read_bytes(), path
    assert key not in first.stdout + first.stderr + again.stdout + again.stderr


def test_an_unreachable_endpoint_fails_in_one_line(blackbox_cmd: list[str], tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port that nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    key = "sk-test-" + secrets.token_hex(16)
    answers = _answers_file(tmp_path)
    command = [*blackbox_cmd, "compare", str(answers), "--judge", "openai:m", "--judge-retries", "1"]
    command += ["--judge-url", f"http://127.0.0.1:{port}/v1"]
    result = subprocess.run(
        command, env={**os.environ, "OPENAI_API_KEY": key}, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 1 and result.stdout == ""
    assert f"the judge endpoint http://127.0.0.1:{port}/v1/ failed" in result.stderr
    assert "Traceback" not in result.stderr and key not in result.stderr
    assert read_votes(tmp_path / "votes.sqlite") == []


class _RefusingEndpoint(http.server.BaseHTTPRequestHandler):
    """An OpenAI-compatible endpoint that refuses every key with 401, quoting the request's Authorization header
    back in its error (as a careless or hostile server may)."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        error = {"message": f"Incorrect API key: {self.headers['Authorization']}", "code": "invalid_api_key"}
        body = json.dumps({"error": error}).encode()
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_the_api_key_is_in_no_traceback(blackbox_cmd: list[str], tmp_path: Path) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RefusingEndpoint)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    key = "sk-test-" + secrets.token_hex(16)
    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    command = [*blackbox_cmd, "--debug", "compare", str(_answers_file(tmp_path)), "--judge", "openai:m"]
    try:
        result = subprocess.run(
            [*command, "--judge-url", url, "--judge-retries", "0"],
            env={**os.environ, "OPENAI_API_KEY": key},
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        server.shutdown()
        server.server_close()
    assert result.returncode == 1 and result.stdout == ""
    assert f"the judge endpoint {url}/ answered 401: " in result.stderr and "Traceback" in result.stderr  # --debug
    assert "Incorrect API key: Bearer [API key]" in result.stderr  # the server's own words, the key redacted
    assert key not in result.stderr  # not in the message, the traceback, its chain, nor the libraries' logs


def test_the_api_key_crosses_a_network_over_https_only(monkeypatch: pytest.MonkeyPatch) -> None:
    from blackbox.assessment.compare.endpoint import Endpoint
    from blackbox.core.errors import OptionError

    monkeypatch.setenv("LORA_BLACKBOX_TEST_JUDGE_KEY", "sk-test-" + secrets.token_hex(16))
    settings: dict[str, Any] = {"api_key_env": "LORA_BLACKBOX_TEST_JUDGE_KEY", "system": "", "max_new_tokens": 1}
    with pytest.raises(OptionError, match=r"plain HTTP on another machine.*--judge-allow-http"):
        Endpoint("m", url="http://192.0.2.1:8000/v1", **settings)  # refused before any request
    for url in ("https://192.0.2.1/v1", "http://127.0.0.1:8000/v1", "http://[::1]:8000/v1", "http://localhost/v1"):
        with Endpoint("m", url=url, **settings):  # made; nothing is sent until asked
            pass
    with Endpoint("m", url="http://192.0.2.1:8000/v1", allow_http=True, **settings):
        pass
    monkeypatch.delenv("LORA_BLACKBOX_TEST_JUDGE_KEY")
    with Endpoint("m", url="http://192.0.2.1:8000/v1", **settings):  # no key: nothing to protect
        pass


def test_rate_limit_spaces_requests_evenly() -> None:
    from blackbox.assessment.compare.endpoint import RateLimit

    now = [100.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    limit = RateLimit(120, clock=lambda: now[0], sleep=sleep)  # one start every 0.5 s
    for _ in range(3):
        limit.wait()
    now[0] += 2.0  # idle: the next one starts at once
    limit.wait()
    assert slept == [0.5, 0.5]
    unlimited = RateLimit(0, clock=lambda: now[0], sleep=sleep)
    unlimited.wait()
    assert slept == [0.5, 0.5]
