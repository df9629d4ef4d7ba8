"""The points of a block in parallel processes on this machine, one evaluation per leased device.

Each point runs in a process of its own (``lora-blackbox eval`` on a one-line point file, or torchrun
with several ranks), pinned to its leased GPU(s) with CUDA_VISIBLE_DEVICES; up to ``workers`` at once,
never more than the free devices (see ``devices``). The children write their own records; the results
come back in input order.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import tempfile
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from blackbox.devices import Slots, lease
from blackbox.runners import Outcome, eval_command
from blackbox.stopping import stop_requested

logger = logging.getLogger(__name__)


@dataclass
class LocalRunner:
    experiment: str  # as the caller named it: a shipped name or a path
    overrides: tuple[str, ...]
    slots: Slots
    workers: int
    procs_per_eval: int
    lease_folder: Path
    _children: set[subprocess.Popen[bytes]] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self, lines: Sequence[str]) -> list[Outcome]:
        with (
            tempfile.TemporaryDirectory(prefix="lora-blackbox-block-") as tmp,
            ThreadPoolExecutor(self.workers) as pool,
        ):
            futures = [pool.submit(self._one, line, Path(tmp) / f"point-{i}.txt") for i, line in enumerate(lines)]
            try:
                return [f.result() for f in futures]
            except KeyboardInterrupt:
                self.interrupt()
                if stop_requested():
                    # The study's Ctrl-C: each evaluation answers its cut point (not counted) and ends normally;
                    # the points not started yet are declined by their processes at once.
                    return [f.result() for f in futures]
                for f in futures:
                    f.cancel()
                raise

    def interrupt(self) -> None:
        """Pass Ctrl-C on to the running evaluations: they record INTERRUPTED and stop."""
        with self._lock:
            for child in self._children:
                with contextlib.suppress(ProcessLookupError):
                    child.send_signal(signal.SIGINT)

    def _one(self, line: str, point_file: Path) -> Outcome:
        point_file.write_text(line + "\n")
        with lease(self.slots, self.procs_per_eval, folder=self.lease_folder) as leased:
            env = {
                **os.environ,
                **self.slots.child_env(leased, workers=self.workers),
                "LORA_BLACKBOX_SLOT": ",".join(leased),
            }
            command = eval_command(self.experiment, self.overrides, str(point_file), procs=self.procs_per_eval)
            logger.info("point %r on %s", line.strip(), ",".join(leased))
            # stderr passes through: the child's progress and errors stay visible.
            child = subprocess.Popen(command, stdout=subprocess.PIPE, env=env)
            with self._lock:
                self._children.add(child)
            try:
                stdout, _ = child.communicate()
            finally:
                with self._lock:
                    self._children.discard(child)
        results = stdout.decode(errors="replace").splitlines()
        if child.returncode == 0 and len(results) == 1:
            return Outcome(results[0])
        return Outcome(
            None,
            f"evaluation process on {','.join(leased)} exited with status {child.returncode} "
            f"and {len(results)} output line(s)",
        )
