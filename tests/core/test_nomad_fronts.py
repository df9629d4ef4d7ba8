"""NOMAD's side of several objectives: the DMultiMads lines of a generated parameter file, run by both NOMADs on a
quick blackbox that fails some points and violates a constraint on others, and the front NOMAD lists at its end
read back."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from blackbox.core.errors import ConfigError
from blackbox.core.experiment import load_experiment
from blackbox.core.nomad import read_cache, read_reported_front, render_params
from blackbox.core.pareto import front_indices

CONSTRAINED = [
    'constraints=[{name="c",type="PB",at_least=0.0,benchmark={task="tiny_mc",metric="acc"}}]',
    'study.outputs=["OBJ:objective:validation_loss","OBJ:objective:trainable_params","EXTRA_O:run_id","PB:c",'
    '"CNT_EVAL"]',
    "study.budget=30",
]
# Points (r index 1-5, target modules 1-3, log10 lr): r index 4 fails (nan), more than 2 target modules violate
# the constraint; the two objectives pull the learning rate and the size apart.
TOY = """import sys
for line in open(sys.argv[-1]):
    r, targets, lr = (float(v) for v in line.split())
    if r == 4:
        print("nan nan x nan 1")
    else:
        print((lr + 3) ** 2 + 1 / (r * targets), r * targets + (lr + 4) ** 2, "x", targets - 2.5, 1)
"""


def test_the_parameter_file_of_several_objectives() -> None:
    experiment = load_experiment("demo_pareto")
    text = render_params(experiment, experiment_ref="demo_pareto", block_size=4)
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert {"DMULTIMADS_OPTIMIZATION yes", "DIRECTION_TYPE ORTHO 2N", "NM_SEARCH no"} <= set(lines)
    assert "BB_OUTPUT_TYPE OBJ OBJ EXTRA_O EXTRA_O CNT_EVAL" in lines
    # DMultiMads refuses mega search polls and hot restarts; blocks it has.
    assert "BB_MAX_BLOCK_SIZE 4" in lines and not any(line.startswith("MEGA_SEARCH_POLL") for line in lines)
    assert "HOT_RESTART_READ_FILES no" in lines and not any(line.startswith("HOT_RESTART_FILE") for line in lines)
    with pytest.raises(ConfigError, match="needs a study of one objective"):
        render_params(experiment, experiment_ref="demo_pareto", surrogate_fidelity=0.25)


def test_both_nomads_run_dmultimads_through_failed_and_infeasible_points(
    tmp_path: Path, nomad_env: dict[str, str]
) -> None:
    """With NM_SEARCH on, NOMAD 4.5.1 and PyNomadBBO 4.6.0 abort on the first failed point their Nelder-Mead
    search meets; the generated file turns it off. NOMAD's front (its display) is then the non-dominated feasible
    points of its cache."""
    experiment = load_experiment("demo_pareto", CONSTRAINED)
    text = render_params(experiment, experiment_ref="demo_pareto")
    exe = f'BB_EXE "${sys.executable} toy.py"'
    text = "\n".join(exe if line.startswith("BB_EXE") else line for line in text.splitlines()) + "\n"
    (tmp_path / "toy.py").write_text(TOY)
    (tmp_path / "param.txt").write_text(text)
    nomad = nomad_env.get("NOMAD_EXE")
    command = [nomad] if nomad else [sys.executable, "-m", "blackbox.studies.pynomad"]
    result = subprocess.run(
        [*command, "param.txt"], cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    cache = read_cache(tmp_path / "cache.txt")
    assert any(not e.ok for e in cache)  # failed points were met (r index 4)
    feasible = [e for e in cache if e.ok and float(e.outputs[3]) <= 0]
    assert len(feasible) < len([e for e in cache if e.ok])  # and infeasible ones
    values = [(float(e.outputs[0]), float(e.outputs[1])) for e in feasible]
    expected = {values[i] for i in front_indices(values)}
    reported = read_reported_front(result.stdout)
    assert reported is not None and reported.total == len(expected) > 1
    assert set(reported.values) == expected  # NOMAD prints the values in full: the same doubles


def test_a_long_front_is_listed_in_part_with_its_size() -> None:
    entry = "#{n} ( 1 2 )\tEvaluation OK\t f =   {a}   {b} \t h =   0      (L2)"
    lines = [f"Best feasible solutions:    {entry.format(n=0, a=0.5, b=9)}"]
    lines += [f"                            {entry.format(n=n, a=n, b=9 - n)}" for n in range(1, 8)]
    lines += ["... A total of 12 feasible solutions were found.", "Best infeasible solution:   Undefined."]
    front = read_reported_front("earlier run\nBest feasible solution:     Undefined.\n" + "\n".join(lines))
    assert front is not None and front.total == 12 and len(front.values) == 8 and front.values[0] == (0.5, 9.0)
    assert read_reported_front("NOMAD::Exception thrown") is None
