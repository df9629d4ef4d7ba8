"""The installed package's version, for every layer (importing ``blackbox`` itself would run back up the layers)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("lora-blackbox")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"
