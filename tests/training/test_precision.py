"""Precision follows the hardware: bf16 on a CPU only where the CPU computes it natively."""

from __future__ import annotations

import logging

import pytest
import torch

from blackbox.core.errors import SetupError
from blackbox.core.experiment import load_experiment, shipped_experiments
from blackbox.training import precision
from blackbox.training.precision import CpuBf16, cpu_bf16, resolve_precision
from tests.points import point_file

CPU = torch.device("cpu")


@pytest.fixture
def cpu_without_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(precision, "cpu_bf16", lambda: CpuBf16(False, "simulated: no AMX, no AVX512-BF16"))


@pytest.fixture
def cpu_with_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(precision, "cpu_bf16", lambda: CpuBf16(True, "simulated: AMX"))


@pytest.mark.parametrize("name", shipped_experiments())
def test_every_shipped_experiment_trains_in_fp32_on_a_cpu_without_native_bf16(cpu_without_bf16, name: str) -> None:
    experiment = load_experiment(name)
    chosen = resolve_precision(experiment.model, experiment.training, CPU)
    assert chosen == precision.Precision(torch.float32, None)


@pytest.mark.parametrize("name", shipped_experiments())
def test_every_shipped_experiment_uses_bf16_autocast_where_the_cpu_has_it(cpu_with_bf16, name: str) -> None:
    experiment = load_experiment(name)
    chosen = resolve_precision(experiment.model, experiment.training, CPU)
    assert chosen == precision.Precision(torch.float32, torch.bfloat16)


def test_explicit_bf16_without_native_support_runs_with_one_warning(cpu_without_bf16, caplog) -> None:
    experiment = load_experiment("demo", ["training.autocast=bfloat16"])
    with caplog.at_level(logging.INFO, logger="blackbox"):
        chosen = resolve_precision(experiment.model, experiment.training, CPU)
    assert chosen.autocast == torch.bfloat16
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "emulated" in warning.message and "slower than in float32" in warning.message
    assert "training.autocast=auto" in warning.message


def test_the_choice_is_logged(cpu_without_bf16, caplog) -> None:
    experiment = load_experiment("demo")
    with caplog.at_level(logging.INFO, logger="blackbox"):
        resolve_precision(experiment.model, experiment.training, CPU)
    assert [r.message for r in caplog.records] == [
        "precision on cpu: float32 weights, no autocast (simulated: no AMX, no AVX512-BF16)"
    ]


def test_float16_is_refused_on_the_cpu() -> None:
    experiment = load_experiment("demo", ["training.autocast=float16"])
    with pytest.raises(SetupError, match="float16 is not supported on the CPU"):
        resolve_precision(experiment.model, experiment.training, CPU)


@pytest.mark.parametrize(("variable", "value"), [("DNNL_MAX_CPU_ISA", "AVX2"), ("ONEDNN_MAX_CPU_ISA", "avx512_core")])
def test_an_isa_cap_below_bf16_means_no_native_bf16(monkeypatch: pytest.MonkeyPatch, variable, value) -> None:
    """The caps a user (or the fp32 test below) sets on oneDNN's kernels are honoured."""
    cpu_bf16.cache_clear()
    uncapped = cpu_bf16()
    monkeypatch.setenv(variable, value)
    cpu_bf16.cache_clear()
    try:
        answer = cpu_bf16()
    finally:
        cpu_bf16.cache_clear()
    assert not answer.native
    # On a CPU that computes bf16 natively the cap is the reason; elsewhere the CPU itself is.
    assert (variable in answer.reason) == uncapped.native, answer.reason


@pytest.mark.slow
@pytest.mark.parametrize("cap", ["AVX2", None], ids=["isa-capped", "this-cpu"])
def test_eval_trains_in_the_precision_the_cpu_computes(tmp_path, tiny_experiment, run_blackbox, cap) -> None:
    """With oneDNN held to AVX2, any CPU computes bf16 as slowly as an AVX2-only one: eval picks fp32 there."""
    from tests.records import read_records

    native = cpu_bf16().native and cap is None  # this CPU's own answer, whichever it is: no case skips
    points = point_file(tmp_path, "2 -2 0.1")
    env = {"DNNL_MAX_CPU_ISA": cap} if cap else {}
    auto = ["--set", "model.dtype=auto", "--set", "training.autocast=auto"]  # the test experiment pins fp32
    result = run_blackbox(["eval", "-e", str(tiny_experiment), *auto, str(points)], env=env)
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    [record] = read_records(tmp_path / "runs" / "records.jsonl")
    expected = "float32 weights, bfloat16 autocast" if native else "float32 weights, no autocast"
    assert record["metrics"]["precision"] == expected
    assert f"precision on cpu: {expected}" in result.stderr.decode()
