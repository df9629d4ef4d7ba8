"""The Python API: points and hyperparameters in, results read from the records out; in this process or in a
``lora-blackbox eval`` subprocess, with the same objective."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from blackbox import Blackbox, HyperParams, Status
from blackbox.core.errors import ConfigError, PointError
from blackbox.core.experiment import load_experiment
from tests.records import read_records


def test_importing_the_package_loads_neither_torch_nor_optuna() -> None:
    code = (
        "import sys, blackbox; from blackbox import Blackbox, Result; import blackbox.reports; "
        "print(sorted(m for m in ('torch', 'optuna', 'matplotlib', 'transformers') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=600)
    assert result.stdout.strip() == "[]"


def test_encode_hyperparameters_into_points_of_the_space() -> None:
    bb = Blackbox("demo")  # nothing loads before the first evaluation
    # lr 3e-4 is 10 ** -3.52...: the same learning rate up to rounding.
    point = bb.encode({"lora_r": 8, "lora_alpha": 16, "learning_rate": 3e-4})
    assert point[:2] == (3.0, 2.0) and math.isclose(point[2], math.log10(3e-4))
    assert bb.encode(HyperParams(lora_r=8, lora_alpha=16, lora_dropout=0.05, learning_rate=3e-4)) == point
    with pytest.raises(PointError, match="unknown hyperparameters"):
        bb.encode({"lora_r": 8, "lora_alpha": 16, "learning_rate": 3e-4, "rank": 3})
    with pytest.raises(PointError, match=r"fixed to 0\.05"):
        bb.encode({"lora_r": 8, "lora_alpha": 16, "learning_rate": 3e-4, "lora_dropout": 0.1})
    with pytest.raises(PointError, match="missing hyperparameters"):
        bb.encode({"lora_r": 8, "learning_rate": 3e-4})
    with pytest.raises(PointError, match="not in the search space"):
        bb.encode({"lora_r": 8, "lora_alpha": 20, "learning_rate": 3e-4})  # alpha is a multiple of r
    with pytest.raises(ConfigError, match="loaded Experiment"):
        Blackbox(load_experiment("demo"), ["training.max_steps=2"])


def test_encode_settings_by_their_dotted_keys() -> None:
    bb = Blackbox("demo_variants")
    given = {"lora_r": 8, "lora_alpha": 8 * math.sqrt(8), "learning_rate": 1e-3, "training.epochs": 1}
    given |= {"lora": {"use_dora": True}, "model.target_modules": "attention"}
    assert bb.encode(given) == (3.0, 8.0, -3.0, 2.0, 2.0, 1.0)
    with pytest.raises(PointError, match=r"missing hyperparameters.*training\.epochs"):
        bb.encode({k: v for k, v in given.items() if k != "training.epochs"})
    with pytest.raises(PointError, match="is not one of"):
        bb.encode({**given, "model.target_modules": "mlp"})


@pytest.mark.slow
def test_evaluate_in_process_and_in_a_subprocess(tiny_experiment: Path) -> None:
    bb = Blackbox(tiny_experiment)
    result = bb.evaluate({"lora_r": 8, "learning_rate": 1e-2, "lora_dropout": 0.1})
    records = read_records(bb.records_file)
    assert [r["run_id"] for r in records] == [result.run_id]
    record = records[0]
    assert result.ok and not result.failed and result.status is Status.OK
    assert result.objective == record["metrics"]["validation_loss"]
    assert result.extras == {"train_loss": record["metrics"]["train_loss"], "run_id": result.run_id}
    assert result.output_line == " ".join(record["outputs"])
    assert result.point == (2.0, -2.0, 0.1) and result.hparams == record["hparams"]
    assert result.timings["train_s"] > 0 and result.timings["validation_s"] > 0

    invalid = bb.evaluate_point((2, -2, 0.9))  # dropout out of bounds: recorded, not raised
    assert invalid.status is Status.INVALID_POINT and invalid.failed and "out of bounds" in (invalid.error or "")

    isolated = Blackbox(str(tiny_experiment), isolate=True, quiet=True)
    again = isolated.evaluate_point((2, -2, 0.1))
    assert again.ok and again.run_id != result.run_id
    assert again.objective == result.objective  # same point, same seed, same objective in its own process
    assert again.record["pid"] != records[0]["pid"]
    assert [r["run_id"] for r in read_records(bb.records_file)] == [result.run_id, invalid.run_id, again.run_id]


@pytest.mark.slow
def test_the_ask_tell_example_runs(tmp_path: Path, tiny_experiment: Path) -> None:
    example = Path(__file__).resolve().parent.parent / "examples" / "ask_tell.py"
    command = [sys.executable, str(example), "-e", str(tiny_experiment), "--budget", "3", "--seed", "1"]
    command += ["--set", "training.max_steps=6"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    records = read_records(Path(summary["records"]))
    assert len(records) == 3
    assert records[0]["point"] == [2.0, -3.0, 0.1]  # X0 first
    ok = [r for r in records if r["status"] == "OK"]
    assert summary["best"]["objective"] == min(r["metrics"]["validation_loss"] for r in ok)
    assert "evaluation 3/3" in result.stderr
