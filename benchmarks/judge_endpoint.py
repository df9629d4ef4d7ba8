"""One judge run behind an OpenAI-compatible endpoint: ``transformers serve`` of a judge model on 127.0.0.1, then
``lora-blackbox compare ANSWERS --judge openai:MODEL`` over every pair of an answers file, timed from the
command's start to its end (the server's start is measured apart). With ``--baseline``, the same judge as a
local model (``--judge MODEL``, in the command's own process) on the same pairs, for the ratio.

    python benchmarks/judge_endpoint.py --answers runs/demo/answers.jsonl \
        [--model embedded:smollm2-135m-instruct] [--max-new-tokens 128] [--concurrency 4] [--questions N] \
        [--baseline] [--json benchmarks/results/judge_endpoint_cpu.json]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

from blackbox.reports.preferences import position_bias
from blackbox.reports.votes import parse_judge_detail, read_votes

BIN = Path(sys.executable).parent


def start_server(model: str, log: Path) -> tuple[subprocess.Popen[bytes], str, float]:
    """``transformers serve MODEL`` on a free port of 127.0.0.1 (CPU): the process, its /v1 URL, its start in s."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started = time.perf_counter()
    with log.open("w") as out:
        process = subprocess.Popen(
            [str(BIN / "transformers"), "serve", model, "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return process, f"http://127.0.0.1:{port}/v1", time.perf_counter() - started
        except OSError:
            if process.poll() is not None:
                raise SystemExit(f"transformers serve did not start: {log.read_text()[-2000:]}") from None
            time.sleep(0.2)


def judge_run(answers: Path, db: Path, judge: list[str]) -> dict[str, Any]:
    """Run ``compare --judge ...`` and describe its votes."""
    command = [str(BIN / "lora-blackbox"), "compare", str(answers), "--db", str(db), *judge]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"the judge failed: {result.stderr[-2000:]}")
    votes = read_votes(db)
    bias = position_bias(votes)
    raw = Counter(verdict or "none" for v in votes for verdict in parse_judge_detail(v.detail) or ())
    return {
        "pairs": len(votes),
        "requests": 2 * len(votes),
        "seconds": round(seconds, 1),
        "seconds_per_pair": round(seconds / max(len(votes), 1), 2),
        "verdicts": dict(Counter(v.verdict for v in votes)),
        "raw_verdicts": dict(raw),
        "position_bias": {
            "first": bias.first,
            "second": bias.second,
            "neither": bias.neither,
            "consistent_pairs": bias.consistent,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--answers", type=Path, required=True)
    parser.add_argument("--model", default="embedded:smollm2-135m-instruct")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--questions", type=int, default=0, help="Only the first N questions (0: all).")
    parser.add_argument("--baseline", action="store_true", help="Also the same judge as a local model.")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    from machine import describe

    model = args.model
    if model.startswith("embedded:"):
        from blackbox.training.embedded import resolve_model

        model = resolve_model(model)  # the model folder converted once from the packaged GGUF file
    tokens = ["--judge-max-new-tokens", str(args.max_new_tokens), "--judge-batch-size", str(args.concurrency)]
    with tempfile.TemporaryDirectory() as folder:
        answers = args.answers
        if args.questions:
            lines = [json.loads(line) for line in answers.read_text().splitlines() if line.strip()]
            kept = list(dict.fromkeys(line["question_id"] for line in lines))[: args.questions]
            answers = Path(folder) / "answers.jsonl"
            answers.write_text("".join(json.dumps(line) + "\n" for line in lines if line["question_id"] in kept))
        process, url, start_s = start_server(model, Path(folder) / "server.log")
        try:
            judge = ["--judge", f"openai:{model}", "--judge-url", url, "--judge-timeout", "3600", *tokens]
            endpoint = judge_run(answers, Path(folder) / "endpoint.sqlite", judge)
        finally:
            process.terminate()
            process.wait(timeout=60)
        result: dict[str, Any] = {
            "model": args.model,
            "answers": str(args.answers),
            "questions": args.questions or "all",
            "max_new_tokens": args.max_new_tokens,
            "concurrency": args.concurrency,
            "server_start_s": round(start_s, 1),
            "endpoint": endpoint,
        }
        if args.baseline:
            result["local"] = judge_run(answers, Path(folder) / "local.sqlite", ["--judge", model, *tokens])
    result["machine"] = describe(("torch", "transformers", "openai", "uvicorn"))
    result["date"] = time.strftime("%Y-%m-%d")
    result["load_average"] = os.getloadavg()
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
