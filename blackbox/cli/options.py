"""Options that several commands share, each declared once: the experiment (``-e``/``--set``), MLflow tracking
(``--mlflow``), and the models an assessment compares (``--best``, ``--top``, ``--adapter``, ...)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from blackbox.core.experiment import ENV_EXPERIMENT, absolute_overrides

if TYPE_CHECKING:
    from blackbox.assessment.selection import Candidate

Command = Callable[..., Any]


def experiment_options(command: Command) -> Command:
    """``-e/--experiment`` (required; or $LORA_BLACKBOX_EXPERIMENT, since NOMAD passes only the point file) and
    ``--set KEY=VALUE``: the command gets ``experiment_ref`` and ``overrides``."""
    command = click.option(
        "--set",
        "overrides",
        multiple=True,
        metavar="KEY=VALUE",
        callback=_absolute_overrides,
        help="Override a key of the experiment (dotted path), e.g. --set training.max_steps=5; a relative path is "
        "read from the working directory.",
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


def optional_experiment_options(command: Command) -> Command:
    """``-e/--experiment`` and ``--set`` where the experiment defaults to the study's (an assessment)."""
    command = click.option(
        "--set",
        "overrides",
        multiple=True,
        metavar="KEY=VALUE",
        callback=_absolute_overrides,
        help="Override a key of that experiment.",
    )(command)
    return click.option(
        "-e",
        "--experiment",
        "experiment_ref",
        metavar="EXP",
        help="The experiment (default: the one the study's evaluations ran, kept in the study folder).",
    )(command)


def _absolute_overrides(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> tuple[str, ...]:
    """Processes started elsewhere (NOMAD's BB_EXE, a container, a Ray worker) read the same files."""
    return absolute_overrides(value)


def mlflow_option(command: Command) -> Command:
    """``--mlflow URI``: the command gets ``mlflow_uri``."""
    return click.option(
        "--mlflow",
        "mlflow_uri",
        metavar="URI",
        help="Track the study in MLflow at this tracking URI (else $MLFLOW_TRACKING_URI, or the experiment's "
        "[tracking] mlflow = true): a parent run, and a nested run per evaluation.",
    )(command)


@dataclass(frozen=True)
class Selection:
    """The models an assessment compares beside the base model: a study's evaluations by rank or run id, adapter
    folders, and whether evaluations without a saved adapter are retrained."""

    best: bool = False
    worst: bool = False
    top: int = 0
    run_ids: tuple[str, ...] = ()
    adapters: tuple[Path, ...] = ()
    retrain: bool = False

    def candidates(self, study_dir: Path | None, *, base: bool, allow_none: bool = False) -> list[Candidate]:
        """The base model (``base``), then the chosen evaluations of ``study_dir`` and the adapter folders, each
        with its adapter (retrained with ``retrain``); none chosen is an error unless ``allow_none``."""
        from blackbox.assessment.answers import base_candidate
        from blackbox.assessment.retrain import with_adapters
        from blackbox.assessment.selection import adapter_folders, select_from_study

        picks = self.best or self.worst or self.top or self.run_ids or self.retrain
        if picks and study_dir is None:
            raise click.UsageError("--best, --worst, --top, --run-id and --retrain pick from a study: give STUDY_DIR")
        chosen = [base_candidate()] if base else []
        if study_dir is not None:
            picked = select_from_study(study_dir, top=self.top, best=self.best, worst=self.worst, run_ids=self.run_ids)
            chosen += with_adapters(picked, study_dir, retrain_missing=self.retrain)
        chosen += adapter_folders(self.adapters)
        if not chosen and not allow_none:
            raise click.UsageError("no model to ask: keep --base, or choose evaluations or adapters")
        return chosen


def selection_options(command: Command) -> Command:
    """``--best``, ``--worst``, ``--top K``, ``--run-id``, ``--adapter``, ``--retrain``: the command gets them as
    one ``selection`` (:class:`Selection`)."""

    @functools.wraps(command)
    def with_selection(
        *args: Any,
        best: bool,
        worst: bool,
        top: int,
        run_ids: tuple[str, ...],
        adapters: tuple[Path, ...],
        retrain: bool,
        **kwargs: Any,
    ) -> Any:
        selection = Selection(best, worst, top, run_ids, adapters, retrain)
        return command(*args, selection=selection, **kwargs)

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
    wrapped: Command = with_selection
    for option in reversed(options):
        wrapped = option(wrapped)
    return wrapped
