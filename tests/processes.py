"""The processes of a study, for the tests that kill one and check that nothing of it is left."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import psutil


def study_processes(study_dir: Path) -> list[psutil.Process]:
    """The processes of a study: NOMAD and its blackbox calls run in the study folder, or carry its stop file."""
    found = []
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if process.pid == os.getpid() or process.status() == psutil.STATUS_ZOMBIE:
                continue
            stop_file = process.environ().get("LORA_BLACKBOX_STOP_FILE", "")
            if process.cwd() == str(study_dir) or stop_file.startswith(str(study_dir)):
                found.append(process)
    return found
