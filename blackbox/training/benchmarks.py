"""Benchmark scores of a model in memory, by EleutherAI's lm-evaluation-harness (``lm-eval``).

The model is scored as it is (a PeftModel with its adapter, or the base model): never loaded a second time.
Any lm-eval task or group works, from its registry or from a folder of task YAMLs (``include_path``); lm-eval
fetches hub datasets itself, so the registry's tasks need the hub or its cache. The tasks that score as InstructEval
did (``instructeval_mmlu``, ``instructeval_bbh``, ``instructeval_drop``, ``instructeval_humaneval``: the benchmark
table of the reference study, :mod:`blackbox.training.instructeval`) ship with the package and are found by name.
One benchmark ships with the project and runs offline: ``embedded:chitchat-replies`` (:func:`chitchat_replies_task`).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from blackbox.core.cache import cache_root
from blackbox.core.errors import SetupError
from blackbox.core.experiment import BenchmarkConfig, DataConfig, Experiment
from blackbox.core.extras import require
from blackbox.core.files import folder_published_at, write_text_atomic
from blackbox.core.folders import BASE_SCORES_FILE
from blackbox.core.logs import LogLines
from blackbox.core.record import writing_records
from blackbox.training.attention import padded_batches
from blackbox.training.data import Row, prompt_formatter
from blackbox.training.embedded import PREFIX, embedded_rows
from blackbox.training.instructeval import TASKS_DIR

logger = logging.getLogger(__name__)

CHITCHAT_REPLIES = f"{PREFIX}chitchat-replies"
_CHITCHAT_TASK = "chitchat_replies"
_CHITCHAT_ITEMS, _CHITCHAT_CHOICES, _CHITCHAT_SEED = 100, 2, 1234


@dataclass(frozen=True)
class Score:
    """One benchmark's score of one model, as ``downstream.jsonl`` and the records keep it."""

    key: str  # benchmark:<label>:<metric>
    task: str
    metric: str
    value: float
    stderr: float | None
    samples: int  # examples scored, over all tasks of a group
    num_fewshot: int | None
    limit: float
    seconds: float
    lm_eval_version: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def model_decoding(model: Any) -> dict[str, Any]:
    """How the model's own generation config (its ``generation_config.json``) decodes: what transformers'
    ``generate`` uses for every setting its caller leaves unset, and so what InstructEval's Llama model, which sets
    only the number of new tokens, generated with (``decoding = "model"``). Sampling settings only when it samples.
    """
    config = model.generation_config
    settings: dict[str, Any] = {"do_sample": bool(config.do_sample)}
    if config.do_sample:
        for name in ("temperature", "top_p", "top_k"):
            if getattr(config, name, None) is not None:
                settings[name] = getattr(config, name)
    return settings


@functools.cache
def _model_decoding_lm() -> type[Any]:
    """lm-eval's model with ``decoding = "model"``: every generation decoded as the model's own generation config
    says (:func:`model_decoding`) under the task's sampling settings, as InstructEval generated: a greedy task (its
    MMLU, BBH, DROP: InstructEval set nothing) takes the model's settings whole; a task that samples itself (its
    HumanEval: a temperature of its own) keeps its settings and takes the model's for the rest (top-p)."""
    from lm_eval.models.huggingface import HFLM

    class ModelDecodingLM(HFLM):  # type: ignore[misc]  # lm-eval has no type hints
        def _model_generate(self, context: Any, max_length: int, stop: list[str], **settings: Any) -> Any:
            own = model_decoding(self.model)
            if settings.get("do_sample"):
                settings = {**own, **settings}
            else:
                settings = {k: v for k, v in settings.items() if k not in ("do_sample", "temperature")} | own
            return super()._model_generate(context, max_length, stop, **settings)

    return ModelDecodingLM


class Scorer:
    """Scores models on benchmarks; keeps lm-eval's task index and the generated local tasks of one call.

    ``data``: the experiment's data settings, whose prompt template renders the embedded benchmark's prompts.
    ``allow_code_execution``: lets tasks run model-written code (HumanEval): only where it is isolated.
    """

    def __init__(self, tokenizer: Any, data: DataConfig, *, allow_code_execution: bool = False) -> None:
        require("lm_eval", purpose="benchmark scores (lm-evaluation-harness)")
        self.tokenizer = tokenizer
        self.data = data
        self.allow_code_execution = allow_code_execution
        self._local_managers: dict[tuple[str, ...], Any] = {}  # the local folders' tasks alone
        self._task_managers: dict[tuple[str, ...], Any] = {}  # the local folders' and lm-eval's

    def check(self, benchmarks: Sequence[BenchmarkConfig]) -> None:
        """Fail now, before any training, when a benchmark's task is unknown.

        Raises:
            SetupError: an unknown task.
        """
        for benchmark in benchmarks:
            task, include = self._resolve(benchmark)
            self._task_manager(include, list(benchmark.tasks) or [task])

    def score(self, model: Any, benchmark: BenchmarkConfig) -> Score:
        """``model``'s score on ``benchmark``.

        Raises:
            SetupError: unknown task or metric, or a task that runs code without ``allow_code_execution``.
        """
        import lm_eval
        from lm_eval.models.huggingface import HFLM

        task, include = self._resolve(benchmark)
        tasks = list(benchmark.tasks) or [task]
        manager = self._task_manager(include, tasks)
        started = time.perf_counter()
        lm_class = HFLM
        if benchmark.decoding == "model":
            logger.info("benchmark %s decoded as the model's config says: %s", benchmark.key, model_decoding(model))
            lm_class = _model_decoding_lm()
        lm = lm_class(pretrained=model, tokenizer=self.tokenizer, batch_size=benchmark.batch_size)
        limit = benchmark.limit or None
        allow_code = self.allow_code_execution or benchmark.allow_code_execution
        if benchmark.allow_code_execution and not self.allow_code_execution:
            logger.warning("benchmark %s runs model-written code: the experiment allows it", benchmark.key)
        # Padded batches: a model that trains with the packed-only 'varlen' attention is scored with SDPA.
        with padded_batches(model), _code_execution(allow_code), _lm_eval_output():
            try:
                results = lm_eval.simple_evaluate(
                    model=lm,
                    tasks=tasks,
                    num_fewshot=benchmark.num_fewshot,
                    limit=int(limit) if limit is not None and limit >= 1 else limit,
                    task_manager=manager,
                    log_samples=False,
                    bootstrap_iters=1000,
                    confirm_run_unsafe_code=allow_code,
                )
            except ValueError as e:  # lm-eval's refusal to run code, among others
                raise SetupError(f"benchmark {benchmark.key}: {e}") from e
        if results is None:  # only ranks other than 0 of a distributed lm-eval get None
            raise SetupError(f"benchmark {benchmark.key}: lm-eval returned no results")
        metric, value, stderr, samples = _aggregate(results, tasks, benchmark)
        seconds = time.perf_counter() - started
        logger.info("benchmark %s: %.4f (%d examples, %.1f s)", benchmark.key, value, samples, seconds)
        return Score(
            key=benchmark.model_copy(update={"metric": metric}).key,
            task=benchmark.task,
            metric=metric,
            value=value,
            stderr=stderr,
            samples=samples,
            num_fewshot=benchmark.num_fewshot,
            limit=benchmark.limit,
            seconds=seconds,
            lm_eval_version=metadata.version("lm-eval"),
        )

    def _resolve(self, benchmark: BenchmarkConfig) -> tuple[str, tuple[str, ...]]:
        """lm-eval's name of the task and the folders of task YAMLs it needs: the shipped InstructEval tasks', and the
        benchmark's own."""
        own = (str(Path(benchmark.include_path).expanduser().resolve()),) if benchmark.include_path else ()
        include = (str(TASKS_DIR), *own)
        if benchmark.task == CHITCHAT_REPLIES:
            return _CHITCHAT_TASK, (*include, str(chitchat_replies_task(self.tokenizer, self.data)))
        if benchmark.task.startswith(PREFIX):
            raise SetupError(f"unknown embedded benchmark {benchmark.task!r}; known: {CHITCHAT_REPLIES}")
        return benchmark.task, include

    def _task_manager(self, include: tuple[str, ...], tasks: Sequence[str]) -> Any:
        """lm-eval's task index: of the local folders alone when they hold every task (indexing lm-eval's own
        thousands of tasks takes seconds), else of both."""
        from lm_eval.tasks import TaskManager

        if include not in self._local_managers:
            self._local_managers[include] = TaskManager(include_path=list(include), include_defaults=False)
        manager = self._local_managers[include]
        if not set(tasks) <= set(manager.all_tasks):
            if include not in self._task_managers:
                self._task_managers[include] = TaskManager(include_path=list(include))
            manager = self._task_managers[include]
        unknown = [t for t in tasks if t not in manager.all_tasks]
        if unknown:
            raise SetupError(f"unknown lm-eval task(s) {unknown}: not in lm-eval's registry nor in {list(include)}")
        return manager


def _metric_key(row: dict[str, Any], benchmark: BenchmarkConfig) -> str:
    """lm-eval's key of the benchmark's metric (``acc,none``); with no metric named, the task's first one."""
    if benchmark.metric:
        return benchmark.metric if "," in benchmark.metric else f"{benchmark.metric},none"
    reported = [k for k in row if "," in k and "_stderr" not in k]
    if not reported:
        raise SetupError(f"benchmark {benchmark.key}: lm-eval reported no metric")
    return str(reported[0])


def _aggregate(
    results: dict[str, Any], tasks: Sequence[str], benchmark: BenchmarkConfig
) -> tuple[str, float, float | None, int]:
    """(metric, value, stderr, examples) of the benchmark's metric: a task's or group's own value, or the
    example-weighted mean over the listed tasks (a subset of a group)."""
    metric = _metric_key(results["results"].get(tasks[0], {}), benchmark)
    name, _, filter_name = metric.partition(",")
    stderr_key = f"{name}_stderr,{filter_name}"
    counts = results.get("n-samples", {})
    groups = results.get("group_subtasks", {})

    def examples(task: str) -> int:
        if task in counts:
            return int(counts[task]["effective"])
        return sum(examples(sub) for sub in groups.get(task, ()))

    values, errors, weights = [], [], []
    for task in tasks:
        row = results["results"].get(task, {})
        if metric not in row:
            known = sorted(k for k in row if "," in k and "_stderr" not in k)
            raise SetupError(f"benchmark {benchmark.key}: task {task} has no metric {metric!r} ({known})")
        values.append(float(row[metric]))
        error = row.get(stderr_key)
        errors.append(float(error) if isinstance(error, int | float) else float("nan"))
        weights.append(examples(task))
    if len(tasks) == 1:
        stderr = errors[0] if np.isfinite(errors[0]) else None
        return metric.removesuffix(",none"), values[0], stderr, weights[0]
    w = np.asarray(weights, dtype=float) / sum(weights)
    combined = float(np.sqrt(np.sum((w * np.asarray(errors)) ** 2)))
    stderr = combined if np.isfinite(combined) else None
    return metric.removesuffix(",none"), float(np.dot(w, values)), stderr, int(sum(weights))


def base_score(
    scorer: Scorer, model: Any, benchmark: BenchmarkConfig, experiment: Experiment, records_dir: Path
) -> float:
    """The base model's score on ``benchmark``: ``model``'s with its adapter switched off, computed once per study
    (kept in ``base_scores.json`` of the records folder, keyed by the model, the prompt template and the
    benchmark's settings)."""
    path = records_dir / BASE_SCORES_FILE
    identity = json.dumps(
        [
            experiment.model.model_dump(mode="json"),
            experiment.data.template,
            experiment.data.system_prompt,
            benchmark.model_dump(mode="json"),
        ],
        sort_keys=True,
    )
    key = hashlib.sha256(identity.encode()).hexdigest()[:16]
    known = json.loads(path.read_text()) if path.is_file() else {}
    if key in known:
        return float(known[key]["value"])
    with model.disable_adapter():
        score = scorer.score(model, benchmark)
    logger.info("base model's %s: %.4f", benchmark.key, score.value)
    known = json.loads(path.read_text()) if path.is_file() else {}  # another evaluation may have written one
    known[key] = {"benchmark": benchmark.key, "model": experiment.model.name_or_path, **score.as_dict()}
    with writing_records(records_dir):
        write_text_atomic(path, json.dumps(known, indent=1))
    return score.value


@contextlib.contextmanager
def _lm_eval_output() -> Iterator[None]:
    """Where lm-eval's prints and progress bars go while it scores: never to stdout (``eval``'s protocol channel,
    ``downstream``'s table). With progress bars off (``TQDM_DISABLE``, which the command line sets unless
    ``--debug``) they go to the log, and so does what its subprocesses write (``git describe``'s "fatal: not a git
    repository" outside a repository): lm-eval turns its bars on explicitly (``disable=False``), past that switch,
    and a subprocess writes to file descriptor 2 itself. (A line of ours logged while lm-eval runs goes to the log
    too: none is, the scorer logs before and after.)"""
    if not os.environ.get("TQDM_DISABLE"):
        with contextlib.redirect_stdout(sys.stderr):
            yield
        return
    output = logging.getLogger("lm-eval.output")  # not under "lm_eval", whose handlers lm-eval may set itself
    with tempfile.TemporaryFile() as descriptor_2, contextlib.closing(LogLines(output)) as log:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(descriptor_2.fileno(), 2)
        try:
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            descriptor_2.seek(0)
            log.write(descriptor_2.read().decode(errors="replace"))


@contextlib.contextmanager
def _code_execution(allowed: bool) -> Iterator[None]:
    """HF ``evaluate``'s code_eval runs model-written code only with HF_ALLOW_CODE_EVAL=1."""
    if not allowed:
        yield
        return
    previous = os.environ.get("HF_ALLOW_CODE_EVAL")
    os.environ["HF_ALLOW_CODE_EVAL"] = "1"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("HF_ALLOW_CODE_EVAL", None)
        else:
            os.environ["HF_ALLOW_CODE_EVAL"] = previous


def chitchat_replies_task(tokenizer: Any, data: DataConfig) -> Path:
    """The demo's offline benchmark as an lm-eval task folder: which of 2 replies a person gave to a chit-chat
    message (the other is a reply to another message), scored by log-likelihood (``acc``, chance 0.5).

    100 items (200 scored sequences: about a minute of a 2-core CPU for the demo's model) drawn from the held-out
    chit-chat conversations (the validation split: never trained on), the message rendered with the experiment's
    prompt template, as the model sees prompts in training. Written once
    per template into the cache.
    """
    render = prompt_formatter(data.template, tokenizer, system_prompt=data.system_prompt)
    rows = embedded_rows(f"{PREFIX}chitchat/validation")
    rng = np.random.default_rng(_CHITCHAT_SEED)
    picked = rng.choice(len(rows), size=_CHITCHAT_ITEMS, replace=False)
    items = []
    for index in picked:
        message, context, reply = rows[index]
        others = rng.choice(len(rows), size=_CHITCHAT_CHOICES * 2, replace=False)
        distractors = [rows[i][2] for i in others if rows[i][2] != reply][: _CHITCHAT_CHOICES - 1]
        label = int(rng.integers(_CHITCHAT_CHOICES))
        choices = [*distractors[:label], reply, *distractors[label:]]
        items.append({"prompt": render(Row(message, context, reply)), "choices": choices, "label": label})
    text = "".join(json.dumps(item) + "\n" for item in items)
    folder = cache_root() / "benchmarks" / f"{_CHITCHAT_TASK}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"
    if not folder.is_dir():
        with folder_published_at(folder) as tmp:
            (tmp / "items.jsonl").write_text(text, encoding="utf-8")
            (tmp / f"{_CHITCHAT_TASK}.yaml").write_text(_chitchat_yaml(folder / "items.jsonl"), encoding="utf-8")
    return folder


def _chitchat_yaml(items: Path) -> str:
    return f"""\
task: {_CHITCHAT_TASK}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {json.dumps(str(items))}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{prompt}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{label}}}}"
target_delimiter: ""
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""
