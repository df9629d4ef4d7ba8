"""The failure policy: how an evaluation ends (its ``Status``), and what that means for the output line, the
budget and the call.

Status, and whether the evaluation is *counted* (a finished evaluation: it spent the budget; NOMAD's
CNT_EVAL output prints 1 for it). An interrupted evaluation, or one the call never reached, is not
counted: a resumed study evaluates its point again.
"""

from __future__ import annotations

import enum


class Status(str, enum.Enum):
    """How an evaluation ended. ``counted``: whether it is a finished evaluation (it spent the budget); an
    interrupted one or one the call never reached is not, and a resumed study evaluates its point again."""

    OK = "OK"
    DIVERGED = "DIVERGED"  # NaN/inf loss: objective printed as inf, a valid but very bad point
    OOM = "OOM"  # out of memory (GPU or host)
    TIMEOUT = "TIMEOUT"  # training ran past training.timeout_s
    INVALID_POINT = "INVALID_POINT"  # the point file line is not a point of the space
    ERROR = "ERROR"  # any other exception while training or validating
    INTERRUPTED = "INTERRUPTED"  # SIGINT/SIGTERM arrived during the evaluation
    NOT_RUN = "NOT_RUN"  # the call failed (e.g. the model could not be loaded) before this point ran

    @property
    def counted(self) -> bool:
        return self not in (Status.INTERRUPTED, Status.NOT_RUN)
