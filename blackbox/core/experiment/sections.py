"""The sections of an experiment file, one pydantic model each: ``[study]``, ``[[space]]`` (a variable each),
``[hyperparameters]``, ``[model]``, ``[lora]``, ``[data]``, ``[training]``, ``[validation]``, ``[stopping]``,
``[fidelity]``, ``[records]``, ``[replay]``, ``[tracking]``; the objectives, constraints and benchmarks are in
``blackbox.core.objectives``. :class:`~blackbox.core.experiment.schema.Experiment` checks them together.
"""

from __future__ import annotations

import itertools
import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from blackbox.core.experiment.checks import HPARAM_NAMES, searchable_problems

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


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StudyConfig(Section):
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
        if not any(spec.startswith("OBJ:") for spec in outputs):
            problems.append(f"an OBJ output is needed, got {list(outputs)}")  # how many: Experiment's objectives
        if outputs.count("CNT_EVAL") > 1:
            problems.append("CNT_EVAL can be printed once")
        if problems:
            raise ValueError("; ".join(problems))
        return outputs


MULTIPLES = ("multiple", "power_of_two_multiple", "sqrt_multiple")
"""The decodes whose value is a multiple of another hyperparameter's (``of``)."""


class VariableConfig(Section):
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
    - ``power_of_two_multiple``: 2 ** value times it (``lora_alpha = r * 2 ** k``: the scale alpha / r in powers
      of two);
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
    decode: Literal[
        "plain", "choice", "power_of_two", "log10", "multiple", "power_of_two_multiple", "sqrt_multiple"
    ] = "plain"
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
        if (self.decode in MULTIPLES) != bool(self.of):
            problems.append(f"decode {self.decode!r} needs 'of' (the hyperparameter it multiplies), and only it")
        if self.of and self.is_setting:
            problems.append(f"decode {' and '.join(repr(m) for m in MULTIPLES)} apply to the LoRA hyperparameters only")
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


class HyperparametersConfig(Section):
    """Fixed hyperparameters: those that are not search variables."""

    lora_r: int | None = Field(default=None, ge=1)
    lora_alpha: float | None = Field(default=None, gt=0)
    lora_dropout: float | None = Field(default=None, ge=0, le=1)
    learning_rate: float | None = Field(default=None, gt=0)


class ModelConfig(Section):
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
    # auto: "varlen" (padding-free flash attention, attention.py) for packed batches on CUDA with fp16/bf16 compute,
    # else "sdpa". "varlen" computes in fp16/bf16 only (the kernel's dtypes).
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


class LoraVariantConfig(Section):
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


class DataConfig(Section):
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


class TrainingConfig(Section):
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


class ValidationConfig(Section):
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


class StoppingConfig(Section):
    """Early stopping of the trainings of a study (NOMAD's, or any caller of ``eval``): at each checkpoint of
    ``[validation] checkpoints``, a training stops when the study's finished evaluations of the same experiment
    show that it cannot win (``blackbox.core.early_stopping``).

    ``rule``: ``median`` (its best checkpoint loss so far is worse than the median of the finished evaluations'
    at the same step), ``incumbent`` (worse than the best evaluation's at the same step), ``asha`` (asynchronous
    successive halving: the checkpoints are its rungs, and a training goes on only while it is among the best
    ``1/eta`` of every evaluation of the study that reached that rung, stopped ones included), or ``none``.
    ``margin``: the comparison's tolerance, relative (0.05: stop only when more than 5% worse). ``min_finished``:
    no stop before that many finished evaluations with a curve (``asha``: that many values at the rung; also
    Optuna's ``MedianPruner(n_startup_trials)``).

    A stopped evaluation is recorded STOPPED (counted) with its curve, and NOMAD receives a value that never looks
    better than the incumbent (``failures.value_of_stopped``). The section does not enter the fingerprint: an
    evaluation that is not stopped gives the same result with or without a rule.
    """

    rule: Literal["none", "median", "incumbent", "asha"] = Field(default="none", description="none = no early stopping")
    min_finished: int = Field(default=3, ge=1, description="finished evaluations with a curve before any stop")
    margin: float = Field(default=0.0, ge=0, description="relative: stop only what is worse by more than this")
    eta: float = Field(default=3.0, gt=1, description="asha: the share of a rung that goes on is 1/eta")


class FidelityConfig(Section):
    """Cheaper, lower-fidelity evaluations of the same study (e.g. NOMAD's SURROGATE_EXE).

    ``train``: the fraction of the training steps (the schedule is compressed, not cut); ``validation``:
    the fraction of the validation set (always the same examples, so that points stay comparable).
    """

    train: float = Field(default=1.0, gt=0, le=1)
    validation: float = Field(default=1.0, gt=0, le=1)

    @property
    def full(self) -> bool:
        return self.train == 1.0 and self.validation == 1.0


class RecordsConfig(Section):
    dir: str = Field(default="", description="'' = runs/<study.name> under the working directory")
    save_adapter: bool = False


class ReplayConfig(Section):
    """Answer every point from a replay table instead of training it (``blackbox.replay``): ``table`` is the CSV file
    of real evaluations of this experiment's grid that ``python benchmarks/replay.py build`` writes ('': train for
    real). The records, outputs, stopping rules and pruners are those of real evaluations; each record's timings are
    the table's measured seconds, up to where a rule stopped it, and ``replay_clock_s`` the study's simulated clock.
    A replayed evaluation gives the result the real one gave: the setting is not in the fingerprint."""

    table: str = Field(default="", description="'' = evaluate for real")


class TrackingConfig(Section):
    """Experiment tracking. ``mlflow``: track every evaluation in MLflow (``blackbox.tracking``), at
    ``$MLFLOW_TRACKING_URI``, or without one in a SQLite store in the study folder. A set
    ``$MLFLOW_TRACKING_URI`` turns tracking on without this."""

    mlflow: bool = False
