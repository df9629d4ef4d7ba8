"""The container runner, ``lora-blackbox container``.

Planning needs no engine. The rest (marked ``docker``) needs a Docker-API engine (``DOCKER_HOST``) and
the project's image (``make image``; ``$LORA_BLACKBOX_TEST_IMAGE``, default lora-blackbox:latest):
without them these tests skip, unless ``LORA_BLACKBOX_REQUIRE_DOCKER=1`` (CI) makes them fail. Failure
paths that do not need the blackbox use a fake image built on top of the project's (its entrypoint is a
small script, told what to do by ``--env FAKE_MODE=...``). After every engine test, no container of the
runner and no volume is left behind.
"""

from __future__ import annotations

import io
import json
import math
import os
import select
import signal
import socket
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
from click.testing import CliRunner

from blackbox.cli import main
from blackbox.core.errors import ConfigError, SetupError
from blackbox.core.experiment import load_experiment
from blackbox.core.nomad import read_cache
from blackbox.runners.container import LABEL, Bind, Gpus, device_requests, parse_env, parse_gpus, plan_call
from tests.points import point_file
from tests.records import read_records

IMAGE = os.environ.get("LORA_BLACKBOX_TEST_IMAGE", "lora-blackbox:latest")


# ---------------------------------------------------------------------------------------------------------------
# Planning: no engine needed


def test_gpu_requests() -> None:
    assert parse_gpus("auto", host_has_gpu=False) == Gpus(count=0)
    assert parse_gpus("auto", host_has_gpu=True) == Gpus(count=-1)
    assert parse_gpus("all") == Gpus(count=-1)
    assert parse_gpus("none") == Gpus(count=0)
    assert parse_gpus("2") == Gpus(count=2)
    assert parse_gpus("device=0,GPU-3a1b") == Gpus(device_ids=("0", "GPU-3a1b"))
    for bad in ("some", "-1", "device=", "0,1"):
        with pytest.raises(ConfigError, match="--gpus takes"):
            parse_gpus(bad)
    assert device_requests(Gpus()) == []
    assert device_requests(Gpus(count=-1)) == [{"Driver": "", "Count": -1, "DeviceIDs": [], "Capabilities": [["gpu"]],
                                                "Options": {}}]  # fmt: skip
    assert device_requests(Gpus(count=2))[0]["Count"] == 2
    assert device_requests(Gpus(device_ids=("1", "3")))[0]["DeviceIDs"] == ["1", "3"]


def test_env_items(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ON_THE_HOST", "h")
    monkeypatch.delenv("NOT_ON_THE_HOST", raising=False)
    assert parse_env(("A=1", "B=", "C=x=y", "ON_THE_HOST", "NOT_ON_THE_HOST")) == {
        "A": "1",
        "B": "",
        "C": "x=y",
        "ON_THE_HOST": "h",
    }
    with pytest.raises(ConfigError):
        parse_env(("=1",))


def _plan(experiment: Path, point: Path, **options: Any) -> Any:
    overrides = options.pop("overrides", ())
    return plan_call(
        image="some/image:1",
        experiment_ref=str(experiment),
        experiment=load_experiment(str(experiment), overrides),
        overrides=overrides,
        point_file=point,
        **options,
    )


def test_plan_mounts_host_paths_at_the_same_paths(
    tmp_path: Path,
    tiny_experiment: Path,
    tiny_model: Path,
    tiny_data: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x.txt").write_text("2 -3 0.1\n")
    extra = tmp_path / "extra"
    extra.mkdir()
    spec = _plan(tiny_experiment, Path("x.txt"), overrides=("training.max_steps=3",), mounts=(extra,))
    binds = {b.path: b.read_only for b in spec.binds}
    hf_home, cache = os.environ["HF_HOME"], os.environ["LORA_BLACKBOX_CACHE"]
    assert binds == {
        str(tmp_path / "x.txt"): True,
        str(tiny_experiment): True,
        str(tiny_model): True,
        str(tiny_data[0]): True,
        str(tiny_data[1]): True,
        str(extra): True,
        str(tmp_path / "runs"): False,  # records.dir of the tiny experiment
        hf_home: False,
        cache: False,
    }
    assert (tmp_path / "runs").is_dir()
    assert spec.arguments == (
        "--experiment",
        str(tiny_experiment),
        "--set",
        "training.max_steps=3",
        str(tmp_path / "x.txt"),
    )
    assert spec.working_dir == str(tmp_path)
    assert spec.user == f"{os.getuid()}:{os.getgid()}"
    assert spec.environment["HF_HOME"] == hf_home and spec.environment["LORA_BLACKBOX_CACHE"] == cache
    assert spec.environment["HOME"] == "/tmp"
    assert spec.environment["HF_HUB_OFFLINE"] == "1"  # passed on from the host (conftest sets it)
    assert spec.labels[LABEL] and spec.labels[f"{LABEL}.point-file"] == str(tmp_path / "x.txt")


def test_plan_records_dir_relative_to_the_working_directory(
    tmp_path: Path, tiny_experiment: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    study = tmp_path / "study"
    study.mkdir()
    monkeypatch.chdir(study)
    (study / "p.txt").write_text("2 -3 0.1\n")
    # What BB_EXE passes: records in NOMAD's working directory (run_nomad.sh: the study folder).
    spec = _plan(
        tiny_experiment, Path("p.txt"), overrides=("records.dir=.",), mounts=(study,), offline=True, quiet=True
    )
    assert Bind(str(study), read_only=False) in spec.binds  # read-write wins over --mount's read-only
    assert len([b for b in spec.binds if b.path == str(study)]) == 1
    assert spec.arguments[-3:] == ("--set", "records.dir=.", str(study / "p.txt"))
    assert spec.offline
    assert spec.environment["HF_DATASETS_OFFLINE"] == "1" and spec.environment["LORA_BLACKBOX_QUIET"] == "1"


def test_plan_refuses_what_would_hide_the_image(tmp_path: Path, tiny_experiment: Path) -> None:
    point = point_file(tmp_path, "2 -3 0.1", name="p.txt")
    with pytest.raises(SetupError, match="hide the image"):
        _plan(tiny_experiment, point, mounts=(Path("/usr/lib"),))
    with pytest.raises(SetupError, match="hide the image"):
        _plan(tiny_experiment, point, mounts=(Path("/"),))
    with pytest.raises(SetupError, match="no such file"):
        _plan(tiny_experiment, point, mounts=(tmp_path / "missing",))
    with pytest.raises(SetupError, match="point file"):
        _plan(tiny_experiment, tmp_path / "missing.txt")


def test_bad_options_are_usage_errors(tmp_path: Path, tiny_experiment: Path) -> None:
    point = point_file(tmp_path, "2 -3 0.1", name="p.txt")
    for option in (["--gpus", "many"], ["--env", "=x"], ["--pull", "sometimes"]):
        result = CliRunner().invoke(
            main, ["container", "--image", "x", "-e", str(tiny_experiment), *option, str(point)]
        )
        assert result.exit_code == 2, result.output
        assert option[0] in result.output


# ---------------------------------------------------------------------------------------------------------------
# The runner as NOMAD calls it: a subprocess


def _runner(*args: str, image: str = IMAGE) -> list[str]:
    return [sys.executable, "-m", "blackbox.cli", "container", "--image", image, *args]


def test_no_engine(tmp_path: Path, tiny_experiment: Path, run_blackbox) -> None:
    """Runs without an engine: DOCKER_HOST names a socket that does not exist."""
    (tmp_path / "p.txt").write_text("2 -3 0.1\n")
    sock = f"unix://{tmp_path}/no-engine.sock"
    result = run_blackbox(
        ["container", "--image", IMAGE, "-e", str(tiny_experiment), "p.txt"], env={"DOCKER_HOST": sock}, timeout=60
    )
    assert result.returncode == 1, result.stderr.decode()
    assert result.stdout == b""
    stderr = result.stderr.decode()
    assert f"no Docker engine reachable at {sock}" in stderr
    assert "DOCKER_HOST" in stderr and "Traceback" not in stderr
    assert len(stderr.strip().splitlines()) == 1


# ---------------------------------------------------------------------------------------------------------------
# With an engine


FAKE_ENTRYPOINT = r"""
import os, signal, sys, time

mode = os.environ.get("FAKE_MODE", "sleep")
if mode == "relay":
    os.write(1, b"1.5 x\n")
    os.write(2, b"fake stderr\n")
    time.sleep(0.3)
    os.write(1, b"2.5 ")
    time.sleep(0.3)
    os.write(1, b"y\r\n\xff\xfe no newline")
    sys.exit(int(os.environ["FAKE_STATUS"]))
if mode == "ignore-sigint":
    signal.signal(signal.SIGINT, signal.SIG_IGN)
try:
    os.write(2, b"fake sleeping\n")
    while True:
        time.sleep(0.05)
except KeyboardInterrupt:
    with open(os.environ["FAKE_MARKER"], "w") as marker:
        marker.write("SIGINT")
    sys.exit(130)
"""


@pytest.fixture(scope="session")
def fake_image(engine: docker.DockerClient, image: str) -> Iterator[str]:
    """The project image with a scripted entrypoint in place of the blackbox (it ignores the arguments)."""
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        for name, text in (
            ("Dockerfile", f'FROM {image}\nCOPY fake.py /fake.py\nENTRYPOINT ["python", "/fake.py"]\n'),
            ("fake.py", FAKE_ENTRYPOINT),
        ):
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    context.seek(0)
    # One image per xdist worker: a worker removes its own when its session ends.
    tag = f"lora-blackbox-test-fake-{os.environ.get('PYTEST_XDIST_WORKER', 'main')}:latest"
    engine.images.build(fileobj=context, custom_context=True, tag=tag, rm=True)
    yield tag
    engine.images.remove(tag, force=True)


def _point(tmp_path: Path, text: str = "2 -3 0.1\n") -> Path:
    point = tmp_path / "x.txt"
    point.write_text(text)
    return point


@pytest.fixture
def popen() -> Iterator[Callable[[list[str], Path], subprocess.Popen[bytes]]]:
    """Start a runner in the background; one a failed test leaves running is killed at teardown."""
    started: list[subprocess.Popen[bytes]] = []

    def start(args: list[str], cwd: Path) -> subprocess.Popen[bytes]:
        started.append(subprocess.Popen(args, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
        return started[-1]

    yield start
    for process in started:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)  # the runner stops and removes its container
            try:
                process.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.communicate(timeout=60)


def _wait_for_stderr(process: subprocess.Popen[bytes], text: bytes, timeout: float = 180) -> bytes:
    """Read the runner's stderr until a line holding ``text`` has arrived, for at most ``timeout`` seconds (a
    runner that hangs silently fails the test too); returns what was read: whole lines, the rest stays unread."""
    assert process.stderr is not None
    fd = process.stderr.fileno()  # read below the file object's buffer, which stays empty
    seen = b""
    deadline = time.monotonic() + timeout
    while text not in seen or not seen.endswith(b"\n"):
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        assert ready, f"timed out after {timeout:g} s waiting for {text!r}: {seen.decode(errors='replace')}"
        byte = os.read(fd, 1)
        assert byte, (process.wait(timeout=60), seen.decode(errors="replace"))
        seen += byte
    return seen


@pytest.mark.docker
@pytest.mark.usefixtures("no_leftovers")
@pytest.mark.parametrize("status", [0, 3])
def test_stdout_relayed_byte_for_byte_and_the_exit_status(
    tmp_path: Path, tiny_experiment: Path, fake_image: str, status: int
) -> None:
    result = subprocess.run(
        [*_runner("--env", "FAKE_MODE=relay", "--env", f"FAKE_STATUS={status}", "-e", str(tiny_experiment),
                  image=fake_image), str(_point(tmp_path))],
        cwd=tmp_path, capture_output=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.stdout == b"1.5 x\n2.5 y\r\n\xff\xfe no newline"
    assert result.returncode == status
    assert b"fake stderr\n" in result.stderr
    assert (b"exited with status 3" in result.stderr) == (status == 3)


@pytest.mark.docker
@pytest.mark.usefixtures("no_leftovers")
def test_missing_image(tmp_path: Path, tiny_experiment: Path, engine: docker.DockerClient) -> None:
    point = str(_point(tmp_path))
    absent = "lora-blackbox-test-absent:never-built"
    never = subprocess.run(
        [*_runner("--pull", "never", "-e", str(tiny_experiment), image=absent), point],
        cwd=tmp_path, capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    assert never.returncode == 1 and never.stdout == b""
    assert f"no image {absent} on the engine, and --pull never" in never.stderr.decode()
    # A registry that refuses the connection: the pull fails at once.
    unreachable = "localhost:9/lora-blackbox-test-absent:1"
    pulled = subprocess.run(
        [*_runner("-e", str(tiny_experiment), image=unreachable), point],
        cwd=tmp_path, capture_output=True, timeout=120, check=False,
    )  # fmt: skip
    assert pulled.returncode == 1 and pulled.stdout == b""
    assert f"no image {unreachable} on the engine, and pulling it failed" in pulled.stderr.decode()


@pytest.mark.docker
@pytest.mark.usefixtures("no_leftovers")
def test_timeout_stops_the_container_with_sigint(tmp_path: Path, tiny_experiment: Path, fake_image: str) -> None:
    marker = tmp_path / "runs" / "stopped.txt"  # in the records folder: mounted read-write
    started = time.monotonic()
    result = subprocess.run(
        [*_runner("--timeout", "3", "--env", f"FAKE_MARKER={marker}", "-e", str(tiny_experiment), image=fake_image),
         str(_point(tmp_path))],
        cwd=tmp_path, capture_output=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 124, result.stderr.decode()
    assert result.stdout == b""
    assert "no result within the time limit of 3 s" in result.stderr.decode()
    assert marker.read_text() == "SIGINT"  # the container got SIGINT and ended cleanly ...
    assert time.monotonic() - started < 3 + 10  # ... before the grace period ran out


@pytest.mark.docker
@pytest.mark.usefixtures("no_leftovers")
def test_a_container_that_ignores_sigint_is_killed(tmp_path: Path, tiny_experiment: Path, fake_image: str) -> None:
    marker = tmp_path / "runs" / "stopped.txt"
    started = time.monotonic()
    result = subprocess.run(
        [*_runner("--timeout", "2", "--env", "FAKE_MODE=ignore-sigint", "--env", f"FAKE_MARKER={marker}",
                  "-e", str(tiny_experiment), image=fake_image), str(_point(tmp_path))],
        cwd=tmp_path, capture_output=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 124, result.stderr.decode()
    assert "did not stop: killing it" in result.stderr.decode()
    assert not marker.exists()
    assert time.monotonic() - started >= 2 + 10  # SIGKILL only after the grace period


@pytest.mark.docker
@pytest.mark.usefixtures("no_leftovers")
def test_container_killed_from_outside(
    tmp_path: Path, tiny_experiment: Path, fake_image: str, engine: docker.DockerClient, popen: Any
) -> None:
    process = popen([*_runner("-e", str(tiny_experiment), image=fake_image), str(_point(tmp_path))], tmp_path)
    _wait_for_stderr(process, b"fake sleeping")
    (container,) = engine.containers.list(filters={"label": f"{LABEL}.pid={process.pid}"})
    container.kill()  # SIGKILL, as the kernel's OOM killer would
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 137, stderr.decode()
    assert stdout == b""
    assert "the container was killed" in stderr.decode()


# ---------------------------------------------------------------------------------------------------------------
# The real blackbox in the project's image


def _records(tmp_path: Path) -> list[dict[str, Any]]:
    return read_records(tmp_path / "runs" / "records.jsonl")


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.usefixtures("no_leftovers")
def test_same_objective_in_the_container_as_on_the_host(
    tmp_path: Path, tiny_experiment: Path, image: str, run_blackbox
) -> None:
    point = _point(tmp_path, "2 -3 0.1\n\n1 -2.5 0\n")
    contained = subprocess.run(
        [*_runner("--offline", "-e", str(tiny_experiment), image=image), "x.txt"],
        cwd=tmp_path, capture_output=True, timeout=300, check=False,
    )  # fmt: skip
    assert contained.returncode == 0, contained.stderr.decode()[-3000:]
    local = run_blackbox(["eval", "-e", str(tiny_experiment), str(point)])
    assert local.returncode == 0, local.stderr.decode()[-3000:]
    ours, theirs = contained.stdout.decode().splitlines(), local.stdout.decode().splitlines()
    assert len(ours) == len(theirs) == 2  # the blank line gets no output line
    for a, b in zip(ours, theirs, strict=True):
        assert math.isclose(float(a.split()[0]), float(b.split()[0]), rel_tol=1e-5)
    records = _records(tmp_path)
    in_container = [r for r in records if r["outputs"][-1] in contained.stdout.decode()]
    assert len(in_container) == 2
    for record in in_container:
        # Same paths inside and out: the run folders and the point file are the host's.
        assert record["status"] == "OK" and Path(record["run_dir"]).parent == tmp_path / "runs" / "evals"
        assert (Path(record["run_dir"]) / "record.json").is_file()
        assert record["point_file"] == str(point)
        assert record["host"] != socket.gethostname()
        assert os.stat(record["run_dir"]).st_uid == os.getuid()  # written as the host's user


@pytest.mark.docker
@pytest.mark.usefixtures("no_leftovers")
def test_failure_inside_the_container_is_its_exit_status(tmp_path: Path, tiny_experiment: Path, image: str) -> None:
    result = subprocess.run(
        [*_runner("--offline", "-e", str(tiny_experiment), "--set", f"model.name_or_path={tmp_path}/no-model",
                  image=image), str(_point(tmp_path))],
        cwd=tmp_path, capture_output=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr.decode()[-3000:]
    assert result.stdout == b""
    stderr = result.stderr.decode()
    assert "no-model" in stderr and "the blackbox in the container exited with status 1" in stderr
    assert [r["status"] for r in _records(tmp_path)] == ["NOT_RUN"]


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.usefixtures("no_leftovers")
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_stops_the_evaluation_cleanly(
    tmp_path: Path, tiny_experiment: Path, image: str, signum: signal.Signals, popen: Any
) -> None:
    args = ["--offline", "-e", str(tiny_experiment), "--set", "training.max_steps=100000"]
    process = popen([*_runner(*args, image=image), str(_point(tmp_path))], tmp_path)
    _wait_for_stderr(process, b"lora-blackbox INFO: step ")  # training
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr.decode()[-3000:]
    assert stdout == b""
    assert f"{signum.name}: stopping the container" in stderr.decode()
    (record,) = _records(tmp_path)
    assert record["status"] == "INTERRUPTED"  # the blackbox got SIGINT and recorded it


# ---------------------------------------------------------------------------------------------------------------
# A real NOMAD study, the blackbox in containers


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.usefixtures("no_leftovers")
def test_a_nomad_study_in_containers(
    tmp_path: Path, repo: Path, image: str, nomad_env, make_study, records_agree_with_nomad, ran_with_nomad
) -> None:
    param = make_study(budget=4, block_size=2, container=image)
    bb_exe = next(line for line in param.read_text().splitlines() if line.startswith("BB_EXE"))
    assert bb_exe.startswith(f'BB_EXE "$lora-blackbox $container $--image ${image} $--experiment ')
    study_dir = tmp_path / "runs" / "study"
    result = subprocess.run(
        [str(repo / "run_nomad.sh"), str(param), str(study_dir)],
        env={**nomad_env, "LORA_BLACKBOX_OFFLINE": "1"},  # no network in the containers
        capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    ran_with_nomad(result.stderr, nomad_env)
    records, cache = records_agree_with_nomad(study_dir)
    assert len(cache) == len(records)
    assert 4 <= len(records) <= 4 + 1  # the budget; the last block of 2 may pass it by one
    assert all(r["status"] == "OK" for r in records)
    for record in records:
        assert Path(record["run_dir"]).parent == study_dir / "evals"  # host paths
        assert (Path(record["run_dir"]) / "eval.log").is_file()
        assert record["device"] == "cpu"
    # Each call ran in a container of its own: a record's host is its container's hostname.
    calls: dict[str, list[int]] = {}
    for record in records:
        calls.setdefault(record["host"], []).append(record["block_index"])
    assert socket.gethostname() not in calls
    assert max(len(v) for v in calls.values()) == 2  # two points in one call
    assert all(v == list(range(len(v))) for v in calls.values())
    best = min(records, key=lambda r: r["metrics"]["validation_loss"])
    assert f"best objective: {best['outputs'][0]}" in result.stdout
    assert min(float(e.outputs[0]) for e in read_cache(study_dir / "cache.txt")) == best["metrics"]["validation_loss"]
    assert json.loads((Path(best["run_dir"]) / "record.json").read_text())["run_id"] == best["run_id"]
