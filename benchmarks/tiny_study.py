"""The benchmarks' study on the tiny test model: the tests' experiment template (tests/assets) with one
variable, log10 of the learning rate. Imported by the benchmark scripts run as ``python benchmarks/X.py``."""

from __future__ import annotations

from pathlib import Path

from blackbox.training.testing import write_experiment

ASSETS = Path(__file__).resolve().parent.parent / "tests" / "assets"


def learning_rate_study(path: Path, *, name: str, model: Path, train: Path, validation: Path, steps: int) -> Path:
    """The tests' experiment template with one variable, log10 of the learning rate (tests/assets)."""
    return write_experiment(
        path,
        template=ASSETS / "tiny_experiment.toml",
        space=ASSETS / "spaces" / "lr.toml",
        name=name,
        budget=1,
        outputs='["OBJ:validation_loss"]',
        model=model,
        train=train,
        validation=validation,
        steps=steps,
        records=path.parent / "runs",
    )
