"""Answers of the base model and of chosen adapters to a set of open questions (``lora-blackbox answers``): what
people (``compare``) and a judge model rate side by side.

Every question is asked in the experiment's prompt template (or raw, as it is: ``--preset paper``), of every model,
with the same sampling settings and seed; the base model is loaded once and each adapter is put on it in turn.
Questions come from lora-blackbox's or FastChat's question files, or a shipped set (``vicuna80``, ``paper30``).
The answers file holds one JSON object per (question, model)::

    {"question_id": "q1", "question": "...", "model": "best", "adapter": "runs/demo/evals/<id>/adapter",
     "run_id": "<id>", "objective": 2.31, "base_model": "...", "answer": "...", "seed": 0,
     "settings": {"max_new_tokens": 256, "temperature": 0.9, "top_p": 0.9, "greedy": false, "batch_size": 8,
                  "top_k": 0, "template": "chat", "system_prompt": ""},
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
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from blackbox.assessment.questions import SHIPPED
from blackbox.assessment.selection import BASE, Candidate
from blackbox.core.errors import ConfigError, SetupError
from blackbox.core.experiment import Experiment
from blackbox.core.files import write_text_atomic

if TYPE_CHECKING:
    from blackbox.training.generation import Generated, Sampling

logger = logging.getLogger(__name__)

RAW = "raw"  # the prompt of a question asked as it is (blackbox.training.data.RAW: this layer imports no torch)

_QUESTION_KEYS = ("question", "prompt", "instruction", "text")
Engine = Literal["transformers", "vllm"]
ENGINES: tuple[Engine, ...] = ("transformers", "vllm")


@dataclass(frozen=True)
class Question:
    id: str
    text: str


def question_file(name_or_path: str) -> tuple[Path, tuple[int, ...] | None]:
    """The file of ``--questions`` and the question ids it asks (None: all): a path, or the name of a shipped set
    (``vicuna80``, ``paper30``: :mod:`blackbox.assessment.questions`).

    Raises:
        SetupError: neither a file nor a shipped set.
    """
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path, None
    if name_or_path in SHIPPED:
        return SHIPPED[name_or_path]
    raise SetupError(
        f"no question file {name_or_path!r} and no shipped question set of that name ({', '.join(SHIPPED)})"
    )


def read_questions(path: Path, *, ids: Sequence[int | str] | None = None) -> list[Question]:
    """The questions of a file, or those of ``ids`` in their order.

    JSON Lines, one question a line: lora-blackbox's ``{"id": ..., "question": ...}`` (``prompt``, ``instruction`` or
    ``text`` also name the question; without an id: q1, q2, ... by line) and FastChat's question files, with an
    integer ``question_id`` and the question under ``text`` (its first Vicuna benchmark) or as the one string of
    ``turns`` (llm_judge's). Plain text: one question a line.

    Raises:
        SetupError: the file cannot be read or holds no question, a line is not a question (the message says what
            is wrong with it), an id repeats, or an id of ``ids`` is not in the file.
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
            questions.append(_question(json.loads(line), default_id=f"q{count}"))
        except json.JSONDecodeError as e:
            raise SetupError(f"{path}, line {n}: not JSON ({e})") from e
        except ValueError as e:
            raise SetupError(f"{path}, line {n}: {e}") from e
    if not questions:
        raise SetupError(f"{path} holds no question")
    found = [q.id for q in questions]
    repeated = sorted({i for i in found if found.count(i) > 1})
    if repeated:
        raise SetupError(f"{path}: question ids must be unique, repeated: {', '.join(repeated)}")
    if ids is None:
        return questions
    by_id = {q.id: q for q in questions}
    missing = [str(i) for i in ids if str(i) not in by_id]
    if missing:
        raise SetupError(f"{path} has no question of id {', '.join(missing)}")
    return [by_id[str(i)] for i in ids]


def _question(item: Any, *, default_id: str) -> Question:
    """One line of a question file, parsed (ValueError: what is wrong with it)."""
    if not isinstance(item, dict):
        raise ValueError(f"a question is a JSON object, got {type(item).__name__}")
    question_id = _id_of(item, ("question_id", "id"), default=default_id)
    text = next((item[k] for k in _QUESTION_KEYS if isinstance(item.get(k), str)), None)
    if text is None and "turns" in item:
        text = _one_turn(item["turns"], what="question")
    if not text:
        raise ValueError(
            f"no question: a non-empty string under one of {', '.join(_QUESTION_KEYS)}, or FastChat's 'turns' "
            f"(keys found: {', '.join(sorted(item)) or 'none'})"
        )
    return Question(question_id, text)


def _id_of(item: dict[str, Any], keys: tuple[str, ...], *, default: str | None = None) -> str:
    """The id under the first of ``keys`` that the item has: a string, or an integer as FastChat writes it."""
    key = next((k for k in keys if k in item), None)
    if key is None:
        if default is None:
            raise ValueError(f"no question id ({' or '.join(keys)})")
        return default
    value = item[key]
    if isinstance(value, bool) or not isinstance(value, int | str) or value == "":
        raise ValueError(f"{key} must be an integer or a non-empty string, got {value!r}")
    return str(value)


def _one_turn(turns: Any, *, what: str) -> str:
    if not isinstance(turns, list) or not turns or not all(isinstance(t, str) for t in turns):
        raise ValueError(f"'turns' must be a list of strings, got {turns!r:.60}")
    if len(turns) > 1:
        raise ValueError(f"the {what} has {len(turns)} turns: only one-turn {what}s are supported (as Vicuna's)")
    text: str = turns[0]
    return text


def read_answers(path: Path) -> list[dict[str, Any]]:
    """The answers of a file, each a dict with at least ``question_id`` (a string), ``model``, ``answer`` and
    ``question`` (None where the file does not say it).

    Reads lora-blackbox's answers files (``lora-blackbox answers``: every key kept) and FastChat's, one model per
    file, as FastChat writes them: ``{"question_id": 1, "text": ANSWER, "model_id": ..., "answer_id": ...}`` (its first
    Vicuna evaluation) or ``{"question_id": 1, "model_id": ..., "choices": [{"index": 0, "turns": [ANSWER]}]}``
    (llm_judge's ``model_answer`` files).

    Raises:
        SetupError: the file cannot be read or a line is not an answer (the message says what is wrong with it).
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
            answers.append(_answer(json.loads(line)))
        except json.JSONDecodeError as e:
            raise SetupError(f"{path}, line {n}: not JSON ({e})") from e
        except ValueError as e:
            raise SetupError(f"{path}, line {n}: {e}") from e
    return answers


def _answer(item: Any) -> dict[str, Any]:
    """One line of an answers file, as :func:`read_answers` returns it (ValueError: what is wrong with it)."""
    if not isinstance(item, dict):
        raise ValueError(f"an answer is a JSON object, got {type(item).__name__}")
    question_id = _id_of(item, ("question_id",))
    if "model" in item:  # lora-blackbox's
        if not isinstance(item["model"], str) or not item["model"]:
            raise ValueError(f"model must be a non-empty string, got {item['model']!r}")
        if not isinstance(item.get("answer"), str):
            raise ValueError(f"no answer: 'answer' must be a string, got {item.get('answer')!r:.60}")
        question = item.get("question")
        return {**item, "question_id": question_id, "question": question if isinstance(question, str) else None}
    model = item.get("model_id")
    if not isinstance(model, str) or not model:
        raise ValueError(
            f"no model: lora-blackbox's 'model' or FastChat's 'model_id' (a non-empty string; keys found: "
            f"{', '.join(sorted(item))})"
        )
    if isinstance(item.get("text"), str):
        answer = item["text"]
    elif isinstance(item.get("choices"), list) and item["choices"] and isinstance(item["choices"][0], dict):
        answer = _one_turn(item["choices"][0].get("turns"), what="answer")
    else:
        raise ValueError("no answer: FastChat's 'text', or 'choices' with the answer in choices[0].turns")
    return {"question_id": question_id, "model": model, "answer": answer, "question": None}


def with_questions(answers: list[dict[str, Any]], questions: Sequence[Question]) -> list[dict[str, Any]]:
    """The answers with the text of their questions where they lack it (FastChat's answers files do not hold it).

    Raises:
        SetupError: a question is neither in the answers file nor among ``questions``.
    """
    texts = {q.id: q.text for q in questions}
    missing = sorted({a["question_id"] for a in answers if a["question"] is None and a["question_id"] not in texts})
    if missing:
        where = (
            "the question file" if questions else "the answers (FastChat's answers files hold none: give --questions)"
        )
        raise SetupError(f"no text for question(s) {', '.join(missing)} in {where}")
    return [a if a["question"] is not None else {**a, "question": texts[a["question_id"]]} for a in answers]


@dataclass(frozen=True)
class Preset:
    """Settings of ``lora-blackbox answers --preset NAME``; an option given on the command line wins."""

    questions: str
    prompt: str  # "template" (the experiment's) or "raw" (the question alone)
    max_new_tokens: int
    temperature: float
    top_p: float
    top_k: int


PRESETS = {
    # The human study of Tribes et al. as its answers were made (bbopt/Nomad_HPO_Llama-2_With_LoRa, blind_eval/
    # pipeline.py at the commit that added blind_eval_base_llama.json and blind_eval_nomad3_worst.json, b95d142):
    # the 30 questions of blind_eval/sampled_question.jsonl asked raw, with no prompt template, up to 1,024 new
    # tokens, `generate(do_sample=True, temperature=0.7)`: the rest came from Llama-2-7b-hf's generation_config.json
    # (top-p 0.9; its temperature 0.6 overridden) and transformers' defaults (top-k 50). The script's later version
    # (4df3306) samples at temperature 0.9, top-p 0.9 and top-k 50 up to 2,048 tokens in all, prompt included.
    "paper": Preset(questions="paper30", prompt="raw", max_new_tokens=1024, temperature=0.7, top_p=0.9, top_k=50),
}


def generate_answers(
    candidates: Sequence[Candidate],
    experiment: Experiment,
    questions: Sequence[Question],
    out: Path,
    *,
    sampling: Sampling,
    seed: int,
    raw_prompt: bool = False,
    engine: Engine = "transformers",
) -> list[dict[str, Any]]:
    """Answer every question with the base model and every candidate (an adapter), write ``out`` after each
    model, and return all its lines. Models already answered in ``out`` with the same settings are kept.
    ``raw_prompt``: ask each question as it is, without the experiment's prompt template (``template`` "raw").

    Raises:
        ConfigError: two candidates share a label.
        SetupError: the model cannot be loaded; on vLLM, an adapter answered every question as the base model.
    """
    labels = [c.label for c in candidates]
    if len(set(labels)) < len(labels):
        raise ConfigError(f"each model needs its own label, got {labels}")
    template = RAW if raw_prompt else experiment.data.template
    system_prompt = None if raw_prompt else experiment.data.system_prompt
    settings = {**sampling.as_dict(), "template": template, "system_prompt": system_prompt, "engine": engine}
    existing = read_answers(out) if out.exists() else []
    kept = _complete_answers(existing, candidates, questions, settings, seed)
    todo = [c for c in candidates if c.label not in kept]
    # Other models' answers in the file stay; this call's models come after them, in the order asked.
    lines = [line for line in existing if line["model"] not in labels]
    lines += [line for c in candidates if c.label in kept for line in kept[c.label]]
    if not todo:
        logger.info("%s already holds every answer", out)
        return lines
    answer: Answerer = _vllm_answerer if engine == "vllm" else _transformers_answerer
    out.parent.mkdir(parents=True, exist_ok=True)
    base_texts = [line["answer"] for line in kept.get(BASE, [])] or None
    with answer(experiment, todo, questions, _Asking(template, system_prompt, sampling, seed)) as ask:
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


@dataclass(frozen=True)
class _Asking:
    """How every question is asked, of every model and on either engine: its prompt (the template, ``raw``: the
    question as it is, and the system prompt), the sampling settings and the seed."""

    template: str
    system_prompt: str | None
    sampling: Sampling
    seed: int

    def prompts(self, tokenizer: Any, questions: Sequence[Question]) -> list[str]:
        from blackbox.training.data import Row, prompt_formatter

        format_prompt = prompt_formatter(self.template, tokenizer, system_prompt=self.system_prompt)
        return [format_prompt(Row(q.text, "", "")) for q in questions]

    @property
    def add_special_tokens(self) -> bool:
        from blackbox.training.data import adds_special_tokens

        return adds_special_tokens(self.template)


Answerer = Callable[[Experiment, Sequence[Candidate], Sequence[Question], _Asking], AbstractContextManager[Ask]]
"""An engine: its base model loaded for the candidates to answer (``todo``), it yields their :data:`Ask`."""


@contextmanager
def _transformers_answerer(
    experiment: Experiment, todo: Sequence[Candidate], questions: Sequence[Question], asking: _Asking
) -> Iterator[Ask]:
    from blackbox.training.adapters import adapter_applied, load_for_inference
    from blackbox.training.generation import generate

    inference = load_for_inference(experiment)  # padded batches: SDPA, not the packed-only 'varlen' attention
    logger.info("base model %s loaded in %.1f s", experiment.model.name_or_path, inference.load_seconds)
    prompts = asking.prompts(inference.tokenizer, questions)

    def ask(adapter: Path | None) -> list[Generated]:
        with adapter_applied(inference.model, adapter) as model:
            return generate(
                model,
                inference.tokenizer,
                prompts,
                sampling=asking.sampling,
                seed=asking.seed,
                device=inference.device,
                precision=inference.precision,
                add_special_tokens=asking.add_special_tokens,
            )

    yield ask


@contextmanager
def _vllm_answerer(
    experiment: Experiment, todo: Sequence[Candidate], questions: Sequence[Question], asking: _Asking
) -> Iterator[Ask]:
    from blackbox.training.vllm_engine import VllmModel

    adapters = [c.adapter for c in todo if c.adapter is not None]
    engine = VllmModel(experiment, adapters=adapters, seed=asking.seed)
    logger.info("base model %s loaded in vLLM in %.1f s", experiment.model.name_or_path, engine.load_seconds)
    prompts = asking.prompts(engine.tokenizer, questions)

    def ask(adapter: Path | None) -> list[Generated]:
        return engine.generate(
            prompts,
            adapter=adapter,
            sampling=asking.sampling,
            seed=asking.seed,
            add_special_tokens=asking.add_special_tokens,
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
