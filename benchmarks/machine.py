"""What a benchmark result was measured on: the CPU model and count, native bf16, the platform, the versions."""

from __future__ import annotations

import os
import platform
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from blackbox.training.precision import cpu_bf16


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            return next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def describe(packages: tuple[str, ...] = ()) -> dict[str, Any]:
    """The machine and the versions of ``packages`` (None where one is not installed)."""
    versions: dict[str, str | None] = {}
    for package in packages:
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None
    return {
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "native_bf16": cpu_bf16().native,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
    }
