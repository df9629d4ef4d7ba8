"""One blackbox call in a container, through any Docker-API engine: ``lora-blackbox container``.

The runner is NOMAD's BB_EXE when the blackbox runs in an image (``lora-blackbox params --container
IMAGE``). It plans the call on the host (:func:`plan_call`: no engine needed), then runs it and records every
point (:func:`run_settled`: Docker, or podman's API service through ``DOCKER_HOST``).

Same paths inside and out. Every host path the call needs is bind-mounted at the same path, and the
container works in the runner's working directory, so the experiment and its overrides pass unchanged
and the records name host paths:

- the point file, the experiment file, the files and folders the experiment names (model folder, data
  files) and ``--mount`` paths: read-only;
- the records folder (the experiment's ``records.dir``; under ``run_nomad.sh`` the study folder):
  read-write, so ``run_dir`` and ``point_file`` in the records are paths on the host;
- the caches ``$HF_HOME`` (hub downloads, token) and ``$LORA_BLACKBOX_CACHE`` (tokenised data, converted
  models), as the host configures them: read-write.

In a record, ``host`` is the container's hostname (its short id) and ``pid`` the process id inside it.
The root file system is read-only; ``/tmp`` is a fresh tmpfs and ``HOME``. The container runs as the
host's user (``--user`` to change), so that it can write the mounted folders and its files belong to
that user. Every container the runner creates carries the label :data:`LABEL` and is removed at the
end, whatever happened: ``docker ps -a --filter label=lora-blackbox.runner`` lists leftovers of a
runner that was itself killed (SIGKILL cannot be caught).
"""

from __future__ import annotations

import logging
import math
import os
import secrets
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Literal

from blackbox._version import __version__
from blackbox.core.errors import ConfigError, SetupError
from blackbox.core.experiment import Experiment
from blackbox.core.failures import Call, container_returncode, not_run_reason
from blackbox.core.record import record_not_run
from blackbox.runners import settle

if TYPE_CHECKING:
    import docker

logger = logging.getLogger(__name__)

LABEL = "lora-blackbox.runner"
"""Label of every container the runner creates (its value is the runner's version)."""
STOP_GRACE_S = 10.0
"""Seconds between the stop signal (SIGINT: the blackbox records the evaluation as INTERRUPTED) and SIGKILL."""
PASSED_ENV = (
    "HF_TOKEN",
    "HF_ENDPOINT",
    "HF_HUB_OFFLINE",
    "HF_DATASETS_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "TOKENIZERS_PARALLELISM",
    "LORA_BLACKBOX_QUIET",
    "LORA_BLACKBOX_STOP_FILE",  # a study's stop request (blackbox.core.stopping): the file is in the records folder
    # MLflow tracking (blackbox.tracking): the server (a 127.0.0.1 URI is the container's own), its credentials,
    # and the study's parent run.
    "MLFLOW_TRACKING_URI",
    "MLFLOW_TRACKING_TOKEN",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_EXPERIMENT_NAME",
    "LORA_BLACKBOX_MLFLOW_PARENT_RUN_ID",
    "LORA_BLACKBOX_SOLVER",
)
"""Host variables that reach the container when set (the caches are mounted and set separately)."""
# A bind mount at or above these would hide the image's system or Python installation.
_PROTECTED = ("/bin", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/opt/conda", "/proc", "/sbin", "/sys", "/usr")

Pull = Literal["missing", "always", "never"]
Ended = Literal["exited", "killed", "timeout", "interrupted"]
Sink = Callable[[bytes], None]


@dataclass(frozen=True)
class Gpus:
    """GPUs to request: ``count`` -1 for all, 0 for none; or ``device_ids``."""

    count: int = 0
    device_ids: tuple[str, ...] = ()

    @property
    def wanted(self) -> bool:
        return bool(self.count or self.device_ids)

    def __str__(self) -> str:
        if self.device_ids:
            return "device=" + ",".join(self.device_ids)
        return {-1: "all", 0: "none"}.get(self.count, str(self.count))


def parse_gpus(text: str, *, host_has_gpu: bool | None = None) -> Gpus:
    """``auto`` (all when this machine has an NVIDIA GPU, else none), ``all``, ``none``, a count ``N``,
    or ``device=ID[,ID...]`` (indices or UUIDs), as ``docker run --gpus`` reads them.

    Raises:
        ConfigError: another form.
    """
    text = text.strip()
    if text == "auto":
        return Gpus(count=-1 if (host_has_gpu if host_has_gpu is not None else _host_has_gpu()) else 0)
    if text in ("all", "none"):
        return Gpus(count=-1 if text == "all" else 0)
    if text.isdigit():
        return Gpus(count=int(text))
    if text.startswith("device="):
        ids = tuple(i.strip() for i in text.removeprefix("device=").split(",") if i.strip())
        if ids:
            return Gpus(device_ids=ids)
    raise ConfigError(f"--gpus takes auto, all, none, a count N or device=ID[,ID...], got {text!r}")


def _host_has_gpu() -> bool:
    # The NVIDIA driver's device files; what a Docker engine on this machine could hand to a container.
    return any(Path("/dev").glob("nvidia[0-9]*"))


@dataclass(frozen=True)
class Bind:
    """A host path mounted at the same path in the container."""

    path: str
    read_only: bool = True


@dataclass(frozen=True)
class CallSpec:
    """Everything about one containerised call, decided on the host. Build it with :func:`plan_call`."""

    image: str
    arguments: tuple[str, ...]  # after the image's ENTRYPOINT (lora-blackbox eval)
    binds: tuple[Bind, ...]
    environment: dict[str, str]
    working_dir: str
    user: str
    gpus: Gpus = Gpus()
    offline: bool = False
    labels: dict[str, str] = field(default_factory=dict)


def plan_call(
    *,
    image: str,
    experiment_ref: str,
    experiment: Experiment,
    overrides: tuple[str, ...],
    point_file: Path,
    mounts: tuple[Path, ...] = (),
    gpus: Gpus = Gpus(),
    offline: bool = False,
    user: str | None = None,
    env: dict[str, str] | None = None,
    quiet: bool = False,
) -> CallSpec:
    """Plan the call: mounts, environment, user and arguments. Creates the records folder and the caches.

    Args:
        experiment_ref: the experiment as given (a shipped name or a file), passed on unchanged.
        experiment: the same, loaded with the overrides: which paths it names, where records go.
        point_file: the optimizer's point file (relative to the working directory or absolute).
        mounts: more host paths to mount read-only.
        user: ``UID[:GID]`` in the container; default the runner's own.
        env: more variables for the container (see :func:`parse_env`).

    Raises:
        SetupError: the point file or a mount is missing, or a path would hide the image's system.
    """
    point = _absolute(point_file)
    if not os.path.isfile(point):
        raise SetupError(f"cannot read the point file {point_file}: no such file")
    records = _absolute(experiment.records_dir)
    caches = {"HF_HOME": _hf_home(), "LORA_BLACKBOX_CACHE": _lora_blackbox_cache()}
    for folder in (records, *caches.values()):
        Path(folder).mkdir(parents=True, exist_ok=True)
    binds = [Bind(point), Bind(records, read_only=False), *(Bind(c, read_only=False) for c in caches.values())]
    if os.path.isfile(experiment_ref):
        binds.append(Bind(_absolute(Path(experiment_ref))))
    binds += [Bind(p) for p in named_paths(experiment)]
    for mount in mounts:
        if not os.path.exists(mount):
            raise SetupError(f"--mount {mount}: no such file or folder")
        binds.append(Bind(_absolute(mount)))
    environment = {name: os.environ[name] for name in PASSED_ENV if name in os.environ}
    environment.update(caches)
    environment["HOME"] = "/tmp"
    if quiet:
        environment["LORA_BLACKBOX_QUIET"] = "1"
    if offline:
        environment.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    environment.update(env or {})
    arguments = ["--experiment", experiment_ref]
    for item in overrides:
        arguments += ["--set", item]
    return CallSpec(
        image=image,
        arguments=(*arguments, point),
        binds=_merge(binds),
        environment=environment,
        working_dir=os.getcwd(),
        user=user or f"{os.getuid()}:{os.getgid()}",
        gpus=gpus,
        offline=offline,
        labels={LABEL: __version__, f"{LABEL}.point-file": point, f"{LABEL}.pid": str(os.getpid())},
    )


def named_paths(experiment: Experiment) -> list[str]:
    """Existing host files and folders the experiment names: its model folder and data files.

    Hub ids and ``embedded:`` names name nothing here; relative paths are relative to the working
    directory, as for ``lora-blackbox eval``.
    """
    names = [experiment.model.name_or_path, *experiment.data.train, *experiment.data.validation]
    return [_absolute(Path(n).expanduser()) for n in names if n and Path(n).expanduser().exists()]


def _absolute(path: Path) -> str:
    # Normalised, symbolic links kept: the container sees the path the user named.
    return os.path.abspath(path)


def _hf_home() -> str:
    configured = os.environ.get("HF_HOME")
    if configured:
        return _absolute(Path(configured).expanduser())
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return _absolute(Path(base) / "huggingface")


def _lora_blackbox_cache() -> str:
    from blackbox.core.cache import cache_root

    return _absolute(cache_root())


def parse_env(items: tuple[str, ...]) -> dict[str, str]:
    """``NAME=VALUE`` items, or ``NAME`` for the host's value (left out when unset, as docker run does).

    Raises:
        ConfigError: an item without a name, or with spaces in it.
    """
    environment = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not name or any(c.isspace() for c in name):
            raise ConfigError(f"--env takes NAME=VALUE or NAME, got {item!r}")
        if not sep:
            if name not in os.environ:
                continue  # like docker run --env NAME: an unset variable is left out
            value = os.environ[name]
        environment[name] = value
    return environment


def _merge(binds: list[Bind]) -> tuple[Bind, ...]:
    """One bind per path (read-write wins); refuse paths that would hide the image's own files."""
    merged: dict[str, Bind] = {}
    for bind in binds:
        if any(
            bind.path == p or p.startswith(bind.path.rstrip("/") + "/") or bind.path.startswith(p + "/")
            for p in _PROTECTED
        ):
            raise SetupError(
                f"{bind.path} cannot be mounted at the same path in the container: it would hide the image's "
                "system files; move it elsewhere"
            )
        known = merged.get(bind.path)
        if known is None or known.read_only:
            merged[bind.path] = bind
    return tuple(sorted(merged.values(), key=lambda b: b.path))


# ---------------------------------------------------------------------------------------------------------------
# Running the call


@dataclass(frozen=True)
class ContainerEnd:
    """How a call ended.

    ``ended``: ``exited`` (on its own), ``killed`` (SIGKILL from outside, e.g. the kernel's OOM killer),
    ``timeout`` (stopped at the wall-clock limit), ``interrupted`` (the runner got SIGINT or SIGTERM).
    ``status``: the container's exit status, None when it never ran.
    """

    ended: Ended
    status: int | None
    oom_killed: bool = False


def run_call(
    spec: CallSpec, *, timeout_s: float = 0.0, pull: Pull = "missing", stdout: Sink, stderr: Sink
) -> ContainerEnd:
    """Run the call: pull the image when needed, create and start the container, relay its output, wait for
    it within the time limit, and remove it, whatever happens.

    The container's stdout goes to ``stdout`` byte for byte, its stderr to ``stderr``, as they come.
    SIGINT or SIGTERM to this process, or the time limit, stop the container with SIGINT; after
    :data:`STOP_GRACE_S` (or at a second signal) it is killed.

    Raises:
        SetupError: no engine is reachable, the image is missing and cannot be pulled, or the engine
            refuses the container.
    """
    import docker

    client = _connect()
    with _Signals() as signals:
        try:
            _ensure_image(client.api, spec.image, pull, signals)
        except _Interrupted:
            return ContainerEnd("interrupted", None)
        if signals.count:
            return ContainerEnd("interrupted", None)  # before a container exists: nothing to stop
        name = f"lora-blackbox-{secrets.token_hex(6)}"
        try:
            _create(client, spec, name)
            if spec.gpus.wanted and _is_podman(client):
                logger.warning(
                    "GPUs (%s) requested from podman's Docker API, which may ignore them (podman 4.3 does): "
                    "check the device in the records",
                    spec.gpus,
                )
            stream = client.api.attach(name, stdout=True, stderr=True, stream=True, logs=True, demux=True)
            relay = _Relay(stream, stdout, stderr)
            relay.start()
            client.api.start(name)
            logger.debug("container %s started", name)
            ended: Ended = _supervise(client.api, name, relay, timeout_s, signals)
            state = client.api.inspect_container(name)["State"]
            if relay.error is not None:
                raise SetupError(f"the container's output was lost: {relay.error}") from relay.error
            status = int(state["ExitCode"])
            oom = bool(state.get("OOMKilled"))
            if ended == "exited" and (status == 128 + signal.SIGKILL or oom):
                ended = "killed"
            return ContainerEnd(ended, status, oom)
        except docker.errors.DockerException as e:
            raise SetupError(f"the engine failed to run {spec.image}: {_explain(e)}") from e
        finally:
            _remove(client.api, name)


def _connect() -> docker.DockerClient:
    import docker

    try:
        return docker.from_env()
    except docker.errors.DockerException as e:
        where = os.environ.get("DOCKER_HOST") or "the default socket (unix:///var/run/docker.sock)"
        raise SetupError(
            f"no Docker engine reachable at {where} ({_explain(e)}): start Docker, or podman's API service "
            "(podman system service --time=0 unix:///PATH/podman.sock &) and set DOCKER_HOST=unix:///PATH/podman.sock"
        ) from e


def _explain(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def _is_podman(client: docker.DockerClient) -> bool:
    components = client.version().get("Components") or []
    return any("podman" in str(c.get("Name", "")).lower() for c in components)


class _Interrupted(Exception):
    """SIGINT or SIGTERM arrived before the container was created."""


def _ensure_image(api: docker.APIClient, image: str, pull: Pull, signals: _Signals) -> None:
    import docker

    present = True
    try:
        api.inspect_image(image)
    except docker.errors.ImageNotFound:
        present = False
    except docker.errors.DockerException as e:
        raise SetupError(f"cannot look up the image {image}: {_explain(e)}") from e
    if present and pull != "always":
        return
    if not present and pull == "never":
        raise SetupError(f"no image {image} on the engine, and --pull never: build it (make image) or pull it first")
    repository, tag = docker.utils.parse_repository_tag(image)
    logger.info("pulling %s", image)
    try:
        for chunk in api.pull(repository, tag=tag or "latest", stream=True, decode=True):
            if signals.count:
                raise _Interrupted
            if isinstance(chunk, dict) and chunk.get("error"):
                raise SetupError(f"no image {image} on the engine, and pulling it failed: {chunk['error']}")
        api.inspect_image(image)
    except docker.errors.DockerException as e:
        raise SetupError(f"no image {image} on the engine, and pulling it failed: {_explain(e)}") from e


def _create(client: docker.DockerClient, spec: CallSpec, name: str) -> None:
    from docker.types import Mount

    api = client.api
    mounts = [Mount(target=b.path, source=b.path, type="bind", read_only=b.read_only) for b in spec.binds]
    tmpfs = {} if any(b.path == "/tmp" for b in spec.binds) else {"/tmp": "rw,nosuid,nodev,mode=1777"}
    host_config = api.create_host_config(
        mounts=mounts,
        read_only=True,
        tmpfs=tmpfs,
        network_mode="none" if spec.offline else None,
        device_requests=device_requests(spec.gpus) or None,
    )
    api.create_container(
        spec.image,
        command=list(spec.arguments),
        name=name,
        user=spec.user,
        working_dir=spec.working_dir,
        environment=spec.environment,
        labels=spec.labels,
        host_config=host_config,
        stop_signal="SIGINT",
        tty=False,
        stdin_open=False,
    )


def device_requests(gpus: Gpus) -> list[docker.types.DeviceRequest]:
    """The Docker API's request for ``gpus`` (what ``docker run --gpus`` sends); empty for none."""
    from docker.types import DeviceRequest

    if gpus.device_ids:
        return [DeviceRequest(device_ids=list(gpus.device_ids), capabilities=[["gpu"]])]
    if gpus.count:
        return [DeviceRequest(count=gpus.count, capabilities=[["gpu"]])]
    return []


class _Relay(threading.Thread):
    """Copies the container's stdout and stderr to the sinks as the engine sends them."""

    def __init__(self, stream: Iterator[tuple[bytes | None, bytes | None]], stdout: Sink, stderr: Sink) -> None:
        super().__init__(name="container-output", daemon=True)
        self.stream = stream
        self.stdout = stdout
        self.stderr = stderr
        self.error: Exception | None = None

    def run(self) -> None:
        try:
            for out, err in self.stream:
                if out:
                    self.stdout(out)
                if err:
                    self.stderr(err)
        # Any failure (the engine's connection, a closed stdout) is handed to the main thread, which
        # stops the container and reports it.
        except Exception as e:  # noqa: BLE001
            self.error = e


def _supervise(
    api: docker.APIClient, name: str, relay: _Relay, timeout_s: float, signals: _Signals
) -> Literal["exited", "timeout", "interrupted"]:
    """Wait for the container's end (its output stream closes); stop it at the time limit or a signal."""
    deadline = time.monotonic() + timeout_s if timeout_s > 0 else math.inf
    ended: Literal["exited", "timeout", "interrupted"] = "exited"
    stop_sent = killed = False
    stop_time, signals_at_stop = 0.0, 0
    while relay.is_alive():
        relay.join(0.1)
        now = time.monotonic()
        if not stop_sent:
            if signals.count:
                ended = "interrupted"
                logger.error("%s: stopping the container (again to kill it)", signals.last)
            elif now >= deadline:
                ended = "timeout"
                logger.error("no result within the time limit of %g s: stopping the container", timeout_s)
            else:
                continue
            _signal_container(api, name, "SIGINT")
            stop_sent, stop_time, signals_at_stop = True, now, signals.count
        elif not killed and (now - stop_time > STOP_GRACE_S or signals.count > signals_at_stop):
            logger.error("the container did not stop: killing it")
            _signal_container(api, name, "SIGKILL")
            killed = True
    if relay.error is not None:
        _signal_container(api, name, "SIGKILL")  # its output has nowhere to go
    api.wait(name)
    return ended


def _signal_container(api: docker.APIClient, name: str, signum: str) -> None:
    import docker

    try:
        api.kill(name, signal=signum)
    except docker.errors.APIError as e:  # it ended meanwhile
        logger.debug("%s to %s: %s", signum, name, e)


def _remove(api: docker.APIClient, name: str) -> None:
    import docker

    try:
        api.remove_container(name, force=True, v=True)  # v: the image's anonymous volumes too
    except docker.errors.NotFound:
        pass  # never created
    except docker.errors.DockerException as e:
        logger.error("could not remove the container %s (%s): remove it with docker rm -f %s", name, _explain(e), name)


class _Signals:
    """While active, SIGINT and SIGTERM are counted instead of raising, so that no signal can cut the runner
    between creating a container and removing it."""

    def __init__(self) -> None:
        self.count = 0
        self.last = ""
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1
        self.last = signal.Signals(signum).name

    def __enter__(self) -> _Signals:
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)


def run_settled(
    spec: CallSpec,
    experiment: Experiment,
    lines: list[str],
    point_file: str,
    *,
    timeout_s: float = 0.0,
    pull: Pull = "missing",
    stdout: Sink,
    stderr: Sink,
) -> ContainerEnd:
    """:func:`run_call`, then give every point of the call exactly one record: the evaluation in the container
    wrote its own (the records folder is mounted); a point it did not record (the container was killed, timed
    out, or was stopped before the point) gets one here (``runners.settle``), and when no container could run
    (no engine, no image) every point is NOT_RUN. The call's exit status stays the container's
    (``failures.call_of_container``).

    Raises:
        SetupError: as :func:`run_call` (the points are recorded first).
    """
    try:
        end = run_call(spec, timeout_s=timeout_s, pull=pull, stdout=stdout, stderr=stderr)
    except SetupError as e:  # nothing ran
        record_not_run(experiment, lines, point_file, reason=not_run_reason(Call.FAILS, str(e)))
        raise
    returncode = container_returncode(end.ended, end.status)
    for block_index, line in enumerate(lines):
        if line.strip():
            settle(experiment, line=line, point_file=point_file, block_index=block_index, returncode=returncode)
    return end
