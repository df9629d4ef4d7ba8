"""Which dtypes an evaluation computes in: bf16 only where the hardware computes it natively.

- CUDA: bf16 weights on GPUs that support bf16 (``model.dtype = "auto"``), fp32 elsewhere.
- CPU: fp32 weights; bf16 autocast (``training.autocast = "auto"``) only when the CPU computes bf16 in
  hardware (AMX or AVX512-BF16). Elsewhere bf16 matmuls are emulated: on a 2-core AVX2 VM a forward and
  backward of a 1024x576 @ 576x1536 matmul ran 18x slower under bf16 autocast than in fp32, 35x on this
  project's CI CPU with oneDNN held to AVX2. So "auto" never picks bf16 there, and an explicit
  ``bfloat16`` runs with one warning.

The CPU check reads the CPU's flags (through torch's cpuinfo) and honours the caps a user or a test can
set on the kernels torch uses: ``ATEN_CPU_CAPABILITY`` (PyTorch's own kernels) and ``DNNL_MAX_CPU_ISA`` /
``ONEDNN_MAX_CPU_ISA`` (oneDNN's matmuls). With ``DNNL_MAX_CPU_ISA=AVX2`` a native-bf16 CPU really does
compute bf16 as slowly as an AVX2 one, which is how the tests check the fp32 path on any machine.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from dataclasses import dataclass
from typing import Any

import torch

from blackbox.core.errors import SetupError
from blackbox.core.experiment import ModelConfig, TrainingConfig

logger = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# oneDNN ISA caps below AVX512_CORE_BF16: bf16 matmuls are emulated under them.
_ONEDNN_WITHOUT_BF16 = {"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI"}
# Measured ratios of bf16-autocast to fp32 time on CPUs without native bf16 (see the module docstring).
EMULATED_BF16_SLOWDOWN = "18-35x"


@dataclass(frozen=True)
class Precision:
    """Weights dtype and the autocast dtype of forward passes (None: no autocast)."""

    weights: torch.dtype
    autocast: torch.dtype | None

    def autocast_context(self, device: torch.device) -> Any:
        return torch.autocast(device.type, dtype=self.autocast or torch.float32, enabled=self.autocast is not None)

    def describe(self) -> str:
        weights = str(self.weights).removeprefix("torch.")
        return f"{weights} weights, " + (
            f"{str(self.autocast).removeprefix('torch.')} autocast" if self.autocast else "no autocast"
        )


@dataclass(frozen=True)
class CpuBf16:
    """Whether this CPU computes bfloat16 in hardware, and why (for the log)."""

    native: bool
    reason: str


@functools.cache
def cpu_bf16() -> CpuBf16:
    """Native bf16 on this CPU: AMX or AVX512-BF16, and not capped by ATEN_CPU_CAPABILITY or DNNL_MAX_CPU_ISA.

    Cached for the process: the answer cannot change while it runs.
    """
    amx, avx512_bf16 = _cpu_flags()
    if not (amx or avx512_bf16):
        capability = torch.backends.cpu.get_cpu_capability()
        return CpuBf16(False, f"this CPU has no native bfloat16 (no AMX, no AVX512-BF16; {capability})")
    for variable in ("DNNL_MAX_CPU_ISA", "ONEDNN_MAX_CPU_ISA"):
        cap = os.environ.get(variable, "").strip().upper()
        if cap in _ONEDNN_WITHOUT_BF16:
            return CpuBf16(False, f"{variable}={cap} holds matmuls below this CPU's native bfloat16")
    capability = torch.backends.cpu.get_cpu_capability()
    if capability in ("DEFAULT", "AVX2", "NO AVX"):
        return CpuBf16(False, f"PyTorch's CPU kernels are held to {capability} (ATEN_CPU_CAPABILITY)")
    return CpuBf16(True, "this CPU computes bfloat16 natively (" + ("AMX" if amx else "AVX512-BF16") + ")")


def _cpu_flags() -> tuple[bool, bool]:
    """(AMX, AVX512-BF16), from torch's cpuinfo; from /proc/cpuinfo if this torch lacks those checks."""
    amx_check = getattr(torch.cpu, "_is_amx_tile_supported", None)
    bf16_check = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    if amx_check is not None and bf16_check is not None:
        return bool(amx_check()), bool(bf16_check())
    if sys.platform != "linux":
        return False, False
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            flags = next((line.split(":", 1)[1].split() for line in cpuinfo if line.startswith("flags")), [])
    except OSError:
        return False, False
    return "amx_bf16" in flags, "avx512_bf16" in flags


def resolve_precision(model: ModelConfig, training: TrainingConfig, device: torch.device) -> Precision:
    """The dtypes of this evaluation; ``auto`` follows the hardware (see the module docstring).

    Logs the choice (once per call of ``eval``: the evaluator resolves it once), and warns when an
    explicit bfloat16 will be emulated on this CPU.

    Raises:
        SetupError: a dtype the device does not support.
    """
    if device.type == "cuda":
        bf16_fast = bf16_ok = torch.cuda.is_bf16_supported()
        why = "this GPU " + ("supports" if bf16_ok else "does not support") + " bfloat16"
    else:
        cpu = cpu_bf16()
        bf16_ok, bf16_fast, why = device.type == "cpu", cpu.native, cpu.reason
    if model.dtype == "auto":
        weights = torch.bfloat16 if device.type == "cuda" and bf16_fast else torch.float32
    else:
        weights = _DTYPES[model.dtype]
    if training.autocast == "auto":
        autocast = torch.bfloat16 if weights == torch.float32 and bf16_fast else None
    else:
        autocast = _DTYPES.get(training.autocast)
    if torch.bfloat16 in (weights, autocast) and not bf16_ok:
        raise SetupError(f"bfloat16 is not supported on {device}: use model.dtype=float32 and training.autocast=none")
    if torch.float16 in (weights, autocast) and device.type == "cpu":
        raise SetupError("float16 is not supported on the CPU: use float32 or bfloat16")
    precision = Precision(weights, autocast)
    if torch.bfloat16 in (weights, autocast) and not bf16_fast:
        logger.warning(
            "bfloat16 on %s: %s, so it is emulated and training is expected to run about %s slower than in "
            "float32. Set model.dtype=auto and training.autocast=auto (e.g. --set training.autocast=auto) to "
            "let the hardware decide.",
            device,
            why,
            EMULATED_BF16_SLOWDOWN,
        )
    else:
        logger.info("precision on %s: %s (%s)", device, precision.describe(), why)
    return precision
