"""The search space: NOMAD's numbers on one side, LoRA hyperparameters on the other.

NOMAD sees indices, exponents and multipliers; only :meth:`SearchSpace.decode` maps them to the
values a training run uses, and :meth:`SearchSpace.encode` maps them back.

Example (the paper's third study)::

    space = SearchSpace.from_experiment(load_experiment("paper_exp3"))
    space.decode((2.0, 8.0, 1.0))
    # HyperParams(lora_r=8, lora_alpha=64, lora_dropout=0.0, learning_rate=0.000316...)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Protocol

from blackbox.errors import PointError
from blackbox.experiment import HPARAM_NAMES, Experiment, VariableConfig


class Trial(Protocol):
    """What :meth:`SearchSpace.suggest` needs of an Optuna trial (``Trial``, ``FixedTrial``)."""

    def suggest_int(self, name: str, low: int, high: int) -> int: ...

    def suggest_float(self, name: str, low: float, high: float, *, step: float | None = None) -> float: ...


@dataclass(frozen=True)
class HyperParams:
    """The tuned hyperparameters of one evaluation."""

    lora_r: int
    lora_alpha: float
    lora_dropout: float
    learning_rate: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True)
class SearchSpace:
    variables: tuple[VariableConfig, ...]
    fixed: dict[str, float]

    @classmethod
    def from_experiment(cls, experiment: Experiment) -> SearchSpace:
        fixed = {
            name: value for name in HPARAM_NAMES if (value := getattr(experiment.hyperparameters, name)) is not None
        }
        return cls(variables=experiment.space, fixed=fixed)

    @property
    def dimension(self) -> int:
        return len(self.variables)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(v.name for v in self.variables)

    @property
    def x0(self) -> tuple[float, ...]:
        return tuple(v.x0 for v in self.variables)

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
        """Map a checked point to hyperparameters.

        Raises:
            PointError: the point fails :meth:`check`, or decodes to an impossible value.
        """
        point = self.check(point)
        values: dict[str, float] = dict(self.fixed)
        for var, x in zip(self.variables, point, strict=True):
            if var.decode != "multiple":
                values[var.name] = _decode_one(var, x)
        for var, x in zip(self.variables, point, strict=True):
            if var.decode == "multiple":
                values[var.name] = x * values[var.of]
        return _hparams(values)

    def encode(self, hparams: HyperParams) -> tuple[float, ...]:
        """The point that decodes to ``hparams`` (inverse of :meth:`decode`).

        Raises:
            PointError: no point of the space decodes to these hyperparameters.
        """
        values = hparams.as_dict()
        point = []
        for var in self.variables:
            value = values[var.name]
            if var.decode == "plain":
                x = value
            elif var.decode == "choice":
                matches = [i for i, v in enumerate(var.values, start=1) if math.isclose(v, value)]
                if not matches:
                    raise PointError(f"{var.name}={value} is not one of {list(var.values)}")
                x = float(matches[0])
            elif var.decode == "power_of_two":
                x = math.log2(value)
            elif var.decode == "log10":
                x = math.log10(value)
            else:
                x = value / values[var.of]
            if var.type in ("I", "B"):
                x = float(round(x))
            point.append(x)
        encoded = self.check(tuple(point))
        # Up to rounding: 10 ** log10(3e-4) is 3.0000000000000003e-4, and that is the same learning rate.
        decoded, wanted = self.decode(encoded).as_dict(), _hparams(values).as_dict()
        if any(not math.isclose(decoded[name], wanted[name], rel_tol=1e-9) for name in HPARAM_NAMES):
            raise PointError(f"{hparams} is not in the search space")
        return encoded

    def suggest(self, trial: Trial) -> tuple[float, ...]:
        """Ask an Optuna trial for a point, one parameter per variable in NOMAD's coordinates.

        ``I``/``B`` variables are ``suggest_int`` over their bounds (indices, exponents, multipliers),
        ``R`` variables ``suggest_float``, with ``step`` set to a granularity: the numbers NOMAD would
        see, so that records of both solvers are comparable. A log10 variable is uniform in the exponent,
        as in NOMAD. Decode the point with :meth:`decode`.

        Example::

            point = space.suggest(optuna.trial.FixedTrial({"lora_r": 3, "lora_alpha": 2, "learning_rate": -3.0}))
            space.decode(point)  # HyperParams(lora_r=8, lora_alpha=16, ...)
        """
        values = []
        for var in self.variables:
            if var.type in ("I", "B"):
                values.append(float(trial.suggest_int(var.name, int(var.lower), int(var.upper))))
            else:
                step = var.granularity or None
                values.append(float(trial.suggest_float(var.name, var.lower, var.upper, step=step)))
        return self.check(tuple(values))


def _decode_one(var: VariableConfig, x: float) -> float:
    if var.decode == "plain":
        return x
    if var.decode == "choice":
        return float(var.values[int(x) - 1])
    if var.decode == "power_of_two":
        return float(2.0**x)
    if var.decode == "log10":
        return float(10.0**x)
    raise AssertionError(f"unhandled decode {var.decode!r}")  # 'multiple' is decoded by the caller


def _hparams(values: dict[str, float]) -> HyperParams:
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
    return HyperParams(lora_r=int(r), lora_alpha=alpha, lora_dropout=float(dropout), learning_rate=float(lr))
