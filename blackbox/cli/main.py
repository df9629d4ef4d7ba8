"""The ``lora-blackbox`` command: its options, logging, and the commands of the modules beside this one.

One module per command group (``evaluate``: eval, decode, params; ``container``; ``studies``: study, optuna;
``assess``: downstream, answers, compare; ``report``), over the options they share (``options``) and the
protocol of stdout and exit statuses (``protocol``). The commands parse options and print; what they do lives
in the layers below (``runners.call`` answers a blackbox call, ``studies`` run studies, ...).
"""

from __future__ import annotations

import logging
import os
import sys

import click

from blackbox._version import __version__
from blackbox.cli.assess import answers_command, compare_command, downstream_command
from blackbox.cli.container import container_command
from blackbox.cli.evaluate import decode_command, eval_command, params_command
from blackbox.cli.report import report_command
from blackbox.cli.studies import optuna_command, study_command
from blackbox.core.logs import OursOnly, StartupLog

logger = logging.getLogger("blackbox")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--debug",
    is_flag=True,
    envvar="LORA_BLACKBOX_DEBUG",
    help="Show tracebacks of errors, and the libraries' warnings and logs on the terminal.",
)
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
    _setup_logging(quiet=quiet, debug=debug)
    # Packed batches of varying length fragment CUDA's caching allocator; expandable segments avoid
    # out-of-memory errors with gigabytes reserved but unusable. Set before CUDA starts; a user's value wins.
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")


for _command in (
    eval_command,
    decode_command,
    params_command,
    container_command,
    study_command,
    optuna_command,
    downstream_command,
    report_command,
    answers_command,
    compare_command,
):
    main.add_command(_command)


def _setup_logging(*, quiet: bool, debug: bool) -> None:
    """Our lines on the terminal (``blackbox.core.logs``): the package's records, INFO and up (WARNING with
    --quiet); the libraries' logs, warnings and progress bars only with --debug. Every record, theirs included,
    reaches each evaluation's eval.log."""
    terminal = logging.StreamHandler(sys.stderr)
    terminal.setFormatter(logging.Formatter("lora-blackbox %(levelname)s: %(message)s"))
    terminal.setLevel(logging.WARNING if quiet else logging.INFO)
    if not debug:
        terminal.addFilter(OursOnly())
    root = logging.getLogger()
    root.handlers[:] = [terminal, StartupLog()]
    root.setLevel(logging.INFO)  # INFO always reaches each evaluation's eval.log
    logger.handlers[:] = []
    logger.setLevel(logging.INFO)
    logger.propagate = True
    logging.captureWarnings(True)  # the libraries' warnings: log records (logger py.warnings), not stderr lines
    if not debug:  # progress bars write to stderr themselves: off (the logs still reach eval.log)
        for variable in ("HF_HUB_DISABLE_PROGRESS_BARS", "HF_DATASETS_DISABLE_PROGRESS_BARS", "TQDM_DISABLE"):
            os.environ.setdefault(variable, "1")
    if debug:
        os.environ["LORA_BLACKBOX_DEBUG"] = "1"  # evaluation processes started from here show them too
    if quiet:  # (the libraries' logs keep their levels: they reach eval.log, not the terminal)
        os.environ["LORA_BLACKBOX_QUIET"] = "1"  # evaluation processes started from here are quiet too
