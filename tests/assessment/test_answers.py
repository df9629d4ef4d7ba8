"""lora-blackbox answers on the tiny model: the base model and an adapter (made with peft directly, its B
matrices non-zero, so that it changes the answers) answer a question file; the same seed gives the same answers.
The vLLM engine: its answers differ per adapter where vLLM is installed (with a GPU), and without vLLM the
command says what is missing."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from blackbox.cli import main


@pytest.fixture(scope="module")
def tiny_adapter(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    # init_lora_weights=False: random A and B, an adapter that moves the model (peft's default B is zero)
    config = LoraConfig(r=4, lora_alpha=32, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    folder = tmp_path_factory.mktemp("adapters") / "shifted"
    get_peft_model(model, config).save_pretrained(folder)
    return folder


def _answers(tmp_path: Path, experiment: Path, adapter: Path, out: Path, *extra: str) -> list[dict]:
    questions = tmp_path / "questions.txt"
    questions.write_text("Repeat the word apple twice.\n\nWrite river in capital letters.\nReverse the words.\n")
    args = ["answers", "--questions", str(questions), "-e", str(experiment), "--adapter", str(adapter)]
    args += ["--out", str(out), "--max-new-tokens", "12", "--batch-size", "2", *extra]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(out)  # the file's path, nothing else, on stdout
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_answers_of_base_and_adapter_are_reproducible(
    tiny_experiment: Path, tiny_adapter: Path, tmp_path: Path
) -> None:
    first = _answers(tmp_path, tiny_experiment, tiny_adapter, tmp_path / "a.jsonl")
    second = _answers(tmp_path, tiny_experiment, tiny_adapter, tmp_path / "b.jsonl")
    assert [(a["question_id"], a["model"]) for a in first] == [
        (q, m) for m in ("base", "shifted") for q in ("q1", "q2", "q3")
    ]
    assert [a["answer"] for a in first] == [a["answer"] for a in second]  # same seed, same answers
    assert first[0]["question"] == "Repeat the word apple twice."
    assert first[0]["adapter"] is None and first[3]["adapter"] == str(tiny_adapter)
    assert first[0]["settings"] == {
        "max_new_tokens": 12, "temperature": 0.9, "top_p": 0.9, "greedy": False, "batch_size": 2, "top_k": 0,
        "template": "alpaca", "system_prompt": None, "engine": "transformers",
    }  # fmt: skip
    assert all(0 < a["timings"]["new_tokens"] <= 12 and a["timings"]["seconds"] > 0 for a in first)
    by_model = {m: [a["answer"] for a in first if a["model"] == m] for m in ("base", "shifted")}
    assert by_model["base"] != by_model["shifted"]

    other_seed = _answers(tmp_path, tiny_experiment, tiny_adapter, tmp_path / "c.jsonl", "--seed", "1")
    assert [a["answer"] for a in other_seed] != [a["answer"] for a in first]

    # A rerun into the same file keeps what it holds; another setting redoes every model.
    before = (tmp_path / "a.jsonl").stat().st_mtime_ns
    assert _answers(tmp_path, tiny_experiment, tiny_adapter, tmp_path / "a.jsonl") == first
    assert (tmp_path / "a.jsonl").stat().st_mtime_ns == before
    greedy = _answers(tmp_path, tiny_experiment, tiny_adapter, tmp_path / "a.jsonl", "--greedy")
    assert all(a["settings"]["greedy"] for a in greedy) and len(greedy) == 6


def test_question_files(tmp_path: Path) -> None:
    from blackbox.assessment.answers import Question, read_questions
    from blackbox.core.errors import SetupError

    jsonl = tmp_path / "q.jsonl"
    jsonl.write_text('{"id": "v1", "question": "Why?"}\n{"prompt": "How?"}\n')
    assert read_questions(jsonl) == [Question("v1", "Why?"), Question("q2", "How?")]
    jsonl.write_text('{"id": 1, "question": "Why?"}\n{"id": 1, "question": "How?"}\n')
    with pytest.raises(SetupError, match="repeated: 1"):
        read_questions(jsonl)


def test_the_paper_preset_asks_the_authors_30_questions_raw(
    tiny_experiment: Path, tiny_adapter: Path, tiny_model: Path, tmp_path: Path
) -> None:
    """--preset paper: the 30 questions of the reference study's human study, by their ids and in their order, asked
    as they are (no template: checked against transformers' own greedy answer to the raw question), sampled as the
    study's answers were (temperature 0.7, top-k 50, top-p 0.9, 1,024 new tokens), options given winning."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from blackbox.assessment.answers import PRESETS
    from blackbox.assessment.questions import PAPER_30

    assert PRESETS["paper"].max_new_tokens == 1024 and PRESETS["paper"].prompt == "raw"
    args = ["answers", "-e", str(tiny_experiment), "--adapter", str(tiny_adapter), "--preset", "paper"]
    out = tmp_path / "sampled.jsonl"
    result = CliRunner().invoke(main, [*args, "--max-new-tokens", "4", "--out", str(out)])
    assert result.exit_code == 0, result.output
    sampled = [json.loads(line) for line in out.read_text().splitlines()]
    assert [a["question_id"] for a in sampled[:30]] == [str(i) for i in PAPER_30]
    assert sampled[0]["question"].startswith("Pretend to be a world-famous chef.")
    assert {json.dumps(a["settings"], sort_keys=True) for a in sampled} == {
        json.dumps({"max_new_tokens": 4, "temperature": 0.7, "top_p": 0.9, "greedy": False, "batch_size": 8,
                    "top_k": 50, "template": "raw", "system_prompt": None, "engine": "transformers"}, sort_keys=True)
    }  # fmt: skip

    out = tmp_path / "greedy.jsonl"
    extra = ["--greedy", "--max-new-tokens", "6", "--batch-size", "1", "--out", str(out)]
    result = CliRunner().invoke(main, [*args[:3], "--preset", "paper", *extra])  # the base model alone
    assert result.exit_code == 0, result.output
    first = json.loads(out.read_text().splitlines()[0])
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    ids = tokenizer(first["question"], return_tensors="pt")  # the raw question, BOS added
    new = model.generate(**ids, max_new_tokens=6, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert first["answer"] == tokenizer.decode(new[0, ids["input_ids"].shape[1] :], skip_special_tokens=True).strip()


def test_fastchat_question_files_and_the_shipped_sets(tmp_path: Path) -> None:
    from blackbox.assessment.answers import Question, question_file, read_questions
    from blackbox.assessment.questions import PAPER_30
    from blackbox.core.errors import SetupError

    vicuna = read_questions(question_file("vicuna80")[0])
    assert len(vicuna) == 80 and vicuna[0] == Question("1", "How can I improve my time management skills?")
    path, ids = question_file("paper30")
    paper = read_questions(path, ids=ids)
    assert [q.id for q in paper] == [str(i) for i in PAPER_30] and len(set(PAPER_30)) == 30
    assert paper[-1] == vicuna[41] and paper[-1].text.startswith("How many atoms are in a grain of salt?")
    # FastChat's first format: the question under "text", an integer question_id.
    old = tmp_path / "question.jsonl"
    old.write_text('{"question_id": 1, "text": "Why?", "category": "generic"}\n{"question_id": 2, "text": "How?"}\n')
    assert read_questions(old) == [Question("1", "Why?"), Question("2", "How?")]
    with pytest.raises(SetupError, match="has no question of id 3"):
        read_questions(old, ids=[1, 3])
    refused = {
        '{"question_id": true, "text": "x"}': r"line 1: question_id must be an integer or a non-empty string, got True",
        '{"question_id": 3, "turns": ["a", "b"]}': r"line 1: the question has 2 turns: only one-turn questions",
        '{"question_id": 4, "turns": "a"}': r"line 1: 'turns' must be a list of strings, got 'a'",
        '{"question_id": 5, "category": "x"}': r"line 1: no question: .* \(keys found: category, question_id\)",
        "[1, 2]": r"line 1: a question is a JSON object, got list",
        '{"question_id": 6, "text": "x"': r"line 1: not JSON",
    }
    for line, reason in refused.items():
        old.write_text(line + "\n")
        with pytest.raises(SetupError, match=reason):
            read_questions(old)
    with pytest.raises(SetupError, match="no shipped question set of that name"):
        question_file("vicuna81")


def test_fastchat_answers_files_are_compared_with_their_questions(tmp_path: Path) -> None:
    from blackbox.assessment.answers import read_answers
    from blackbox.core.errors import SetupError

    first = tmp_path / "answer_vicuna-13b.jsonl"  # fastchat/eval/table/answer/: the answer under "text"
    first.write_text("".join(json.dumps({"question_id": i, "text": f"A{i}", "answer_id": "x", "model_id": "vicuna-13b",
                                         "metadata": {}}) + "\n" for i in (1, 2)))  # fmt: skip
    judge = tmp_path / "llama-13b.jsonl"  # fastchat/llm_judge/data/*/model_answer/
    judge.write_text("".join(json.dumps({"question_id": i, "answer_id": "y", "model_id": "llama-13b",
                                         "choices": [{"index": 0, "turns": [f"B{i}"]}], "tstamp": 1.0}) + "\n"
                             for i in (1, 2)))  # fmt: skip
    assert read_answers(first)[0] == {"question_id": "1", "model": "vicuna-13b", "answer": "A1", "question": None}
    assert read_answers(judge)[1] == {"question_id": "2", "model": "llama-13b", "answer": "B2", "question": None}
    db = tmp_path / "votes.sqlite"
    result = CliRunner().invoke(main, ["compare", str(first), str(judge), "--db", str(db), "--results"])
    assert result.exit_code != 0 and "no text for question(s) 1, 2" in result.output and "--questions" in result.output
    args = ["compare", str(first), str(judge), "--questions", "vicuna80", "--db", str(db), "--results"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    refused = {
        '{"question_id": 1, "model_id": "m"}': r"line 1: no answer: FastChat's 'text', or 'choices'",
        '{"question_id": 1, "text": "a"}': r"line 1: no model: lora-blackbox's 'model' or FastChat's 'model_id'",
        '{"question_id": 1.5, "text": "a", "model_id": "m"}': r"line 1: question_id must be an integer or a non-emp",
        '{"question_id": "q1", "model": "m"}': r"line 1: no answer: 'answer' must be a string, got None",
        '{"text": "a", "model_id": "m"}': r"line 1: no question id \(question_id\)",
        '{"question_id": 1, "model_id": "m", "choices": [{"turns": ["a", "b"]}]}': r"line 1: the answer has 2 turns",
    }
    for line, reason in refused.items():
        first.write_text(line + "\n")
        with pytest.raises(SetupError, match=reason):
            read_answers(first)


VLLM = importlib.util.find_spec("vllm") is not None


@pytest.mark.gpu
@pytest.mark.skipif(  # before the fixtures: the adapter is not trained for nothing
    not VLLM, reason="vLLM is not installed: answers --engine vllm is tested where it is (pip install vllm, a GPU)"
)
def test_answers_on_vllm_apply_each_adapter(tiny_experiment: Path, tiny_adapter: Path, tmp_path: Path) -> None:
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device: vLLM's LoRA support needs a GPU")
    lines = _answers(tmp_path, tiny_experiment, tiny_adapter, tmp_path / "v.jsonl", "--engine", "vllm")
    assert [(a["model"], a["settings"]["engine"]) for a in lines] == [("base", "vllm")] * 3 + [("shifted", "vllm")] * 3
    by_model = {m: [a["answer"] for a in lines if a["model"] == m] for m in ("base", "shifted")}
    assert by_model["base"] != by_model["shifted"]  # the adapter was applied (the command checks it too)
    again = _answers(tmp_path, tiny_experiment, tiny_adapter, tmp_path / "w.jsonl", "--engine", "vllm")
    assert [a["answer"] for a in again] == [a["answer"] for a in lines]  # seeded per question


def test_answers_on_vllm_refuse_what_vllm_cannot_do(tiny_experiment: Path, tiny_adapter: Path, tmp_path: Path) -> None:
    questions = tmp_path / "questions.txt"
    questions.write_text("Repeat the word apple twice.\n")
    args = ["answers", "--questions", str(questions), "-e", str(tiny_experiment), "--engine", "vllm"]
    dora = tmp_path / "dora"
    shutil.copytree(tiny_adapter, dora)
    config = json.loads((dora / "adapter_config.json").read_text())
    (dora / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    result = CliRunner().invoke(main, [*args, "--adapter", str(dora), "--out", str(tmp_path / "a.jsonl")])
    assert result.exit_code == 1 and "is a DoRA adapter, which vLLM cannot apply" in result.output
    if VLLM:
        return
    result = CliRunner().invoke(main, [*args, "--adapter", str(tiny_adapter), "--out", str(tmp_path / "a.jsonl")])
    assert result.exit_code == 1
    assert "needs vllm, which is not installed: pip install 'lora-blackbox[vllm]'" in result.output
    assert not (tmp_path / "a.jsonl").exists()
