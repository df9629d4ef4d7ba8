"""Shared fixtures: a tiny real Llama and small instruction files, built once per test session.

Every test runs offline: the hub is switched off, and caches live in the session's temporary folder.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from blackbox.training.testing import build_tiny_model, write_instruction_files

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
# fp32 on every CPU: bf16 autocast makes a model this small slower, even where bf16 is native
autocast = "none"
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


# The NOMAD 4.5.1 executable that tests and CI use as the real client (never needed at run time). CI has
# ../shared beside the checkout and requires it (LORA_BLACKBOX_REQUIRE_NOMAD=1); elsewhere the binary's
# cases are skipped when it is missing.
NOMAD_TOOL = Path(os.environ.get("LORA_BLACKBOX_TEST_NOMAD_DIR", REPO.parent / "shared" / "tools" / "nomad-4.5.1"))
NOMAD_REQUIRED = os.environ.get("LORA_BLACKBOX_REQUIRE_NOMAD") == "1"


@pytest.fixture(scope="session")
def nomad_binary(tmp_path_factory: pytest.TempPathFactory) -> Path | None:
    """A runnable copy of the NOMAD binary, or None when there is none.

    The copy restores the library links: the shared folder may hold them flattened into small text files
    that name their target (``libnomadAlgos.so.4.5`` holding ``libnomadAlgos.so.4.5.1``).
    """
    if not (NOMAD_TOOL / "bin").is_dir():
        return None
    copy = tmp_path_factory.mktemp("nomad") / "nomad-4.5.1"
    shutil.copytree(NOMAD_TOOL, copy, symlinks=True, ignore=shutil.ignore_patterns("*.tar.gz"))
    for folder in (copy / "bin", copy / "lib"):
        for path in folder.iterdir():
            if path.is_symlink() or path.stat().st_size > 256:
                continue
            target = path.read_text(errors="replace").strip()
            if target and "/" not in target and (folder / target).exists():
                path.unlink()
                path.symlink_to(target)
    for path in (copy / "bin").iterdir():
        path.chmod(0o755)
    exe = copy / "bin" / "nomad"
    check = subprocess.run([str(exe), "-v"], capture_output=True, text=True, check=False)
    if check.returncode != 0 or "4.5.1" not in check.stdout:
        pytest.fail(f"the NOMAD binary in {NOMAD_TOOL} does not run: {check.stdout}{check.stderr}")
    return exe


@pytest.fixture(params=["binary", "pynomad"])
def nomad_env(request: pytest.FixtureRequest, nomad_binary: Path | None) -> dict[str, str]:
    """The environment of a study run by each NOMAD: the 4.5.1 binary (NOMAD_EXE), and the library embedded in
    PyNomadBBO (no nomad executable anywhere)."""
    path = os.pathsep.join([str(Path(sys.executable).parent), "/usr/bin", "/bin"])
    env = {**os.environ, "PATH": path}
    env.pop("NOMAD_EXE", None)
    if request.param == "binary":
        if nomad_binary is None:
            message = f"no NOMAD binary in {NOMAD_TOOL} (set LORA_BLACKBOX_TEST_NOMAD_DIR)"
            if NOMAD_REQUIRED:
                pytest.fail(message)
            pytest.skip(message)
        env["NOMAD_EXE"] = str(nomad_binary)
    return env
