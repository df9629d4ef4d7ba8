"""Studies: ``study`` (NOMAD, what ``run_nomad.sh`` runs) and ``optuna`` (an Optuna sampler on the same blackbox)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import click

from blackbox.cli.options import experiment_options, mlflow_option
from blackbox.cli.protocol import exit_on_error, install_signal_handlers, protocol_stdout
from blackbox.core.experiment import load_experiment

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
@click.pass_context
def study_command(ctx: click.Context, param_file: Path, study_dir: Path | None, mlflow_uri: str | None) -> None:
    """Run or resume the NOMAD study of PARAM_FILE in its own folder (what ./run_nomad.sh does).

    Uses the nomad executable ($NOMAD_EXE, or nomad on PATH), else the NOMAD library of PyNomadBBO.
    Ctrl-C stops after the running evaluations; twice cuts them; the same command resumes.
    """
    from blackbox.studies.nomad_study import run_study

    with exit_on_error(ctx):
        quiet = ctx.obj.get("quiet", False)
        folder = study_dir or Path("runs") / param_file.stem
        ctx.exit(run_study(param_file, folder, quiet=quiet, mlflow_uri=mlflow_uri))


@click.command("optuna")
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
@mlflow_option
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

    with exit_on_error(ctx), protocol_stdout() as emit:
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
        )
        emit(summary.as_json() + "\n")
        if summary.best:
            logger.info(
                "best: %s (trial %d, run %s)", summary.best["value"], summary.best["trial"], summary.best["run_id"]
            )
    if summary.interrupted:
        logger.error("interrupted: run the same command again to resume (%d trials kept)", summary.counted)
        ctx.exit(130)
