"""Which devices an evaluation may use, leased through file locks so that sibling processes share them.

NOMAD may start several blackbox processes at once (NB_THREADS_PARALLEL_EVAL), each spreading its block
over the machine's GPUs. They must not pick the same GPU: every GPU is a lock file in a shared folder,
held (``flock``) by the process that runs an evaluation on it. The kernel releases a lock when its holder
dies, so a crashed holder never blocks a GPU. A process waits for a free GPU rather than oversubscribe.

On a CPU host the slots are ``cpu0``, ``cpu1``, ...: the same leasing limits how many evaluations run at
once on the machine, and each gets its share of the cores.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import random
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

ENV_LEASE_DIR = "LORA_BLACKBOX_LEASE_DIR"


@dataclass(frozen=True)
class Slots:
    """The devices of this machine that evaluations may use."""

    names: tuple[str, ...]  # physical GPU ids as CUDA_VISIBLE_DEVICES names them, or cpu0, cpu1, ...
    gpu: bool

    def child_env(self, leased: list[str], *, workers: int) -> dict[str, str]:
        """Environment of a process that runs on the ``leased`` slots."""
        if self.gpu:
            return {"CUDA_VISIBLE_DEVICES": ",".join(leased)}
        # Each CPU evaluation gets its share of the cores: more threads than cores makes OpenMP spin.
        threads = str(max(1, (os.cpu_count() or 1) // max(1, workers)))
        return {"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}


def discover(cpu_slots: int) -> Slots:
    """The GPUs this process may use (respecting CUDA_VISIBLE_DEVICES), else ``cpu_slots`` CPU slots."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    import torch

    count = torch.cuda.device_count()
    if count:
        names = (
            [n.strip() for n in visible.split(",") if n.strip()][:count] if visible else [str(i) for i in range(count)]
        )
        return Slots(tuple(names), gpu=True)
    return Slots(tuple(f"cpu{i}" for i in range(max(1, cpu_slots))), gpu=False)


def lease_dir() -> Path:
    """The folder of the lock files: ``$LORA_BLACKBOX_LEASE_DIR``, else one per user under the temp folder."""
    configured = os.environ.get(ENV_LEASE_DIR)
    folder = Path(configured) if configured else Path(tempfile.gettempdir()) / f"lora-blackbox-leases-{os.getuid()}"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@contextlib.contextmanager
def lease(slots: Slots, count: int, *, folder: Path, poll_s: float = 0.5) -> Iterator[list[str]]:
    """Hold ``count`` free slots for the duration of the block; wait while fewer are free.

    Raises:
        ValueError: more slots are asked for than the machine has.
    """
    if count > len(slots.names):
        raise ValueError(f"{count} devices asked for one evaluation, but this machine has {len(slots.names)}")
    held: list[tuple[str, int]] = []
    waited = False
    try:
        while len(held) < count:
            for name in slots.names:
                if len(held) == count or any(name == h for h, _ in held):
                    continue
                fd = os.open(folder / f"{name}.lock", os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    continue
                held.append((name, fd))
            if len(held) < count:
                if held:  # all or nothing: never sit on some devices while waiting for others
                    _release(held)
                    held = []
                if not waited:
                    logger.info("waiting for %d free device(s) among %s", count, ", ".join(slots.names))
                    waited = True
                time.sleep(poll_s * random.uniform(0.5, 1.5))  # jitter: siblings do not retry in lockstep
        yield [name for name, _ in held]
    finally:
        _release(held)


def _release(held: list[tuple[str, int]]) -> None:
    for _, fd in held:
        os.close(fd)  # closing releases the lock
