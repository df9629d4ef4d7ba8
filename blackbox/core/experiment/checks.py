"""The checks of an experiment beyond the form of one key: what a search variable may name (a LoRA hyperparameter
or a searchable setting), which LoRA variants a base model's loading allows, and a pydantic error as one line.

They know no section model (the models, in ``sections`` and ``schema``, call them), so that every module of the
experiment can ask them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from blackbox.core.experiment.sections import LoraVariantConfig, ModelConfig

HPARAM_NAMES = ("lora_r", "lora_alpha", "lora_dropout", "learning_rate")
"""The hyperparameters a point decodes into. Each is either a search variable or fixed."""


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
    "objectives": "they are what the study measures",
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


def describe_error(err: Any) -> str:
    """One error of a pydantic ``ValidationError`` (an item of ``errors()``) as a line of a ``ConfigError``."""
    loc = ".".join(str(p) for p in err["loc"])
    message = str(err["msg"]).removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        return f"unknown key {loc!r}"
    if err["type"] == "missing":
        return f"{loc} is required"
    return f"{loc}: {message} (got {err['input']!r})" if loc else message
