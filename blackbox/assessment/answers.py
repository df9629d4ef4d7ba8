"""Answers of the base model and of chosen adapters to a set of open questions (``lora-blackbox answers``): what
people (``compare``) and a judge model rate side by side.

Every question is asked in the experiment's prompt template, of every model, with the same sampling settings
and seed; the base model is loaded once and each adapter is put on it in turn. The answers file holds one JSON
object per (question, model)::

    {"question_id": "q1", "question": "...", "model": "best", "adapter": "runs/demo/evals/<id>/adapter",
     "run_id": "<id>", "objective": 2.31, "base_model": "...", "answer": "...", "seed": 0,
     "settings": {"max_new_tokens": 256, "temperature": 0.9, "top_p": 0.9, "greedy": false, "batch_size": 8,
                  "template": "chat", "system_prompt": ""},
     "timings": {"seconds": 0.41, "new_tokens": 57}}

A rerun keeps the answers of every model that already has all the questions with the same settings and seed,
and generates the others again (a model's answers depend on its batches: they are redone whole).

Engines: ``transformers`` (the default: the model as the evaluations load it, each adapter put on it with peft)
or ``vllm`` (:mod:`blackbox.training.vllm_engine`: vLLM's batching and LoRA support, where vLLM is installed).
On vLLM every adapter's answers are checked against the base model's (generated for the check when the base
model is not asked for): an adapter that answers every question as the base model does was not applied, and
the call fails before its answers are written.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from blackbox.assessment.selection import BASE, Candidate
from blackbox.core.errors import ConfigError, SetupError
from blackbox.core.experiment import Experiment
from blackbox.core.files import write_text_atomic

if TYPE_CHECKING:
    from blackbox.training.generation import Generated, Sampling

logger = logging.getLogger(__name__)

_QUESTION_KEYS = ("question", "prompt", "instruction", "text")
Engine = Literal["transformers", "vllm"]
ENGINES: tuple[Engine, ...] = ("transformers", "vllm")


@dataclass(frozen=True)
class Question:
    id: str
    text: str


def read_questions(path: Path) -> list[Question]:
    """The questions of a file: JSON Lines (``{"id": ..., "question": ...}``; ``prompt``, ``instruction`` or
    ``text`` also name the question; without ``id``: q1, q2, ... by line) or plain text, one question a line.

    Raises:
        SetupError: the file cannot be read, holds no question, a line is not a question, or an id repeats.
    """
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise SetupError(f"cannot read the questions: {e}") from e
    numbered = [(n, line.strip()) for n, line in enumerate(lines, start=1) if line.strip()]
    as_json = path.suffix == ".jsonl" or (numbered and numbered[0][1].startswith("{"))
    questions = []
    for count, (n, line) in enumerate(numbered, start=1):
        if not as_json:
            questions.append(Question(f"q{count}", line))
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            raise SetupError(f"{path}, line {n}: not JSON ({e})") from e
        text = next((item[k] for k in _QUESTION_KEYS if isinstance(item, dict) and isinstance(item.get(k), str)), None)
        if not text:
            raise SetupError(f"{path}, line {n}: no question (a string under one of {', '.join(_QUESTION_KEYS)})")
        questions.append(Question(str(item.get("id", f"q{count}")), text))
    if not questions:
        raise SetupError(f"{path} holds no question")
    ids = [q.id for q in questions]
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    if repeated:
        raise SetupError(f"{path}: question ids must be unique, repeated: {', '.join(repeated)}")
    return questions


def read_answers(path: Path) -> list[dict[str, Any]]:
    """The lines of an answers file.

    Raises:
        SetupError: the file cannot be read or a line is not an answer.
    """
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise SetupError(f"cannot read the answers: {e}") from e
    answers = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            raise SetupError(f"{path}, line {n}: not JSON ({e})") from e
        if not isinstance(item, dict) or not all(isinstance(item.get(k), str) for k in ("question_id", "model")):
            raise SetupError(f"{path}, line {n}: not an answer (question_id, model, question, answer)")
        answers.append(item)
    return answers


def generate_answers(
    candidates: Sequence[Candidate],
    experiment: Experiment,
    questions: Sequence[Question],
    out: Path,
    *,
    sampling: Sampling,
    seed: int,
    engine: Engine = "transformers",
) -> list[dict[str, Any]]:
    """Answer every question with the base model and every candidate (an adapter), write ``out`` after each
    model, and return all its lines. Models already answered in ``out`` with the same settings are kept.

    Raises:
        ConfigError: two candidates share a label.
        SetupError: the model cannot be loaded; on vLLM, an adapter answered every question as the base model.
    """
    labels = [c.label for c in candidates]
    if len(set(labels)) < len(labels):
        raise ConfigError(f"each model needs its own label, got {labels}")
    settings = {
        **sampling.as_dict(),
        "template": experiment.data.template,
        "system_prompt": experiment.data.system_prompt,
        "engine": engine,
    }
    existing = read_answers(out) if out.exists() else []
    kept = _complete_answers(existing, candidates, questions, settings, seed)
    todo = [c for c in candidates if c.label not in kept]
    # Other models' answers in the file stay; this call's models come after them, in the order asked.
    lines = [line for line in existing if line["model"] not in labels]
    lines += [line for c in candidates if c.label in kept for line in kept[c.label]]
    if not todo:
        logger.info("%s already holds every answer", out)
        return lines
    answer = _vllm_answerer if engine == "vllm" else _transformers_answerer
    out.parent.mkdir(parents=True, exist_ok=True)
    base_texts = [line["answer"] for line in kept.get(BASE, [])] or None
    with answer(experiment, todo, questions, sampling=sampling, seed=seed) as ask:
        reference = None
        if engine == "vllm" and base_texts is None:
            reference = ask(None)  # the base model's answers: what every adapter's must differ from
            base_texts = [one.text for one in reference]
        for candidate in todo:
            started = time.perf_counter()
            generated = reference if candidate.adapter is None and reference else ask(candidate.adapter)
            if engine == "vllm" and candidate.adapter is not None:
                _check_applied(candidate, [g.text for g in generated], base_texts)
            for question, one in zip(questions, generated, strict=True):
                lines.append(
                    {
                        "question_id": question.id,
                        "question": question.text,
                        "model": candidate.label,
                        "adapter": str(candidate.adapter) if candidate.adapter else None,
                        "run_id": candidate.run_id,
                        "objective": candidate.objective,
                        "base_model": experiment.model.name_or_path,
                        "answer": one.text,
                        "seed": seed,
                        "settings": settings,
                        "timings": {"seconds": round(one.seconds, 4), "new_tokens": one.new_tokens},
                    }
                )
            seconds = time.perf_counter() - started
            logger.info("%s: %d answers in %.1f s", candidate.describe(), len(questions), seconds)
            write_text_atomic(out, "".join(json.dumps(line) + "\n" for line in lines))
    return lines


Ask = Callable[["Path | None"], "list[Generated]"]
"""An engine's answers to the questions with an adapter (None: the base model alone), in order."""


@contextmanager
def _transformers_answerer(
    experiment: Experiment, todo: Sequence[Candidate], questions: Sequence[Question], *, sampling: Sampling, seed: int
) -> Iterator[Ask]:
    from blackbox.training.adapters import adapter_applied, load_for_inference
    from blackbox.training.data import Row, adds_special_tokens, prompt_formatter
    from blackbox.training.generation import generate

    if experiment.model.attn_implementation == "auto":  # padded batches: not the padding-free attention of packing
        model = experiment.model.model_copy(update={"attn_implementation": "sdpa"})
        experiment = experiment.model_copy(update={"model": model})
    inference = load_for_inference(experiment)
    logger.info("base model %s loaded in %.1f s", experiment.model.name_or_path, inference.load_seconds)
    format_prompt = prompt_formatter(
        experiment.data.template, inference.tokenizer, system_prompt=experiment.data.system_prompt
    )
    prompts = [format_prompt(Row(q.text, "", "")) for q in questions]

    def ask(adapter: Path | None) -> list[Generated]:
        with adapter_applied(inference.model, adapter) as model:
            return generate(
                model,
                inference.tokenizer,
                prompts,
                sampling=sampling,
                seed=seed,
                device=inference.device,
                precision=inference.precision,
                add_special_tokens=adds_special_tokens(experiment.data.template),
            )

    yield ask


@contextmanager
def _vllm_answerer(
    experiment: Experiment, todo: Sequence[Candidate], questions: Sequence[Question], *, sampling: Sampling, seed: int
) -> Iterator[Ask]:
    from blackbox.training.data import Row, adds_special_tokens, prompt_formatter
    from blackbox.training.vllm_engine import VllmModel

    engine = VllmModel(experiment, adapters=[c.adapter for c in todo if c.adapter is not None], seed=seed)
    logger.info("base model %s loaded in vLLM in %.1f s", experiment.model.name_or_path, engine.load_seconds)
    format_prompt = prompt_formatter(
        experiment.data.template, engine.tokenizer, system_prompt=experiment.data.system_prompt
    )
    prompts = [format_prompt(Row(q.text, "", "")) for q in questions]

    def ask(adapter: Path | None) -> list[Generated]:
        return engine.generate(
            prompts,
            adapter=adapter,
            sampling=sampling,
            seed=seed,
            add_special_tokens=adds_special_tokens(experiment.data.template),
        )

    yield ask


def _check_applied(candidate: Candidate, texts: Sequence[str], base_texts: Sequence[str] | None) -> None:
    """Fail when an adapter answered every question exactly as the base model: the engine did not apply it."""
    if base_texts is not None and list(texts) == list(base_texts):
        raise SetupError(
            f"{candidate.describe()}: vLLM answered every question as the base model does, so the adapter was not "
            "applied (its target modules or layers may be ones vLLM's LoRA support skips): check it with "
            "--engine transformers"
        )


def _complete_answers(
    existing: list[dict[str, Any]],
    candidates: Sequence[Candidate],
    questions: Sequence[Question],
    settings: dict[str, Any],
    seed: int,
) -> dict[str, list[dict[str, Any]]]:
    """The existing lines per model label that answer exactly ``questions`` with these settings, seed and
    adapter."""
    wanted = [(q.id, q.text) for q in questions]
    complete = {}
    for candidate in candidates:
        adapter = str(candidate.adapter) if candidate.adapter else None
        lines = [line for line in existing if line["model"] == candidate.label]
        if (
            [(line["question_id"], line.get("question")) for line in lines] == wanted
            and all(line.get("settings") == settings and line.get("seed") == seed for line in lines)
            and all(line.get("adapter") == adapter for line in lines)
        ):
            complete[candidate.label] = lines
    return complete


def base_candidate() -> Candidate:
    """The base model without adapter: every comparison's reference."""
    return Candidate(BASE, None)
