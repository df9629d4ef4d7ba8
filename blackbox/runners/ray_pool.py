"""The points of a block as tasks on a Ray cluster: NOMAD (or Optuna) runs on the head node and sees an
ordinary blackbox.

Each point is a Ray task that needs ``gpus_per_eval`` GPUs (Ray pins them with CUDA_VISIBLE_DEVICES) and
runs ``lora-blackbox eval`` on the worker, the same code path as everywhere else; it returns the output
line and the records the evaluation wrote, which the head appends to its own records file. A point that
fails (out of memory, diverged, bad input) comes back as its failing line. A lost worker or node is not
the point's fault: Ray runs the task again (``max_retries``), and only when the retries are spent does
the point fail, so the study never hangs on a dead machine.
"""

from __future__ import annotations

import ctypes
import dataclasses
import logging
import signal
import subprocess
import tempfile
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from blackbox.core.experiment import Experiment
from blackbox.core.extras import require
from blackbox.core.record import EvalRecord, RecordStore
from blackbox.runners import Settled, eval_argv, settle

logger = logging.getLogger(__name__)


@dataclass
class RayRunner:
    experiment_ref: str  # how the workers name it: a shipped name or a path that exists on every node
    experiment: Experiment
    overrides: tuple[str, ...]
    address: str
    gpus_per_eval: int = 1
    cpus_per_eval: float = 1.0
    max_retries: int = 2

    def run(self, lines: Sequence[str]) -> list[Settled]:
        require("ray", purpose="eval --backend ray")
        import ray

        ray.init(address=self.address, logging_level=logging.WARNING, log_to_driver=True)
        try:
            task = ray.remote(
                num_gpus=self.gpus_per_eval if _cluster_has_gpus() else 0,
                num_cpus=self.cpus_per_eval,
                max_retries=self.max_retries,
                retry_exceptions=False,  # an exception inside the task is a bug of that point: no retry
            )(evaluate_on_worker)
            ids = [uuid.uuid4().hex[:12] for _ in lines]
            refs = [
                task.remote(self.experiment_ref, self.overrides, line, self.gpus_per_eval, task_id)
                for line, task_id in zip(lines, ids, strict=True)
            ]
            return [self._collect(ref, line, task_id) for ref, line, task_id in zip(refs, lines, ids, strict=True)]
        finally:
            ray.shutdown()

    def _collect(self, ref: Any, line: str, task_id: str) -> Settled:
        """The worker's records join the head's records file; the point is settled from them."""
        import ray

        point_file = f"ray-task:{task_id}"
        try:
            returncode, records, host, point_file = ray.get(ref)
        except ray.exceptions.RayError as e:  # worker crashed, node died, object lost: retries spent
            lost = f"lost the evaluation's worker after {self.max_retries} retries: {type(e).__name__}: {e}"
            return settle(self.experiment, line=line, point_file=point_file, block_index=0, returncode=-1, lost=lost)
        store = RecordStore.of(self.experiment)
        records = [dataclasses.replace(record, slot=f"ray:{host}") for record in records]
        for record in records:
            store.append(record)
        return settle(
            self.experiment,
            line=line,
            point_file=point_file,
            block_index=0,
            returncode=returncode,
            records=records,
            launcher=self.gpus_per_eval > 1,
        )


def _cluster_has_gpus() -> bool:
    import ray

    return bool(ray.cluster_resources().get("GPU", 0))


def evaluate_on_worker(
    experiment_ref: str, overrides: tuple[str, ...], line: str, gpus_per_eval: int, task_id: str
) -> tuple[int, list[EvalRecord], str, str]:
    """Runs in a Ray worker: one point through ``lora-blackbox eval``; returns its exit status, the records it
    wrote, the worker's host name and the point file it was given."""
    import platform

    folder = Path(tempfile.gettempdir()) / "lora-blackbox-ray" / task_id
    folder.mkdir(parents=True, exist_ok=True)
    point_file = folder / "point.txt"
    point_file.write_text(line + "\n")
    command = eval_argv(
        experiment_ref, (*overrides, f"records.dir={folder}"), str(point_file), gpus_per_eval=gpus_per_eval
    )
    # The evaluation dies with this worker: a killed worker leaves no orphan training behind.
    result = subprocess.run(command, stdout=subprocess.DEVNULL, preexec_fn=_die_with_parent, check=False)
    records = RecordStore(folder).records()
    return result.returncode, records, platform.node(), str(point_file)


def _die_with_parent() -> None:
    """Linux: SIGKILL this child when its parent (the Ray worker) dies."""
    pr_set_pdeathsig = 1
    ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGKILL)
