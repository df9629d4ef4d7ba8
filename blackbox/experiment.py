"""The experiment: everything about one study, read from one TOML file.

An experiment holds the search space (``[[space]]``), the fixed hyperparameters, the model, the data,
the training and validation settings, the printed outputs and where records go. It is the single
source of truth: the NOMAD parameter file, the decoding of points and the output line all derive
from it.

Example::

    from blackbox.experiment import load_experiment
    exp = load_experiment("paper_exp3", overrides=["training.max_steps=5"])
    exp.training.max_steps  # 5

Overrides use dotted keys (``model.name_or_path=/models/tiny``); values are parsed as TOML values
where they parse (``5``, ``true``, ``["q_proj", "v_proj"]``) and taken as strings otherwise.
"""

from __future__ import annotations

import hashlib
import math
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import tomllib
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from blackbox.errors import ConfigError
from blackbox.files import write_text_atomic
from blackbox.folders import EXPERIMENTS_DIR

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
    ``pass@1``), with its filter after a comma when it is not ``none`` (``exact_match,strict-match``).
    ``limit``: 0 for every example; below 1 a fraction, else a count per task (for tests and smoke runs).
    ``label``: the name of the score in records and reports (default: the task).
    """

    task: str
    metric: str = "acc"
    tasks: tuple[str, ...] = ()
    label: str = ""
    num_fewshot: int | None = Field(default=None, ge=0)
    limit: float = Field(default=0.0, ge=0)
    include_path: str = ""
    batch_size: int = Field(default=8, ge=1)

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
        if (self.name == "benchmark") != (self.benchmark is not None):
            raise ValueError("objective 'benchmark' needs [objective.benchmark], and only it")
        if self.name == "validation_loss" and self.direction != "minimize":
            raise ValueError("the validation loss is minimised")
        return self

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
        if (self.at_least is None) == (self.at_most is None):
            raise ValueError(f"constraint {self.name}: give at_least or at_most, one of them")
        return self

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
    """One search variable as NOMAD sees it, and how its value decodes into a hyperparameter.

    ``decode``:
    - ``plain``: the value itself;
    - ``choice``: a 1-based index into ``values``;
    - ``power_of_two``: 2 ** value;
    - ``log10``: 10 ** value;
    - ``multiple``: value times the decoded value of the hyperparameter named by ``of``.
    """

    name: Literal["lora_r", "lora_alpha", "lora_dropout", "learning_rate"]
    type: Literal["I", "R", "B"]
    lower: float
    upper: float
    x0: float
    decode: Literal["plain", "choice", "power_of_two", "log10", "multiple"] = "plain"
    values: tuple[float, ...] = ()
    of: Literal["lora_r", "lora_alpha", "lora_dropout", "learning_rate", ""] = ""
    granularity: float = Field(default=0.0, ge=0.0, description="R only: values are rounded to it")

    @model_validator(mode="after")
    def _check(self) -> VariableConfig:
        problems = []
        if not self.lower <= self.x0 <= self.upper:
            problems.append(f"lower <= x0 <= upper must hold, got ({self.lower}, {self.x0}, {self.upper})")
        if self.type in ("I", "B"):
            for label, value in (("lower", self.lower), ("upper", self.upper), ("x0", self.x0)):
                if value != math.floor(value):
                    problems.append(f"{label} of an integer variable must be integral, got {value}")
        if self.type == "B" and (self.lower < 0 or self.upper > 1):
            problems.append("a binary variable lies in [0, 1]")
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
        elif self.values:
            problems.append(f"'values' is only read by decode 'choice', not {self.decode!r}")
        if (self.decode == "multiple") != bool(self.of):
            problems.append("decode 'multiple' needs 'of' (the hyperparameter it multiplies), and only it")
        if self.of == self.name:
            problems.append("a variable cannot be a multiple of itself")
        if self.granularity and self.type != "R":
            problems.append("granularity applies to R variables only")
        if problems:
            raise ValueError(f"variable {self.name}: " + "; ".join(problems))
        return self


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
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    # peft's layers_to_transform: indices of the decoder layers that get LoRA; empty = every layer. Backward
    # passes stop at the lowest adapted layer, so adapting only the top layers makes training cheaper.
    layers_to_transform: tuple[Annotated[int, Field(ge=0)], ...] = ()
    # auto: "varlen" (padding-free flash attention, attention.py) for packed batches on CUDA, else "sdpa".
    attn_implementation: Literal["auto", "varlen", "sdpa", "eager", "flash_attention_2", "flex_attention"] = "auto"


class DataConfig(_Section):
    """Instruction data: sources, prompt template, tokenisation and the validation split."""

    train: tuple[str, ...]
    validation: tuple[str, ...] = ()
    holdout_fraction: float = Field(default=0.2, gt=0, lt=1)
    split_seed: int = 0
    template: Literal["alpaca", "chat"] = "alpaca"
    # chat only: the system message of every prompt; unset: the chat template's own default (SmolLM2's
    # is 16 tokens long, most of a short chat example); "": an empty system message.
    system_prompt: str | None = None
    max_length: int = Field(default=512, ge=8)
    max_train_rows: int = Field(default=0, ge=0, description="0 = all rows")
    max_validation_rows: int = Field(default=0, ge=0, description="0 = all rows")

    @field_validator("train", "validation", mode="before")
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
    fused_kernels: Literal["none", "liger"] = "none"
    device: str = Field(default="auto", description="auto, cpu, cuda or cuda:N")
    timeout_s: float = Field(default=0.0, ge=0, description="wall-clock limit of training; 0 = none")
    log_every_steps: int = Field(default=10, ge=1)


class ValidationConfig(_Section):
    batch_size: int = Field(default=8, ge=1, description="sequences per validation forward pass")


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
    data: DataConfig
    training: TrainingConfig = TrainingConfig()
    validation: ValidationConfig = ValidationConfig()
    fidelity: FidelityConfig = FidelityConfig()
    records: RecordsConfig = RecordsConfig()
    tracking: TrackingConfig = TrackingConfig()
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
        known = set(METRIC_NAMES) | {"objective", *constraints} | {b.key for b in self.benchmarks}
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
        multiples = {v.name: v.of for v in self.space if v.decode == "multiple"}
        for name, of in multiples.items():
            if of in multiples:
                problems.append(f"{name} is a multiple of {of}, which is itself a multiple: not supported")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def records_dir(self) -> Path:
        return Path(self.records.dir or f"runs/{self.study.name}")

    def fingerprint(self) -> str:
        """A short hash of the settings that decide an evaluation's result (not where records go, whether they
        are tracked, nor what ``downstream`` scores afterwards)."""
        excluded = {"records", "tracking", "downstream"}
        return hashlib.sha256(self.model_dump_json(exclude=excluded).encode()).hexdigest()[:16]


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
    problems = []
    for item in overrides:
        try:
            apply_override(raw, item)
        except ConfigError as e:
            problems.extend(e.problems)
    if problems:
        raise ConfigError(problems, source=source)
    try:
        return Experiment.model_validate(raw)
    except ValidationError as e:
        raise ConfigError([_describe(err) for err in e.errors()], source=source) from e


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
