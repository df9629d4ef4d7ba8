"""Options that several commands share, each declared once: the experiment (``-e``/``--set``), MLflow tracking
(``--mlflow``), the models an assessment compares (``--best``, ``--top``, ``--adapter``, ...), where points run
(``--backend``), and the form of the commands' counts, limits and rates (:func:`number_option`)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from blackbox.cli.protocol import end
from blackbox.core.errors import SetupError
from blackbox.core.experiment import ENV_EXPERIMENT, absolute_overrides
from blackbox.core.extras import missing
from blackbox.core.failures import call_of

if TYPE_CHECKING:
    from blackbox.assessment.selection import Candidate

Command = Callable[..., Any]


class NeedsExtra(click.Command):
    """A command whose work needs an optional extra (``blackbox.core.extras``): where the extra is missing, the
    first line of its ``--help`` says so with the install command, and running it fails with that line (exit 1,
    the failure policy's for a ``SetupError``) before anything, a folder it would create included.

    ``click.command(cls=NeedsExtra, needs=("optuna",), purpose="lora-blackbox optuna")``; ``only_help``: the
    command runs without the extra in part (``compare --results``), so only its help says what needs it.
    """

    def __init__(self, *args: Any, needs: tuple[str, ...], purpose: str, only_help: bool = False, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.needs, self.purpose, self.only_help = needs, purpose, only_help

    def missing(self) -> str | None:
        return missing(*self.needs, purpose=self.purpose)

    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        why = self.missing()
        if why:
            formatter.write(f"{why}\n\n")
        super().format_help(ctx, formatter)

    def invoke(self, ctx: click.Context) -> Any:
        why = None if self.only_help else self.missing()
        if why:
            call = call_of(SetupError(why))
            assert call is not None
            end(call, why)
        return super().invoke(ctx)


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


def number_option(*names: str, default: float, minimum: float = 1, **kwargs: Any) -> Callable[[Command], Command]:
    """An option holding a number of at least ``minimum`` (an integer when ``default`` is one, else a real), with
    its default shown by ``--help``: the counts, limits and rates of the commands. ``kwargs``: click's (help, ...)."""
    kind = click.IntRange(min=int(minimum)) if isinstance(default, int) else click.FloatRange(min=minimum)
    return click.option(*names, type=kind, default=default, show_default=True, **kwargs)


def backend_option(help: str) -> Callable[[Command], Command]:
    """``--backend local|ray``: where the points of a call run (here, or as tasks on a Ray cluster); the command
    gets ``backend``."""
    return click.option("--backend", type=click.Choice(["local", "ray"]), default="local", show_default=True, help=help)


def mlflow_option(command: Command) -> Command:
    """``--mlflow URI``: the command gets ``mlflow_uri``."""
    return click.option(
        "--mlflow",
        "mlflow_uri",
        metavar="URI",
        help="Track the study in MLflow at this tracking URI (else $MLFLOW_TRACKING_URI, or the experiment's "
        "[tracking] mlflow = true): a parent run, and a nested run per evaluation.",
    )(command)


def warm_start_option(command: Command) -> Command:
    """``--warm-start STUDY_DIR`` (repeatable): the command gets ``warm_start``, a tuple of folders."""
    return click.option(
        "--warm-start",
        "warm_start",
        multiple=True,
        type=click.Path(path_type=Path, file_okay=False),
        metavar="STUDY_DIR",
        help="Seed a new study with the finished evaluations of an earlier study of the same search space "
        "(repeatable): they are answered without training; another space is refused.",
    )(command)


@dataclass(frozen=True)
class Selection:
    """The models an assessment compares beside the base model: a study's evaluations by rank (of ``objective``
    in a study of several), its front or the front's knee, or by run id; adapter folders; and whether evaluations
    without a saved adapter are retrained."""

    best: bool = False
    worst: bool = False
    top: int = 0
    run_ids: tuple[str, ...] = ()
    adapters: tuple[Path, ...] = ()
    retrain: bool = False
    objective: str | None = None
    front: bool = False
    knee: bool = False

    def candidates(self, study_dir: Path | None, *, base: bool, allow_none: bool = False) -> list[Candidate]:
        """The base model (``base``), then the chosen evaluations of ``study_dir`` and the adapter folders, each
        with its adapter (retrained with ``retrain``); none chosen is an error unless ``allow_none``."""
        from blackbox.assessment.answers import base_candidate
        from blackbox.assessment.retrain import with_adapters
        from blackbox.assessment.selection import adapter_folders, select_from_study

        picks = self.best or self.worst or self.top or self.run_ids or self.retrain or self.front or self.knee
        if picks and study_dir is None:
            raise click.UsageError(
                "--best, --worst, --top, --front, --knee, --run-id and --retrain pick from a study: give STUDY_DIR"
            )
        chosen = [base_candidate()] if base else []
        if study_dir is not None:
            picked = select_from_study(
                study_dir,
                top=self.top,
                best=self.best,
                worst=self.worst,
                run_ids=self.run_ids,
                objective=self.objective,
                front=self.front,
                knee=self.knee,
            )
            chosen += with_adapters(picked, study_dir, retrain_missing=self.retrain)
        chosen += adapter_folders(self.adapters)
        if not chosen and not allow_none:
            raise click.UsageError("no model to ask: keep --base, or choose evaluations or adapters")
        return chosen


def selection_options(command: Command) -> Command:
    """``--best``, ``--worst``, ``--top K``, ``--objective NAME``, ``--front``, ``--knee``, ``--run-id``,
    ``--adapter``, ``--retrain``: the command gets them as one ``selection`` (:class:`Selection`)."""

    @functools.wraps(command)
    def with_selection(
        *args: Any,
        best: bool,
        worst: bool,
        top: int,
        run_ids: tuple[str, ...],
        adapters: tuple[Path, ...],
        retrain: bool,
        objective: str | None,
        front: bool,
        knee: bool,
        **kwargs: Any,
    ) -> Any:
        selection = Selection(best, worst, top, run_ids, adapters, retrain, objective, front, knee)
        return command(*args, selection=selection, **kwargs)

    options = [
        click.option("--best", is_flag=True, help="The study's best evaluation."),
        click.option("--worst", is_flag=True, help="The study's worst finished evaluation."),
        click.option(
            "--top", type=click.IntRange(min=0), default=0, metavar="K", help="The study's K best evaluations."
        ),
        click.option(
            "--objective",
            metavar="NAME",
            help="In a study of several objectives: the one that ranks --best, --worst and --top (e.g. "
            "validation_loss, trainable_params, benchmark:mmlu:acc).",
        ),
        click.option("--front", is_flag=True, help="Every non-dominated evaluation of a study of several objectives."),
        click.option("--knee", is_flag=True, help="The knee of the front of a study of several objectives."),
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
