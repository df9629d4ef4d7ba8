"""LoRA fine-tuning and validation as a blackbox for NOMAD and other hyperparameter optimizers.

The command line (``lora-blackbox``) is built on the Python API (``blackbox.api``)::

    from blackbox import Blackbox

    bb = Blackbox("demo")
    result = bb.evaluate({"lora_r": 8, "lora_alpha": 16, "learning_rate": 1e-3})
    result.objective, result.status, result.extras, result.timings

Importing ``blackbox`` is cheap: the API's names are loaded on first use, and torch only when an
evaluation runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from blackbox._version import __version__

if TYPE_CHECKING:
    from blackbox.api import Blackbox, Result
    from blackbox.core.experiment import Experiment, load_experiment
    from blackbox.core.failures import Status
    from blackbox.core.space import HyperParams, SearchSpace

_LAZY = {
    "Blackbox": "blackbox.api",
    "Result": "blackbox.api",
    "Experiment": "blackbox.core.experiment",
    "load_experiment": "blackbox.core.experiment",
    "Status": "blackbox.core.failures",
    "HyperParams": "blackbox.core.space",
    "SearchSpace": "blackbox.core.space",
}

__all__ = ["Blackbox", "Experiment", "HyperParams", "Result", "SearchSpace", "Status", "__version__", "load_experiment"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'blackbox' has no attribute {name!r}")
