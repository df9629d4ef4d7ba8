"""Shared fixtures: a tiny real Llama and small instruction files, built once per test session.

Every test runs offline: the hub is switched off, and caches live in the session's temporary folder.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from blackbox.testing import build_tiny_model, write_instruction_files

REPO = Path(__file__).resolve().parent.parent
# The installed console script, as NOMAD's BB_EXE calls it.
_SCRIPT = Path(sys.executable).parent / "lora-blackbox"
BLACKBOX = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "blackbox.cli"]


@pytest.fixture(scope="session", autouse=True)
def offline_caches(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = tmp_path_factory.mktemp("cache")
    os.environ.update(
        {
            "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
            "HF_HOME": str(cache / "hf"),
            "LORA_BLACKBOX_CACHE": str(cache / "lora-blackbox"),
            "TOKENIZERS_PARALLELISM": "false",
        }
    )
    return cache


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama")


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_instruction_files(tmp_path_factory.mktemp("data"))


TINY_EXPERIMENT = """\
# lora-blackbox eval --experiment experiment.toml POINT_FILE
[study]
name = "tiny"
budget = 6
outputs = ["OBJ:validation_loss", "EXTRA_O:train_loss", "EXTRA_O:run_id"]

[[space]]
name = "lora_r"
type = "I"
lower = 1
upper = 4
x0 = 2
decode = "choice"
values = [4, 8, 16, 16777216]  # index 4: a rank that cannot fit in memory

[[space]]
name = "learning_rate"
type = "R"
lower = -5
upper = 37
x0 = -3
decode = "log10"

[[space]]
name = "lora_dropout"
type = "R"
lower = 0
upper = 0.5
x0 = 0.1

[hyperparameters]
lora_alpha = 16

[model]
name_or_path = "{model}"

[data]
train = "{train}"
validation = "{validation}"
max_length = 128

[training]
max_steps = 12
effective_batch_size = 16
micro_batch_size = 8
seed = 0
log_every_steps = 4

[records]
dir = "{records}"
"""


@pytest.fixture
def tiny_experiment(tmp_path: Path, tiny_model: Path, tiny_data: tuple[Path, Path]) -> Path:
    """A small study on the tiny model; records go to tmp_path/runs."""
    path = tmp_path / "experiment.toml"
    train, validation = tiny_data
    path.write_text(
        TINY_EXPERIMENT.format(model=tiny_model, train=train, validation=validation, records=tmp_path / "runs")
    )
    return path


RunBlackbox = Callable[..., subprocess.CompletedProcess[bytes]]


@pytest.fixture
def run_blackbox(tmp_path: Path) -> RunBlackbox:
    """Run ``lora-blackbox ARGS`` as NOMAD does: a subprocess, the point file as last argument."""

    def run(
        args: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        preexec_fn: Callable[[], None] | None = None,
        timeout: float = 300,
    ) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [*BLACKBOX, *args],
            cwd=tmp_path,
            env={**os.environ, **(env or {})},
            capture_output=True,
            timeout=timeout,
            preexec_fn=preexec_fn,
            check=False,
        )

    return run
