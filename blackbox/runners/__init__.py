"""Ways to run the evaluations of a block: in this process (``objective.Evaluator``), in parallel
processes on this machine's devices (``local``), or as tasks on a Ray cluster (``ray_pool``).

A runner takes the non-blank lines of a point file and returns one output line per line, in order
(``None`` where an evaluation produced none: the caller prints a failing line and records why).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Outcome:
    """What running one point produced: its output line, or why there is none."""

    line: str | None
    error: str | None = None


class Runner(Protocol):
    def run(self, lines: Sequence[str]) -> list[Outcome]: ...


def eval_command(experiment: str, overrides: Sequence[str], point_file: str, *, procs: int = 1) -> list[str]:
    """The command that evaluates a point file in a process of its own, as NOMAD's BB_EXE would.

    With ``procs`` > 1 the evaluation is data-parallel: torchrun starts that many ranks (one per GPU,
    or gloo processes on a CPU host) and rank 0 prints the result line.
    """
    import sys

    sets = [word for item in overrides for word in ("--set", item)]
    blackbox = ["-m", "blackbox.cli", "eval", "--experiment", experiment, *sets, point_file]
    if procs == 1:
        return [sys.executable, *blackbox]
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={procs}"]
    return [sys.executable, *launcher, *blackbox]
