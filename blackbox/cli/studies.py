"""Studies: ``study`` (NOMAD, what ``run_nomad.sh`` runs) and ``optuna`` (an Optuna sampler on the same blackbox)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import click

from blackbox.cli.options import NeedsExtra, experiment_options, mlflow_option, warm_start_option
from blackbox.cli.protocol import exit_on_error, install_signal_handlers, protocol_stdout
from blackbox.core.bounds import warning as bounds_warning
from blackbox.core.experiment import load_experiment
from blackbox.core.failures import Call, call_of_study

logger = logging.getLogger("blackbox")


@click.command("study")
@click.argument("param_file", type=click.Path(path_type=Path))
@click.option(
    "--dir",
    "study_dir",
    type=click.Path(path_type=Path),
    help="Study folder (default: runs/<PARAM_FILE name>). Rerun with the same folder to resume.",
)
@mlflow_option
@warm_start_option
@click.option(
    "--warm-start-top",
    type=click.IntRange(min=0),
    default=3,
    show_default=True,
    metavar="K",
    help="With --warm-start: the K best earlier evaluations become starting points (X0) besides the file's own.",
)
@click.pass_context
def study_command(
    ctx: click.Context,
    param_file: Path,
    study_dir: Path | None,
    mlflow_uri: str | None,
    warm_start: tuple[Path, ...],
    warm_start_top: int,
) -> None:
    """Run or resume the NOMAD study of PARAM_FILE in its own folder (what ./run_nomad.sh does).

    Uses the nomad executable ($NOMAD_EXE, or nomad on PATH), else the NOMAD library of PyNomadBBO.
    Ctrl-C stops after the running evaluations; twice cuts them; the same command resumes.
    """
    from blackbox.studies.nomad_study import run_study

    with exit_on_error(ctx):
        quiet = ctx.obj.get("quiet", False)
        folder = study_dir or Path("runs") / param_file.stem
        code = run_study(
            param_file,
            folder,
            quiet=quiet,
            mlflow_uri=mlflow_uri,
            warm_start_from=warm_start,
            warm_start_top=warm_start_top,
        )
        ctx.exit(code)


@click.command("optuna", cls=NeedsExtra, needs=("optuna",), purpose="lora-blackbox optuna")
@experiment_options
@click.option(
    "--n-trials",
    type=click.IntRange(min=1),
    required=True,
    help="Trials of the study in all (completed and failed); a resumed study runs only the missing ones.",
)
@click.option(
    "--sampler",
    type=click.Choice(["tpe", "tpe-nni", "nsga2", "random", "cmaes"]),
    default="tpe",
    show_default=True,
    help="Optuna's TPESampler (multi-objective TPE for several objectives); TPE set as NNI's (tpe-nni: 20 random "
    "start-up trials, NNI's split of good trials: the reference study's baseline); NSGAIISampler (a population of "
    "10); RandomSampler; or CmaEsSampler (one objective; started at the experiment's X0).",
)
@click.option("--seed", type=int, help="The sampler's seed (default: the experiment's study.seed).")
@click.option(
    "--startup-trials",
    type=click.IntRange(min=1),
    help="TPE's random start-up trials before its model guides the sampling (default: Optuna's 10).",
)
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
    "--pruner",
    type=click.Choice(["median", "successive-halving", "hyperband", "none"]),
    default="none",
    show_default=True,
    help="Optuna's MedianPruner (n_startup_trials: [stopping] min_finished), SuccessiveHalvingPruner or "
    "HyperbandPruner, deciding at the experiment's [validation] checkpoints; pruned trials are PRUNED and their "
    "records STOPPED.",
)
@mlflow_option
@warm_start_option
@click.pass_context
def optuna_command(
    ctx: click.Context,
    experiment_ref: str,
    overrides: tuple[str, ...],
    n_trials: int,
    sampler: Literal["tpe", "tpe-nni", "nsga2", "random", "cmaes"],
    seed: int | None,
    startup_trials: int | None,
    storage: str | None,
    study_name: str | None,
    study_dir: Path | None,
    in_process: bool,
    pruner: Literal["median", "successive-halving", "hyperband", "none"],
    mlflow_uri: str | None,
    warm_start: tuple[Path, ...],
) -> None:
    """Run or resume an Optuna study of the experiment's search space (same space, evaluations and records
    as NOMAD's). Prints a JSON summary on stdout; trials and progress go to stderr.

    A failed evaluation (nan) is a failed trial; a diverged one (inf) a completed, very bad one; one stopped at a
    checkpoint (--pruner) a pruned one. Ctrl-C stops after recording the running trial (exit status 130); the
    same command resumes the study.
    """
    from blackbox.api import Blackbox
    from blackbox.studies.optuna_study import default_storage, require_sampler, run_optuna

    with exit_on_error(ctx), protocol_stdout() as emit:
        require_sampler(sampler)  # before the study folder is made
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
        install_signal_handlers()  # SIGTERM stops like Ctrl-C: the running trial is recorded, not orphaned
        summary = run_optuna(
            blackbox,
            n_trials=n_trials,
            sampler=sampler,
            seed=experiment.study.seed if seed is None else seed,
            storage=storage,
            study_name=study_name or f"{experiment.study.name}-{sampler}",
            mlflow_uri=mlflow_uri,
            pruner=pruner,
            warm_start_from=warm_start,
            startup_trials=startup_trials,
        )
        emit(summary.as_json() + "\n")
        if summary.best:
            logger.info(
                "best: %s (trial %d, run %s)", summary.best["value"], summary.best["trial"], summary.best["run_id"]
            )
        if summary.compute is not None:
            logger.info("compute: %s", summary.compute.describe())
        for trial in summary.front or []:
            values = ", ".join(
                f"{name} {value:.6g}" for name, value in zip(summary.objectives, trial["values"], strict=True)
            )
            logger.info("front: %s (trial %d, run %s)", values, trial["trial"], trial["run_id"])
        if summary.on_bounds:
            logger.warning("%s", bounds_warning(summary.on_bounds))
    call, status = call_of_study(interrupted=summary.interrupted)
    if call is Call.INTERRUPTED:
        logger.error("interrupted: run the same command again to resume (%d trials kept)", summary.counted)
    ctx.exit(status)
