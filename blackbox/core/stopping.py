"""A study's request to stop: once it is made, no new evaluation starts.

After a Ctrl-C NOMAD finishes its current iteration: every point it has already queued is still evaluated,
a full training each, so a driver cannot stop it between two evaluations by signalling NOMAD. Instead
``lora-blackbox study`` names a file in ``LORA_BLACKBOX_STOP_FILE`` for the blackbox calls NOMAD makes and
creates that file at the first Ctrl-C. A call that finds it evaluates nothing more: its points are recorded
NOT_RUN (``failures.NOT_RUN_STOPPING``) and answered with failing lines that do not count (``CNT_EVAL`` 0), so
NOMAD runs through its queue in moments, stops, and writes its cache and hot-restart file. Blackbox calls of a
NOMAD started by hand have no such variable and are never stopped this way.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_STOP_FILE = "LORA_BLACKBOX_STOP_FILE"


def stop_requested() -> bool:
    """Whether the study that started this call asked it to evaluate nothing more."""
    path = os.environ.get(ENV_STOP_FILE)
    return bool(path) and Path(str(path)).exists()
