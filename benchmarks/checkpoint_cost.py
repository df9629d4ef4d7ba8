"""What a learning curve costs an evaluation of the demo: the share of its time the checkpoint validations take.

The demo's starting point (X0) is evaluated in this process, without checkpoints and then with three checkpoints
(``[validation] checkpoints = [0.25, 0.5, 0.75]``) on 16, 32 (the default) and 64 checkpoint rows (64: the demo's
whole validation split), ``--repeats`` times each. Per setting: the checkpoints' seconds (``timings.checkpoint_s``)
and their share of the evaluation's work (training + checkpoints + final validation; loading the model, paid once
per call, is left out), and a check that the validation loss is the same with and without a curve.

    python benchmarks/checkpoint_cost.py [--repeats 1] [--json benchmarks/results/checkpoint_cost_cpu.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from machine import describe  # benchmarks/machine.py

from blackbox.core.experiment import load_experiment
from blackbox.core.space import SearchSpace
from blackbox.training.objective import Evaluator

SETTINGS: dict[str, list[str]] = {
    "none": [],
    "3 x 16 rows": ["validation.checkpoints=[0.25,0.5,0.75]", "validation.checkpoint_rows=16"],
    "3 x 32 rows": ["validation.checkpoints=[0.25,0.5,0.75]", "validation.checkpoint_rows=32"],
    "3 x 64 rows": ["validation.checkpoints=[0.25,0.5,0.75]", "validation.checkpoint_rows=64"],
}


def measure(name: str, overrides: list[str], records: Path, repeats: int) -> dict[str, Any]:
    experiment = load_experiment("demo", [f"records.dir={records / name.replace(' ', '')}", *overrides])
    point = " ".join(repr(x) for x in SearchSpace.from_experiment(experiment).x0)
    evaluator = Evaluator(experiment)
    rows = []
    for _ in range(repeats):
        record = evaluator.evaluate_line(point)
        timings = record.timings
        work = timings["train_s"] + timings.get("checkpoint_s", 0.0) + timings["validation_s"]
        rows.append(
            {
                "validation_loss": record.metrics["validation_loss"],
                "train_s": timings["train_s"],
                "checkpoint_s": timings.get("checkpoint_s", 0.0),
                "validation_s": timings["validation_s"],
                "share": timings.get("checkpoint_s", 0.0) / work,
                "curve": [p.loss for p in record.curve],
            }
        )
    return {
        "overrides": overrides,
        "runs": rows,
        "median_checkpoint_s": statistics.median(r["checkpoint_s"] for r in rows),
        "median_share": statistics.median(r["share"] for r in rows),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": describe(("torch", "transformers", "peft")),
        "settings": {},
    }
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for name, overrides in SETTINGS.items():
            results["settings"][name] = measure(name, overrides, Path(tmp), args.repeats)
            part = results["settings"][name]
            print(f"{name:12s} checkpoints {part['median_checkpoint_s']:6.2f} s, {100 * part['median_share']:5.1f}% "
                  f"of the evaluation; validation loss {part['runs'][0]['validation_loss']:.6f}")  # fmt: skip
    losses = {r["validation_loss"] for part in results["settings"].values() for r in part["runs"]}
    results["same_validation_loss"] = len(losses) == 1
    results["seconds"] = time.perf_counter() - started
    print(f"the same validation loss in every setting: {results['same_validation_loss']}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
