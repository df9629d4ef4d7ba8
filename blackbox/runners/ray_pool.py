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
import json
import logging
import signal
import subprocess
import tempfile
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from blackbox.record import RECORDS_FILE, append_json_line, read_records
from blackbox.runners import Outcome, eval_command

logger = logging.getLogger(__name__)


@dataclass
class RayRunner:
    experiment: str
    overrides: tuple[str, ...]
    address: str
    records_file: Path  # the head's records file
    gpus_per_eval: int = 1
    cpus_per_eval: float = 1.0
    max_retries: int = 2

    def run(self, lines: Sequence[str]) -> list[Outcome]:
        import ray

        ray.init(address=self.address, logging_level=logging.WARNING, log_to_driver=True)
        try:
            task = ray.remote(
                num_gpus=self.gpus_per_eval if _cluster_has_gpus() else 0,
                num_cpus=self.cpus_per_eval,
                max_retries=self.max_retries,
                retry_exceptions=False,  # an exception inside the task is a bug of that point: no retry
            )(evaluate_on_worker)
            procs = self.gpus_per_eval
            refs = [task.remote(self.experiment, self.overrides, line, procs) for line in lines]
            return [self._collect(ref, line) for ref, line in zip(refs, lines, strict=True)]
        finally:
            ray.shutdown()

    def _collect(self, ref: Any, line: str) -> Outcome:
        import ray

        try:
            output, records, host = ray.get(ref)
        except ray.exceptions.RayTaskError as e:
            return Outcome(None, f"the evaluation task raised: {e}")
        except ray.exceptions.RayError as e:  # worker crashed, node died, object lost: retries spent
            return Outcome(
                None, f"lost the evaluation's worker after {self.max_retries} retries: {type(e).__name__}: {e}"
            )
        for record in records:
            record["ray_host"] = host
            append_json_line(self.records_file, json.dumps(record))
        if output is None:
            return Outcome(None, f"the evaluation on {host} printed no result")
        return Outcome(output)


def _cluster_has_gpus() -> bool:
    import ray

    return bool(ray.cluster_resources().get("GPU", 0))


def evaluate_on_worker(
    experiment: str, overrides: tuple[str, ...], line: str, procs: int
) -> tuple[str | None, list[dict[str, Any]], str]:
    """Runs in a Ray worker: one point through ``lora-blackbox eval``; returns (output line, records, host)."""
    import platform

    folder = Path(tempfile.gettempdir()) / "lora-blackbox-ray" / uuid.uuid4().hex[:12]
    folder.mkdir(parents=True)
    point_file = folder / "point.txt"
    point_file.write_text(line + "\n")
    command = eval_command(experiment, (*overrides, f"records.dir={folder}"), str(point_file), procs=procs)
    # The evaluation dies with this worker: a killed worker leaves no orphan training behind.
    result = subprocess.run(command, stdout=subprocess.PIPE, preexec_fn=_die_with_parent, check=False)
    outputs = result.stdout.decode(errors="replace").splitlines()
    records = read_records(folder / RECORDS_FILE) if (folder / RECORDS_FILE).exists() else []
    ok = result.returncode == 0 and len(outputs) == 1
    return (outputs[0] if ok else None), records, platform.node()


def _die_with_parent() -> None:
    """Linux: SIGKILL this child when its parent (the Ray worker) dies."""
    pr_set_pdeathsig = 1
    ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGKILL)
