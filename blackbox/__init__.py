"""LoRA fine-tuning and validation as a blackbox for NOMAD and other hyperparameter optimizers.

The command line (``lora-blackbox``) is the main interface; see ``blackbox.cli``.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("lora-blackbox")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

__all__ = ["__version__"]
