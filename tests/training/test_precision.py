"""Precision follows the hardware: bf16 on a CPU only where the CPU computes it natively."""

from __future__ import annotations

import logging
import os
from pathlib import Path

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


# The paper's experiments pin the authors' precision (fp32 weights, bf16 autocast: tests/test_paper.py); every
# other shipped experiment lets the hardware decide.
PINNED = {name for name in shipped_experiments() if name.startswith("paper_")}
FOLLOWING = sorted(set(shipped_experiments()) - PINNED)


def test_only_the_paper_experiments_pin_their_precision() -> None:
    pinned = {name for name in shipped_experiments() if load_experiment(name).training.autocast != "auto"}
    assert pinned == PINNED and "paper_exp1" in PINNED


@pytest.mark.parametrize("name", FOLLOWING)
def test_every_shipped_experiment_trains_in_fp32_on_a_cpu_without_native_bf16(cpu_without_bf16, name: str) -> None:
    experiment = load_experiment(name)
    chosen = resolve_precision(experiment.model, experiment.training, CPU)
    assert chosen == precision.Precision(torch.float32, None)


@pytest.mark.parametrize("name", shipped_experiments())
def test_every_shipped_experiment_uses_bf16_autocast_where_the_cpu_has_it(cpu_with_bf16, name: str) -> None:
    experiment = load_experiment(name)
    chosen = resolve_precision(experiment.model, experiment.training, CPU)
    assert chosen == precision.Precision(torch.float32, torch.bfloat16)


@pytest.mark.parametrize("name", sorted(PINNED))
def test_a_paper_experiment_on_a_cpu_without_native_bf16_keeps_bf16_and_says_why_it_is_slow(
    cpu_without_bf16, name: str, caplog
) -> None:
    experiment = load_experiment(name)
    with caplog.at_level(logging.WARNING, logger="blackbox"):
        chosen = resolve_precision(experiment.model, experiment.training, CPU)
    assert chosen == precision.Precision(torch.float32, torch.bfloat16)
    assert "emulated" in caplog.text


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
    flags_say_bf16 = _cpu_flags_have_bf16()
    monkeypatch.setenv(variable, value)
    cpu_bf16.cache_clear()
    try:
        answer = cpu_bf16()
    finally:
        cpu_bf16.cache_clear()
    assert not answer.native
    # On a CPU with bf16 instructions the cap is the reason (whatever else holds PyTorch's kernels, such as
    # ATEN_CPU_CAPABILITY); elsewhere the CPU itself is.
    assert (variable in answer.reason) == flags_say_bf16, answer.reason


def _cpu_flags_have_bf16() -> bool:
    """Whether this CPU has bf16 instructions, read apart from the code under test: AMX or AVX512-BF16 in
    /proc/cpuinfo's flags."""
    if not Path("/proc/cpuinfo").exists():
        pytest.skip("needs Linux's /proc/cpuinfo to know the CPU's bf16 apart from blackbox.training.precision")
    flags = {flag for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")
             for flag in line.split(":", 1)[1].split()}  # fmt: skip
    return bool(flags & {"amx_bf16", "avx512_bf16"})


def _cpu_flags_say_bf16() -> bool:
    """Whether this CPU computes bf16 natively, read apart from the code under test: bf16 instructions, and no
    cap on PyTorch's CPU kernels in the environment."""
    capped = os.environ.get("ATEN_CPU_CAPABILITY", "").upper() in ("DEFAULT", "AVX2")
    return _cpu_flags_have_bf16() and not capped


@pytest.mark.slow
@pytest.mark.parametrize("cap", ["AVX2", None], ids=["isa-capped", "this-cpu"])
def test_eval_trains_in_the_precision_the_cpu_computes(tmp_path, tiny_experiment, run_blackbox, cap) -> None:
    """With oneDNN held to AVX2, any CPU computes bf16 as slowly as an AVX2-only one: eval picks fp32 there."""
    from tests.records import read_records

    native = _cpu_flags_say_bf16() and cap is None  # this CPU's answer, whichever it is: no case skips
    points = point_file(tmp_path, "2 -2 0.1")
    env = {"DNNL_MAX_CPU_ISA": cap} if cap else {}
    auto = ["--set", "model.dtype=auto", "--set", "training.autocast=auto"]  # the test experiment pins fp32
    result = run_blackbox(["eval", "-e", str(tiny_experiment), *auto, str(points)], env=env)
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    [record] = read_records(tmp_path / "runs" / "records.jsonl")
    expected = "float32 weights, bfloat16 autocast" if native else "float32 weights, no autocast"
    assert record["metrics"]["precision"] == expected
    assert f"precision on cpu: {expected}" in result.stderr.decode()
    # training.fused_kernels = "auto" (the default) gives no fused kernels on a CPU, and says why
    assert record["metrics"]["fused_kernels"] == "none"
    said = "fused kernels: none (training.fused_kernels = 'auto': liger's Triton kernels need CUDA"
    assert said in result.stderr.decode()
