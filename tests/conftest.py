"""Shared fixtures: a tiny real Llama and small instruction files (built once per test session), experiments
from the one template in ``tests/assets``, the blackbox called as NOMAD calls it, and both NOMADs.

Every test runs offline: the hub is switched off, and caches live in the session's temporary folder. Test
modules share helpers through the fixtures here, never by importing each other.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    import docker

from blackbox.core.nomad import read_cache
from blackbox.runners.container import LABEL
from blackbox.training.testing import build_tiny_model, write_experiment, write_instruction_files
from tests.records import read_records

REPO = Path(__file__).resolve().parent.parent
ASSETS = REPO / "tests" / "assets"
# The installed console script, as NOMAD's BB_EXE calls it.
_SCRIPT = Path(sys.executable).parent / "lora-blackbox"
BLACKBOX = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "blackbox.cli"]
TINY_OUTPUTS = '["OBJ:validation_loss", "EXTRA_O:train_loss", "EXTRA_O:run_id"]'
STUDY_OUTPUTS = '["OBJ:validation_loss", "EXTRA_O:run_id", "CNT_EVAL"]'


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
            # The runners' slot leases of this session (of this xdist worker): never another run's.
            "LORA_BLACKBOX_LEASE_DIR": str(cache / "leases"),
        }
    )
    if os.environ.get("PYTEST_XDIST_WORKER"):  # the workers share the cores: one torch thread each
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        os.environ.setdefault("MKL_NUM_THREADS", "1")
    return cache


_ENGINE_FIXTURES = {"engine", "image", "no_leftovers"}


def _uses_the_engine(item: pytest.Item) -> bool:
    fixtures = set(getattr(item, "fixturenames", ()))
    return bool(item.get_closest_marker("docker") or fixtures & _ENGINE_FIXTURES or "[container]" in item.nodeid)


def _workers_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder that the session's xdist workers share (each has its own base temp inside it)."""
    root = tmp_path_factory.getbasetemp()
    return root.parent if os.environ.get("PYTEST_XDIST_WORKER") else root


@pytest.fixture(autouse=True)
def one_engine_test_at_a_time(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[None]:
    """A test of the container engine holds a lock shared by the session's xdist workers: each checks that the
    runner leaves no container behind, which another test's container would break. (The xdist group below puts
    them on one worker too; the lock holds whatever the scheduler does.)"""
    if not _uses_the_engine(request.node):
        yield
        return
    with (_workers_folder(tmp_path_factory) / "engine.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under xdist (``make test``: ``-n 2 --dist loadgroup``), the tests of the container engine run on one
    worker, one after the other: each checks that the runner leaves no container behind, which another test's
    container would break."""
    for item in items:
        if _uses_the_engine(item):
            item.add_marker(pytest.mark.xdist_group("engine"))


@pytest.fixture(scope="session")
def blackbox_cmd() -> list[str]:
    """The ``lora-blackbox`` command, as NOMAD's BB_EXE calls it."""
    return list(BLACKBOX)


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model (30-70 s to build on 2 cores), built once for the session's xdist workers: the first to take
    the lock builds it, the others wait and read the same folder (its builder is seeded: the same model)."""
    shared = _workers_folder(tmp_path_factory)
    folder = shared / "tiny-llama"
    with (shared / "tiny-llama.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not folder.is_dir():
                building = Path(tempfile.mkdtemp(prefix="tiny-llama.", dir=shared))
                build_tiny_model(building / "model")
                (building / "model").rename(folder)  # whole or absent
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return folder


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model: Path) -> Any:
    """The tiny model's tokenizer, loaded once per session."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_instruction_files(tmp_path_factory.mktemp("data"))


MakeExperiment = Callable[..., Path]


@pytest.fixture(scope="session")
def write_tiny_experiment(tiny_model: Path, tiny_data: tuple[Path, Path]) -> MakeExperiment:
    """Write an experiment from the template to ``path``: ``write_tiny_experiment(path, space="rank_lr",
    budget=4, steps=6, records=..., ...)``. Defaults: the tiny study (space ``rank_lr_dropout``, budget 6, 12
    steps, its name ``tiny``); ``records`` has none."""

    def write(path: Path, *, space: str = "rank_lr_dropout", **values: object) -> Path:
        train, validation = tiny_data
        settings: dict[str, object] = {
            "name": "tiny",
            "budget": 6,
            "outputs": TINY_OUTPUTS,
            "model": tiny_model,
            "train": train,
            "validation": validation,
            "steps": 12,
            **values,
        }
        return write_experiment(
            path, template=ASSETS / "tiny_experiment.toml", space=ASSETS / "spaces" / f"{space}.toml", **settings
        )

    return write


@pytest.fixture
def make_experiment(tmp_path: Path, write_tiny_experiment: MakeExperiment) -> MakeExperiment:
    """``write_tiny_experiment`` with ``tmp_path/experiment.toml`` as the default path and records in
    ``tmp_path/runs``."""

    def make(path: Path | None = None, **values: object) -> Path:
        return write_tiny_experiment(path or tmp_path / "experiment.toml", **{"records": tmp_path / "runs", **values})

    return make


@pytest.fixture
def tiny_experiment(make_experiment: MakeExperiment) -> Path:
    """A small study on the tiny model; records go to tmp_path/runs."""
    return make_experiment()


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


# ---------------------------------------------------------------------------------------------------------------
# NOMAD studies, with both NOMADs

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
    check = subprocess.run([str(exe), "-v"], capture_output=True, text=True, check=False, timeout=600)
    if check.returncode != 0 or "4.5.1" not in check.stdout:
        pytest.fail(f"the NOMAD binary in {NOMAD_TOOL} does not run: {check.stdout}{check.stderr}")
    return exe


@pytest.fixture(params=["binary", "pynomad"])
def nomad_env(request: pytest.FixtureRequest, nomad_binary: Path | None) -> dict[str, str]:
    """The environment of a study run by each NOMAD: the 4.5.1 binary (NOMAD_EXE), and PyNomadBBO (no nomad
    executable anywhere)."""
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


MakeStudy = Callable[..., Path]


@pytest.fixture
def make_study(tmp_path: Path, make_experiment: MakeExperiment) -> MakeStudy:
    """Write a study's NOMAD parameter file with ``lora-blackbox params`` and return it:
    ``make_study(budget=4, steps=6, block_size=1, container=None, extra=["training.log_every_steps=1"],
    space="rank_lr")``."""

    def make(
        *,
        budget: int,
        steps: int = 6,
        block_size: int = 1,
        container: str | None = None,
        extra: Sequence[str] = (),
        space: str = "rank_lr",
    ) -> Path:
        experiment = make_experiment(
            tmp_path / "study.toml",
            space=space,
            name="tiny-study",
            budget=budget,
            steps=steps,
            outputs=STUDY_OUTPUTS,
        )
        param = tmp_path / "study.txt"
        args = ["params", "-e", str(experiment), "--out", str(param), "--block-size", str(block_size)]
        args += ["--container", container] if container else []
        args += [word for item in extra for word in ("--set", item)]
        subprocess.run([*BLACKBOX, "-q", *args], check=True, timeout=600)
        return param

    return make


@pytest.fixture
def run_nomad(repo: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """``./run_nomad.sh PARAM STUDY_DIR [OPTION ...]`` with an environment (a ``nomad_env``)."""

    def run(
        param: Path, study_dir: Path, env: dict[str, str], options: Sequence[str] = ()
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(repo / "run_nomad.sh"), str(param), str(study_dir), *options],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )

    return run


@pytest.fixture
def records_agree_with_nomad() -> Callable[[Path], tuple[list[dict], list]]:
    """A check of a study folder: every successful record is in NOMAD's cache with its point and objective
    (the EXTRA_O run id ties them), and nothing else is; returns (records, cache entries)."""

    def check(study_dir: Path) -> tuple[list[dict], list]:
        records = read_records(study_dir / "records.jsonl")
        cache = read_cache(study_dir / "cache.txt")
        ok = [r for r in records if r["status"] == "OK"]
        ok_cache = [e for e in cache if e.ok]
        assert len(ok) == len(ok_cache) > 0
        by_run_id = {e.outputs[1]: e for e in ok_cache}
        for record in ok:
            entry = by_run_id[record["run_id"]]
            assert entry.point == tuple(record["point"])
            assert float(entry.outputs[0]) == record["metrics"]["validation_loss"]
        return records, cache

    return check


@pytest.fixture
def ran_with_nomad() -> Callable[[str, dict[str, str]], None]:
    """A check that a study's stderr names the NOMAD its environment asked for."""

    def check(stderr: str, env: dict[str, str]) -> None:
        expected = f"NOMAD: {env['NOMAD_EXE']}" if "NOMAD_EXE" in env else "NOMAD: PyNomadBBO 4.6.0 (the NOMAD library)"
        assert expected in stderr

    return check


# ---------------------------------------------------------------------------------------------------------------
# Waiting for a state of a running process (never a fixed sleep)

WaitFor = Callable[..., None]


def poll(condition: Callable[[], bool], what: str, *, process: Any = None, timeout: float = 300) -> None:
    """Poll ``condition()`` every 0.1 s until it holds; fail when ``process`` (a ``Popen``, optional) ends first or
    after ``timeout`` seconds. The one way the tests wait for a state (never a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert process is None or process.poll() is None, f"the process ended while waiting for {what}"
        assert time.monotonic() < deadline, f"timed out after {timeout:g} s waiting for {what}"
        time.sleep(0.1)


@pytest.fixture(scope="session")
def wait_for() -> WaitFor:
    """``wait_for(condition, process, "what", timeout=300)``: :func:`poll` as a fixture (``process`` may be None)."""

    def wait(condition: Callable[[], bool], process: Any, what: str, timeout: float = 300) -> None:
        poll(condition, what, process=process, timeout=timeout)

    return wait


@pytest.fixture(scope="session")
def training_started() -> Callable[..., bool]:
    """``training_started(records_dir, not_in=set())``: whether an evaluation (whose run folder is not among
    ``not_in``) has logged a training step."""

    def started(records_dir: Path, not_in: set[str] | frozenset[str] = frozenset()) -> bool:
        logs = [p for p in (records_dir / "evals").glob("*/eval.log") if p.parent.name not in not_in]
        return any("step " in log.read_text() for log in logs)

    return started


# ---------------------------------------------------------------------------------------------------------------
# A real Ray cluster on 127.0.0.1, in a network namespace with nothing but loopback (``unshare -n``): the
# cluster and the blackbox provably talk to no other address.

_RAY_SCENARIO = """
import json, os, signal, subprocess, sys, time
from pathlib import Path
import psutil

tmp, calls = Path(sys.argv[1]), json.loads(sys.argv[2])
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
base_env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "TMPDIR": str(tmp)}
ray = str(Path(sys.executable).parent / "ray")
subprocess.run([ray, "start", "--head", "--node-ip-address=127.0.0.1", "--port=6399", "--num-cpus=2",
                "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={tmp}/ray"],
               check=True, env=base_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
results = []
try:
    for spec in calls:
        command = [*spec["command"], "--backend", "ray", "--ray-address", "127.0.0.1:6399", spec["points"]]
        call = subprocess.Popen(command, env={**base_env, **spec["env"]}, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        killed = None
        while spec["kill"] and killed is None and call.poll() is None:
            for log in (tmp / "lora-blackbox-ray").glob("*/evals/*/eval.log"):
                if "step " in log.read_text():
                    point_file = str(log.parent.parent.parent / "point.txt")
                    for p in psutil.process_iter():
                        try:
                            if point_file in p.cmdline():
                                killed = p.parent().pid  # the Ray worker running the task
                                os.kill(killed, signal.SIGKILL)
                        except psutil.Error:
                            pass
            time.sleep(0.2)
        out, err = call.communicate(timeout=600)
        results.append({"rc": call.returncode, "stdout": out.decode(), "stderr": err.decode()[-5000:],
                        "killed": killed})
finally:
    subprocess.run([ray, "stop", "--force"], env=base_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
(tmp / "results.json").write_text(json.dumps(results))
"""


@pytest.fixture(scope="session")
def ray_calls(blackbox_cmd: list[str], repo: Path) -> Callable[..., list[dict]]:
    """``ray_calls([{"args": [...], "points": PATH, "kill": False, "env": {}}, ...])``: start a Ray cluster in a
    loopback-only network namespace, run each ``lora-blackbox ARGS --backend ray POINTS`` on it (``kill``: kill
    the Ray worker once its evaluation trains), stop the cluster; one result (rc, stdout, stderr, killed) each.
    ``cluster_env`` reaches the cluster's processes, the workers included (e.g. PYTHONPATH)."""
    import json
    import tempfile
    import textwrap

    def run(calls: list[dict], cluster_env: dict[str, str] | None = None) -> list[dict]:
        if shutil.which("unshare") is None:
            pytest.skip("needs unshare (util-linux) for a loopback-only network namespace")
        probe = subprocess.run(["unshare", "-n", "true"], capture_output=True, check=False, timeout=600)
        if probe.returncode != 0:
            pytest.skip(f"cannot make a network namespace here: {probe.stderr.decode().strip()}")
        tmp = Path(tempfile.mkdtemp(prefix="lbxray", dir="/tmp"))  # Ray's unix sockets need a short path
        specs = [
            {"command": [*blackbox_cmd, *c["args"]], "points": str(c["points"]), "kill": c.get("kill", False),
             "env": c.get("env", {})}
            for c in calls
        ]  # fmt: skip
        try:
            subprocess.run(
                ["unshare", "-n", sys.executable, "-c", textwrap.dedent(_RAY_SCENARIO), str(tmp), json.dumps(specs)],
                check=True,
                timeout=900,
                cwd=repo,
                env={**os.environ, "PYTHONPATH": str(repo), **(cluster_env or {})},
            )
            results: list[dict] = json.loads((tmp / "results.json").read_text())
            return results
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    return run


# ---------------------------------------------------------------------------------------------------------------
# A container engine and the project's image (``make image``; ``$LORA_BLACKBOX_TEST_IMAGE``): without them the
# tests that need them skip, unless ``LORA_BLACKBOX_REQUIRE_DOCKER=1`` (CI) makes them fail.

IMAGE = os.environ.get("LORA_BLACKBOX_TEST_IMAGE", "lora-blackbox:latest")
REQUIRED = os.environ.get("LORA_BLACKBOX_REQUIRE_DOCKER") == "1"


def _unavailable(reason: str) -> None:
    if REQUIRED:
        pytest.fail(f"{reason} (LORA_BLACKBOX_REQUIRE_DOCKER=1)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def engine() -> docker.DockerClient:
    import docker

    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as e:
        where = os.environ.get("DOCKER_HOST", "the default socket")
        _unavailable(f"no Docker engine reachable at {where}: {e}")
    return client


@pytest.fixture(scope="session")
def image(engine: docker.DockerClient) -> str:
    import docker

    try:
        engine.images.get(IMAGE)
    except docker.errors.ImageNotFound:
        _unavailable(f"no image {IMAGE} on the engine: build it with `make image` (or set LORA_BLACKBOX_TEST_IMAGE)")
    return IMAGE


def _runner_containers(engine: docker.DockerClient) -> list[Any]:
    return engine.containers.list(all=True, filters={"label": LABEL})


@pytest.fixture
def no_leftovers(engine: docker.DockerClient) -> Iterator[None]:
    assert _runner_containers(engine) == [], "a container of the runner exists before the test"
    volumes = {v.id for v in engine.volumes.list()}
    yield
    left = _runner_containers(engine)
    for container in left:
        container.remove(force=True, v=True)
    assert left == [], "the runner left a container behind"
    assert {v.id for v in engine.volumes.list()} <= volumes, "the runner left a volume behind"
