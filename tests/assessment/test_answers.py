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
        "max_new_tokens": 12, "temperature": 0.9, "top_p": 0.9, "greedy": False, "batch_size": 2,
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


VLLM = importlib.util.find_spec("vllm") is not None


@pytest.mark.gpu
def test_answers_on_vllm_apply_each_adapter(tiny_experiment: Path, tiny_adapter: Path, tmp_path: Path) -> None:
    if not VLLM:
        pytest.skip("vLLM is not installed: answers --engine vllm is tested where it is (pip install vllm, a GPU)")
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
