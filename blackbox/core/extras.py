"""The optional parts of the package and what installs them: the package alone (from a checkout or its git URL: no
release is on PyPI yet) gives the blackbox and the NOMAD studies; the rest comes with an extra (``pip install
'lora-blackbox[optuna]'`` on an installed package, which pip resolves from its metadata; ``[all]``).

A part that needs a missing extra fails with one line that names the extra's install command
(:func:`require`), checked where the part starts: never a ``ModuleNotFoundError`` traceback.
"""

from __future__ import annotations

import importlib.util

from blackbox.core.errors import SetupError

EXTRA_OF = {
    "optuna": "optuna",
    "cmaes": "optuna",
    "mlflow": "track",
    "lm_eval": "assess",
    "starlette": "compare",
    "uvicorn": "compare",
    "jinja2": "compare",
    "multipart": "compare",
    "openai": "judge",
    "vllm": "vllm",
    "matplotlib": "report",
    "scipy": "report",
    "ray": "ray",
    "bitsandbytes": "gpu",
    "liger_kernel": "kernels",
    "gguf": "demo",
    "chitchat_dataset": "demo",
}
"""The extra that installs each optional module (pyproject.toml's ``[project.optional-dependencies]``)."""


def missing(*modules: str, purpose: str) -> str | None:
    """Why ``purpose`` (``lora-blackbox optuna``, "MLflow tracking") cannot run here, in one line naming the
    install command: ``PURPOSE needs MODULE ...: pip install 'lora-blackbox[EXTRA]'``; None when it can."""
    for module in modules:
        if not _importable(module):
            extra = EXTRA_OF.get(module, "all")
            return f"{purpose} needs {module}, which is not installed: pip install 'lora-blackbox[{extra}]'"
    return None


def require(*modules: str, purpose: str) -> None:
    """Check that ``modules`` can be imported, for ``purpose``.

    Raises:
        SetupError: one is missing (:func:`missing`'s line).
    """
    why = missing(*modules, purpose=purpose)
    if why:
        raise SetupError(why)


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # None in sys.modules (blocked), or a broken parent package
        return False
