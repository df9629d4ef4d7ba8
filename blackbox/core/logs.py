"""Where log lines go: the terminal shows the package's own lines; every line, the libraries' warnings and logs
included, goes to the evaluation's ``eval.log``.

The command line (``blackbox.cli``) sets this up, the only place that configures logging: Python's warnings
become log records (``logging.captureWarnings``), the root logger takes every record, its terminal handler lets
through the records of the ``blackbox`` loggers only (all of them with ``--debug``), and an evaluation adds its
``eval.log`` handler to the root logger while it runs (``training.attempt.log_to``). What is logged before the first
evaluation opens its log (the libraries' import-time warnings) waits in a :class:`StartupLog` and is written at
the top of that ``eval.log`` (:func:`hand_over`).
"""

from __future__ import annotations

import io
import logging
import logging.handlers
import re

PACKAGE = "blackbox"

_STARTUP_CAPACITY = 500


class OursOnly(logging.Filter):
    """Lets through the records of the package's loggers (``blackbox``, ``blackbox.*``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name == PACKAGE or record.name.startswith(PACKAGE + ".")


class StartupLog(logging.handlers.MemoryHandler):
    """Keeps the records logged before the first evaluation's log opens (the last ones, up to a bound)."""

    def __init__(self) -> None:
        super().__init__(_STARTUP_CAPACITY, flushLevel=logging.CRITICAL + 1, flushOnClose=False)

    def shouldFlush(self, record: logging.LogRecord) -> bool:  # logging's name
        if len(self.buffer) > self.capacity:
            del self.buffer[0]  # a bound, not a flush: nothing to write them to yet
        return False


def hand_over(target: logging.Handler) -> None:
    """Write what a :class:`StartupLog` of the root logger holds into ``target`` (an evaluation's log), once."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, StartupLog):
            root.removeHandler(handler)
            for record in handler.buffer:
                if record.levelno >= target.level:
                    target.handle(record)
            handler.buffer.clear()


LIBRARIES_WITH_HANDLERS = ("transformers", "datasets", "huggingface_hub")
"""Libraries that give their loggers a terminal handler of their own when imported (and stop propagation)."""


def adopt_library_loggers() -> None:
    """Route the logs of :data:`LIBRARIES_WITH_HANDLERS` through the root logger, as every other library's: their
    own terminal handlers go, their records propagate (to the terminal with ``--debug``, to ``eval.log`` always).
    Call it once they are imported; idempotent."""
    for name in LIBRARIES_WITH_HANDLERS:
        if name not in logging.Logger.manager.loggerDict:
            continue
        library = logging.getLogger(name)
        for handler in list(library.handlers):
            if type(handler) is logging.StreamHandler:  # their default handler, not a file a user added
                library.removeHandler(handler)
        library.propagate = True


class LogLines(io.TextIOBase):
    """A text stream whose lines become records of ``logger`` (INFO): a library's prints and progress bars, sent
    to the log instead of the terminal (``contextlib.redirect_stdout``/``redirect_stderr``). A progress bar's
    carriage-return updates are lines too; blank ones are dropped."""

    def __init__(self, logger: logging.Logger) -> None:
        super().__init__()
        self.logger = logger
        self._pending = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        *lines, self._pending = re.split(r"[\r\n]", self._pending + text)
        for line in lines:
            if line.strip():
                self.logger.info("%s", line.rstrip())
        return len(text)

    def flush(self) -> None:  # a line without its end stays pending: flushing a bar is not ending it
        pass

    def close(self) -> None:
        if self._pending.strip():
            self.logger.info("%s", self._pending.rstrip())
        self._pending = ""
        super().close()
