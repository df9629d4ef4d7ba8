"""The experiment: everything about one study, read from one TOML file.

An experiment holds the search space (``[[space]]``), the fixed hyperparameters, the model, the data,
the training and validation settings, the printed outputs and where records go. It is the single
source of truth: the NOMAD parameter file, the decoding of points and the output line all derive
from it.

Example::

    from blackbox.core.experiment import load_experiment
    exp = load_experiment("paper_exp3", overrides=["training.max_steps=5"])
    exp.training.max_steps  # 5

Overrides use dotted keys (``model.name_or_path=/models/tiny``); values are parsed as TOML values
where they parse (``5``, ``true``, ``["q_proj", "v_proj"]``) and taken as strings otherwise.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import tomllib
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from blackbox.core.errors import ConfigError, PointError
from blackbox.core.files import write_text_atomic
from blackbox.core.folders import EXPERIMENTS_DIR

HPARAM_NAMES = ("lora_r", "lora_alpha", "lora_dropout", "learning_rate")
"""The hyperparameters a point decodes into. Each is either a search variable or fixed."""

METRIC_NAMES = (
    "objective",
    "validation_loss",
    "train_loss",
    "train_seconds",
    "validation_seconds",
    "total_seconds",
    "peak_memory_gib",
    "train_tokens",
    "tokens_per_second",
    "run_id",
)
"""Values an output line can carry, in any order; ``run_id`` only as ``EXTRA_O``. Besides them: the constraints
(``PB:NAME``, ``EB:NAME``) and the benchmark scores (``EXTRA_O:benchmark:<label>:<metric>``)."""

OUTPUT_TYPES = ("OBJ", "PB", "EB", "EXTRA_O", "CNT_EVAL")
"""NOMAD's output types an experiment can print: ``OBJ:METRIC`` (``OBJ:objective``: the configured objective,
negated when maximised), ``PB:NAME`` and ``EB:NAME`` (a constraint of ``[[constraints]]``), ``EXTRA_O:METRIC``,
and ``CNT_EVAL`` alone (1 for a finished evaluation, 0 for an interrupted one or one never run: NOMAD leaves
those out of the budget)."""

ENV_EXPERIMENT = "LORA_BLACKBOX_EXPERIMENT"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StudyConfig(_Section):
    """The optimisation study: its name, budget and what each evaluation prints."""

    name: str
    description: str = ""
    budget: int = Field(ge=1, description="MAX_BB_EVAL of the generated NOMAD parameter file")
    seed: int = Field(default=0, ge=0, description="the optimiser's seed (NOMAD SEED)")
    outputs: tuple[str, ...] = ("OBJ:validation_loss",)

    @field_validator("outputs")
    @classmethod
    def _check_outputs(cls, outputs: tuple[str, ...]) -> tuple[str, ...]:
        """The form of each output; which objective, constraints and benchmarks exist is checked by the
        :class:`Experiment`."""
        problems = []
        for spec in outputs:
            kind, _, name = spec.partition(":")
            if spec == "CNT_EVAL":
                continue
            if kind not in OUTPUT_TYPES or kind == "CNT_EVAL" or not name:
                problems.append(f"output {spec!r} must be CNT_EVAL or TYPE:NAME with TYPE in {OUTPUT_TYPES[:4]}")
            elif kind == "OBJ" and name == "run_id":
                problems.append("run_id is not a number: it can only be an EXTRA_O output")
        if sum(spec.startswith("OBJ:") for spec in outputs) != 1:
            problems.append(f"exactly one OBJ output is needed, got {list(outputs)}")
        if outputs.count("CNT_EVAL") > 1:
            problems.append("CNT_EVAL can be printed once")
        if problems:
            raise ValueError("; ".join(problems))
        return outputs


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
    Besides lm-eval's registry, the tasks that score as InstructEval did ship with the package
    (``instructeval_mmlu``, ``instructeval_bbh``, ``instructeval_drop``, ``instructeval_humaneval``).
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

    @property
    def key(self) -> str:
        """The score's name in a record's metrics: ``benchmark:<label or task>:<metric>``."""
        return f"benchmark:{self.label or self.task}:{self.metric}"


class ObjectiveConfig(_Section):
    """What the study optimises: the validation loss (default), or a benchmark score.

    NOMAD always minimises: a maximised score is printed negated (``OBJ:objective``); records keep both the
    score (``benchmark:...``) and what NOMAD saw (``objective``). ``test``: the held-out part of a benchmark
    whose other part is the objective, scored by ``lora-blackbox downstream`` as the test score.
    """

    name: Literal["validation_loss", "benchmark"] = "validation_loss"
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
        return self

    def describe(self) -> str:
        """What the study optimises, in words: ``benchmark:mmlu:acc, maximised (the solver sees it negated)``."""
        if self.benchmark is None:
            return "validation_loss, minimised"
        if self.direction == "maximize":
            return f"{self.benchmark.key}, maximised (the solver minimises its negation)"
        return f"{self.benchmark.key}, minimised"

    def value(self, metrics: dict[str, Any]) -> float:
        """The number NOMAD minimises, from an evaluation's metrics."""
        raw = float(metrics[self.benchmark.key if self.benchmark else "validation_loss"])
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


class VariableConfig(_Section):
    """One search variable as NOMAD sees it, and how its value decodes.

    ``name``: one of the four LoRA hyperparameters (``lora_r``, ``lora_alpha``, ``lora_dropout``,
    ``learning_rate``), or a searchable setting of the experiment by its dotted key (``training.epochs``,
    ``model.target_modules``, ``lora.use_dora``: see :data:`SEARCHABLE`), or a searchable section
    (``lora``) whose ``choice`` values are tables of its keys (``{use_dora = true}``).

    ``decode``:
    - ``plain``: the value itself (an ``I`` variable gives an integer; a ``B`` variable a boolean);
    - ``choice``: a 1-based index into ``values``, which may hold any TOML value (numbers, strings,
      booleans, lists, tables);
    - ``power_of_two``: 2 ** value;
    - ``log10``: 10 ** value;
    - ``multiple``: value times the decoded value of the hyperparameter named by ``of``;
    - ``sqrt_multiple``: value times the square root of it (``lora_alpha = k * sqrt(r)``: the scaling of
      rsLoRA, alpha / sqrt(r), is then k at every rank).
    """

    name: str
    type: Literal["I", "R", "B"]
    lower: float
    upper: float
    # One value, or a list: one per starting point (NOMAD's X0 lines; e.g. one per LoRA variant). Variables with a
    # list give them in the same number; a single value is every starting point's.
    x0: float | tuple[float, ...] = Field(description="the starting value, or a list: one per starting point")
    decode: Literal["plain", "choice", "power_of_two", "log10", "multiple", "sqrt_multiple"] = "plain"
    values: tuple[Any, ...] = ()
    of: Literal["lora_r", "lora_alpha", "lora_dropout", "learning_rate", ""] = ""
    granularity: float = Field(default=0.0, ge=0.0, description="R only: values are rounded to it")

    @model_validator(mode="before")
    @classmethod
    def _numbers_of_hyperparameters(cls, data: Any) -> Any:
        """The choices of a LoRA hyperparameter are numbers, kept as floats (as before settings could be searched:
        the experiment's fingerprint does not change)."""
        if isinstance(data, dict) and data.get("name") in HPARAM_NAMES and isinstance(data.get("values"), list | tuple):
            if all(isinstance(v, int | float) and not isinstance(v, bool) for v in data["values"]):
                data = {**data, "values": [float(v) for v in data["values"]]}
        return data

    @property
    def starts(self) -> tuple[float, ...]:
        """Its value at each starting point it names (one, unless ``x0`` is a list)."""
        return self.x0 if isinstance(self.x0, tuple) else (self.x0,)

    @property
    def is_setting(self) -> bool:
        """Whether the variable sets an experiment setting (a dotted key or a section), not a LoRA hyperparameter."""
        return self.name not in HPARAM_NAMES

    @model_validator(mode="after")
    def _check(self) -> VariableConfig:
        problems = []
        if not self.starts:
            problems.append("x0 is a value or a non-empty list of values")
        for x0 in self.starts:
            if not self.lower <= x0 <= self.upper:
                problems.append(f"lower <= x0 <= upper must hold, got ({self.lower}, {x0}, {self.upper})")
        if self.type in ("I", "B"):
            for label, value in (("lower", self.lower), ("upper", self.upper), *(("x0", x) for x in self.starts)):
                if value != math.floor(value):
                    problems.append(f"{label} of an integer variable must be integral, got {value}")
        if self.type == "B" and (self.lower < 0 or self.upper > 1):
            problems.append("a binary variable lies in [0, 1]")
        if self.type == "B" and (self.decode != "plain" or not self.is_setting):
            problems.append("a binary variable decodes (plain) to a boolean: a setting's, not a LoRA hyperparameter's")
        if self.decode == "choice":
            if self.type != "I":
                problems.append("decode 'choice' needs type I (a 1-based index)")
            if not self.values:
                problems.append("decode 'choice' needs a non-empty 'values' list")
            elif self.lower < 1 or self.upper > len(self.values):
                problems.append(
                    f"a 1-based index into {len(self.values)} values needs 1 <= lower and "
                    f"upper <= {len(self.values)}, got [{self.lower}, {self.upper}]"
                )
            if not self.is_setting and any(not isinstance(v, float) for v in self.values):
                problems.append(f"the choices of {self.name} are numbers, got {list(self.values)}")
        elif self.values:
            problems.append(f"'values' is only read by decode 'choice', not {self.decode!r}")
        if (self.decode in ("multiple", "sqrt_multiple")) != bool(self.of):
            problems.append(f"decode {self.decode!r} needs 'of' (the hyperparameter it multiplies), and only it")
        if self.of and self.is_setting:
            problems.append("decode 'multiple' and 'sqrt_multiple' apply to the LoRA hyperparameters only")
        if self.of == self.name:
            problems.append("a variable cannot be a multiple of itself")
        if self.granularity and self.type != "R":
            problems.append("granularity applies to R variables only")
        if self.is_setting:
            problems += searchable_problems(self.name, table=self.decode == "choice")
        if problems:
            raise ValueError(f"variable {self.name}: " + "; ".join(problems))
        return self

    def decode_value(self, x: float) -> Any:
        """The value of a checked coordinate, for every kind but the multiples (which need another variable's value).

        Settings keep their type: an ``I`` variable gives an int, a ``B`` variable a bool, a choice the value as
        written; the LoRA hyperparameters are numbers.
        """
        if self.decode == "choice":
            return self.values[int(x) - 1]
        if self.decode == "plain":
            value: Any = x
        elif self.decode == "power_of_two":
            value = 2.0**x
        elif self.decode == "log10":
            value = 10.0**x
        else:
            raise ValueError(f"decode {self.decode!r} needs the value of {self.of}")
        if self.is_setting and self.type == "B":
            return bool(value)
        if self.is_setting and self.type == "I" and float(value).is_integer():
            return int(value)
        return float(value)

    def candidate_values(self) -> list[Any]:
        """The decoded values a setting can take at least: every choice, both booleans, both bounds. Checked at load
        time, so that a value the experiment refuses fails the experiment, not a point in the middle of a study."""
        if self.decode == "choice":
            return list(self.values[int(self.lower) - 1 : int(self.upper)])
        return [self.decode_value(x) for x in sorted({self.lower, *self.starts, self.upper})]


class HyperparametersConfig(_Section):
    """Fixed hyperparameters: those that are not search variables."""

    lora_r: int | None = Field(default=None, ge=1)
    lora_alpha: float | None = Field(default=None, gt=0)
    lora_dropout: float | None = Field(default=None, ge=0, le=1)
    learning_rate: float | None = Field(default=None, gt=0)


class ModelConfig(_Section):
    """The base model and how LoRA is attached to it."""

    name_or_path: str
    revision: str = Field(default="", description="hub revision (branch, tag or commit); '' = default")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    quantization: Literal["none", "int8", "nf4", "fp4"] = "none"
    # Module names, or a preset (TARGET_PRESETS): "attention", "mlp" (Llama-family names), "all-linear" (peft's:
    # every linear layer but the output layer).
    target_modules: tuple[str, ...] | Literal["attention", "mlp", "all-linear"] = ("q_proj", "v_proj")
    # peft's layers_to_transform: indices of the decoder layers that get LoRA; empty = every layer. Backward
    # passes stop at the lowest adapted layer, so adapting only the top layers makes training cheaper.
    layers_to_transform: tuple[Annotated[int, Field(ge=0)], ...] = ()
    # auto: "varlen" (padding-free flash attention, attention.py) for packed batches on CUDA, else "sdpa".
    attn_implementation: Literal["auto", "varlen", "sdpa", "eager", "flash_attention_2", "flex_attention"] = "auto"


TARGET_PRESETS: dict[str, tuple[str, ...] | str] = {
    "attention": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "mlp": ("gate_proj", "up_proj", "down_proj"),
    "all-linear": "all-linear",  # as peft's: every linear layer but the output layer, named from the model
}
"""``model.target_modules`` presets: the module names of the Llama family (Llama, Mistral, Qwen, SmolLM), or peft's
``all-linear``."""


def lora_targets(target_modules: tuple[str, ...] | str) -> list[str] | str:
    """What peft's ``LoraConfig(target_modules=...)`` gets for a ``model.target_modules`` setting."""
    if isinstance(target_modules, str):
        preset = TARGET_PRESETS[target_modules]
        return preset if isinstance(preset, str) else list(preset)
    return list(target_modules)


class LoraVariantConfig(_Section):
    """Which LoRA (peft's ``LoraConfig``): DoRA, rsLoRA, the initialisation of the adapter, trained biases.

    ``init_lora_weights``: ``default`` (peft's: Kaiming-uniform A, zero B), ``gaussian``, ``pissa`` (the principal
    singular vectors of each weight; ``pissa_niter_N``: by N iterations of randomised SVD, faster), ``olora``
    (QR decomposition of each weight), ``loftq`` (QLoRA only: an adapter that offsets the quantisation error of
    ``model.quantization = "nf4"`` or ``"fp4"``). PiSSA and OLoRA move part of each adapted weight into the
    adapter, and ``bias`` other than ``none`` trains the base model's biases: such a point changes the base model,
    which is then loaded again before the next point of the call.
    """

    use_dora: bool = False
    use_rslora: bool = Field(default=False, description="scale by alpha / sqrt(r) instead of alpha / r")
    init_lora_weights: str = Field(
        default="default", pattern=r"^(default|gaussian|pissa|pissa_niter_[1-9][0-9]*|olora|loftq)$"
    )
    bias: Literal["none", "all", "lora_only"] = "none"

    @property
    def changes_base_model(self) -> bool:
        """Whether attaching or training this adapter changes the weights of the base model it is attached to."""
        return self.init_lora_weights.startswith("pissa") or self.init_lora_weights == "olora" or self.bias != "none"


def lora_problems(model: ModelConfig, lora: LoraVariantConfig) -> list[str]:
    """Combinations of the base model's loading and the LoRA variant that cannot work."""
    problems = []
    init = lora.init_lora_weights
    if (init.startswith("pissa") or init == "olora") and model.quantization != "none":
        problems.append(
            f"lora.init_lora_weights = {init!r} decomposes full-precision weights: it needs model.quantization = "
            f"'none' (got {model.quantization!r}); for a quantised model use 'loftq'"
        )
    if init == "loftq" and model.quantization not in ("nf4", "fp4"):
        problems.append(
            f"lora.init_lora_weights = 'loftq' offsets a 4-bit quantisation error: it needs model.quantization = "
            f"'nf4' or 'fp4' (got {model.quantization!r})"
        )
    return problems


SEARCHABLE: dict[str, tuple[str, ...]] = {
    "training": (
        "epochs",
        "max_steps",
        "effective_batch_size",
        "micro_batch_size",
        "lr_scheduler",
        "warmup_ratio",
        "weight_decay",
        "max_grad_norm",
    ),
    "model": ("target_modules", "layers_to_transform"),
    "lora": ("use_dora", "use_rslora", "init_lora_weights", "bias"),
}
"""The settings a search variable may set, by section: those that a fresh adapter of each point picks up. Every
other setting is the same for all points of a study (:data:`_NOT_SEARCHABLE` says why)."""

_LOADS_THE_MODEL = "it decides how the base model loads, once per call for all its points: run one study per value"
_NOT_SEARCHABLE = {
    "study": "it describes the study itself",
    "space": "it is the search space itself",
    "hyperparameters": "it holds fixed hyperparameters: make the hyperparameter itself (lora_r, ...) a variable",
    "data": "the data are read and tokenised once per call, for all its points",
    "validation": "it changes how the validation loss is computed, not the adapter",
    "fidelity": "the study sets it for its low-fidelity evaluations",
    "records": "it says where records go",
    "stopping": "it decides when a study stops a training, not what a training is",
    "objective": "it is what the study measures",
    "constraints": "they are what the study measures",
    "downstream": "it is scored after the study",
    "model.name_or_path": "it is the base model, loaded once per call: run one study per model",
    "model.revision": "it is the base model, loaded once per call: run one study per model",
    "model.dtype": _LOADS_THE_MODEL,
    "model.quantization": _LOADS_THE_MODEL,
    "model.attn_implementation": _LOADS_THE_MODEL,
    "training.packing": "it decides the attention implementation when the base model loads: run one study per value",
    "training.gradient_checkpointing": _LOADS_THE_MODEL,
    "training.fused_kernels": _LOADS_THE_MODEL,
    "training.autocast": "it decides the precision once per call, for all its points",
    "training.seed": "it is the same for every point, so that points differ by their settings only",
    "training.device": "it says where a run trains, not what it trains",
    "training.timeout_s": "it says how long a run may train, not what it trains",
    "training.log_every_steps": "it says how a run logs, not what it trains",
}


def searchable_problems(name: str, *, table: bool = False) -> list[str]:
    """Why ``name`` (a dotted key, or with ``table`` a section whose values are tables) cannot be a variable."""
    section, _, key = name.partition(".")
    searchable = ", ".join(f"{s}.{k}" for s, keys in SEARCHABLE.items() for k in keys)
    why = _NOT_SEARCHABLE.get(name) or (_NOT_SEARCHABLE.get(section) if section not in SEARCHABLE else None)
    if why:
        return [f"{name} cannot be a search variable: {why}"]
    if not key:
        if section in SEARCHABLE and table:
            return []
        if section in SEARCHABLE:
            return [f"the section {section} can be a variable of decode 'choice' only (values: tables of its keys)"]
        return [f"{name!r} is neither a LoRA hyperparameter {HPARAM_NAMES} nor a dotted key; searchable: {searchable}"]
    if section not in SEARCHABLE or key not in SEARCHABLE[section]:
        return [f"{name!r} is not a searchable setting; searchable: {searchable}"]
    return []


class DataConfig(_Section):
    """Instruction data: sources, prompt template, tokenisation, the validation split and a test split.

    ``test``: sources of a test split that no solver sees: its loss is computed only by an evaluation with
    ``[validation] test = true`` (never an output), to check a study's best point on data it did not choose by.
    Rows that also appear in the training or validation rows are dropped from it.
    """

    train: tuple[str, ...]
    validation: tuple[str, ...] = ()
    test: tuple[str, ...] = ()
    holdout_fraction: float = Field(default=0.2, gt=0, lt=1)
    split_seed: int = 0
    # alpaca: the reference study's prompt for the Alpaca + Dolly mix ("#### Context:"); alpaca_input: Stanford Alpaca's
    # own ("### Input:"), as the study trained on Alpaca alone; chat: the tokenizer's chat template.
    template: Literal["alpaca", "alpaca_input", "chat"] = "alpaca"
    # chat only: the system message of every prompt; unset: the chat template's own default (SmolLM2's
    # is 16 tokens long, most of a short chat example); "": an empty system message.
    system_prompt: str | None = None
    max_length: int = Field(default=512, ge=8)
    max_train_rows: int = Field(default=0, ge=0, description="0 = all rows")
    max_validation_rows: int = Field(default=0, ge=0, description="0 = all rows")
    max_test_rows: int = Field(default=0, ge=0, description="0 = all rows")

    @field_validator("train", "validation", "test", mode="before")
    @classmethod
    def _as_tuple(cls, value: Any) -> Any:
        if isinstance(value, str):
            return (value,) if value else ()
        return value

    @field_validator("train")
    @classmethod
    def _nonempty(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("at least one training data source is needed")
        return value

    @model_validator(mode="after")
    def _system_prompt_needs_chat(self) -> DataConfig:
        if self.system_prompt is not None and self.template != "chat":
            raise ValueError("system_prompt applies to template 'chat' only")
        return self


class TrainingConfig(_Section):
    """The fine-tuning run. ``max_steps``, when set, overrides ``epochs``."""

    epochs: float = Field(default=3.0, gt=0)
    max_steps: int | None = Field(default=None, ge=1)
    effective_batch_size: int = Field(default=128, ge=1, description="sequences per optimizer step")
    micro_batch_size: int = Field(
        default=0,
        ge=0,
        description="sequences per forward/backward pass; 0 = the largest that fits on CUDA, 8 elsewhere",
    )
    packing: bool = Field(default=True, description="pack micro-batches into one row: no padding at all")
    lr_scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_ratio: float = Field(default=0.03, ge=0, lt=1)
    weight_decay: float = Field(default=0.0, ge=0)
    max_grad_norm: float = Field(default=1.0, ge=0, description="0 = no clipping")
    seed: int = 42
    autocast: Literal["auto", "none", "bfloat16", "float16"] = "auto"
    gradient_checkpointing: bool = False
    # "liger": fused RMSNorm, SwiGLU and RoPE Triton kernels from liger-kernel (CUDA, Llama-family models).
    # "auto": liger where it applies (1.29x the tokens/s on Llama-2-7B, benchmarks/RESULTS.md), else none.
    fused_kernels: Literal["auto", "none", "liger"] = Field(
        default="auto",
        description="auto: liger's for a Llama-family model with bf16 weights trained on CUDA, where liger-kernel "
        "imports; else none, said in one log line",
    )
    device: str = Field(default="auto", description="auto, cpu, cuda or cuda:N")
    timeout_s: float = Field(default=0.0, ge=0, description="wall-clock limit of training; 0 = none")
    log_every_steps: int = Field(default=10, ge=1)


class ValidationConfig(_Section):
    """How the validation loss is computed; ``checkpoints``: a learning curve besides it.

    ``checkpoints``: fractions of the training steps (each in (0, 1), increasing, e.g. ``[0.25, 0.5, 0.75]``) at
    which the training validates on the first ``checkpoint_rows`` rows of the validation split (0: all of them):
    the same rows for every point, so that curves compare. Each record keeps its curve (``blackbox.core.curves``);
    stopping rules (``[stopping]``) and Optuna's pruners decide there. Empty (the default): no curve. The final
    validation is on the whole split either way. Neither key enters the experiment's fingerprint: validating at a
    checkpoint draws no random number and changes no weight, so an evaluation gives the same result with or
    without them.
    """

    batch_size: int = Field(default=8, ge=1, description="sequences per validation forward pass")
    checkpoints: tuple[float, ...] = Field(default=(), description="fractions of the training steps; empty = none")
    checkpoint_rows: int = Field(default=32, ge=0, description="validation rows of a checkpoint; 0 = all")

    test: bool = Field(
        default=False,
        description="also compute the loss of the test split (data.test): metric test_loss, never an output; "
        "the loss of each test example in the run folder (test_losses.json)",
    )

    @field_validator("checkpoints")
    @classmethod
    def _check_checkpoints(cls, fractions: tuple[float, ...]) -> tuple[float, ...]:
        if any(not 0 < f < 1 for f in fractions):
            raise ValueError(f"checkpoints are fractions of the training steps, each in (0, 1), got {list(fractions)}")
        if any(b <= a for a, b in itertools.pairwise(fractions)):
            raise ValueError(f"checkpoints must increase, got {list(fractions)}")
        return fractions


class StoppingConfig(_Section):
    """Early stopping of the trainings of a study (NOMAD's, or any caller of ``eval``): at each checkpoint of
    ``[validation] checkpoints``, a training stops when the study's finished evaluations of the same experiment
    show that it cannot win (``blackbox.core.early_stopping``).

    ``rule``: ``median`` (its best checkpoint loss so far is worse than the median of the finished evaluations'
    at the same step), ``incumbent`` (worse than the best evaluation's at the same step), or ``none``. ``margin``:
    the comparison's tolerance, relative (0.05: stop only when more than 5% worse). ``min_finished``: no stop
    before that many finished evaluations with a curve (also Optuna's ``MedianPruner(n_startup_trials)``).

    A stopped evaluation is recorded STOPPED (counted) with its curve, and NOMAD receives a value that never looks
    better than the incumbent (``failures.value_of_stopped``). The section does not enter the fingerprint: an
    evaluation that is not stopped gives the same result with or without a rule.
    """

    rule: Literal["none", "median", "incumbent"] = Field(default="none", description="none = no early stopping")
    min_finished: int = Field(default=3, ge=1, description="finished evaluations with a curve before any stop")
    margin: float = Field(default=0.0, ge=0, description="relative: stop only what is worse by more than this")


class FidelityConfig(_Section):
    """Cheaper, lower-fidelity evaluations of the same study (e.g. NOMAD's SURROGATE_EXE).

    ``train``: the fraction of the training steps (the schedule is compressed, not cut); ``validation``:
    the fraction of the validation set (always the same examples, so that points stay comparable).
    """

    train: float = Field(default=1.0, gt=0, le=1)
    validation: float = Field(default=1.0, gt=0, le=1)

    @property
    def full(self) -> bool:
        return self.train == 1.0 and self.validation == 1.0


class RecordsConfig(_Section):
    dir: str = Field(default="", description="'' = runs/<study.name> under the working directory")
    save_adapter: bool = False


class TrackingConfig(_Section):
    """Experiment tracking. ``mlflow``: track every evaluation in MLflow (``blackbox.tracking``), at
    ``$MLFLOW_TRACKING_URI``, or without one in a SQLite store in the study folder. A set
    ``$MLFLOW_TRACKING_URI`` turns tracking on without this."""

    mlflow: bool = False


class Experiment(_Section):
    """One study, validated as a whole. Build it with :func:`load_experiment`."""

    study: StudyConfig
    space: tuple[VariableConfig, ...]
    hyperparameters: HyperparametersConfig = HyperparametersConfig()
    model: ModelConfig
    lora: LoraVariantConfig = LoraVariantConfig()
    data: DataConfig
    training: TrainingConfig = TrainingConfig()
    validation: ValidationConfig = ValidationConfig()
    fidelity: FidelityConfig = FidelityConfig()
    records: RecordsConfig = RecordsConfig()
    tracking: TrackingConfig = TrackingConfig()
    stopping: StoppingConfig = StoppingConfig()
    objective: ObjectiveConfig = ObjectiveConfig()
    constraints: tuple[ConstraintConfig, ...] = ()
    # What `lora-blackbox downstream` scores when no --tasks are given (it changes no evaluation).
    downstream: tuple[BenchmarkConfig, ...] = ()

    @model_validator(mode="after")
    def _check_outputs(self) -> Experiment:
        problems = []
        constraints = {c.name: c for c in self.constraints}
        if len(constraints) < len(self.constraints):
            problems.append("constraints named twice")
        known = set(METRIC_NAMES) | {c.metric for c in self.constraints} | {b.key for b in self.benchmarks}
        printed = set()
        for spec in self.study.outputs:
            kind, _, name = spec.partition(":")
            if kind == "OBJ" and name not in ("objective", "validation_loss"):
                problems.append(f"{spec}: the objective is printed as OBJ:objective (or OBJ:validation_loss)")
            elif kind == "OBJ" and name == "validation_loss" and self.objective.name != "validation_loss":
                problems.append(f"{spec}: the objective is {self.objective.name}: print it as OBJ:objective")
            elif kind in ("PB", "EB"):
                printed.add(name)
                if name not in constraints or constraints[name].type != kind:
                    problems.append(f"{spec}: no constraint of type {kind} named {name!r} in [[constraints]]")
            elif kind == "EXTRA_O" and name not in known:
                problems.append(f"{spec}: {name!r} is not a metric ({sorted(known)})")
        for name in constraints:
            if name not in printed:
                problems.append(f"constraint {name!r} is not printed: add '{constraints[name].type}:{name}' to outputs")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @model_validator(mode="after")
    def _check_stopping(self) -> Experiment:
        problems = []
        if self.stopping.rule != "none" and not self.validation.checkpoints:
            problems.append(
                f"[stopping] rule = {self.stopping.rule!r} decides at checkpoints: set [validation] checkpoints "
                "(e.g. [0.25, 0.5, 0.75])"
            )
        if self.stopping.rule != "none" and self.objective.name != "validation_loss":
            problems.append(
                f"[stopping] rule = {self.stopping.rule!r} compares validation-loss curves, but the objective is "
                f"{self.objective.describe()}: use rule = 'none'"
            )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def downstream_defaults(self) -> tuple[BenchmarkConfig, ...]:
        """What ``lora-blackbox downstream`` scores without ``--tasks``: the objective's benchmark and its held-out
        test part, then ``[[downstream]]``."""
        found = [b for b in (self.objective.benchmark, self.objective.test) if b is not None] + list(self.downstream)
        return tuple({b.key: b for b in found}.values())

    @property
    def benchmarks(self) -> tuple[BenchmarkConfig, ...]:
        """The benchmarks every evaluation scores: the objective's and the constraints' (not ``downstream``)."""
        found = ([self.objective.benchmark] if self.objective.benchmark else []) + [
            c.benchmark for c in self.constraints
        ]
        return tuple({b.key: b for b in found}.values())

    @model_validator(mode="after")
    def _check_space(self) -> Experiment:
        problems = []
        names = [v.name for v in self.space]
        if not names:
            problems.append("the search space has no variable")
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            problems.append(f"variables named twice: {duplicated}")
        for hp in HPARAM_NAMES:
            fixed = getattr(self.hyperparameters, hp) is not None
            if hp in names and fixed:
                problems.append(f"{hp} is both a search variable and fixed in [hyperparameters]")
            if hp not in names and not fixed:
                problems.append(f"{hp} is neither a search variable nor fixed in [hyperparameters]")
        lengths = {len(v.starts) for v in self.space if isinstance(v.x0, tuple)}
        if len(lengths) > 1:
            listed = {v.name: len(v.starts) for v in self.space if isinstance(v.x0, tuple)}
            problems.append(f"the x0 lists name the same number of starting points, got {listed}")
        multiples = {v.name: v.of for v in self.space if v.of}
        for name, of in multiples.items():
            if of in multiples:
                problems.append(f"{name} is a multiple of {of}, which is itself a multiple: not supported")
        if "training.epochs" in names and self.training.max_steps is not None and "training.max_steps" not in names:
            problems.append(
                "training.epochs is a variable, but training.max_steps (set) overrides it: remove max_steps"
            )
        for variable in self.space:
            if variable.is_setting:
                problems += self._setting_problems(variable)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @model_validator(mode="after")
    def _check_lora(self) -> Experiment:
        problems = lora_problems(self.model, self.lora)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @model_validator(mode="after")
    def _check_test_split(self) -> Experiment:
        if self.validation.test and not self.data.test:
            raise ValueError("validation.test computes the loss of the test split: give its sources in data.test")
        return self

    def _setting_problems(self, variable: VariableConfig) -> list[str]:
        """Values of a setting variable that its section refuses, found at load time (section by section: the whole
        experiment is validated again for each point, see :meth:`with_settings`)."""
        section, _, key = variable.name.partition(".")
        current = getattr(self, section)
        problems = []
        for value in variable.candidate_values():
            changes = {key: value} if key else value
            if not isinstance(changes, dict):
                problems.append(
                    f"variable {variable.name}: the choices of a section are tables of its keys, got {value!r}"
                )
                continue
            unknown = [k for k in changes if k not in SEARCHABLE[section]]
            if unknown:
                problems += [
                    f"variable {variable.name}: {problem}"
                    for k in unknown
                    for problem in searchable_problems(f"{section}.{k}")
                ]
                continue
            try:
                changed = type(current).model_validate({**current.model_dump(), **changes})
            except ValidationError as e:
                problems += [f"variable {variable.name} = {value!r}: {_describe(err)}" for err in e.errors()]
                continue
            model = changed if isinstance(changed, ModelConfig) else self.model
            lora = changed if isinstance(changed, LoraVariantConfig) else self.lora
            problems += [f"variable {variable.name} = {value!r}: {p}" for p in lora_problems(model, lora)]
        return problems

    def with_settings(self, settings: Mapping[str, Any]) -> Experiment:
        """This experiment with the decoded settings of a point (``{"training.epochs": 2, "lora": {...}}``), validated
        again as a whole: the experiment that the point trains with.

        Raises:
            PointError: the settings make an invalid experiment (e.g. two settings that do not go together).
        """
        if not settings:
            return self
        raw = self.model_dump()
        for name, value in settings.items():
            section, _, key = name.partition(".")
            raw[section] = {**raw[section], **({key: value} if key else value)}
        try:
            return Experiment.model_validate(raw)
        except ValidationError as e:
            problems = "; ".join(_describe(err) for err in e.errors())
            raise PointError(f"the settings {dict(settings)} are not valid together: {problems}") from e

    @property
    def records_dir(self) -> Path:
        return Path(self.records.dir or f"runs/{self.study.name}")

    def fingerprint(self) -> str:
        """A short hash of the settings that decide an evaluation's result (not where records go, whether they
        are tracked, nor what ``downstream`` scores afterwards): :meth:`result_settings`."""
        return hashlib.sha256(self._result_settings_json().encode()).hexdigest()[:16]

    def result_settings(self) -> dict[str, Any]:
        """The settings that decide an evaluation's result, by section, as the fingerprint hashes them (warm starts
        say which of them differ)."""
        settings: dict[str, Any] = json.loads(self._result_settings_json())
        return settings

    def _result_settings_json(self) -> str:
        # The LoRA variant counts only when it is not plain LoRA: experiments from before [lora] keep their fingerprint.
        plain = {"lora"} if self.lora == LoraVariantConfig() else set()
        # Learning curves and early stopping change no result of an evaluation that runs to its end (and a stopped
        # one says so: STOPPED); left out, they keep every fingerprint from before them.
        exclude: dict[str, Any] = {name: True for name in ("records", "tracking", "downstream", "stopping", *plain)}
        exclude["validation"] = {"checkpoints", "checkpoint_rows"}
        # Whether a benchmark may run code is a permission, not a setting of the result: experiments from before it
        # keep their fingerprint.
        permission = {"allow_code_execution"}
        exclude["objective"] = {"benchmark": permission, "test": permission}
        exclude["constraints"] = {"__all__": {"benchmark": permission}}
        # The test split counts only for an evaluation that computes its loss: experiments from before data.test
        # keep their fingerprint, and so does a study's experiment with a test split that no evaluation sees.
        if not self.validation.test:
            exclude["data"] = {"test", "max_test_rows"}
            exclude["validation"] = {*exclude["validation"], "test"}
        # training.fused_kernels "auto" is fingerprinted as "none", the default it replaced: experiments from before it
        # keep their fingerprint. Like model.dtype "auto", what it resolved to on the hardware is in each record.
        settings = self
        if self.training.fused_kernels == "auto":
            settings = self.model_copy(update={"training": self.training.model_copy(update={"fused_kernels": "none"})})
        return settings.model_dump_json(exclude=exclude)


def write_snapshot(experiment: Experiment) -> Path:
    """Keep the experiment next to its records (``experiments/<fingerprint>.json``), once per fingerprint, so that
    the adapters of a study can be scored, asked questions or retrained later without its TOML file."""
    path = experiment.records_dir.resolve() / EXPERIMENTS_DIR / f"{experiment.fingerprint()}.json"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, experiment.model_dump_json(indent=1))
    return path


def read_snapshot(study_dir: Path, fingerprint: str) -> Experiment:
    """The experiment that ran the evaluations of ``fingerprint`` in a study folder.

    Raises:
        ConfigError: no snapshot of that fingerprint (records of an older version): give the experiment.
    """
    path = study_dir / EXPERIMENTS_DIR / f"{fingerprint}.json"
    if not path.is_file():
        raise ConfigError(f"{study_dir} keeps no experiment {fingerprint} ({path}): give it with --experiment")
    try:
        return Experiment.model_validate_json(path.read_text())
    except ValidationError as e:
        raise ConfigError(f"{path}: {e}") from e


def shipped_experiments() -> list[str]:
    """Names of the experiments that ship with the package."""
    folder = resources.files("blackbox").joinpath("experiments")
    return sorted(p.name.removesuffix(".toml") for p in folder.iterdir() if p.name.endswith(".toml"))


def resolve_experiment(name_or_path: str) -> tuple[str, str]:
    """Find an experiment file. Returns (its TOML text, where it came from).

    A path to an existing file wins; otherwise the name of a shipped experiment.
    """
    path = Path(name_or_path).expanduser()
    if path.is_file():
        try:
            return path.read_text(encoding="utf-8"), str(path)
        except OSError as e:
            raise ConfigError(f"cannot read {path}: {e}") from e
    shipped = resources.files("blackbox").joinpath("experiments", f"{name_or_path}.toml")
    if "/" not in name_or_path and shipped.is_file():
        return shipped.read_text(encoding="utf-8"), f"shipped experiment {name_or_path!r}"
    raise ConfigError(
        f"no experiment file {name_or_path!r} and no shipped experiment of that name; "
        f"shipped: {', '.join(shipped_experiments())}"
    )


def experiment_reference(name_or_path: str) -> str:
    """How another process (an evaluation, NOMAD's BB_EXE, a Ray worker) names this experiment: a file by its
    absolute path (``~`` expanded; another working directory resolves it alike), a shipped name as it is."""
    path = Path(name_or_path).expanduser()
    return str(path.resolve()) if path.is_file() else name_or_path


def load_experiment(name_or_path: str, overrides: list[str] | tuple[str, ...] = ()) -> Experiment:
    """Load, override and validate an experiment.

    Local paths become absolute (:func:`absolute_paths`): those of an experiment file resolve against its folder
    (data kept beside the experiment is found from any working directory), those of overrides and of a shipped
    experiment against the working directory. The snapshot, the records and NOMAD's BB_EXE carry them so.

    Args:
        name_or_path: a TOML file, or the name of a shipped experiment (``demo``, ``paper_exp2``, ...).
        overrides: ``KEY=VALUE`` strings with dotted keys, applied in order.

    Returns:
        The validated, frozen experiment.

    Raises:
        ConfigError: with every problem found (syntax, unknown keys, wrong types, inconsistent space).
    """
    text, source = resolve_experiment(name_or_path)
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"not valid TOML: {e}", source=source) from e
    path = Path(name_or_path).expanduser()
    absolute_paths(raw, path.resolve().parent if path.is_file() else Path.cwd())
    problems = []
    for item in overrides:
        try:
            apply_override(raw, item)
        except ConfigError as e:
            problems.extend(e.problems)
    if problems:
        raise ConfigError(problems, source=source)
    absolute_paths(raw, Path.cwd())  # the overrides' (those of the file are absolute already)
    try:
        return Experiment.model_validate(raw)
    except ValidationError as e:
        raise ConfigError([_describe(err) for err in e.errors()], source=source) from e


def absolute_overrides(overrides: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """``--set`` items with their local paths made absolute against the working directory (:func:`absolute_paths`),
    so that processes started elsewhere (NOMAD's BB_EXE in a study folder, a container, a Ray worker) read the same
    files. Other items, and lists, stay as they are."""
    result = []
    for item in overrides:
        key, sep, text = item.partition("=")
        parts = key.strip().split(".")
        value = parse_value(text)
        if sep and isinstance(value, str) and value and len(parts) >= 2:
            raw: dict[str, Any] = {}
            node = raw
            for part in parts[:-1]:
                node = node.setdefault(part, {})
            node[parts[-1]] = value
            absolute_paths(raw, Path.cwd())
            for part in parts[:-1]:
                raw = raw[part]
            if raw[parts[-1]] != value:
                item = f"{key}={raw[parts[-1]]}"
        result.append(item)
    return tuple(result)


DATA_FILE_SUFFIXES = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
"""Local data files by suffix, and the ``datasets`` builder that reads each."""


def absolute_paths(raw: dict[str, Any], base: Path) -> None:
    """Make the local paths of a raw experiment absolute, relative ones against ``base``: data files and folders
    (``data.train``, ``data.validation``, ``data.test``), a local model folder (``model.name_or_path``),
    ``records.dir`` and the benchmarks' ``include_path``. A name that is no local path stays as it is: a hub id
    (``meta-llama/Llama-2-7b-hf`` unless such a folder exists under ``base``), a hub data set, ``embedded:...``."""
    data = raw.get("data")
    if isinstance(data, dict):
        for key in ("train", "validation", "test"):
            value = data.get(key)
            if isinstance(value, str):
                data[key] = _local_source(value, base)
            elif isinstance(value, list):
                data[key] = [_local_source(v, base) if isinstance(v, str) else v for v in value]
    model = raw.get("model")
    if isinstance(model, dict) and isinstance(model.get("name_or_path"), str):
        model["name_or_path"] = _local_source(model["name_or_path"], base, files=False)
    records = raw.get("records")
    if isinstance(records, dict) and isinstance(records.get("dir"), str) and records["dir"]:
        records["dir"] = _absolute(records["dir"], base)
    objective: dict[str, Any] = raw["objective"] if isinstance(raw.get("objective"), dict) else {}
    benchmarks = [objective.get("benchmark"), objective.get("test"), *raw.get("downstream", [])]
    benchmarks += [c.get("benchmark") for c in raw.get("constraints", []) if isinstance(c, dict)]
    for benchmark in benchmarks:
        if isinstance(benchmark, dict) and isinstance(benchmark.get("include_path"), str) and benchmark["include_path"]:
            benchmark["include_path"] = _absolute(benchmark["include_path"], base)


def _absolute(value: str, base: Path) -> str:
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else Path(os.path.normpath(base / path)))


def _local_source(value: str, base: Path, *, files: bool = True) -> str:
    """``value`` as an absolute path when it names a local file or folder, else as it is (a hub name)."""
    if not value or value.startswith("embedded:"):
        return value
    path = Path(value).expanduser()
    explicit = value.startswith(("./", "../", "~", "/"))
    is_file = files and path.suffix.lower() in DATA_FILE_SUFFIXES
    if explicit or is_file or (base / path).exists():
        return _absolute(value, base)
    return value


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Set ``KEY=VALUE`` (dotted KEY) in a raw experiment dict, checking KEY against the schema."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
    parts = key.split(".")
    model: type[BaseModel] = Experiment
    for depth, part in enumerate(parts):
        field = model.model_fields.get(part)
        if field is None:
            where = ".".join(parts[:depth]) or "the experiment"
            known = ", ".join(model.model_fields)
            raise ConfigError(f"unknown key {key!r}: {where} has no {part!r} (known: {known})")
        annotation = field.annotation
        is_last = depth == len(parts) - 1
        if is_last:
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                raise ConfigError(f"{key!r} is a section; set one of its keys, e.g. {key}.<key>=...")
            break
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            raise ConfigError(f"unknown key {key!r}: {'.'.join(parts[: depth + 1])} has no sub-keys")
        model = annotation
    if parts[0] == "space":
        raise ConfigError("the search space cannot be changed with --set: edit the experiment file")
    node = raw
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{key!r}: {part!r} in the file is not a table")
        node = child
    node[parts[-1]] = parse_value(text)


def parse_value(text: str) -> Any:
    """A TOML value where the text parses as one, else the text itself."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _describe(err: Any) -> str:
    loc = ".".join(str(p) for p in err["loc"])
    message = str(err["msg"]).removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        return f"unknown key {loc!r}"
    if err["type"] == "missing":
        return f"{loc} is required"
    return f"{loc}: {message} (got {err['input']!r})" if loc else message
