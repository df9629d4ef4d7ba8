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

The modules, each using only those before it: ``checks`` (what a search variable may name, the LoRA variants a
model's loading allows), ``sections`` (a pydantic model per section of the file), ``schema`` (:class:`Experiment`:
the sections checked together, a point's settings, the fingerprint), ``loading`` (:func:`load_experiment`,
overrides, local paths, snapshots). Import their public names from here.
"""

from blackbox.core.experiment.checks import HPARAM_NAMES, SEARCHABLE, lora_problems, searchable_problems
from blackbox.core.experiment.loading import (
    DATA_FILE_SUFFIXES,
    ENV_EXPERIMENT,
    absolute_overrides,
    absolute_paths,
    apply_override,
    experiment_reference,
    load_experiment,
    parse_value,
    read_snapshot,
    resolve_experiment,
    shipped_experiments,
    write_snapshot,
)
from blackbox.core.experiment.schema import Experiment
from blackbox.core.experiment.sections import (
    METRIC_NAMES,
    MULTIPLES,
    OUTPUT_TYPES,
    TARGET_PRESETS,
    DataConfig,
    FidelityConfig,
    HyperparametersConfig,
    LoraVariantConfig,
    ModelConfig,
    RecordsConfig,
    ReplayConfig,
    StoppingConfig,
    StudyConfig,
    TrackingConfig,
    TrainingConfig,
    ValidationConfig,
    VariableConfig,
    lora_targets,
)
from blackbox.core.objectives import BenchmarkConfig, ConstraintConfig, ObjectiveConfig

__all__ = [
    "DATA_FILE_SUFFIXES",
    "ENV_EXPERIMENT",
    "HPARAM_NAMES",
    "METRIC_NAMES",
    "MULTIPLES",
    "OUTPUT_TYPES",
    "SEARCHABLE",
    "TARGET_PRESETS",
    "BenchmarkConfig",
    "ConstraintConfig",
    "DataConfig",
    "Experiment",
    "FidelityConfig",
    "HyperparametersConfig",
    "LoraVariantConfig",
    "ModelConfig",
    "ObjectiveConfig",
    "RecordsConfig",
    "ReplayConfig",
    "StoppingConfig",
    "StudyConfig",
    "TrackingConfig",
    "TrainingConfig",
    "ValidationConfig",
    "VariableConfig",
    "absolute_overrides",
    "absolute_paths",
    "apply_override",
    "experiment_reference",
    "load_experiment",
    "lora_problems",
    "lora_targets",
    "parse_value",
    "read_snapshot",
    "resolve_experiment",
    "searchable_problems",
    "shipped_experiments",
    "write_snapshot",
]
