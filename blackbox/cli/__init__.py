"""The command line, ``lora-blackbox`` (:func:`main`): the only layer that writes stdout and exits."""

from __future__ import annotations

from blackbox.cli.main import main

__all__ = ["main"]
