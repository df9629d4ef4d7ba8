"""What a study measures: its objective, or several objectives at once, its constraints, and the benchmarks they
score.

A study optimises one objective (``[objective]``: the validation loss by default, or a benchmark score) or two to
four at once (``[[objectives]]``: e.g. the validation loss against the adapter's size, against the training seconds,
or against a benchmark score that shows forgetting). NOMAD minimises every objective: a maximised one is printed
negated. With several, each record holds what the solver minimised of each (``objective:<key>``:
:func:`objective_metrics`), ``study.outputs`` prints them as ``OBJ:objective:<key>`` in the order of
``[[objectives]]`` (:func:`objectives_problems` checks it), and NOMAD runs DMultiMads (``core.nomad``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from blackbox.core.errors import EvaluationError

COSTS = ("train_seconds", "trainable_params")
"""What an objective can be besides a quality (only beside one, in ``[[objectives]]``): always minimised."""

MAX_OBJECTIVES = 4
"""DMultiMads' practical limit (its quadratic-model search solves up to 2^k - 1 subproblems per iteration)."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BenchmarkConfig(_Section):
    """A score of EleutherAI's lm-evaluation-harness (``lm-eval``): a task or a group of tasks, one metric.

    ``task``: any lm-eval task or group (``mmlu``, ``bbh``), a task defined in ``include_path`` (a folder of
    task YAMLs, absolute or relative to the working directory), or ``embedded:chitchat-replies`` (the demo's
    local benchmark). ``tasks``: score these subtasks of the group instead of all of it (their sample-weighted
    mean): a held-out split of a benchmark. ``metric``: as lm-eval names it (``acc``, ``exact_match``,
    ``pass@1``), with its filter after a comma when it is not ``none`` (``exact_match,strict-match``); empty: the
    first metric the task reports (``downstream --tasks``; an objective or a constraint names its metric).
    ``limit``: 0 for every example; below 1 a fraction, else a count per task (for tests and smoke runs).
    ``label``: the name of the score in records and reports (default: the task). ``allow_code_execution``: the
    experiment lets this benchmark run model-written code (HumanEval) without ``--allow-code-execution``.
    ``decoding``: how the generations of the task are decoded: ``task``, as its own settings say (the shipped
    InstructEval tasks: greedy, but HumanEval's sample at temperature 0.1); ``model``, as the model's own
    ``generation_config.json`` says, under the settings of a task that samples itself (how InstructEval generated:
    its Llama model passes no sampling setting, so Llama-2-7b-hf's answers were sampled at temperature 0.6 and
    top-p 0.9; the score is then named ``<task>-model-decoding``). Besides lm-eval's registry, the tasks that score
    as InstructEval did ship with the package (``instructeval_mmlu``, ``instructeval_bbh``, ``instructeval_drop``,
    ``instructeval_humaneval``).
    """

    task: str
    metric: str = "acc"
    tasks: tuple[str, ...] = ()
    label: str = ""
    num_fewshot: int | None = Field(default=None, ge=0)
    limit: float = Field(default=0.0, ge=0)
    include_path: str = ""
    batch_size: int = Field(default=8, ge=1)
    allow_code_execution: bool = False
    decoding: Literal["task", "model"] = "task"

    @property
    def key(self) -> str:
        """The score's name in a record's metrics: ``benchmark:<label or task>:<metric>`` (the task's name followed
        by ``-model-decoding`` when the model's generation settings decode it)."""
        name = self.label or (self.task if self.decoding == "task" else f"{self.task}-model-decoding")
        return f"benchmark:{name}:{self.metric}"


class ObjectiveConfig(_Section):
    """What the study optimises: the validation loss (default), or a benchmark score; with several objectives
    (``[[objectives]]``) also a cost: ``train_seconds`` (the training's wall clock) or ``trainable_params`` (the
    adapter's size).

    NOMAD always minimises: a maximised score is printed negated (``OBJ:objective``); records keep both the
    score (``benchmark:...``) and what NOMAD saw (``objective``; with several objectives ``objective:<key>`` of
    each). ``test``: the held-out part of a benchmark whose other part is the objective, scored by
    ``lora-blackbox downstream`` as the test score.
    """

    name: Literal["validation_loss", "benchmark", "train_seconds", "trainable_params"] = "validation_loss"
    direction: Literal["minimize", "maximize"] = "minimize"
    benchmark: BenchmarkConfig | None = None
    test: BenchmarkConfig | None = None

    @model_validator(mode="after")
    def _check(self) -> ObjectiveConfig:
        if self.benchmark is not None and not self.benchmark.metric:
            raise ValueError("the objective's benchmark needs its metric")
        if (self.name == "benchmark") != (self.benchmark is not None):
            raise ValueError("objective 'benchmark' needs [objective.benchmark], and only it")
        if self.name == "validation_loss" and self.direction != "minimize":
            raise ValueError("the validation loss is minimised")
        if self.name in COSTS and self.direction != "minimize":
            raise ValueError(f"{self.name} is a cost: it is minimised")
        return self

    @property
    def key(self) -> str:
        """The metric it is, in a record's metrics: ``validation_loss``, ``trainable_params``,
        ``benchmark:mmlu:acc``."""
        return self.benchmark.key if self.benchmark else self.name

    @property
    def metric(self) -> str:
        """What the solver minimises of it, in a record's metrics of a study of several objectives:
        ``objective:<key>`` (negated when maximised); ``study.outputs`` prints it as ``OBJ:objective:<key>``."""
        return f"objective:{self.key}"

    def describe(self) -> str:
        """What the study optimises, in words: ``benchmark:mmlu:acc, maximised (the solver minimises its
        negation)``."""
        if self.direction == "maximize":
            return f"{self.key}, maximised (the solver minimises its negation)"
        return f"{self.key}, minimised"

    def value(self, metrics: Mapping[str, Any]) -> float:
        """The number NOMAD minimises, from an evaluation's metrics."""
        raw = float(metrics[self.key])
        return -raw if self.direction == "maximize" else raw


class ConstraintConfig(_Section):
    """A NOMAD constraint from a benchmark score: feasible when the score is at least (or at most) a bound,
    absolute or added to the base model's score (``relative_to_base``: ``at_least = -0.01`` is "no worse
    than the base model minus 1 point", a guard against forgetting).

    Printed as ``bound - score`` for ``at_least`` and ``score - bound`` for ``at_most``: NOMAD takes a
    constraint as satisfied when it is <= 0. ``type``: ``PB`` (progressive barrier: infeasible points still
    guide the search) or ``EB`` (extreme barrier: rejected at once).
    """

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    type: Literal["PB", "EB"] = "PB"
    benchmark: BenchmarkConfig
    at_least: float | None = None
    at_most: float | None = None
    relative_to_base: bool = False

    @model_validator(mode="after")
    def _check(self) -> ConstraintConfig:
        if not self.benchmark.metric:
            raise ValueError(f"constraint {self.name}: its benchmark needs its metric")
        if (self.at_least is None) == (self.at_most is None):
            raise ValueError(f"constraint {self.name}: give at_least or at_most, one of them")
        return self

    @property
    def metric(self) -> str:
        """The constraint's value in a record's metrics: ``constraint:<name>``."""
        return f"constraint:{self.name}"

    def value(self, score: float, base_score: float | None) -> float:
        """The constraint output (<= 0: satisfied) of a score."""
        offset = base_score if self.relative_to_base else 0.0
        if offset is None:
            raise ValueError(f"constraint {self.name} is relative to the base model's score, which is unknown")
        if self.at_least is not None:
            return self.at_least + offset - score
        assert self.at_most is not None  # the validator holds one of them
        return score - (self.at_most + offset)


def objectives_problems(
    objectives: Sequence[ObjectiveConfig], single: ObjectiveConfig, outputs: Sequence[str], *, single_given: bool
) -> list[str]:
    """What is wrong with an experiment's objectives: ``objectives`` (``[[objectives]]``, empty for a study of one),
    ``single`` (``[objective]``, given in the file when ``single_given``) and the ``OBJ`` outputs of ``outputs``."""
    printed = [spec for spec in outputs if spec.startswith("OBJ:")]
    if not objectives:
        problems = [] if len(printed) == 1 else [f"exactly one OBJ output is needed, got {list(outputs)}"]
        if single.name in COSTS:
            problems.append(
                f"objective {single.name!r} alone is won by the smallest adapter or the shortest training: give it "
                "beside a quality, in [[objectives]]"
            )
        return problems
    problems = []
    if single_given:
        problems.append("give the objectives in [[objectives]] only ([objective] is the objective of a study of one)")
    if not 2 <= len(objectives) <= MAX_OBJECTIVES:
        problems.append(
            f"[[objectives]] names 2 to {MAX_OBJECTIVES} objectives, got {len(objectives)} (one: use [objective])"
        )
    keys = [o.key for o in objectives]
    if len(set(keys)) < len(keys):
        problems.append(f"objectives named twice: {sorted({k for k in keys if keys.count(k) > 1})}")
    expected = [f"OBJ:{o.metric}" for o in objectives]
    if printed != expected:
        problems.append(
            f"study.outputs prints each objective, in the order of [[objectives]]: {expected}, got {printed}"
        )
    return problems


def objective_metrics(objectives: Sequence[ObjectiveConfig], metrics: Mapping[str, Any]) -> dict[str, float]:
    """The values the solver minimises, from an evaluation's metrics: ``objective`` (the first objective's: what a
    study of one prints) and, with several objectives, ``objective:<key>`` of each.

    Raises:
        EvaluationError: with several objectives, one of them is not a finite number (e.g. a benchmark that scored
            nan): the point fails, with a failed line (NOMAD's DMultiMads would take an infinite value as a real
            one, of a point no other dominates on that objective), and the study goes on.
    """
    values = {o.metric: o.value(metrics) for o in objectives}
    result = {"objective": values[objectives[0].metric]}
    if len(objectives) > 1:
        undefined = [f"{o.key} = {values[o.metric]}" for o in objectives if not math.isfinite(values[o.metric])]
        if undefined:
            raise EvaluationError(f"an objective is not a finite number: {', '.join(undefined)}")
        result |= values
    return result
