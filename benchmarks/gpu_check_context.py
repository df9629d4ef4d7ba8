"""What benchmarks/gpu_check.py's parts share (docs/gpu.md): a part's rows, the processes it runs (each command as a
user runs it, stderr to its lane's log), and the experiments and evaluations it writes and reads."""

from __future__ import annotations

import json
import math
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from gpu_check_workers import DRY_RUN, GPU, Scale

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Row:
    """One check of a part: ``ok``, ``failed`` (with its one line) or ``skipped``; its numbers; a short summary."""

    check: str
    status: str = "ok"
    error: str | None = None
    summary: str = ""
    numbers: dict[str, Any] = field(default_factory=dict)


@dataclass
class Part:
    name: str
    status: str = "ok"  # ok, failed (a row failed), error (the part itself broke), skipped
    seconds: float = 0.0
    error: str | None = None
    rows: list[Row] = field(default_factory=list)


def one_line(text: str | None, limit: int = 300) -> str:
    """The first non-blank line of an error, shortened: what the table shows."""
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    first = lines[0] if lines else "no message"
    return first if len(first) <= limit else first[: limit - 3] + "..."


# ---------------------------------------------------------------------------------------------------------------
# Processes: every part runs in processes of its own (a CUDA error or liger's process-wide patch stays there)


@dataclass
class Ran:
    argv: list[str]
    returncode: int | None  # None: killed at its time limit
    stdout: str
    seconds: float

    @property
    def ended(self) -> str:
        if self.returncode is None:
            return f"timed out after {self.seconds:.0f} s"
        return f"exit status {self.returncode}"


@dataclass
class Context:
    """What a lane's parts share: the scale, the work folder, the lane's log, the deadline, the environment; what
    earlier parts made (``prepared``: prepare's summary; ``adapter``: the adapter part's saved adapter)."""

    scale: Scale
    work: Path
    log: TextIO
    deadline: float
    env: dict[str, str]
    prepared: dict[str, Any] = field(default_factory=dict)
    adapter: Path | None = None

    def remaining_s(self) -> float:
        return self.deadline - time.monotonic()

    def limit_s(self, seconds: float) -> float:
        """How long a process may run: ``seconds`` (what it takes on the GPU, with room) or what is left of the
        budget, whichever is less. The dry run's processes only by the budget: on a CPU shared with other work (2
        cores in CI, the lanes side by side) a process takes what it gets, and the budget still ends a stuck one."""
        return min(seconds if self.scale is GPU else math.inf, self.remaining_s())

    def start(self, argv: list[str], *, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        """``argv`` in a session of its own (so that its whole process group can be killed), stderr to the log."""
        self.log.write(f"\n$ {shlex.join(argv)}\n")
        self.log.flush()
        return subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=self.log,
            cwd=self.work,
            env=env or self.env,
            text=True,
            start_new_session=True,
        )

    def run(self, argv: list[str], *, limit_s: float | None = None, env: dict[str, str] | None = None) -> Ran:
        """Run ``argv`` (stdout kept), killed at its time limit: the smaller of ``limit_s`` and what is left."""
        timeout = max(5.0, self.limit_s(limit_s or math.inf))
        started = time.monotonic()
        process = self.start(argv, env=env)
        try:
            stdout, _ = process.communicate(timeout=timeout)
            code: int | None = process.returncode
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                stdout, _ = process.communicate(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                stdout, _ = process.communicate()
            code = None
        ran = Ran(argv, code, stdout, time.monotonic() - started)
        self.log.write(f"# {ran.ended}, {ran.seconds:.1f} s\n")
        self.log.flush()
        return ran

    def worker(self, name: str, *args: str, limit_s: float | None = None) -> tuple[Ran, dict[str, Any] | None]:
        """A worker of gpu_check_workers.py; its result JSON, None when it wrote none."""
        handle, path = tempfile.mkstemp(prefix=f"{name}-", suffix=".json", dir=self.work)
        os.close(handle)
        result = Path(path)
        result.unlink()
        argv = [sys.executable, str(REPO / "benchmarks" / "gpu_check_workers.py"), name, "--work", str(self.work)]
        argv += ["--scale", "dry-run" if self.scale is DRY_RUN else "gpu", "--result", str(result), *args]
        ran = self.run(argv, limit_s=limit_s)
        return ran, json.loads(result.read_text()) if result.is_file() else None

    def blackbox(
        self,
        *args: str,
        launcher: list[str] | None = None,
        limit_s: float | None = None,
        env: dict[str, str] | None = None,
    ) -> Ran:
        """``lora-blackbox ARGS`` as a user runs it (``python -m blackbox.cli``), optionally under a launcher."""
        return self.run([sys.executable, *(launcher or []), "-m", "blackbox.cli", *args], limit_s=limit_s, env=env)

    def last_error(self) -> str:
        """The last line of this lane's log that names an error: why a process ended without a result."""
        self.log.flush()
        text = Path(self.log.name).read_text(errors="replace").splitlines()[-200:]
        hits = [line for line in text if "Error" in line or "error" in line or "refused" in line]
        return one_line(hits[-1] if hits else "no error line in the log")


def choice_space(variants: dict[str, str]) -> str:
    values = ", ".join(variants.values())
    return (
        f'[[space]]\nname = "lora"\ntype = "I"\nlower = 1\nupper = {len(variants)}\nx0 = 1\ndecode = "choice"\n'
        f"values = [{values}]\n\n[hyperparameters]\nlearning_rate = 1e-4\n"
    )


_LEARNING_RATE_SPACE = (
    '[[space]]\nname = "learning_rate"\ntype = "R"\nlower = -5\nupper = -2\nx0 = -4\ndecode = "log10"\n\n'
    "[hyperparameters]\n"
)


def write_experiment(
    ctx: Context,
    name: str,
    *,
    steps: int,
    batch: int,
    micro: int,
    space: str = _LEARNING_RATE_SPACE,
    quantization: str = "none",
    save_adapter: bool = False,
    extra: str = "",
    validation: str = "",
    budget: int = 10,
    model: str | None = None,
) -> Path:
    """An experiment with the paper's settings (paper_exp2's: Alpaca template, 512 tokens, r 8 on q_proj,v_proj,
    cosine schedule, warm-up 3%, seed 42) on the prepared model and data, ``steps`` steps of ``batch`` sequences."""
    prepared = ctx.prepared
    text = f"""# Written by benchmarks/gpu_check.py: the paper's evaluation, a few steps of it.
[study]
name = "gpu-check-{name}"
budget = {budget}
outputs = ["OBJ:objective", "EXTRA_O:run_id"]

{space}lora_r = 8
lora_alpha = 16
lora_dropout = 0.05

[model]
name_or_path = "{model or prepared["model"]}"
target_modules = ["q_proj", "v_proj"]
quantization = "{quantization}"
attn_implementation = "{ctx.scale.attention}"
dtype = "{ctx.scale.dtype}"

[data]
train = "{prepared["train"]}"
validation = "{prepared["validation"]}"
template = "alpaca"
max_length = {ctx.scale.max_length}

[training]
max_steps = {steps}
effective_batch_size = {batch}
micro_batch_size = {micro}
lr_scheduler = "cosine"
warmup_ratio = 0.03
seed = 42
log_every_steps = 1
autocast = "{ctx.scale.autocast}"

[validation]
batch_size = 4
{validation}
[records]
dir = "{ctx.work / "runs" / name}"
save_adapter = {"true" if save_adapter else "false"}

{extra}"""
    path = ctx.work / f"{name}.toml"
    path.write_text(text)
    return path


def run_eval(
    ctx: Context,
    experiment: Path,
    points: list[str],
    *,
    sets: list[str] | None = None,
    launcher: list[str] | None = None,
    limit_s: float | None = None,
) -> list[dict[str, Any]]:
    """``lora-blackbox eval`` of a block of points, as NOMAD calls it; each point's record (as a dict), or a stand-in
    that says why there is none. A stdout that is not one result line per point fails every point."""
    point_file = ctx.work / f"{experiment.stem}-points.txt"
    point_file.write_text("".join(p + "\n" for p in points))
    overrides = [word for item in sets or [] for word in ("--set", item)]
    ran = ctx.blackbox(
        "eval", "--experiment", str(experiment), *overrides, str(point_file), launcher=launcher, limit_s=limit_s
    )
    found = {r["block_index"]: r for r in read_records(ctx.work / "runs" / experiment.stem)}
    found = {i: r for i, r in found.items() if r["point_file"] == str(point_file.resolve())}
    lines = ran.stdout.splitlines()
    records = []
    for index in range(len(points)):
        record = found.get(index) or {"status": "NO RECORD", "error": f"eval {ran.ended}: {ctx.last_error()}"}
        if ran.returncode == 0 and len(lines) != len(points):
            record = {**record, "status": "BAD STDOUT", "error": f"{len(lines)} stdout lines for {len(points)} points"}
        records.append(record)
    return records


def record_row(check: str, record: dict[str, Any]) -> Row:
    """A row from an evaluation's record: OK with its step time and peak memory, or failed with its one line."""
    if record.get("status") != "OK":
        return Row(check, "failed", f"{record.get('status')}: {one_line(record.get('error'))}")
    metrics, memory = record["metrics"], record["memory"]
    numbers = {
        "train_step_seconds": metrics["train_step_seconds"],
        "train_first_step_seconds": metrics["train_first_step_seconds"],
        "train_loss": metrics["train_loss"],
        "peak_memory_gib": memory["peak_gib"],
        "micro_batch_size": metrics["micro_batch_size"],
        "validation_loss": metrics["validation_loss"],
        "fused_kernels": metrics.get("fused_kernels"),
        "precision": metrics["precision"],
        "attention": metrics["attention"],
        "timings": record["timings"],
    }
    summary = (
        f"step {metrics['train_step_seconds']:.2f} s (first {metrics['train_first_step_seconds']:.2f} s), "
        f"peak {memory['peak_gib']:.1f} GiB, micro-batch {metrics['micro_batch_size']}, "
        f"loss {metrics['validation_loss']:.4f}"
    )
    return Row(check, summary=summary, numbers=numbers)


def read_records(study_dir: Path) -> list[dict[str, Any]]:
    from blackbox.core.record import RecordStore

    return [r.as_dict() for r in RecordStore(study_dir).records()]
