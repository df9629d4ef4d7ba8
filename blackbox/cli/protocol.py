"""How a command talks to its caller: stdout kept for result lines, and how the call ends (its exit status).

The exit status of every command comes from the failure policy (``blackbox.core.failures``): a call that goes on
exits 0; an error that escapes a command ends it with ``failures.call_of(error)``'s status and one line on
stderr (its traceback only with ``--debug``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterator
from types import FrameType

import click

from blackbox.core.errors import RankStopped
from blackbox.core.failures import Call, call_of

logger = logging.getLogger("blackbox")

Emit = Callable[[str | bytes], None]


@contextlib.contextmanager
def protocol_stdout() -> Iterator[Emit]:
    """Keep stdout for result lines only.

    While the body runs, file descriptor 1 points at stderr (native code, C extensions and stray
    prints cannot reach the optimizer) and ``sys.stdout`` is ``sys.stderr``. Result lines go through
    the function this yields, to the real stdout: text, or bytes written as they are.
    """
    real = sys.stdout
    real.flush()
    try:
        real_is_fd1 = real.fileno() == 1
    except (AttributeError, OSError, ValueError):
        real_is_fd1 = False  # e.g. click's CliRunner: a Python-level stream
    saved = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def emit(text: str | bytes) -> None:
        data = text.encode() if isinstance(text, str) else text
        if real_is_fd1:
            view = memoryview(data)
            while view:
                view = view[os.write(saved, view) :]
        elif hasattr(real, "buffer"):
            real.flush()
            real.buffer.write(data)
            real.buffer.flush()
        else:
            real.write(data.decode(errors="replace"))
            real.flush()

    try:
        yield emit
    finally:
        sys.stdout = real
        os.dup2(saved, 1)
        os.close(saved)


@contextlib.contextmanager
def exit_on_error(ctx: click.Context) -> Iterator[None]:
    """End the command as the failure policy says when one of its errors escapes: one line on stderr and the
    exit status of ``failures.call_of``; tracebacks only with --debug. Other exceptions are bugs: they pass."""
    debug = ctx.obj.get("debug", False) if ctx.obj else False
    try:
        yield
    except (Exception, KeyboardInterrupt) as error:
        call = call_of(error)
        if call is None:
            raise
        end(call, "interrupted" if isinstance(error, KeyboardInterrupt) else str(error), debug=debug)


def end(call: Call, error: str | None, *, debug: bool = False) -> None:
    """Exit with ``call``'s status; ``error`` (one line) on stderr unless the call goes on."""
    if call is not Call.GOES_ON:
        logger.error("%s", error or call.name.lower(), exc_info=debug and sys.exc_info()[0] is not None)
    sys.exit(call.exit_status)


def write_stderr(data: bytes) -> None:
    """Bytes to stderr as they are (the container's stderr)."""
    sys.stderr.flush()
    buffer = getattr(sys.stderr, "buffer", None)
    if buffer is None:
        sys.stderr.write(data.decode(errors="replace"))
    else:
        buffer.write(data)
        buffer.flush()


def install_signal_handlers() -> None:
    """SIGINT and SIGTERM end the call: the running evaluation is recorded as INTERRUPTED.

    SIGINT is set explicitly: a process started in the background by a script inherits SIGINT ignored,
    and Python then installs no KeyboardInterrupt handler of its own. A rank of a data-parallel evaluation
    gets SIGTERM from torchrun when another rank fails: that fails the evaluation, it does not interrupt
    the call (a Ctrl-C reaches the ranks as SIGINT).
    """

    def interrupt(signum: int, frame: FrameType | None) -> None:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise RankStopped("torchrun stopped this rank: another rank of the evaluation failed")
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, interrupt)
