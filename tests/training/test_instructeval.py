"""The shipped InstructEval tasks (blackbox/training/instructeval) run by lm-eval on the tiny model, over hand-made
items in local files (the YAMLs as shipped, their hub dataset swapped for the items): the exact prompt with its
shots, the generation length, the answer check and the score.

Where a label may be any text (BBH, DROP), one item's label is the start of what the tiny model really writes after
the prompt InstructEval would build (computed here with transformers alone), the other's a string it never writes:
the score is 0.5 only if lm-eval asked that very prompt. HumanEval's items are built so that one program passes
whatever the model completes, and the other fails.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from blackbox.training.instructeval import TASKS_DIR
from blackbox.training.instructeval.scoring import humaneval_completion, humaneval_program, passes

pytestmark = pytest.mark.slow

NEVER = "zzqx-never-written"


@pytest.fixture(scope="module")
def tiny(tiny_model: Path) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_model).eval(), AutoTokenizer.from_pretrained(tiny_model)


def _greedy(tiny: tuple[Any, Any], prompt: str, new_tokens: int) -> str:
    import torch

    model, tokenizer = tiny
    ids = tokenizer(prompt, return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**ids, max_new_tokens=new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return str(tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True))


def _tasks_with_local_data(tmp_path: Path, file: str, splits: dict[str, list[dict[str, Any]]]) -> Path:
    """A copy of the shipped tasks where ``file``'s dataset is ``splits`` (JSON Lines), nothing else changed."""
    folder = tmp_path / "tasks"
    if not folder.exists():
        shutil.copytree(TASKS_DIR, folder, ignore=shutil.ignore_patterns("__pycache__"))
    files = []
    for split, rows in splits.items():
        path = tmp_path / f"{file}-{split}.jsonl"
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
        files.append(f"    {split}: {json.dumps(str(path))}")
    local = "dataset_path: json\ndataset_kwargs:\n  data_files:\n" + "\n".join(files)
    text = (folder / file).read_text()
    (folder / file).write_text(re.sub(r"^dataset_path: .*$", local, text, count=1, flags=re.MULTILINE))
    return folder


def _evaluate(tiny: tuple[Any, Any], folder: Path, task: str, *, code: bool = False) -> tuple[dict, list[dict]]:
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    model, tokenizer = tiny
    results = lm_eval.simple_evaluate(
        model=HFLM(pretrained=model, tokenizer=tokenizer, batch_size=1),
        tasks=[task],
        task_manager=TaskManager(include_path=[str(folder)], include_defaults=False),
        log_samples=True,
        confirm_run_unsafe_code=code,
    )
    return results["results"][task], sorted(results["samples"][task], key=lambda s: s["doc_id"])


def _request(sample: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The prompt and the generation settings of a logged sample (lm-eval logs them as a list or as a dict)."""
    arguments = sample["arguments"]
    context, settings = (
        (arguments["gen_args_0"][f"arg_{i}"] for i in (0, 1)) if isinstance(arguments, dict) else arguments[0]
    )
    return str(context), dict(settings)


def _context(sample: dict[str, Any]) -> str:
    return _request(sample)[0]


def _max_gen_toks(samples: list[dict[str, Any]]) -> set[int]:
    return {_request(s)[1]["max_gen_toks"] for s in samples}


def test_mmlu_five_shots_from_dev_two_tokens_and_the_letter_check(tiny, tmp_path: Path) -> None:
    dev = [{"question": f"What is {i}+{i}?", "choices": ["a", "b", "c", "d"], "answer": i % 4} for i in range(6)]
    test = [{"question": "Pick one.", "choices": ["x", "y", "z", "w"], "answer": a} for a in (0, 3)]
    folder = _tasks_with_local_data(tmp_path, "_mmlu_template_yaml", {"dev": dev, "test": test})
    result, samples = _evaluate(tiny, folder, "instructeval_mmlu_abstract_algebra")

    def example(row: dict[str, Any]) -> str:  # InstructEval's mmlu.py format_example
        return row["question"] + "".join(f"\n{'ABCD'[j]}. {c}" for j, c in enumerate(row["choices"])) + "\nAnswer:"

    shots = "".join(f"{example(row)} {'ABCD'[row['answer']]}\n\n" for row in dev[:5])  # 5 shots: the first of dev
    header = "The following are multiple choice questions (with answers) about  abstract algebra.\n\n"
    assert [_context(s) for s in samples] == [header + shots + example(row) for row in test]
    assert _max_gen_toks(samples) == {2}
    checks = [
        float(s["resps"][0][0].strip().startswith("ABCD"[row["answer"]])) for s, row in zip(samples, test, strict=True)
    ]
    assert [s["exact_match"] for s in samples] == checks
    assert result["exact_match,none"] == pytest.approx(sum(checks) / 2)


def test_bbh_three_shots_from_the_test_split_answer_only(tiny, tmp_path: Path) -> None:
    rows = [{"input": f"not ( {b} ) is", "target": str(not b)} for b in (True, False, True)]
    rows += [{"input": "True and False is", "target": ""}, {"input": "False or True is", "target": NEVER}]
    shots = "".join(f"{row['input']}\nAnswer: {row['target']}\n\n" for row in rows[:3])  # bbh.py format_example
    prompts = [shots + f"{row['input']}\nAnswer:" for row in rows[3:]]
    written = _greedy(tiny, prompts[0], 32).strip()
    assert written, "the tiny model wrote nothing"
    rows[3]["target"] = written[:3]
    folder = _tasks_with_local_data(tmp_path, "_bbh_template_yaml", {"test": rows})
    result, samples = _evaluate(tiny, folder, "instructeval_bbh_boolean_expressions")

    assert [_context(s) for s in samples] == prompts  # the 3 shots are not scored
    assert _max_gen_toks(samples) == {32}
    assert [s["exact_match"] for s in samples] == [1.0, 0.0]
    assert result["exact_match,none"] == 0.5


def test_drop_shots_drawn_as_instructeval_draws_them(tiny, tmp_path: Path) -> None:
    def row(n: int, spans: list[str]) -> dict[str, Any]:
        passage = f" In year {n}, {n} rabbits crossed {n + 1} rivers. "
        answers = {"spans": spans, "types": ["number"] * len(spans)}
        return {
            "section_id": f"s{n}",
            "query_id": f"q{n}",
            "passage": passage,
            "question": "How many? ",
            "answers_spans": answers,
        }

    rows = [row(n, [str(n)]) for n in range(6)] + [row(9, ["9", "ten"])]  # two distinct answers: left out
    kept = rows[:6]
    random.seed(0)  # drop.py: train_test_split(seed=0)
    shot_rows = random.sample(kept, k=3)
    tests = [r for r in kept if r["passage"] not in {s["passage"] for s in shot_rows}]

    def example(r: dict[str, Any]) -> str:  # drop.py as_prompt
        return f"{r['passage'].strip()} {r['question'].strip()}\nAnswer:"

    shots = "".join(f"{example(r)} {r['answers_spans']['spans'][0]}\n\n" for r in shot_rows)
    written = _greedy(tiny, shots + example(tests[0]), 8).strip()[:3].strip()
    assert written, "the tiny model wrote nothing"
    tests[0]["answers_spans"]["spans"] = [written]
    tests[1]["answers_spans"]["spans"] = [NEVER]
    folder = _tasks_with_local_data(tmp_path, "instructeval_drop.yaml", {"validation": rows})
    _, samples = _evaluate(tiny, folder, "instructeval_drop")

    assert [_context(s) for s in samples] == [shots + example(r) for r in tests]  # the shots' passages are not scored
    assert [s["exact_match"] for s in samples[:2]] == [1.0, 0.0]
    assert _max_gen_toks(samples) == {8}


def test_humaneval_runs_the_completed_function_against_its_tests(tiny, tmp_path: Path, monkeypatch) -> None:
    # The prompt ends by opening a string that the tests close: whatever the model completes (without a triple
    # quote), the first program runs its check, which passes; the second's check fails.
    problems = [
        {
            "task_id": f"t/{n}",
            "prompt": 'def one():\n    return 1\n_ = """',
            "test": f'"""\ndef check(candidate):\n    assert candidate() == {n}\n',
            "entry_point": "one",
            "canonical_solution": "",
        }
        for n in (1, 2)
    ]
    folder = _tasks_with_local_data(tmp_path, "instructeval_humaneval.yaml", {"test": problems})
    shipped = (folder / "instructeval_humaneval.yaml").read_text()
    assert "  max_gen_toks: 512\n" in shipped  # the tiny model reads 512 tokens in all: it writes 16 here
    (folder / "instructeval_humaneval.yaml").write_text(shipped.replace("max_gen_toks: 512", "max_gen_toks: 16"))
    monkeypatch.setenv("HF_ALLOW_CODE_EVAL", "1")  # what --allow-code-execution sets
    result, samples = _evaluate(tiny, folder, "instructeval_humaneval", code=True)

    instruction = "Please complete the following Python code without providing any additional tasks such as testing"
    assert [_context(s) for s in samples] == [f"{instruction} or explanations\n{p['prompt']}" for p in problems]
    assert all('"""' not in s["resps"][0][0] for s in samples)
    assert [s["pass@1"] for s in samples] == [1.0, 0.0]
    assert result["pass@1,none"] == 0.5


def test_humaneval_completion_and_program(monkeypatch) -> None:
    doc = {"prompt": "def add(a, b):\n", "test": "def check(f):\n    assert f(2, 3) == 5\n", "entry_point": "add"}
    # InstructEval: odd indents made even, leading newlines dropped, cut at the first blank line.
    assert humaneval_completion("\n   return a + b\n\nprint('more')") == "    return a + b"
    monkeypatch.delenv("HF_ALLOW_CODE_EVAL", raising=False)
    with pytest.raises(PermissionError, match="HF_ALLOW_CODE_EVAL=1"):
        passes(humaneval_program(doc, "    return a + b"))
    monkeypatch.setenv("HF_ALLOW_CODE_EVAL", "1")
    assert passes(humaneval_program(doc, "   return a + b\n\nthis line is cut"))
    assert not passes(humaneval_program(doc, "    return a - b"))
    assert not passes(humaneval_program(doc, "    while True:\n        pass"), timeout_s=0.5)


def test_group_scores_as_instructeval_averages() -> None:
    """MMLU: the mean over all questions (mmlu.py); BBH: the mean of the tasks' scores (bbh.py)."""
    load = lambda name: yaml.safe_load((TASKS_DIR / name).read_text())  # noqa: E731
    assert load("_instructeval_mmlu.yaml")["aggregate_metric_list"] == [
        {"metric": "exact_match", "weight_by_size": True}
    ]
    assert load("_instructeval_bbh.yaml")["aggregate_metric_list"] == [
        {"metric": "exact_match", "weight_by_size": False}
    ]
    assert len(list(TASKS_DIR.glob("instructeval_bbh_*.yaml"))) == 27
    assert len(list(TASKS_DIR.glob("instructeval_mmlu_*.yaml"))) == 57


def _tiny_code_task(folder: Path) -> Path:
    """The shipped HumanEval task on two one-line problems (the first passes with any completion), 8 new tokens:
    ``tiny_code`` in ``folder``."""
    folder.mkdir()
    shutil.copy(TASKS_DIR / "scoring.py", folder / "scoring.py")
    problems = [
        {
            "prompt": 'def one():\n    return 1\n_ = """',
            "test": f'"""\ndef check(c):\n    assert c() == {n}\n',
            "entry_point": "one",
        }
        for n in (1, 2)
    ]
    (folder / "items.jsonl").write_text("".join(json.dumps(p) + "\n" for p in problems))
    shipped = (TASKS_DIR / "instructeval_humaneval.yaml").read_text()
    local = f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {json.dumps(str(folder / 'items.jsonl'))}"
    text = re.sub(r"^dataset_path: .*$", local, shipped, flags=re.MULTILINE).replace(
        "max_gen_toks: 512", "max_gen_toks: 8"
    )
    (folder / "tiny_code.yaml").write_text(text.replace("task: instructeval_humaneval", "task: tiny_code"))
    return folder


def test_an_experiment_allows_a_benchmark_to_run_code(tiny, tmp_path: Path) -> None:
    """A benchmark whose task runs code fails without a permission; ``allow_code_execution = true`` in the
    experiment is one (the shipped paper experiments give it to HumanEval), as ``--allow-code-execution`` is."""
    from blackbox.core.errors import SetupError
    from blackbox.core.experiment import BenchmarkConfig, DataConfig
    from blackbox.training.benchmarks import Scorer

    folder = _tiny_code_task(tmp_path / "code_task")
    model, tokenizer = tiny
    scorer = Scorer(tokenizer, DataConfig(train=("unused.jsonl",)))
    benchmark = BenchmarkConfig(task="tiny_code", metric="pass@1", include_path=str(folder), batch_size=1)
    with pytest.raises(SetupError, match="benchmark:tiny_code:pass@1"):
        scorer.score(model, benchmark)
    score = scorer.score(model, benchmark.model_copy(update={"allow_code_execution": True}))
    assert score.value == 0.5


def test_decoding_as_the_model_says(tiny, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``decoding = "model"``: the generations sample as the model's own generation config says (InstructEval's
    Llama model passes no sampling setting); ``task`` (the default): greedy, as the shipped task says."""
    from transformers import GenerationConfig

    from blackbox.core.experiment import BenchmarkConfig, DataConfig
    from blackbox.training.benchmarks import Scorer, model_decoding

    rows = [{"input": f"{a} and {b} is", "target": str(a and b)} for a in (True, False) for b in (True, False)]
    folder = _tasks_with_local_data(tmp_path, "_bbh_template_yaml", {"test": rows})
    model, tokenizer = tiny
    # Llama-2-7b-hf's generation_config.json samples so; the tiny model's own config is greedy.
    llama2 = GenerationConfig(do_sample=True, temperature=0.6, top_p=0.9)
    monkeypatch.setattr(model, "generation_config", llama2)
    asked: list[dict[str, Any]] = []
    generate = model.generate
    monkeypatch.setattr(model, "generate", lambda *args, **kwargs: asked.append(kwargs) or generate(*args, **kwargs))
    scorer = Scorer(tokenizer, DataConfig(train=("unused.jsonl",)))
    task = BenchmarkConfig(
        task="instructeval_bbh_boolean_expressions", metric="exact_match", include_path=str(folder), batch_size=4
    )
    # (top-k unset: transformers' generate takes its default, 50, as in InstructEval's transformers)
    assert model_decoding(model) == {"do_sample": True, "temperature": 0.6, "top_p": 0.9}

    scorer.score(model, task)
    assert asked and all(not kwargs["do_sample"] for kwargs in asked)  # the task's greedy decoding
    asked.clear()
    sampled = scorer.score(model, task.model_copy(update={"decoding": "model"}))
    assert asked and all(
        (kwargs["do_sample"], kwargs["temperature"], kwargs["top_p"]) == (True, 0.6, 0.9) for kwargs in asked
    )
    assert sampled.key == "benchmark:instructeval_bbh_boolean_expressions-model-decoding:exact_match"
    # A task that samples itself (InstructEval's HumanEval: temperature 0.1) keeps its settings, the model's fill in.
    code = _tiny_code_task(tmp_path / "code")
    asked.clear()
    scorer.score(model, BenchmarkConfig(task="tiny_code", metric="pass@1", include_path=str(code), batch_size=2,
                                        allow_code_execution=True, decoding="model"))  # fmt: skip
    assert asked and all((k["do_sample"], k["temperature"], k["top_p"]) == (True, 0.1, 0.9) for k in asked)
