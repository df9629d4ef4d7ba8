"""The methods of the replay comparison (issue 29), and how each one runs: through the real commands.

Every method is what a user would run: NOMAD (``lora-blackbox study`` on a generated parameter file, the ``nomad``
binary as NOMAD_EXE where there is one), with or without a blackbox-side stopping rule; Optuna (``lora-blackbox
optuna``: one ``lora-blackbox eval`` subprocess per trial, as by default) with its samplers and pruners; and what a
practitioner does without a study: peft's defaults, a common recipe, a sweep of learning rates. With
``replay.table`` among the overrides the evaluations are answered from the table; without it they train for real
(the confirmation runs). Each run lives in a folder of its own and is resumable: a finished run is not run again.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from compare_solvers import blackbox

QUARTERS = "validation.checkpoints=[0.25,0.5,0.75]"
EIGHTHS = "validation.checkpoints=[0.125,0.25,0.5,0.75]"  # every checkpoint of the table
RUNGS = "validation.checkpoints=[0.125,0.25,0.5]"  # successive halving's rungs, a factor 2 apart
EARLY = "validation.checkpoints=[0.125,0.25]"  # the two that save the most when they stop, and cost the least
DONE = "done.json"


@dataclass(frozen=True)
class Method:
    """A way to tune. ``sets``: its experiment overrides; ``options``: more options of ``lora-blackbox optuna``;
    ``points``: a sweep's point lines (in the experiment's coordinates), evaluated one call each, in order."""

    name: str
    label: str
    solver: Literal["nomad", "optuna", "sweep"]
    sets: tuple[str, ...] = ()
    sampler: str = ""
    options: tuple[str, ...] = ()
    points: tuple[str, ...] = field(default=())

    @property
    def stops(self) -> bool:
        """Whether it stops evaluations early (a rule or a pruner)."""
        return any(s.startswith("stopping.rule=") for s in self.sets) or "--pruner" in self.options

    @property
    def seeded(self) -> bool:
        """Whether it draws random numbers (a sweep does not: one run stands for every seed)."""
        return self.solver != "sweep"


def _nomad(name: str, label: str, *sets: str) -> Method:
    return Method(name, label, "nomad", sets=sets)


# Optuna's trials run in its own process (--in-process): the model of a real study loads once, and a replayed trial
# takes milliseconds instead of a process start. Its first trial pays the start-up and loading, the others do not,
# where NOMAD's binary starts a process per point: about 5 s of a 118 s evaluation in the table (4%), in Optuna's
# favour when compute is compared across solvers; the stopping methods compare with their plain solver alike.
IN_PROCESS = ("--in-process",)


def _tpe(name: str, label: str, *, startup: int = 10, pruner: str = "", sets: tuple[str, ...] = ()) -> Method:
    options = ("--startup-trials", str(startup), *(("--pruner", pruner) if pruner else ()), *IN_PROCESS)
    return Method(name, label, "optuna", sets=sets, sampler="tpe", options=options)


# The sweep of five learning rates at the common rank and alpha (r 16, alpha 32): 10^-4 to 10^-2 in half decades,
# the learning rates a practitioner tries first, in the efficiency experiment's coordinates (r = 2^4, alpha = 2^1 r).
LR_SWEEP = tuple(f"4 1 {x}" for x in ("-4", "-3.5", "-3", "-2.5", "-2"))

METHODS = {
    m.name: m
    for m in (
        _nomad("nomad", "NOMAD"),
        _nomad("nomad-median", "NOMAD + median rule", QUARTERS, "stopping.rule=median"),
        _nomad("nomad-incumbent", "NOMAD + incumbent rule", QUARTERS, "stopping.rule=incumbent"),
        # The rule settings chosen on seeds 100-104 (RULE_VARIANTS, benchmarks/results/replay/rules/): the median rule
        # from the first finished evaluation on, at every checkpoint of the table.
        _nomad(
            "nomad-median-m1",
            "NOMAD + median rule, min 1, 4 checkpoints (chosen on seeds 100-104)",
            EIGHTHS,
            "stopping.rule=median",
            "stopping.min_finished=1",
        ),
        _nomad("nomad-asha", "NOMAD + ASHA (eta 2)", RUNGS, "stopping.rule=asha", "stopping.eta=2"),
        _tpe("tpe", "TPE (10 start-up trials)"),
        _tpe("tpe-20", "TPE (20 start-up trials, as NNI's in the paper)", startup=20),
        _tpe("tpe-median", "TPE + median pruner", pruner="median", sets=(EIGHTHS,)),
        _tpe("tpe-sh", "TPE + successive halving", pruner="successive-halving", sets=(EIGHTHS,)),
        _tpe("tpe-hyperband", "TPE + Hyperband", pruner="hyperband", sets=(EIGHTHS,)),
        Method("random", "random search", "optuna", sampler="random", options=IN_PROCESS),
        Method("lr-sweep", "learning-rate sweep (5 values, r 16, alpha 32)", "sweep", points=LR_SWEEP),
    )
}


# The settings of the blackbox-side rules for NOMAD, tried on seeds of their own (100 on) to choose the defaults that
# the comparison's methods then use (docs/efficiency.md says why): rule, checkpoints, min_finished, eta.
RULE_VARIANTS = {
    m.name: m
    for m in (
        _nomad(
            "median-q-m1", "median, 3 checkpoints, min 1", QUARTERS, "stopping.rule=median", "stopping.min_finished=1"
        ),
        _nomad("median-q-m3", "median, 3 checkpoints, min 3", QUARTERS, "stopping.rule=median"),
        _nomad(
            "median-e-m1", "median, 4 checkpoints, min 1", EIGHTHS, "stopping.rule=median", "stopping.min_finished=1"
        ),
        _nomad("median-e-m3", "median, 4 checkpoints, min 3", EIGHTHS, "stopping.rule=median"),
        _nomad("median-early-m3", "median, at 1/8 and 1/4, min 3", EARLY, "stopping.rule=median"),
        _nomad(
            "median-early-m1", "median, at 1/8 and 1/4, min 1", EARLY, "stopping.rule=median", "stopping.min_finished=1"
        ),
        _nomad(
            "incumbent-q-m1",
            "incumbent, 3 checkpoints, min 1",
            QUARTERS,
            "stopping.rule=incumbent",
            "stopping.min_finished=1",
        ),
        _nomad("incumbent-e-m3", "incumbent, 4 checkpoints, min 3", EIGHTHS, "stopping.rule=incumbent"),
        _nomad(
            "asha2-m2", "ASHA eta 2, min 2", RUNGS, "stopping.rule=asha", "stopping.eta=2", "stopping.min_finished=2"
        ),
        _nomad(
            "asha2-m4", "ASHA eta 2, min 4", RUNGS, "stopping.rule=asha", "stopping.eta=2", "stopping.min_finished=4"
        ),
        _nomad(
            "asha3-m3", "ASHA eta 3, min 3", RUNGS, "stopping.rule=asha", "stopping.eta=3", "stopping.min_finished=3"
        ),
        _nomad(
            "asha3-m6", "ASHA eta 3, min 6", RUNGS, "stopping.rule=asha", "stopping.eta=3", "stopping.min_finished=6"
        ),
    )
}
ALL = {**METHODS, **RULE_VARIANTS}


def plain_of(method: Method) -> str | None:
    """The method a stopping one is measured against: the same solver without stopping (None: it stops nothing)."""
    if not method.stops:
        return None
    return "nomad" if method.solver == "nomad" else "tpe"


def run_method(
    method: Method, *, experiment: str, sets: Sequence[str], budget: int, seed: int, folder: Path, env: dict[str, str]
) -> Path:
    """Run one (method, budget, seed) in ``folder`` unless it finished there before; returns ``folder``.

    Raises:
        subprocess.CalledProcessError: a command failed (its stderr is in ``folder``'s log).
    """
    if (folder / DONE).is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    overrides = [*sets, *method.sets, f"records.dir={folder}"]
    log = folder.parent / f"{folder.name}.log"
    with log.open("a") as err:
        if method.solver == "nomad":
            param = folder.parent / f"{folder.name}.txt"
            settings = [*overrides, f"study.budget={budget}", f"study.seed={seed}"]
            _call(["-q", "params", "-e", experiment, *_sets(settings), "--out", str(param)], err, env)
            _call(["study", str(param), "--dir", str(folder)], err, env)
        elif method.solver == "optuna":
            command = ["optuna", "-e", experiment, *_sets(overrides), "--n-trials", str(budget)]
            command += ["--sampler", method.sampler, "--seed", str(seed), "--dir", str(folder), *method.options]
            _call(command, err, env)
        else:
            for number, line in enumerate(method.points[:budget], start=1):
                points = folder / f"point-{number}.txt"
                points.write_text(line + "\n")
                _call(["eval", "-e", experiment, *_sets(overrides), str(points)], err, env)
    (folder / DONE).write_text(json.dumps({"method": method.name, "budget": budget, "seed": seed}) + "\n")
    return folder


def _call(arguments: list[str], err: object, env: dict[str, str]) -> None:
    subprocess.run([*blackbox(), *arguments], stdout=subprocess.DEVNULL, stderr=err, env=env, check=True)  # type: ignore[arg-type]


def _sets(items: Sequence[str]) -> list[str]:
    return [word for item in items for word in ("--set", item)]


def nomad_env() -> dict[str, str]:
    """The environment of the runs: one torch thread per evaluation, and NOMAD_EXE as the caller set it."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
