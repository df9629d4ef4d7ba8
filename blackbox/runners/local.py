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
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from blackbox.core.experiment import Experiment
from blackbox.core.failures import NOT_RUN_INTERRUPTED
from blackbox.core.record import record_not_run
from blackbox.core.stopping import stop_requested
from blackbox.runners import Settled, eval_argv, settle
from blackbox.runners.devices import Slots, lease

logger = logging.getLogger(__name__)


@dataclass
class LocalRunner:
    experiment_ref: str  # how the children name it: a shipped name or an absolute path
    experiment: Experiment
    overrides: tuple[str, ...]
    slots: Slots
    workers: int
    gpus_per_eval: int
    lease_folder: Path
    _children: set[subprocess.Popen[bytes]] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self, lines: Sequence[str]) -> list[Settled]:
        """Evaluate each line in a process of its own, at most ``workers`` at once; settle each point.

        Raises:
            KeyboardInterrupt: interrupted from outside a stopping study: the running evaluations are
                interrupted (and record it), the points not started are recorded NOT_RUN.
        """
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
                not_started = [i for i, f in enumerate(futures) if f.cancel()]
                for i in not_started:
                    record_not_run(
                        self.experiment,
                        [lines[i]],
                        str(Path(tmp) / f"point-{i}.txt"),
                        reason=NOT_RUN_INTERRUPTED,
                    )
                raise

    def interrupt(self) -> None:
        """Pass Ctrl-C on to the running evaluations: they record INTERRUPTED and stop."""
        with self._lock:
            for child in self._children:
                with contextlib.suppress(ProcessLookupError):
                    child.send_signal(signal.SIGINT)

    def _one(self, line: str, point_file: Path) -> Settled:
        point_file.write_text(line + "\n")
        with lease(self.slots, self.gpus_per_eval, folder=self.lease_folder) as leased:
            env = {
                **os.environ,
                **self.slots.child_env(leased, workers=self.workers),
                "LORA_BLACKBOX_SLOT": ",".join(leased),
            }
            command = eval_argv(self.experiment_ref, self.overrides, str(point_file), gpus_per_eval=self.gpus_per_eval)
            logger.info("point %r on %s", line.strip(), ",".join(leased))
            started = time.perf_counter()
            # stderr passes through: the child's progress and errors stay visible.
            child = subprocess.Popen(command, stdout=subprocess.PIPE, env=env)
            with self._lock:
                self._children.add(child)
            try:
                child.communicate()
            finally:
                with self._lock:
                    self._children.discard(child)
        return settle(
            self.experiment,
            line=line,
            point_file=str(point_file),
            block_index=0,
            returncode=child.returncode,
            launcher=self.gpus_per_eval > 1,
            seconds=time.perf_counter() - started,
        )
