"""The search space: NOMAD's numbers on one side, LoRA hyperparameters and settings on the other.

NOMAD sees indices, exponents and multipliers; only :meth:`SearchSpace.decode` maps them to the
values a training run uses (the four LoRA hyperparameters, and the settings of the experiment that are
variables: ``training.epochs``, ``lora.use_dora``, ...), and :meth:`SearchSpace.encode` maps them back.

Example (the paper's third study)::

    space = SearchSpace.from_experiment(load_experiment("paper_exp3"))
    space.decode((2.0, 8.0, 1.0))
    # HyperParams(lora_r=8, lora_alpha=64, lora_dropout=0.0, learning_rate=0.000316...)
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from blackbox.core.errors import PointError
from blackbox.core.experiment import HPARAM_NAMES, Experiment, VariableConfig

Categorical = None | bool | int | float | str


class Trial(Protocol):
    """What :meth:`SearchSpace.suggest` needs of an Optuna trial (``Trial``, ``FixedTrial``)."""

    def suggest_int(self, name: str, low: int, high: int) -> int: ...

    def suggest_float(self, name: str, low: float, high: float, *, step: float | None = None) -> float: ...

    def suggest_categorical(self, name: str, choices: Sequence[Categorical]) -> Categorical: ...


@dataclass(frozen=True)
class HyperParams:
    """The tuned hyperparameters of one evaluation: the four of LoRA, and ``settings``, the decoded values of the
    variables that are experiment settings, by dotted key (``{"training.epochs": 2, "lora.use_dora": True}``).
    The point trains with ``experiment.with_settings(hparams.settings)``."""

    lora_r: int
    lora_alpha: float
    lora_dropout: float
    learning_rate: float
    settings: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """Every decoded value by name, the settings by their dotted keys: what records and ``decode`` show."""
        values: dict[str, Any] = {name: getattr(self, name) for name in HPARAM_NAMES}
        return {**values, **self.settings}


@dataclass(frozen=True)
class SearchSpace:
    """The variables of an experiment, the fixed LoRA hyperparameters, and the experiment that the decoded settings
    of a point must keep valid (None: settings are not checked)."""

    variables: tuple[VariableConfig, ...]
    fixed: dict[str, float]
    experiment: Experiment | None = None

    @classmethod
    def from_experiment(cls, experiment: Experiment) -> SearchSpace:
        fixed = {
            name: value for name in HPARAM_NAMES if (value := getattr(experiment.hyperparameters, name)) is not None
        }
        return cls(variables=experiment.space, fixed=fixed, experiment=experiment)

    @property
    def dimension(self) -> int:
        return len(self.variables)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(v.name for v in self.variables)

    @property
    def x0(self) -> tuple[float, ...]:
        """The first starting point."""
        return self.starting_points[0]

    @property
    def starting_points(self) -> tuple[tuple[float, ...], ...]:
        """Every starting point (NOMAD's X0 lines): one, or as many as the variables' ``x0`` lists give."""
        count = max(len(v.starts) for v in self.variables)
        return tuple(
            tuple(v.starts[i] if len(v.starts) > 1 else v.starts[0] for v in self.variables) for i in range(count)
        )

    @property
    def lower(self) -> tuple[float, ...]:
        return tuple(v.lower for v in self.variables)

    @property
    def upper(self) -> tuple[float, ...]:
        return tuple(v.upper for v in self.variables)

    def check(self, point: tuple[float, ...]) -> tuple[float, ...]:
        """Check a point against types and bounds; return it with integers and granularity snapped.

        Raises:
            PointError: wrong number of values, a non-integral integer, or a value out of bounds.
        """
        if len(point) != self.dimension:
            raise PointError(f"expected {self.dimension} values ({' '.join(self.names)}), got {len(point)}")
        snapped = []
        for var, x in zip(self.variables, point, strict=True):
            if var.type in ("I", "B"):
                nearest = round(x)
                if abs(x - nearest) > 1e-9 * max(1.0, abs(x)):
                    raise PointError(f"{var.name} is an integer variable, got {x!r}")
                x = float(nearest)
            elif var.granularity:
                # NOMAD writes 14 decimals and does not apply the granularity in the text.
                x = round(x / var.granularity) * var.granularity
            tolerance = 1e-12 * max(1.0, abs(var.lower), abs(var.upper))
            if not var.lower - tolerance <= x <= var.upper + tolerance:
                raise PointError(f"{var.name}={x!r} is out of bounds [{var.lower:g}, {var.upper:g}]")
            snapped.append(min(max(x, var.lower), var.upper) + 0.0)  # + 0.0 turns NOMAD's -0 into 0
        return tuple(snapped)

    def decode(self, point: tuple[float, ...]) -> HyperParams:
        """Map a checked point to hyperparameters and settings.

        Raises:
            PointError: the point fails :meth:`check`, decodes to an impossible value, or its settings make the
                experiment invalid.
        """
        point = self.check(point)
        values: dict[str, float] = dict(self.fixed)
        settings: dict[str, Any] = {}
        for var, x in zip(self.variables, point, strict=True):
            if var.is_setting:
                settings[var.name] = var.decode_value(x)
            elif not var.of:
                values[var.name] = var.decode_value(x)
        for var, x in zip(self.variables, point, strict=True):
            if var.decode == "multiple":
                values[var.name] = x * values[var.of]
            elif var.decode == "power_of_two_multiple":
                values[var.name] = 2.0**x * values[var.of]
            elif var.decode == "sqrt_multiple":
                values[var.name] = x * math.sqrt(values[var.of])
        hparams = _hparams(values, settings)
        if settings and self.experiment is not None:
            self.experiment.with_settings(settings)  # raises PointError
        return hparams

    def encode(self, hparams: HyperParams) -> tuple[float, ...]:
        """The point that decodes to ``hparams`` (inverse of :meth:`decode`).

        Raises:
            PointError: no point of the space decodes to these hyperparameters.
        """
        values = hparams.as_dict()
        point = []
        for var in self.variables:
            if var.name not in values:
                raise PointError(f"{var.name} is a variable of the space, but has no value")
            value = values[var.name]
            if var.decode == "choice":
                matches = [i for i, v in enumerate(var.values, start=1) if _same(v, value)]
                if not matches:
                    raise PointError(f"{var.name}={value!r} is not one of {list(var.values)}")
                x = float(matches[0])
            elif not isinstance(value, int | float):
                raise PointError(f"{var.name}={value!r} is not a number")
            elif var.decode == "plain":
                x = float(value)
            elif var.decode == "power_of_two":
                x = math.log2(value)
            elif var.decode == "log10":
                x = math.log10(value)
            elif var.decode == "multiple":
                x = value / values[var.of]
            elif var.decode == "power_of_two_multiple":
                x = math.log2(value / values[var.of])
            else:
                x = value / math.sqrt(values[var.of])
            if var.type in ("I", "B"):
                x = float(round(x))
            point.append(x)
        encoded = self.check(tuple(point))
        # Up to rounding: 10 ** log10(3e-4) is 3.0000000000000003e-4, and that is the same learning rate.
        decoded = self.decode(encoded).as_dict()
        if any(not _same(decoded[name], values[name]) for name in decoded):
            raise PointError(f"{hparams} is not in the search space")
        return encoded

    def suggest(self, trial: Trial) -> tuple[float, ...]:
        """Ask an Optuna trial for a point, one parameter per variable, and return it in NOMAD's coordinates.

        A ``choice`` variable is ``suggest_categorical`` over its values (a value that is not a number, string,
        boolean or None as its JSON text, e.g. ``'["q_proj", "v_proj"]'``): Optuna samples the values, not the
        indices, and the point holds the index, as NOMAD's would. Other ``I``/``B`` variables are ``suggest_int``
        over their bounds (exponents, multipliers), ``R`` variables ``suggest_float``, with ``step`` set to a
        granularity: the numbers NOMAD would see, so that records of both solvers are comparable. A log10
        variable is uniform in the exponent, as in NOMAD. Decode the point with :meth:`decode`.

        Example::

            point = space.suggest(optuna.trial.FixedTrial({"lora_r": 3, "lora_alpha": 2, "learning_rate": -3.0}))
            space.decode(point)  # HyperParams(lora_r=8, lora_alpha=16, ...)
        """
        values = []
        for var in self.variables:
            if var.decode == "choice":
                first = int(var.lower)
                choices = [categorical(v) for v in var.values[first - 1 : int(var.upper)]]
                picked = trial.suggest_categorical(var.name, choices)
                values.append(float(first + choices.index(picked)))
            elif var.type in ("I", "B"):
                values.append(float(trial.suggest_int(var.name, int(var.lower), int(var.upper))))
            else:
                step = var.granularity or None
                values.append(float(trial.suggest_float(var.name, var.lower, var.upper, step=step)))
        return self.check(tuple(values))


def categorical(value: Any) -> Categorical:
    """A choice as Optuna's categorical distributions hold it: itself, or its JSON text (lists, tables)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return json.dumps(value, sort_keys=True)


def _same(a: Any, b: Any) -> bool:
    """Whether two decoded values are the same: numbers up to rounding, lists and tuples alike."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return math.isclose(a, b, rel_tol=1e-9)
    return bool(json.loads(json.dumps(a)) == json.loads(json.dumps(b)))


def _hparams(values: dict[str, float], settings: dict[str, Any]) -> HyperParams:
    r, alpha, dropout, lr = (values[name] for name in HPARAM_NAMES)
    if not float(r).is_integer() or r < 1:
        raise PointError(f"lora_r must be a positive integer, decoded {r!r}")
    if not alpha > 0:
        raise PointError(f"lora_alpha must be > 0, decoded {alpha!r}")
    if not 0 <= dropout <= 1:
        raise PointError(f"lora_dropout must lie in [0, 1], decoded {dropout!r}")
    if not (lr > 0 and math.isfinite(lr)):
        raise PointError(f"learning_rate must be a positive number, decoded {lr!r}")
    # An integral alpha stays an int, so that it prints as 64, not 64.0.
    alpha = int(alpha) if float(alpha).is_integer() else float(alpha)
    return HyperParams(
        lora_r=int(r), lora_alpha=alpha, lora_dropout=float(dropout), learning_rate=float(lr), settings=settings
    )
