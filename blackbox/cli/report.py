"""``report``: plots, tables and one HTML page of one or more studies, from their records."""

from __future__ import annotations

from pathlib import Path

import click

from blackbox.cli.options import NeedsExtra, number_option
from blackbox.cli.protocol import exit_on_error


@click.command("report", cls=NeedsExtra, needs=("matplotlib", "scipy"), purpose="lora-blackbox report")
@click.argument("runs", nargs=-1, required=True, metavar="[LABEL=]RECORDS_OR_RUN_DIR...")
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    help="Folder for the report (default: report/ in the run folder; ./report for several runs).",
)
@click.option("--objective", help="The metric that was minimised (default: what the solver saw).")
@number_option("--top", default=10, help="Rows of the top-points table.")
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

    with exit_on_error(ctx):
        if out is None:
            first = Path(runs[0].partition("=")[2] if "=" in runs[0] else runs[0])
            out = (first if first.is_dir() else first.parent) / "report" if len(runs) == 1 else Path("report")
        files = write_report(runs, out, objective=objective, top=top, votes=votes)
        click.echo(str(files["html"]))
