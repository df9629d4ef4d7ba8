"""A replay table of the tiny model's grid (``tests/assets/spaces/grid.toml``: 2 ranks x 3 learning rates), built
for real once per xdist worker: its six points evaluated in one ``lora-blackbox eval`` call (the model loads once),
with learning curves at a quarter, half and three quarters of 8 steps."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from blackbox.core.experiment import load_experiment
from blackbox.core.point import format_point
from blackbox.core.record import RecordStore
from blackbox.core.space import SearchSpace
from blackbox.replay.grid import grid_points
from blackbox.replay.table import write_table
from tests.conftest import BLACKBOX, STUDY_OUTPUTS, MakeExperiment

CURVE = ("validation.checkpoints=[0.25,0.5,0.75]", "validation.checkpoint_rows=16")


@pytest.fixture(scope="session")
def grid_experiment(tmp_path_factory: pytest.TempPathFactory, write_tiny_experiment: MakeExperiment) -> Path:
    """The grid's experiment file (records in a folder of their own: every test sets ``records.dir``)."""
    folder = tmp_path_factory.mktemp("grid")
    return write_tiny_experiment(
        folder / "grid.toml", space="grid", name="grid", budget=4, steps=8, outputs=STUDY_OUTPUTS, records=folder / "x"
    )


@pytest.fixture(scope="session")
def grid_table(tmp_path_factory: pytest.TempPathFactory, grid_experiment: Path) -> Path:
    """The table of the grid's six points, evaluated for real."""
    folder = tmp_path_factory.mktemp("grid-table")
    sets = (*CURVE, f"records.dir={folder / 'records'}")
    experiment = load_experiment(str(grid_experiment), list(sets))
    points = folder / "points.txt"
    points.write_text("".join(format_point(p) + "\n" for p in grid_points(SearchSpace.from_experiment(experiment))))
    command = [*BLACKBOX, "-q", "eval", "-e", str(grid_experiment), *[w for s in sets for w in ("--set", s)]]
    subprocess.run([*command, str(points)], check=True, capture_output=True, timeout=600)
    records = RecordStore(folder / "records").records()
    assert [r.status.value for r in records] == ["OK"] * 6
    table = folder / "grid.csv"
    write_table(table, experiment=experiment, rows=[("grid", "", sets, r) for r in records], about={"test": True})
    return table
