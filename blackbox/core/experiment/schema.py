"""The experiment as a whole: its sections (``sections``), checked together, the settings a point applies, and the
fingerprint of the settings that decide an evaluation's result."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError, model_validator

from blackbox.core.errors import PointError
from blackbox.core.experiment.checks import HPARAM_NAMES, SEARCHABLE, describe_error, lora_problems, searchable_problems
from blackbox.core.experiment.sections import (
    METRIC_NAMES,
    DataConfig,
    FidelityConfig,
    HyperparametersConfig,
    LoraVariantConfig,
    ModelConfig,
    RecordsConfig,
    ReplayConfig,
    Section,
    StoppingConfig,
    StudyConfig,
    TrackingConfig,
    TrainingConfig,
    ValidationConfig,
    VariableConfig,
)
from blackbox.core.objectives import BenchmarkConfig, ConstraintConfig, ObjectiveConfig, objectives_problems


class Experiment(Section):
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
    replay: ReplayConfig = ReplayConfig()
    tracking: TrackingConfig = TrackingConfig()
    stopping: StoppingConfig = StoppingConfig()
    objective: ObjectiveConfig = ObjectiveConfig()
    # Several objectives at once (2 to 4, NOMAD's DMultiMads; core.objectives): instead of [objective].
    objectives: tuple[ObjectiveConfig, ...] = ()
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
        problems += objectives_problems(
            self.objectives, self.objective, self.study.outputs, single_given=self.objective != ObjectiveConfig()
        )
        for spec in self.study.outputs:
            kind, _, name = spec.partition(":")
            if kind == "OBJ" and self.objectives:
                continue  # objectives_problems checked them
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
        if self.stopping.rule != "none" and self.objectives:
            problems.append(
                f"[stopping] rule = {self.stopping.rule!r} compares validation-loss curves, but the study has "
                f"{len(self.objectives)} objectives: a curve does not show where a point lands on the others "
                f"({', '.join(o.key for o in self.objectives[1:])}), so no rule stops its training: use rule = 'none'"
            )
        elif self.stopping.rule != "none" and self.objective.name != "validation_loss":
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
        found = [b for o in self.all_objectives for b in (o.benchmark, o.test) if b is not None]
        found += list(self.downstream)
        return tuple({b.key: b for b in found}.values())

    @property
    def benchmarks(self) -> tuple[BenchmarkConfig, ...]:
        """The benchmarks every evaluation scores: the objective's and the constraints' (not ``downstream``)."""
        found = [o.benchmark for o in self.all_objectives if o.benchmark] + [c.benchmark for c in self.constraints]
        return tuple({b.key: b for b in found}.values())

    @property
    def all_objectives(self) -> tuple[ObjectiveConfig, ...]:
        """What the study optimises: ``[[objectives]]``, or the one ``[objective]``."""
        return self.objectives or (self.objective,)

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
                problems += [f"variable {variable.name} = {value!r}: {describe_error(err)}" for err in e.errors()]
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
            problems = "; ".join(describe_error(err) for err in e.errors())
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
        exclude: dict[str, Any] = {
            name: True for name in ("records", "replay", "tracking", "downstream", "stopping", *plain)
        }
        exclude["validation"] = {"checkpoints", "checkpoint_rows"}
        # Whether a benchmark may run code is a permission, not a setting of the result: experiments from before it
        # keep their fingerprint.
        permission = {"allow_code_execution"}
        # A benchmark's decoding counts only when one is not decoded as its task says: others keep their fingerprint.
        scored = [
            *(b for b in (self.objective.benchmark, self.objective.test) if b),
            *(b for o in self.objectives for b in (o.benchmark, o.test) if b),
            *(c.benchmark for c in self.constraints),
        ]
        if all(b.decoding == "task" for b in scored):
            permission = {*permission, "decoding"}
        exclude["objective"] = {"benchmark": permission, "test": permission}
        # A study of one objective has no [[objectives]]: experiments from before them keep their fingerprint.
        exclude["objectives"] = {"__all__": {"benchmark": permission, "test": permission}} if self.objectives else True
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
        text = settings.model_dump_json(exclude=exclude)
        if self.data.validation and self.data.max_train_rows:
            # A capped training set beside a separate validation source is a random sample of its sources (it was
            # their first rows until 2026-12-04): these experiments, and only these, got a new fingerprint.
            dumped = json.loads(text)
            dumped["data"]["train_rows"] = "random sample"
            text = json.dumps(dumped, separators=(",", ":"))
        return text
