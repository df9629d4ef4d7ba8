"""What evaluations cost, as a user pays it: wall-clock seconds of the device, phase by phase, beside their tokens.

Every record holds its timings (``startup_s`` of its process, for the first evaluation of a call; ``total_s``:
everything from the start of the evaluation to its record, loading included). A study's cost is the sum of its
records' (:attr:`~blackbox.core.record.EvalRecord.compute_seconds`), failed and stopped evaluations included: they
spent it too. Study summaries, reports and benchmarks quote it so, with the training tokens beside.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from blackbox.core.record import EvalRecord

PHASES: dict[str, tuple[str, ...]] = {
    "start-up": ("startup_s",),
    "loading": ("tokenizer_load_s", "data_prep_s", "model_load_s"),
    "training": ("train_s",),
    "checkpoints": ("checkpoint_s",),
    "validation": ("validation_s",),
    "test split": ("test_s",),
    "benchmarks": ("benchmark_s",),
}
"""The phases of an evaluation and the timings (record keys) of each; the rest of ``total_s`` is "other"
(attaching the adapter, saving it, writing the record)."""


@dataclass(frozen=True)
class Compute:
    """The cost of some evaluations: their wall-clock seconds in all and by phase, and their training tokens."""

    evaluations: int
    seconds: float
    phases: dict[str, float]
    train_tokens: int

    def describe(self) -> str:
        """One line: ``0.51 h of device time in 20 evaluations (training 71%, ...); 236,021 training tokens``."""
        if not self.seconds:
            return f"no device time in {self.evaluations} evaluations"
        shares = ", ".join(
            f"{name} {seconds / self.seconds:.0%}"
            for name, seconds in sorted(self.phases.items(), key=lambda item: -item[1])
            if seconds / self.seconds >= 0.005
        )
        return (
            f"{self.seconds / 3600:.3g} h of device time in {self.evaluations} evaluations ({shares}); "
            f"{self.train_tokens:,} training tokens"
        )

    def as_dict(self) -> dict[str, object]:
        return {
            "evaluations": self.evaluations,
            "seconds": self.seconds,
            "phases_seconds": self.phases,
            "train_tokens": self.train_tokens,
        }


def compute_of(records: Iterable[EvalRecord]) -> Compute:
    """The cost of ``records`` (every one counts: a failed or stopped evaluation spent its seconds too)."""
    records = list(records)
    phases = {name: 0.0 for name in PHASES}
    other = 0.0
    for record in records:
        timings = record.timings
        measured = 0.0
        for name, keys in PHASES.items():
            spent = math.fsum(float(timings.get(k, 0.0)) for k in keys)
            phases[name] += spent
            measured += spent
        other += max(0.0, record.compute_seconds - measured)
    phases["other"] = other
    tokens = sum(int(r.metrics.get("train_tokens") or 0) for r in records)
    return Compute(len(records), math.fsum(r.compute_seconds for r in records), phases, tokens)
