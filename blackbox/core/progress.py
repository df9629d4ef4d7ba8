"""How progress reads on stderr: durations and ETAs, the same for training steps and for evaluations."""

from __future__ import annotations


def format_duration(seconds: float) -> str:
    """``4m05s``, ``2h07m30s``."""
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"
