"""The prompts and scores of InstructEval (declare-lab/instruct-eval), as lm-eval functions of the task YAMLs beside
this file (``!function scoring.<name>``). Tribes et al. scored their models with InstructEval's defaults; each
function names the InstructEval file it follows.

Every few-shot prompt is built here, whole, from the test split itself, as InstructEval builds it (lm-eval's own
few-shot machinery takes its examples elsewhere and formats them otherwise): the YAMLs set ``num_fewshot: 0``.
An answer counts when the stripped generation starts with the label (``pred.strip().startswith(label)``).
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import tempfile
from typing import Any

import datasets

BBH_SHOTS = 3  # bbh.py: main(ntrain=3); the shots are the first rows of each task's test split
DROP_SHOTS = 3  # drop.py: main(ntrain=3)
DROP_SEED = 0  # drop.py: DropData.train_test_split(seed=0)
HUMANEVAL_TIMEOUT_S = 3.0  # human_eval/main.py: entry_point(timeout=3.0)
CODE_EVAL_VARIABLE = "HF_ALLOW_CODE_EVAL"  # the switch of HF evaluate's code_eval, honoured here alike


def starts_with_label(generation: str, label: str) -> float:
    """InstructEval's check: 1.0 when the stripped generation starts with the label."""
    return float(generation.strip().startswith(label))


# MMLU (mmlu.py): 5-shot from the subject's dev split (lm-eval's first_n sampler), 2 new tokens, greedy.
def mmlu_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    return {"exact_match": starts_with_label(results[0], "ABCD"[int(doc["answer"])])}


# BBH (bbh.py): the first 3 rows of the test split are the shots, the other rows the test; "input\nAnswer: target".
def _bbh_example(doc: dict[str, Any], *, with_answer: bool) -> str:
    text = f"{doc['input']}\nAnswer:"
    return f"{text} {doc['target']}\n\n" if with_answer else text


def bbh_docs(dataset: datasets.Dataset) -> datasets.Dataset:
    rows = dataset.to_list()
    shots = "".join(_bbh_example(row, with_answer=True) for row in rows[:BBH_SHOTS])
    return datasets.Dataset.from_list(
        [{**row, "prompt": shots + _bbh_example(row, with_answer=False)} for row in rows[BBH_SHOTS:]]
    )


def bbh_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    return {"exact_match": starts_with_label(results[0], doc["target"])}


# DROP (drop.py): the questions with one distinct answer; 3 of them drawn with random.seed(0) are the shots, and the
# questions on other passages than theirs are the test; "passage question\nAnswer: answer".
def _drop_answers(doc: dict[str, Any]) -> list[str]:
    return [span.strip() for span in doc["answers_spans"]["spans"]]


def _drop_example(doc: dict[str, Any], *, with_answer: bool) -> str:
    text = f"{doc['passage'].strip()} {doc['question'].strip()}\nAnswer:"
    return f"{text} {_drop_answers(doc)[0]}\n\n" if with_answer else text


def drop_docs(dataset: datasets.Dataset) -> datasets.Dataset:
    rows = [row for row in dataset.to_list() if len(set(_drop_answers(row))) == 1]
    shots = random.Random(DROP_SEED).sample(rows, k=DROP_SHOTS)  # random.seed(0); random.sample(...): the same draw
    passages = {row["passage"] for row in shots}
    context = "".join(_drop_example(row, with_answer=True) for row in shots)
    return datasets.Dataset.from_list(
        [
            {**row, "prompt": context + _drop_example(row, with_answer=False), "label": _drop_answers(row)[0]}
            for row in rows
            if row["passage"] not in passages
        ]
    )


def drop_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    return {"exact_match": starts_with_label(results[0], doc["label"])}


# HumanEval (human_eval/main.py): an instruction before the function's prompt, a sample at temperature 0.1, the
# indentation fixed to even widths and the completion cut at its first blank line, then the function's own tests.
def _fix_indents(text: str) -> str:
    lines = []
    for line in text.split("\n"):
        indent = len(line) - len(line.lstrip(" "))
        lines.append(" " * (indent % 2) + line)
    return "\n".join(lines)


def humaneval_completion(generation: str) -> str:
    """The part of a generation that InstructEval tests: indents made even, then up to the first blank line."""
    return _fix_indents(generation).lstrip("\n").split("\n\n")[0]


def humaneval_program(doc: dict[str, Any], generation: str) -> str:
    """human-eval's check program: the prompt, the completion, the tests, and the call of ``check``."""
    completion = humaneval_completion(generation)
    return f"{doc['prompt']}{completion}\n{doc['test']}\ncheck({doc['entry_point']})"


def passes(program: str, *, timeout_s: float = HUMANEVAL_TIMEOUT_S) -> bool:
    """Whether ``program`` runs to its end without an error within ``timeout_s``, in a Python process of its own
    (isolated mode, an empty working folder). It runs model-written code: only with HF_ALLOW_CODE_EVAL=1, which
    ``lora-blackbox`` sets when code execution is allowed.

    Raises:
        PermissionError: code execution is not allowed.
    """
    if os.environ.get(CODE_EVAL_VARIABLE) != "1":
        raise PermissionError(f"running model-written code needs {CODE_EVAL_VARIABLE}=1 (--allow-code-execution)")
    with tempfile.TemporaryDirectory(prefix="humaneval-") as folder:
        try:
            done = subprocess.run(
                [sys.executable, "-I", "-c", program],
                cwd=folder,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return False
    return done.returncode == 0


def humaneval_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    return {"pass@1": float(passes(humaneval_program(doc, results[0])))}
