"""The blackbox itself: ``eval`` (NOMAD's BB_EXE), ``decode`` (what a point means) and ``params`` (a NOMAD
parameter file for an experiment)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Literal

import click

from blackbox.cli.options import backend_option, experiment_options, number_option
from blackbox.cli.protocol import end, exit_on_error, install_signal_handlers, protocol_stdout
from blackbox.core.errors import PointError
from blackbox.core.experiment import experiment_reference, load_experiment
from blackbox.core.failures import call_of_decode

logger = logging.getLogger("blackbox")


@click.command("eval")
@experiment_options
@number_option(
    "--workers", default=1, help="Evaluations of a block at once on this machine, each on its own leased GPU(s)."
)
@number_option(
    "--gpus-per-eval",
    default=1,
    help="GPUs per evaluation: data-parallel over torchrun ranks (on a CPU host: gloo processes).",
)
@backend_option("Run the points here, or as tasks on a Ray cluster.")
@click.option(
    "--ray-address",
    envvar="RAY_ADDRESS",
    default="auto",
    show_default=True,
    help="The Ray cluster to use with --backend ray (or $RAY_ADDRESS).",
)
@click.argument("point_file", type=click.Path(path_type=Path))
@click.pass_context
def eval_command(
    ctx: click.Context,
    experiment_ref: str,
    overrides: tuple[str, ...],
    workers: int,
    gpus_per_eval: int,
    backend: Literal["local", "ray"],
    ray_address: str,
    point_file: Path,
) -> None:
    """Evaluate every point of POINT_FILE: one output line per non-blank line, in order.

    POINT_FILE is written by the optimizer (NOMAD passes it as the last argument). By default the points
    run one after the other in this process (one model load); --workers, --gpus-per-eval and --backend
    spread them over GPUs, processes or a Ray cluster.
    """
    from blackbox.core.point import read_point_lines
    from blackbox.runners.call import Spread, answer_call
    from blackbox.studies.pruning import judge_from_env

    with exit_on_error(ctx), protocol_stdout() as emit:
        experiment = load_experiment(experiment_ref, overrides)
        lines = read_point_lines(point_file)
        install_signal_handlers()
        spread = Spread(experiment_ref, overrides, workers, gpus_per_eval, backend, ray_address)
        judge = judge_from_env(experiment)  # an Optuna trial's pruner, when an Optuna study started this call
        answer = answer_call(experiment, lines, str(point_file.resolve()), spread, judge=judge)
        for line in answer.lines:
            emit(line + "\n")
    end(answer.call, answer.error)


@click.command("decode")
@experiment_options
@click.argument("point_file", type=click.Path(path_type=Path), required=False)
@click.pass_context
def decode_command(
    ctx: click.Context, experiment_ref: str, overrides: tuple[str, ...], point_file: Path | None
) -> None:
    """Print the hyperparameters and settings of every point of POINT_FILE, one JSON object per line (no training).

    Without POINT_FILE: of X0 (each starting point), of the lower bounds and of the upper bounds (named on stderr).
    An invalid point prints {"error": ...}, and the exit status is then 1.
    """
    from blackbox.core.point import format_point, parse_point, read_point_lines, shorten
    from blackbox.core.space import SearchSpace

    with exit_on_error(ctx):
        experiment = load_experiment(experiment_ref, overrides)
        space = SearchSpace.from_experiment(experiment)
        logger.info("objective: %s", experiment.objective.describe())
        if point_file is None:
            starts = space.starting_points
            landmarks = {f"X0 {i}" if len(starts) > 1 else "X0": p for i, p in enumerate(starts, start=1)}
            landmarks |= {"lower bounds": space.lower, "upper bounds": space.upper}
            lines = [(f"{name} ({format_point(point)})", format_point(point)) for name, point in landmarks.items()]
        else:
            lines = [(f"line {i + 1}", line) for i, line in enumerate(read_point_lines(point_file)) if line.strip()]
        invalid = 0
        for label, line in lines:
            try:
                hparams = space.decode(parse_point(line))
            except PointError as e:
                invalid += 1
                logger.error("%s (%s) is invalid: %s", label, shorten(repr(line.strip())), e)
                click.echo(json.dumps({"error": str(e)}))
            else:
                if point_file is None:
                    logger.info("%s:", label)
                click.echo(json.dumps(hparams.as_dict()))
        ctx.exit(call_of_decode(invalid_lines=invalid).exit_status)


@click.command("params")
@experiment_options
@click.option("--out", type=click.Path(path_type=Path), help="Write to this file instead of stdout.")
@click.option("--container", metavar="IMAGE", help="BB_EXE runs each evaluation in this container image.")
@number_option(
    "--block-size",
    default=1,
    help="Points per blackbox call (BB_MAX_BLOCK_SIZE); above 1, MEGA_SEARCH_POLL fills blocks.",
)
@number_option(
    "--parallel",
    default=1,
    help="Evaluations at once: blocks of this size, spread over the machine's GPUs (eval --workers).",
)
@backend_option("ray: BB_EXE runs the points of a block as tasks on a Ray cluster.")
@click.option(
    "--surrogate-fidelity",
    type=click.FloatRange(min=0, max=1, min_open=True, max_open=True),
    help="Add a SURROGATE_EXE: the same evaluation at this fraction of the training steps and validation set.",
)
@click.pass_context
def params_command(
    ctx: click.Context,
    experiment_ref: str,
    overrides: tuple[str, ...],
    out: Path | None,
    container: str | None,
    block_size: int,
    parallel: int,
    backend: str,
    surrogate_fidelity: float | None,
) -> None:
    """Write a NOMAD parameter file for the experiment's study (search space, budget, BB_EXE, files)."""
    from blackbox.core.nomad import render_params

    with exit_on_error(ctx):
        experiment = load_experiment(experiment_ref, overrides)
        text = render_params(
            experiment,
            experiment_ref=experiment_reference(experiment_ref),  # BB_EXE finds it from any folder
            overrides=overrides,
            container=container,
            block_size=block_size,
            surrogate_fidelity=surrogate_fidelity,
            parallel=parallel,
            backend=backend,
        )
        if out is None:
            click.echo(text, nl=False)
        else:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(text)
            logger.info("wrote %s", out)
