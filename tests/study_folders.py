"""Study folders written without a solver or a training, for the tests of what reads them (summaries, reports):
records of the demo experiment at given points, its snapshot and its NOMAD parameter file."""

from __future__ import annotations

from pathlib import Path

from blackbox.core.experiment import load_experiment, write_snapshot
from blackbox.core.failures import Status
from blackbox.core.nomad import render_params
from blackbox.core.record import EvalRecord, RecordStore

SPECS = ("OBJ:validation_loss", "EXTRA_O:train_loss", "EXTRA_O:train_seconds", "EXTRA_O:run_id", "CNT_EVAL")
LR_UPPER = next(v.upper for v in load_experiment("demo").space if v.name == "learning_rate")
"""The demo's upper bound of log10 of the learning rate."""
LR_AT_UPPER = f"10^{LR_UPPER:g} = {10**LR_UPPER:g}"
"""How a warning names it."""


def write_demo_study(folder: Path, points: list[tuple[tuple[float, ...], float]], *, snapshot: bool = True) -> Path:
    """A demo study folder holding OK evaluations of ``points`` (NOMAD's coordinates, validation loss), in order,
    and the experiment's snapshot unless ``snapshot`` is False (an older study folder); returns its parameter file."""
    experiment = load_experiment("demo", [f"records.dir={folder}"])
    if snapshot:
        write_snapshot(experiment)
    store = RecordStore(folder)
    for i, (point, loss) in enumerate(points):
        outputs = (repr(loss), "1.0", "2.0", f"run{i}", "1")
        metrics = {"validation_loss": loss, "objective": loss, "train_tokens": 100}
        record = EvalRecord(
            f"run{i}", "demo", experiment.fingerprint(), Status.OK, outputs, SPECS, point=point, metrics=metrics
        )
        store.append(record)
    param = folder / "param.txt"
    param.write_text(render_params(experiment, experiment_ref="demo"))
    return param
