"""The ``lora-blackbox`` command. The only module that sets up logging, writes stdout and picks exit codes.

Exit status: 0 whenever result lines were printed (a failed point is a ``nan`` line, not an exit
code: NOMAD fails every point of a call that exits non-zero); 1 when the call cannot proceed
(unreadable point file, missing model or data); 2 for a usage or experiment error; 130 when
interrupted.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Literal, NoReturn

import click

from blackbox import __version__
from blackbox.errors import BlackboxError, ConfigError, PointError, RankStopped, SetupError
from blackbox.experiment import ENV_EXPERIMENT, Experiment, experiment_reference, load_experiment

if TYPE_CHECKING:
    from blackbox.runners import Runner
    from blackbox.runners.container import Gpus

logger = logging.getLogger("blackbox")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks of errors.")
@click.option(
    "-q",
    "--quiet",
    is_flag=True,
    envvar="LORA_BLACKBOX_QUIET",
    help="Only warnings and errors on stderr (no progress).",
)
@click.version_option(__version__, prog_name="lora-blackbox")
@click.pass_context
def main(ctx: click.Context, debug: bool, quiet: bool) -> None:
    """LoRA fine-tuning + validation as a blackbox for NOMAD and other optimizers."""
    ctx.obj = {"debug": debug, "quiet": quiet}
    _setup_logging(quiet=quiet)
    # Packed batches of varying length fragment CUDA's caching allocator; expandable segments avoid
    # out-of-memory errors with gigabytes reserved but unusable. Set before CUDA starts; a user's value wins.
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")


def experiment_options(command: Callable[..., Any]) -> Callable[..., Any]:
    command = click.option(
        "--set",
        "overrides",
        multiple=True,
        metavar="KEY=VALUE",
        help="Override a key of the experiment (dotted path), e.g. --set training.max_steps=5.",
    )(command)
    return click.option(
        "-e",
        "--experiment",
        "experiment_ref",
        envvar=ENV_EXPERIMENT,
        required=True,
        metavar="EXP",
        help=f"Experiment TOML file or shipped experiment name (or ${ENV_EXPERIMENT}).",
    )(command)


@main.command("eval")
@experiment_options
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Evaluations of a block at once on this machine, each on its own leased GPU(s).",
)
@click.option(
    "--gpus-per-eval",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="GPUs per evaluation: data-parallel over torchrun ranks (on a CPU host: gloo processes).",
)
@click.option(
    "--backend",
    type=click.Choice(["local", "ray"]),
    default="local",
    show_default=True,
    help="Run the points here, or as tasks on a Ray cluster.",
)
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
    backend: str,
    ray_address: str,
    point_file: Path,
) -> None:
    """Evaluate every point of POINT_FILE: one output line per non-blank line, in order.

    POINT_FILE is written by the optimizer (NOMAD passes it as the last argument). By default the points
    run one after the other in this process (one model load); --workers, --gpus-per-eval and --backend
    spread them over GPUs, processes or a Ray cluster.
    """
    from blackbox.point import read_point_lines
    from blackbox.record import check_records_writable, record_not_run
    from blackbox.resume import answer_finished, finished_answers
    from blackbox.stopping import STOPPING, stop_requested

    with _exit_codes(ctx), protocol_stdout() as emit:
        experiment = load_experiment(experiment_ref, overrides)
        lines = read_point_lines(point_file)
        point_file = point_file.resolve()
        check_records_writable(experiment.records_dir.resolve())  # before anything is loaded or trained
        if stop_requested():  # before torch is imported: a stopping study is answered at once
            for output in record_not_run(experiment, lines, str(point_file), reason=STOPPING):
                emit(output + "\n")
            return
        # A resumed study's finished points are answered from their records (blackbox.resume); the others
        # are evaluated, in their places.
        answered = finished_answers(experiment, lines) if answer_finished() else {}
        if all(i in answered for i, line in enumerate(lines) if line.strip()):
            for index in sorted(answered):
                emit(answered[index] + "\n")
            return
        lines_left = ["" if i in answered else line for i, line in enumerate(lines)]

        from blackbox.api import Blackbox
        from blackbox.runners import block
        from blackbox.training import distributed  # local: imports torch

        blackbox = Blackbox(experiment)
        evaluator = blackbox.evaluator
        _install_signal_handlers()
        runner = _runner(experiment_ref, experiment, overrides, workers, gpus_per_eval, backend, ray_address)
        if runner is None:
            outputs: Iterable[str] = block.evaluate_here(evaluator, lines_left, str(point_file))
        else:
            outputs = block.evaluate_spread(evaluator, runner, lines_left, str(point_file))
        evaluated = iter(outputs)
        for index, line in enumerate(lines):
            if not line.strip():
                continue
            output = answered[index] if index in answered else next(evaluated)
            if evaluator.world.main:  # under torchrun, rank 0 alone answers
                emit(output + "\n")
        distributed.stop()


def _runner(
    experiment_ref: str,
    experiment: Experiment,
    overrides: tuple[str, ...],
    workers: int,
    gpus_per_eval: int,
    backend: str,
    ray_address: str,
) -> Runner | None:
    """The runner that spreads a block, or None to evaluate it in this process."""
    reference = experiment_reference(experiment_ref)  # evaluation processes have other working directories
    if backend == "ray":
        from blackbox.runners.ray_pool import RayRunner

        return RayRunner(reference, experiment, overrides, ray_address, gpus_per_eval=gpus_per_eval)
    if workers == 1 and gpus_per_eval == 1:
        return None
    from blackbox.runners.devices import discover, lease_dir
    from blackbox.runners.local import LocalRunner

    slots = discover(cpu_slots=workers * gpus_per_eval)
    return LocalRunner(reference, experiment, overrides, slots, workers, gpus_per_eval, lease_dir())


@main.command("decode")
@experiment_options
@click.argument("point_file", type=click.Path(path_type=Path), required=False)
@click.pass_context
def decode_command(
    ctx: click.Context, experiment_ref: str, overrides: tuple[str, ...], point_file: Path | None
) -> None:
    """Print the hyperparameters and settings of every point of POINT_FILE, one JSON object per line (no training).

    Without POINT_FILE: of X0, of the lower bounds and of the upper bounds (named on stderr).
    An invalid point prints {"error": ...}, and the exit status is then 1.
    """
    from blackbox.point import format_point, parse_point, read_point_lines, shorten
    from blackbox.space import SearchSpace

    with _exit_codes(ctx):
        experiment = load_experiment(experiment_ref, overrides)
        space = SearchSpace.from_experiment(experiment)
        logger.info("objective: %s", experiment.objective.describe())
        if point_file is None:
            landmarks = {"X0": space.x0, "lower bounds": space.lower, "upper bounds": space.upper}
            lines = [(f"{name} ({format_point(point)})", format_point(point)) for name, point in landmarks.items()]
        else:
            lines = [(f"line {i + 1}", line) for i, line in enumerate(read_point_lines(point_file)) if line.strip()]
        failed = False
        for label, line in lines:
            try:
                hparams = space.decode(parse_point(line))
            except PointError as e:
                failed = True
                logger.error("%s (%s) is invalid: %s", label, shorten(repr(line.strip())), e)
                click.echo(json.dumps({"error": str(e)}))
            else:
                if point_file is None:
                    logger.info("%s:", label)
                click.echo(json.dumps(hparams.as_dict()))
        if failed:
            ctx.exit(1)


@main.command("params")
@experiment_options
@click.option("--out", type=click.Path(path_type=Path), help="Write to this file instead of stdout.")
@click.option("--container", metavar="IMAGE", help="BB_EXE runs each evaluation in this container image.")
@click.option(
    "--block-size",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Points per blackbox call (BB_MAX_BLOCK_SIZE); above 1, MEGA_SEARCH_POLL fills blocks.",
)
@click.option(
    "--parallel",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Evaluations at once: blocks of this size, spread over the machine's GPUs (eval --workers).",
)
@click.option(
    "--backend",
    type=click.Choice(["local", "ray"]),
    default="local",
    show_default=True,
    help="ray: BB_EXE runs the points of a block as tasks on a Ray cluster.",
)
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
    from blackbox.nomad import render_params

    with _exit_codes(ctx):
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


@main.command("container")
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
    from blackbox.point import read_point_lines
    from blackbox.record import record_not_run
    from blackbox.runners.container import plan_call, run_call, settle_call
    from blackbox.stopping import STOPPING, stop_requested

    with _exit_codes(ctx), protocol_stdout() as emit:
        experiment = load_experiment(experiment_ref, overrides)
        lines, where = read_point_lines(point_file), str(point_file.resolve())
        if stop_requested():  # no container is started for a stopping study
            for output in record_not_run(experiment, lines, where, reason=STOPPING):
                emit(output + "\n")
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
        try:
            outcome = run_call(spec, timeout_s=timeout_s, pull=pull, stdout=emit, stderr=_write_stderr)
        except SetupError as e:  # no engine, no image: nothing ran
            record_not_run(experiment, lines, where, reason=f"not evaluated: the call failed: {e}")
            raise
        settle_call(experiment, lines, where, outcome)
    if outcome.ended == "timeout":
        ctx.exit(124)
    if outcome.ended == "interrupted" and not (stop_requested() and outcome.status == 0):
        ctx.exit(130)  # (a stopping study's container answered its cut point and ended normally: relayed below)
    status = outcome.status or 0
    if outcome.ended == "killed":
        cause = "out of memory" if outcome.oom_killed else "SIGKILL from outside"
        logger.error("the container was killed (%s; exit status %d)", cause, status)
    elif status:
        logger.error("the blackbox in the container exited with status %d", status)
    ctx.exit(status)


def _container_value(parser: str, value: Any) -> Any:
    """An option of ``container`` parsed by blackbox.runners.container (imported only when that command runs)."""
    from blackbox.runners import container

    try:
        return getattr(container, parser)(value)
    except ConfigError as e:
        raise click.BadParameter("; ".join(e.problems)) from e


@main.command("study")
@click.argument("param_file", type=click.Path(path_type=Path))
@click.option(
    "--dir",
    "study_dir",
    type=click.Path(path_type=Path),
    help="Study folder (default: runs/<PARAM_FILE name>). Rerun with the same folder to resume.",
)
@click.option(
    "--mlflow",
    "mlflow_uri",
    metavar="URI",
    help="Track the study in MLflow at this tracking URI (else $MLFLOW_TRACKING_URI, or the experiment's "
    "[tracking] mlflow = true): a parent run, and a nested run per evaluation.",
)
@click.pass_context
def study_command(ctx: click.Context, param_file: Path, study_dir: Path | None, mlflow_uri: str | None) -> None:
    """Run or resume the NOMAD study of PARAM_FILE in its own folder (what ./run_nomad.sh does).

    Uses the nomad executable ($NOMAD_EXE, or nomad on PATH), else the NOMAD library of PyNomadBBO.
    Ctrl-C stops after the running evaluations; twice cuts them; the same command resumes.
    """
    from blackbox.studies.nomad_study import run_study

    with _exit_codes(ctx):
        quiet = ctx.obj.get("quiet", False)
        folder = study_dir or Path("runs") / param_file.stem
        ctx.exit(run_study(param_file, folder, quiet=quiet, mlflow_uri=mlflow_uri))


@main.command("optuna")
@experiment_options
@click.option(
    "--n-trials",
    type=click.IntRange(min=1),
    required=True,
    help="Trials of the study in all (completed and failed); a resumed study runs only the missing ones.",
)
@click.option(
    "--sampler",
    type=click.Choice(["tpe", "random", "cmaes"]),
    default="tpe",
    show_default=True,
    help="Optuna's TPESampler, RandomSampler, or CmaEsSampler (started at the experiment's X0).",
)
@click.option("--seed", type=int, help="The sampler's seed (default: the experiment's study.seed).")
@click.option("--storage", metavar="URL", help="Optuna storage (default: sqlite:///DIR/optuna.db).")
@click.option("--study-name", help="Name in the storage (default: <study.name>-<sampler>).")
@click.option(
    "--dir",
    "study_dir",
    type=click.Path(path_type=Path),
    help="Study folder for records and the default storage (default: runs/<study.name>-optuna-<sampler>).",
)
@click.option(
    "--in-process",
    is_flag=True,
    help="Evaluate in this process (model loaded once) instead of one lora-blackbox eval subprocess per trial.",
)
@click.option(
    "--mlflow",
    "mlflow_uri",
    metavar="URI",
    help="Track the study in MLflow at this tracking URI (else $MLFLOW_TRACKING_URI, or the experiment's "
    "[tracking] mlflow = true): a parent run, and a nested run per evaluation.",
)
@click.pass_context
def optuna_command(
    ctx: click.Context,
    experiment_ref: str,
    overrides: tuple[str, ...],
    n_trials: int,
    sampler: Literal["tpe", "random", "cmaes"],
    seed: int | None,
    storage: str | None,
    study_name: str | None,
    study_dir: Path | None,
    in_process: bool,
    mlflow_uri: str | None,
) -> None:
    """Run or resume an Optuna study of the experiment's search space (same space, evaluations and records
    as NOMAD's). Prints a JSON summary on stdout; trials and progress go to stderr.

    A failed evaluation (nan) is a failed trial; a diverged one (inf) a completed, very bad one. Ctrl-C
    stops after recording the running trial (exit status 130); the same command resumes the study.
    """
    from blackbox.api import Blackbox
    from blackbox.studies.optuna_study import default_storage, run_optuna

    with _exit_codes(ctx), protocol_stdout() as emit:
        experiment = load_experiment(experiment_ref, overrides)
        folder = (study_dir or Path("runs") / f"{experiment.study.name}-optuna-{sampler}").resolve()
        folder.mkdir(parents=True, exist_ok=True)
        blackbox = Blackbox(
            experiment_ref,
            (*overrides, f"records.dir={folder}"),
            isolate=not in_process,
            quiet=ctx.obj.get("quiet", False),
        )
        storage = storage or default_storage(folder)
        logger.info("Optuna study folder %s; storage %s", folder, storage)
        _install_signal_handlers()  # SIGTERM stops like Ctrl-C: the running trial is recorded, not orphaned
        summary = run_optuna(
            blackbox,
            n_trials=n_trials,
            sampler=sampler,
            seed=experiment.study.seed if seed is None else seed,
            storage=storage,
            study_name=study_name or f"{experiment.study.name}-{sampler}",
            mlflow_uri=mlflow_uri,
        )
        emit(summary.as_json() + "\n")
        if summary.best:
            logger.info(
                "best: %s (trial %d, run %s)", summary.best["value"], summary.best["trial"], summary.best["run_id"]
            )
    if summary.interrupted:
        logger.error("interrupted: run the same command again to resume (%d trials kept)", summary.counted)
        ctx.exit(130)


def selection_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The models an assessment compares beside the base model: a study's evaluations by rank or run id, adapter
    folders, and whether evaluations without a saved adapter are retrained."""
    options = [
        click.option("--best", is_flag=True, help="The study's best evaluation."),
        click.option("--worst", is_flag=True, help="The study's worst finished evaluation."),
        click.option(
            "--top", type=click.IntRange(min=0), default=0, metavar="K", help="The study's K best evaluations."
        ),
        click.option("--run-id", "run_ids", multiple=True, metavar="ID", help="An evaluation by run id (repeatable)."),
        click.option(
            "--adapter",
            "adapters",
            multiple=True,
            type=click.Path(path_type=Path, file_okay=False),
            metavar="DIR",
            help="A saved adapter folder (repeatable), labelled by its folder name.",
        ),
        click.option(
            "--retrain",
            is_flag=True,
            help="Retrain chosen evaluations that saved no adapter (their recorded hyperparameters and seed).",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _candidates(
    study_dir: Path | None,
    *,
    base: bool,
    best: bool,
    worst: bool,
    top: int,
    run_ids: tuple[str, ...],
    adapters: tuple[Path, ...],
    retrain: bool,
    allow_none: bool = False,
) -> list[Any]:
    """The base model (``base``), then the chosen evaluations of ``study_dir`` and the adapter folders, each with
    its adapter (retrained with ``retrain``); none chosen is an error unless ``allow_none``."""
    from blackbox.assessment.answers import base_candidate
    from blackbox.assessment.retrain import with_adapters
    from blackbox.assessment.selection import adapter_folders, select_from_study

    if (best or worst or top or run_ids or retrain) and study_dir is None:
        raise click.UsageError("--best, --worst, --top, --run-id and --retrain pick from a study: give STUDY_DIR")
    chosen = [base_candidate()] if base else []
    if study_dir is not None:
        picked = select_from_study(study_dir, top=top, best=best, worst=worst, run_ids=run_ids)
        chosen += with_adapters(picked, study_dir, retrain_missing=retrain)
    chosen += adapter_folders(adapters)
    if not chosen and not allow_none:
        raise click.UsageError("no model to ask: keep --base, or choose evaluations or adapters")
    return chosen


@main.command("downstream")
@click.argument("study", required=False, type=click.Path(exists=True, file_okay=False, path_type=Path))
@selection_options
@click.option("--tasks", metavar="T[:METRIC],...", help="lm-eval tasks or groups (default: [[downstream]]).")
@click.option("--include-path", default="", metavar="DIR", help="A folder of lm-eval task YAMLs of your own.")
@click.option("--num-fewshot", type=click.IntRange(min=0), help="Few-shot examples (default: each task's).")
@click.option("--limit", type=click.FloatRange(min=0), default=0, help="Examples per task (<1: a fraction).")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--allow-code-execution", is_flag=True, help="Let tasks run model-written code (HumanEval).")
@click.option("-e", "--experiment", "experiment_ref", metavar="EXP", help="The experiment (default: STUDY's).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a key of --experiment.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Default: STUDY/downstream.jsonl.")
@click.pass_context
def downstream_command(
    ctx: click.Context,
    study: Path | None,
    best: bool,
    worst: bool,
    top: int,
    run_ids: tuple[str, ...],
    adapters: tuple[Path, ...],
    retrain: bool,
    tasks: str | None,
    include_path: str,
    num_fewshot: int | None,
    limit: float,
    batch_size: int,
    allow_code_execution: bool,
    experiment_ref: str | None,
    overrides: tuple[str, ...],
    out: Path | None,
) -> None:
    """Score the base model and adapters on lm-evaluation-harness benchmarks.

    Adapters: evaluations of STUDY (a NOMAD or Optuna study folder) by rank (--top, --best, --worst) or run id,
    and adapter folders (--adapter). The base model is always scored, first, as the reference. Scores are
    appended to downstream.jsonl (one line per model and benchmark) and shown as a table on stdout.
    """
    from blackbox.assessment.downstream import benchmarks_from_options, format_table, score_models
    from blackbox.assessment.selection import experiment_of
    from blackbox.folders import DOWNSTREAM_FILE

    with _exit_codes(ctx):
        candidates = _candidates(
            study,
            base=False,
            best=best,
            worst=worst,
            top=top,
            run_ids=run_ids,
            adapters=adapters,
            retrain=retrain,
            allow_none=True,
        )
        given = load_experiment(experiment_ref, overrides) if experiment_ref else None
        experiment = experiment_of(candidates, given, study)
        benchmarks = benchmarks_from_options(
            tasks,
            include_path=include_path,
            num_fewshot=num_fewshot,
            limit=limit,
            batch_size=batch_size,
            defaults=experiment.downstream_defaults,
        )
        out_file = out or (study / DOWNSTREAM_FILE if study else Path(DOWNSTREAM_FILE))
        rows = score_models(
            experiment,
            candidates,
            benchmarks,
            out_file=out_file,
            allow_code_execution=allow_code_execution,
            on_row=lambda row: logger.info("%s: %s = %.4f", row["label"], row["key"], row["value"]),
        )
        click.echo(format_table(rows))
        logger.info("scores appended to %s", out_file)


@main.command("report")
@click.argument("runs", nargs=-1, required=True, metavar="[LABEL=]RECORDS_OR_RUN_DIR...")
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    help="Folder for the report (default: report/ in the run folder; ./report for several runs).",
)
@click.option("--objective", help="The metric that was minimised (default: what the solver saw).")
@click.option("--top", type=click.IntRange(min=1), default=10, show_default=True, help="Rows of the top-points table.")
@click.option(
    "--votes",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Votes of lora-blackbox compare to add (default: the first run folder's votes.sqlite, if any).",
)
@click.pass_context
def report_command(
    ctx: click.Context,
    runs: tuple[str, ...],
    out: Path | None,
    objective: str | None,
    top: int,
    votes: Path | None,
) -> None:
    """Write a report of one or more studies: convergence and parallel-coordinates plots (PNG), the top
    points, failures, and one self-contained HTML page. Prints the HTML file's path.

    Each run is a records.jsonl file or a study folder (NOMAD's stats and cache files are read when
    present). Several runs are drawn on the same axes; runs given the same LABEL share a colour, e.g.
    NOMAD=runs/nomad-s0 NOMAD=runs/nomad-s1 TPE=runs/tpe-s0.
    """
    from blackbox.reports import write_report

    with _exit_codes(ctx):
        if out is None:
            first = Path(runs[0].partition("=")[2] if "=" in runs[0] else runs[0])
            out = (first if first.is_dir() else first.parent) / "report" if len(runs) == 1 else Path("report")
        files = write_report(runs, out, objective=objective, top=top, votes=votes)
        click.echo(str(files["html"]))


@main.command("answers")
@click.argument("study_dir", required=False, type=click.Path(path_type=Path, file_okay=False))
@click.option(
    "--questions",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help='Question file: JSON Lines ({"id": ..., "question": ...}) or plain text, one question a line.',
)
@selection_options
@click.option("--base/--no-base", default=True, show_default=True, help="Include the base model (the reference).")
@click.option(
    "-e",
    "--experiment",
    "experiment_ref",
    metavar="EXP",
    help="Experiment whose model and prompt template answer (default: the one the study's evaluations ran).",
)
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a key of that experiment.")
@click.option(
    "--out", type=click.Path(path_type=Path, dir_okay=False), help="Answers file (default: STUDY_DIR/answers.jsonl)."
)
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--temperature", type=click.FloatRange(min=0, min_open=True), default=0.9, show_default=True)
@click.option("--top-p", type=click.FloatRange(min=0, max=1, min_open=True), default=0.9, show_default=True)
@click.option("--greedy", is_flag=True, help="Greedy decoding instead of sampling (temperature and top-p unused).")
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed, same answers.")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True, help="Questions per batch.")
@click.pass_context
def answers_command(
    ctx: click.Context,
    study_dir: Path | None,
    questions: Path,
    best: bool,
    worst: bool,
    top: int,
    run_ids: tuple[str, ...],
    adapters: tuple[Path, ...],
    retrain: bool,
    base: bool,
    experiment_ref: str | None,
    overrides: tuple[str, ...],
    out: Path | None,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    greedy: bool,
    seed: int,
    batch_size: int,
) -> None:
    """Answers of the base model and of chosen adapters to the questions of a file, for compare. Prints the
    answers file's path.

    Every model answers in the experiment's prompt template with the same sampling settings and seed (the same
    command gives the same answers); the base model is loaded once. Models already answered in the file with the
    same settings are kept, so an interrupted call resumes. Example:

    \b
        lora-blackbox answers runs/demo --best --worst --questions examples/demo_questions.jsonl
    """
    from blackbox.assessment.answers import generate_answers, read_questions
    from blackbox.assessment.selection import experiment_of
    from blackbox.folders import ANSWERS_FILE
    from blackbox.training.generation import Sampling

    with _exit_codes(ctx):
        chosen = _candidates(
            study_dir,
            base=base,
            best=best,
            worst=worst,
            top=top,
            run_ids=run_ids,
            adapters=adapters,
            retrain=retrain,
        )
        given = load_experiment(experiment_ref, overrides) if experiment_ref else None
        experiment = experiment_of(chosen, given, study_dir)
        out = out or (study_dir or Path()) / ANSWERS_FILE
        sampling = Sampling(max_new_tokens, temperature, top_p, greedy, batch_size)
        generate_answers(chosen, experiment, read_questions(questions), out, sampling=sampling, seed=seed)
        click.echo(str(out))


@main.command("compare")
@click.argument("answers_file", type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--db",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Votes file (SQLite; default: votes.sqlite beside ANSWERS_FILE). The same file resumes.",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: for a team).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="0: any free port.")
@click.option("--results", is_flag=True, help="Print the results tables on stdout instead of serving the page.")
@click.option(
    "--csv", "csv_file", type=click.Path(path_type=Path, dir_okay=False), help="Write every vote to this CSV file."
)
@click.option(
    "--judge",
    "judge_model",
    metavar="MODEL",
    help="Rate every pair with this judge model (hub id or folder; transformers), then print the results.",
)
@click.option("--judge-max-new-tokens", type=click.IntRange(min=1), default=512, show_default=True)
@click.option("--judge-batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--device", default="auto", show_default=True, help="The judge's device: auto, cpu, cuda or cuda:N.")
@click.pass_context
def compare_command(
    ctx: click.Context,
    answers_file: Path,
    db: Path | None,
    host: str,
    port: int,
    results: bool,
    csv_file: Path | None,
    judge_model: str | None,
    judge_max_new_tokens: int,
    judge_batch_size: int,
    device: str,
) -> None:
    """Blind pairwise rating of the answers of ANSWERS_FILE (lora-blackbox answers): a web page for people, or
    a judge model.

    The page (http://127.0.0.1:8000/ by default; its address is printed on stderr) shows one question and two
    answers of different models at a time, in random order and unlabelled; each rater, by name, picks A, B, tie
    or both bad, and never sees a pair twice. Every vote is saved at once: the same command resumes. --results
    prints win rates with 95% confidence intervals, Bradley-Terry strengths, votes per rater and the raters'
    agreement; --csv exports the votes. --judge MODEL asks a judge model about every pair in both orders
    (MT-Bench's pairwise prompt); its votes count as rater judge:MODEL.
    """
    from blackbox.assessment.answers import read_answers
    from blackbox.assessment.compare.pairs import index_answers
    from blackbox.folders import VOTES_FILE
    from blackbox.reports.preferences import group_preferences, results_text, votes_csv
    from blackbox.votes import fetch_votes, votes_db

    with _exit_codes(ctx):
        answers = index_answers(read_answers(answers_file))
        db = db or answers_file.parent / VOTES_FILE
        if judge_model:
            from blackbox.assessment.compare.judge import SYSTEM_PROMPT, judge_pairs
            from blackbox.training.judge import ask, load_judge

            judge = load_judge(judge_model, device=device)
            logger.info("judge %s loaded in %.1f s", judge_model, judge.load_seconds)
            added = judge_pairs(
                answers,
                db,
                model=judge_model,
                ask=lambda prompts: ask(
                    judge,
                    prompts,
                    system=SYSTEM_PROMPT,
                    max_new_tokens=judge_max_new_tokens,
                    batch_size=judge_batch_size,
                ),
            )
            logger.info("judge %s: %d new votes in %s", judge_model, added, db)
        if judge_model or results or csv_file:
            with votes_db(db) as connection:
                votes = fetch_votes(connection)
            if csv_file:
                csv_file.write_text(votes_csv(votes), encoding="utf-8")
                logger.info("%d votes written to %s", len(votes), csv_file)
            if judge_model or results:
                click.echo(results_text(group_preferences(votes)), nl=False)
            return
        from blackbox.assessment.compare.app import build_app, serve

        def ready(url: str) -> None:
            click.echo(
                f"lora-blackbox: rating page at {url} ({len(answers.pairs)} pairs; votes in {db}; Ctrl-C stops)",
                err=True,
            )

        if host not in ("127.0.0.1", "localhost", "::1"):
            logger.warning("listening on %s: anyone who reaches it can rate (the page has no login)", host)
        try:
            serve(build_app(answers, db), host=host, port=port, ready=ready)
        except OSError as e:
            raise SetupError(f"cannot listen on {host}:{port}: {e}") from e
        except KeyboardInterrupt:  # uvicorn stops cleanly on Ctrl-C, then raises it again: the page's normal end
            logger.info("stopped; the votes are in %s (the same command resumes)", db)


@contextlib.contextmanager
def protocol_stdout() -> Iterator[Callable[[str | bytes], None]]:
    """Keep stdout for result lines only.

    While the body runs, file descriptor 1 points at stderr (native code, C extensions and stray
    prints cannot reach the optimizer) and ``sys.stdout`` is ``sys.stderr``. Result lines go through
    the function this yields, to the real stdout: text, or bytes written as they are.
    """
    real = sys.stdout
    real.flush()
    try:
        real_is_fd1 = real.fileno() == 1
    except (AttributeError, OSError, ValueError):
        real_is_fd1 = False  # e.g. click's CliRunner: a Python-level stream
    saved = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def emit(text: str | bytes) -> None:
        data = text.encode() if isinstance(text, str) else text
        if real_is_fd1:
            view = memoryview(data)
            while view:
                view = view[os.write(saved, view) :]
        elif hasattr(real, "buffer"):
            real.flush()
            real.buffer.write(data)
            real.buffer.flush()
        else:
            real.write(data.decode(errors="replace"))
            real.flush()

    try:
        yield emit
    finally:
        sys.stdout = real
        os.dup2(saved, 1)
        os.close(saved)


@contextlib.contextmanager
def _exit_codes(ctx: click.Context) -> Iterator[None]:
    """Map errors to a one-line message on stderr and an exit status; tracebacks only with --debug."""
    debug = ctx.obj.get("debug", False) if ctx.obj else False
    try:
        yield
    except ConfigError as e:
        _fail(e, 2, debug)
    except BlackboxError as e:
        _fail(e, 1, debug)
    except KeyboardInterrupt:
        logger.error("interrupted")
        sys.exit(130)


def _fail(error: BlackboxError, code: int, debug: bool) -> NoReturn:
    logger.error("%s", error, exc_info=debug)
    sys.exit(code)


def _write_stderr(data: bytes) -> None:
    """Bytes to stderr as they are (the container's stderr)."""
    sys.stderr.flush()
    buffer = getattr(sys.stderr, "buffer", None)
    if buffer is None:
        sys.stderr.write(data.decode(errors="replace"))
    else:
        buffer.write(data)
        buffer.flush()


def _install_signal_handlers() -> None:
    """SIGINT and SIGTERM end the call: the running evaluation is recorded as INTERRUPTED.

    SIGINT is set explicitly: a process started in the background by a script inherits SIGINT ignored,
    and Python then installs no KeyboardInterrupt handler of its own. A rank of a data-parallel evaluation
    gets SIGTERM from torchrun when another rank fails: that fails the evaluation, it does not interrupt
    the call (a Ctrl-C reaches the ranks as SIGINT).
    """

    def interrupt(signum: int, frame: FrameType | None) -> None:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise RankStopped("torchrun stopped this rank: another rank of the evaluation failed")
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, interrupt)


def _setup_logging(*, quiet: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("lora-blackbox %(levelname)s: %(message)s"))
    handler.setLevel(logging.WARNING if quiet else logging.INFO)
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)  # INFO always reaches each evaluation's eval.log
    logger.propagate = False
    if quiet:
        os.environ["LORA_BLACKBOX_QUIET"] = "1"  # evaluation processes started from here are quiet too
        for variable in ("HF_HUB_DISABLE_PROGRESS_BARS", "HF_DATASETS_DISABLE_PROGRESS_BARS"):
            os.environ.setdefault(variable, "1")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


if __name__ == "__main__":
    main()
