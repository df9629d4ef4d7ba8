"""One exception hierarchy for the whole package.

Which errors fail what:
- ``ConfigError``: the experiment or an override is wrong. The whole call fails (exit status 2).
- ``SetupError``: the call cannot proceed (unreadable point file, missing model or data; ``RecordsError``:
  the records folder cannot be written). The whole call fails (exit status 1).
- ``PointError``: one line of a point file is not a valid point. Only that point fails (``nan`` line).
Errors raised while one point trains or validates are turned into a record status in
``objective.evaluate_point``; they never end the call.
"""

from __future__ import annotations

from pathlib import Path


class BlackboxError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(BlackboxError):
    """An experiment file or a ``--set`` override is invalid.

    Carries every problem found, so that a user fixes them in one go.
    """

    def __init__(self, problems: list[str] | str, *, source: str = "") -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.source = source
        where = f" in {source}" if source else ""
        if len(self.problems) == 1:
            message = f"invalid experiment{where}: {self.problems[0]}"
        else:
            listed = "\n".join(f"  - {p}" for p in self.problems)
            message = f"invalid experiment{where} ({len(self.problems)} problems):\n{listed}"
        super().__init__(message)


class OptionError(ConfigError):
    """An option of a command does not go with the experiment (``--warm-start`` from another search space,
    ``--pruner`` without checkpoints): the call ends as for an invalid experiment (exit status 2), its message as
    it is."""

    def __init__(self, message: str) -> None:
        self.problems, self.source = [message], ""
        BlackboxError.__init__(self, message)


class SetupError(BlackboxError):
    """The call cannot proceed: a file, a model or a data set cannot be read."""


class RecordsError(SetupError):
    """The records folder cannot be written (full disk, read-only or missing permissions): a record, an
    evaluation's log or its adapter. Every later point would fail the same way, so the call fails
    (``blackbox.core.failures``): exit status 1 and one line, ``cannot write records in DIR: <reason>``."""

    def __init__(self, records_dir: Path, error: OSError) -> None:
        reason = error.strerror or str(error)
        if error.filename and str(error.filename) != str(records_dir):
            reason += f" ({error.filename})"
        super().__init__(f"cannot write records in {records_dir}: {reason}")
        self.records_dir = records_dir


class PointError(BlackboxError):
    """One point (one line of a point file) is invalid."""


class EvaluationError(BlackboxError):
    """A known way for one evaluation to end badly; ``objective`` turns it into a record status."""


class TrainingDiverged(EvaluationError):
    """The loss became NaN or infinite: the point is valid but very bad (objective ``inf``)."""


class TrainingTimeout(EvaluationError):
    """Training ran past its wall-clock limit (``training.timeout_s``)."""


class RankStopped(EvaluationError):
    """torchrun stopped this rank of a data-parallel evaluation (SIGTERM) because another rank failed: the
    evaluation failed (ERROR), the call was not interrupted."""
