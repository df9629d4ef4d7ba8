"""``container``: one blackbox call in a container, NOMAD's BB_EXE for an image."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import click

from blackbox.cli.options import experiment_options
from blackbox.cli.protocol import exit_on_error, protocol_stdout, write_stderr
from blackbox.core.errors import ConfigError
from blackbox.core.experiment import load_experiment
from blackbox.core.failures import Call

if TYPE_CHECKING:
    from blackbox.runners.container import Gpus

logger = logging.getLogger("blackbox")


@click.command("container")
@experiment_options
@click.option(
    "--image",
    required=True,
    envvar="LORA_BLACKBOX_IMAGE",
    metavar="IMAGE",
    help="The lora-blackbox image (built from the project's Dockerfile), e.g. lora-blackbox:latest.",
)
@click.option(
    "--gpus",
    default="auto",
    show_default=True,
    envvar="LORA_BLACKBOX_GPUS",
    metavar="auto|all|none|N|device=ID,..",
    callback=lambda ctx, param, value: _container_value("parse_gpus", value),
    help="GPUs for the container; auto: all when this machine has an NVIDIA GPU, else none.",
)
@click.option(
    "--mount",
    "mounts",
    multiple=True,
    envvar="LORA_BLACKBOX_MOUNTS",
    type=click.Path(path_type=Path),
    metavar="PATH",
    help="Also mount this host path, read-only, at the same path (repeatable). The point file, the experiment "
    "file, its model folder and data files, the records folder and the caches are mounted anyway.",
)
@click.option(
    "--env",
    multiple=True,
    metavar="NAME[=VALUE]",
    callback=lambda ctx, param, value: _container_value("parse_env", value),
    help="Set a variable in the container (NAME alone: the host's value); repeatable.",
)
@click.option(
    "--offline",
    is_flag=True,
    envvar="LORA_BLACKBOX_OFFLINE",
    help="No network in the container (HF_HUB_OFFLINE=1): models and data from mounted folders or caches.",
)
@click.option(
    "--timeout",
    "timeout_s",
    type=click.FloatRange(min=0),
    default=0,
    envvar="LORA_BLACKBOX_TIMEOUT",
    metavar="SECONDS",
    help="Wall-clock limit of the call; then the container is stopped and the exit status is 124. 0: none.",
)
@click.option(
    "--pull",
    type=click.Choice(["missing", "always", "never"]),
    default="missing",
    show_default=True,
    envvar="LORA_BLACKBOX_PULL",
    help="When to pull the image from its registry.",
)
@click.option(
    "--user",
    envvar="LORA_BLACKBOX_USER",
    metavar="UID[:GID]",
    help="User in the container; default: yours, so that it can write the mounted folders.",
)
@click.argument("point_file", type=click.Path(path_type=Path))
@click.pass_context
def container_command(
    ctx: click.Context,
    experiment_ref: str,
    overrides: tuple[str, ...],
    image: str,
    gpus: Gpus,
    mounts: tuple[Path, ...],
    env: dict[str, str],
    offline: bool,
    timeout_s: float,
    pull: Literal["missing", "always", "never"],
    user: str | None,
    point_file: Path,
) -> None:
    """Run one blackbox call (lora-blackbox eval) in a container: NOMAD's BB_EXE for an image.

    Talks to any Docker-API engine: Docker, or podman's API service through DOCKER_HOST. Host paths are
    mounted at the same paths, the records folder and the caches ($HF_HOME, $LORA_BLACKBOX_CACHE)
    read-write, so records land on the host. The container's stdout is relayed byte for byte and its
    exit status becomes this command's; 124: time limit reached; 130: interrupted (SIGINT or SIGTERM
    stop the container with SIGINT, then kill it); 1: no engine, or no image.
    """
    from blackbox.core.failures import call_of_container
    from blackbox.core.point import read_point_lines
    from blackbox.core.stopping import stop_requested
    from blackbox.runners.call import declined
    from blackbox.runners.container import plan_call, run_settled

    with exit_on_error(ctx), protocol_stdout() as emit:
        experiment = load_experiment(experiment_ref, overrides)
        lines, where = read_point_lines(point_file), str(point_file.resolve())
        answer = declined(experiment, lines, where)  # no container is started for a stopping study
        if answer is not None:
            for line in answer.lines:
                emit(line + "\n")
            return
        spec = plan_call(
            image=image,
            experiment_ref=experiment_ref,
            experiment=experiment,
            overrides=overrides,
            point_file=point_file,
            mounts=mounts,
            gpus=gpus,
            offline=offline,
            user=user,
            env=env,
            quiet=ctx.obj.get("quiet", False),
        )
        outcome = run_settled(
            spec, experiment, lines, where, timeout_s=timeout_s, pull=pull, stdout=emit, stderr=write_stderr
        )
    call, status = call_of_container(outcome.ended, outcome.status, stopping=stop_requested())
    if outcome.ended == "killed":
        cause = "out of memory" if outcome.oom_killed else "SIGKILL from outside"
        logger.error("the container was killed (%s; exit status %d)", cause, status)
    elif call is Call.FAILS:
        logger.error("the blackbox in the container exited with status %d", status)
    ctx.exit(status)


def _container_value(parser: str, value: Any) -> Any:
    """An option of ``container`` parsed by blackbox.runners.container (imported only when that command runs)."""
    from blackbox.runners import container

    try:
        return getattr(container, parser)(value)
    except ConfigError as e:
        raise click.BadParameter("; ".join(e.problems)) from e
