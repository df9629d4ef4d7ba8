"""A study is one unit of processes, alone in its folder.

**One unit.** The driver (``lora-blackbox study``) starts NOMAD in a process group of its own (a terminal's
Ctrl-C reaches the driver only, which decides what to stop). NOMAD's blackbox calls, and the evaluation
processes they start, join that group. When the driver dies, whatever killed it (kill -9 of
``run_nomad.sh``'s process group, the out-of-memory killer), the group dies with it:

- a watchdog (``python -m blackbox.studies.guard PGID``, in a session of its own, so that a signal to the
  driver's group does not reach it) holds the read end of a pipe whose only write end is the driver's. The
  kernel closes that end when the driver ends, by any means; the watchdog then sends SIGKILL to NOMAD's
  process group, and exits. Portable to every POSIX system.
- on Linux, NOMAD also gets ``PR_SET_PDEATHSIG`` (SIGKILL when its parent, the driver, dies), so NOMAD is gone
  even when the watchdog was killed as well.

An evaluation that leaves NOMAD's process group (torchrun's ranks start sessions of their own) is not
reached by the watchdog; its launcher's death ends it only where the launcher arranges that. Windows has no
process groups of this kind: it is not supported.

**Alone in its folder.** The driver holds an exclusive ``flock`` on ``study.lock`` in the study folder while
the study runs, and the watchdog holds it until the study's processes are gone; a second study on the same
folder says so and exits 1. The kernel releases the lock of a dead process by itself: a study killed with -9
leaves no stale lock behind (the file stays, and names the last driver's pid). An Optuna study holds the same
lock on its folder (:func:`holding_lock`), so that NOMAD and Optuna studies exclude each other too.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from blackbox.core.errors import SetupError
from blackbox.core.folders import LOCK_FILE

# A driver killed with -9 leaves its watchdog a moment to kill the study's processes and let go of the lock:
# a rerun started at once waits for it that long (a study whose driver lives is refused at once).
_LOCK_WAIT_S = 10.0
_PR_SET_PDEATHSIG = 1


def lock_study(study_dir: Path) -> int:
    """Take the study folder's lock; returns the locked file descriptor (closing it releases the lock).

    Raises:
        SetupError: another study runs in this folder.
    """
    path = study_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + _LOCK_WAIT_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            if time.monotonic() < deadline and not _alive(holder):
                time.sleep(0.2)  # its driver is gone: its watchdog is ending the study's processes
                continue
            os.close(fd)
            raise SetupError(
                f"another study is running in {study_dir} (driver pid {holder}): one study per folder; wait for it, "
                f"stop it (Ctrl-C), or use another --dir"
            ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


@contextlib.contextmanager
def holding_lock(study_dir: Path) -> Iterator[None]:
    """Hold the study folder's lock (:func:`lock_study`; the folder is made if need be) for the ``with`` block.

    Raises:
        SetupError: another study runs in this folder.
    """
    study_dir.mkdir(parents=True, exist_ok=True)
    fd = lock_study(study_dir)
    try:
        yield
    finally:
        os.close(fd)


class Unit:
    """NOMAD started as the study's process group, watched: the group dies when the driver does.

    Example::

        with Unit(["nomad", "param.txt"], lock_fd, cwd=study_dir) as unit:
            unit.process.wait()
    """

    def __init__(self, command: list[str], lock_fd: int, **popen: Any) -> None:
        read_end, self._write_end = os.pipe()  # both close-on-exec: NOMAD inherits neither
        try:
            self.process: subprocess.Popen[str] = subprocess.Popen(
                command,
                start_new_session=True,  # its own group: Ctrl-C reaches the driver only
                preexec_fn=_die_with_parent(),
                **popen,
            )
            self._watchdog = subprocess.Popen(
                [sys.executable, "-m", "blackbox.studies.guard", str(self.process.pid)],
                stdin=read_end,
                pass_fds=(lock_fd,),  # the study stays locked until its processes are gone
                start_new_session=True,  # out of reach of a signal to the driver's group
            )
        finally:
            os.close(read_end)

    def __enter__(self) -> Unit:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """NOMAD has ended (or must end): kill what is left of its group, and let the watchdog go."""
        if self._write_end >= 0:
            os.close(self._write_end)  # the watchdog kills the group and exits
            self._write_end = -1
            self._watchdog.wait()


def _alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def _die_with_parent() -> Callable[[], None] | None:
    """Linux: a function for ``preexec_fn`` that makes the child receive SIGKILL when its parent dies."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before the fork: the child only calls it

    def set_death_signal() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)

    return set_death_signal


def _watch(pgid: int) -> int:
    """The watchdog: wait for the end of stdin (the driver ended), then kill process group ``pgid``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the driver decides what a Ctrl-C stops
    with contextlib.suppress(OSError):
        while os.read(0, 4096):
            pass
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    return 0


if __name__ == "__main__":
    sys.exit(_watch(int(sys.argv[1])))
