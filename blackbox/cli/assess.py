"""Assessment of a study's adapters beyond the validation loss: ``downstream`` (benchmark scores), ``answers``
(the models' answers to questions) and ``compare`` (a blind rating page, or a judge model)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import click

from blackbox.cli.options import Selection, optional_experiment_options, selection_options
from blackbox.cli.protocol import exit_on_error
from blackbox.core.errors import SetupError
from blackbox.core.experiment import load_experiment
from blackbox.core.extras import require

if TYPE_CHECKING:
    from blackbox.assessment.answers import Engine
    from blackbox.assessment.compare.pairs import Answers

logger = logging.getLogger("blackbox")


@click.command("downstream")
@click.argument("study", required=False, type=click.Path(exists=True, file_okay=False, path_type=Path))
@selection_options
@click.option("--tasks", metavar="T[:METRIC],...", help="lm-eval tasks or groups (default: [[downstream]]).")
@click.option("--include-path", default="", metavar="DIR", help="A folder of lm-eval task YAMLs of your own.")
@click.option("--num-fewshot", type=click.IntRange(min=0), help="Few-shot examples (default: each task's).")
@click.option("--limit", type=click.FloatRange(min=0), default=0, help="Examples per task (<1: a fraction).")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--allow-code-execution", is_flag=True, help="Let tasks run model-written code (HumanEval).")
@optional_experiment_options
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Default: STUDY/downstream.jsonl.")
@click.pass_context
def downstream_command(
    ctx: click.Context,
    study: Path | None,
    selection: Selection,
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
    from blackbox.core.folders import DOWNSTREAM_FILE

    with exit_on_error(ctx):
        candidates = selection.candidates(study, base=False, allow_none=True)
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


@click.command("answers")
@click.argument("study_dir", required=False, type=click.Path(path_type=Path, file_okay=False))
@click.option(
    "--questions",
    metavar="FILE|SET",
    help='Question file: JSON Lines (lora-blackbox\'s {"id": ..., "question": ...}, or FastChat\'s question files) '
    "or plain text, one question a line; or a shipped set: vicuna80 (FastChat's 80 Vicuna questions), paper30 (the "
    "30 of the reference study's human study). Required unless --preset names one.",
)
@click.option(
    "--preset",
    type=click.Choice(["paper"]),
    help="paper: the reference study's human study (paper30, raw questions, temperature 0.7, top-k 50, top-p 1, "
    "1,024 new tokens); options given here win.",
)
@selection_options
@click.option("--base/--no-base", default=True, show_default=True, help="Include the base model (the reference).")
@optional_experiment_options
@click.option(
    "--out", type=click.Path(path_type=Path, dir_okay=False), help="Answers file (default: STUDY_DIR/answers.jsonl)."
)
@click.option(
    "--prompt",
    type=click.Choice(["template", "raw"]),
    default="template",
    show_default=True,
    help="template: each question in the experiment's prompt template; raw: the question as it is.",
)
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--temperature", type=click.FloatRange(min=0, min_open=True), default=0.9, show_default=True)
@click.option("--top-p", type=click.FloatRange(min=0, max=1, min_open=True), default=0.9, show_default=True)
@click.option("--top-k", type=click.IntRange(min=0), default=0, show_default=True, help="0: no top-k cut.")
@click.option("--greedy", is_flag=True, help="Greedy decoding instead of sampling (temperature, top-p, top-k unused).")
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed, same answers.")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True, help="Questions per batch.")
@click.option(
    "--engine",
    type=click.Choice(["transformers", "vllm"]),
    default="transformers",
    show_default=True,
    help="vllm: vLLM's engine and LoRA support, where vLLM is installed (a GPU); each adapter is checked to "
    "change the base model's answers.",
)
@click.pass_context
def answers_command(
    ctx: click.Context,
    study_dir: Path | None,
    questions: str | None,
    preset: str | None,
    selection: Selection,
    base: bool,
    experiment_ref: str | None,
    overrides: tuple[str, ...],
    out: Path | None,
    prompt: str,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    top_k: int,
    greedy: bool,
    seed: int,
    batch_size: int,
    engine: Engine,
) -> None:
    """Answers of the base model and of chosen adapters to the questions of a file, for compare. Prints the
    answers file's path.

    Every model answers with the same prompt, sampling settings and seed (the same command gives the same
    answers); the base model is loaded once. Models already answered in the file with the same settings are kept,
    so an interrupted call resumes. Examples:

    \b
        lora-blackbox answers runs/demo --best --worst --questions examples/demo_questions.jsonl
        lora-blackbox answers runs/paper_exp2 --best --worst --preset paper
    """
    from blackbox.assessment.answers import PRESETS, generate_answers, question_file, read_questions
    from blackbox.assessment.selection import experiment_of
    from blackbox.core.folders import ANSWERS_FILE
    from blackbox.training.generation import Sampling

    with exit_on_error(ctx):
        if preset:
            chosen_preset = PRESETS[preset]

            def given(name: str) -> bool:
                return ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT

            questions = questions or chosen_preset.questions
            prompt = prompt if given("prompt") else chosen_preset.prompt
            max_new_tokens = max_new_tokens if given("max_new_tokens") else chosen_preset.max_new_tokens
            temperature = temperature if given("temperature") else chosen_preset.temperature
            top_p = top_p if given("top_p") else chosen_preset.top_p
            top_k = top_k if given("top_k") else chosen_preset.top_k
        if not questions:
            raise click.UsageError("give --questions FILE (or a shipped set), or --preset")
        path, ids = question_file(questions)
        asked = read_questions(path, ids=ids)
        chosen = selection.candidates(study_dir, base=base)
        experiment_given = load_experiment(experiment_ref, overrides) if experiment_ref else None
        experiment = experiment_of(chosen, experiment_given, study_dir)
        out = out or (study_dir or Path()) / ANSWERS_FILE
        sampling = Sampling(max_new_tokens, temperature, top_p, greedy, batch_size, top_k)
        generate_answers(
            chosen, experiment, asked, out, sampling=sampling, seed=seed, raw_prompt=prompt == "raw", engine=engine
        )
        click.echo(str(out))


@click.command("compare")
@click.argument(
    "answers_files", metavar="ANSWERS_FILE...", nargs=-1, required=True, type=click.Path(path_type=Path, dir_okay=False)
)
@click.option(
    "--questions",
    metavar="FILE|SET",
    help="The questions' texts where the answers lack them (FastChat's answers files): a question file or a "
    "shipped set (vicuna80).",
)
@click.option(
    "--db",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Votes file (SQLite; default: votes.sqlite beside the first ANSWERS_FILE). The same file resumes.",
)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on (beyond 127.0.0.1: rater links, or --open).",
)
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="0: any free port.")
@click.option(
    "--raters",
    metavar="NAME,...|@FILE",
    help="Create a secret link for each rater (names, or @FILE: one a line), print them (NAME, tab, link) and "
    "exit. From then on the page takes votes through links only.",
)
@click.option(
    "--links",
    "links_file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Append the new links to this file (readable by you only) instead of printing them.",
)
@click.option(
    "--url",
    metavar="URL",
    help="The page's address as raters reach it, for their links (behind a proxy: https://rate.example.org/; "
    "default: http://HOST:PORT/).",
)
@click.option("--revoke", multiple=True, metavar="NAME", help="Revoke a rater's link (repeatable; votes stay), exit.")
@click.option(
    "--open",
    "open_to_anyone",
    is_flag=True,
    help="Serve the page without rater links beyond 127.0.0.1: anyone who reaches it rates, under any name.",
)
@click.option("--results", is_flag=True, help="Print the results tables on stdout instead of serving the page.")
@click.option(
    "--csv", "csv_file", type=click.Path(path_type=Path, dir_okay=False), help="Write every vote to this CSV file."
)
@click.option(
    "--judge",
    "judge_model",
    metavar="MODEL",
    help="Rate every pair with a judge, then print the results: a hub id or folder (transformers), or "
    "openai:MODEL behind an OpenAI-compatible endpoint (--judge-url).",
)
@click.option(
    "--judge-url",
    metavar="URL",
    help="The endpoint's base URL for openai:MODEL (e.g. http://127.0.0.1:8001/v1; default: $OPENAI_BASE_URL, "
    "else OpenAI's).",
)
@click.option(
    "--judge-api-key-env",
    default="OPENAI_API_KEY",
    show_default=True,
    metavar="VARIABLE",
    help="The environment variable holding the endpoint's API key (never logged or stored).",
)
@click.option(
    "--judge-rpm",
    type=click.FloatRange(min=0),
    default=0,
    show_default=True,
    help="Requests per minute to the endpoint at most (0: no limit).",
)
@click.option(
    "--judge-retries",
    type=click.IntRange(min=0),
    default=6,
    show_default=True,
    help="Retries of a failed request to the endpoint (exponential backoff; Retry-After honoured).",
)
@click.option(
    "--judge-timeout",
    type=click.FloatRange(min=1),
    default=600,
    show_default=True,
    help="Seconds one request to the endpoint may take before it is retried (a slow server: raise it).",
)
@click.option("--judge-max-new-tokens", type=click.IntRange(min=1), default=512, show_default=True)
@click.option(
    "--judge-batch-size",
    type=click.IntRange(min=1),
    default=8,
    show_default=True,
    help="Prompts generated together (a local judge) or requests in flight at once (openai:MODEL).",
)
@click.option("--device", default="auto", show_default=True, help="The judge's device: auto, cpu, cuda or cuda:N.")
@click.pass_context
def compare_command(
    ctx: click.Context,
    answers_files: tuple[Path, ...],
    questions: str | None,
    db: Path | None,
    host: str,
    port: int,
    raters: str | None,
    links_file: Path | None,
    url: str | None,
    revoke: tuple[str, ...],
    open_to_anyone: bool,
    results: bool,
    csv_file: Path | None,
    judge_model: str | None,
    judge_url: str | None,
    judge_api_key_env: str,
    judge_rpm: float,
    judge_retries: int,
    judge_timeout: float,
    judge_max_new_tokens: int,
    judge_batch_size: int,
    device: str,
) -> None:
    """Blind pairwise rating of the answers of ANSWERS_FILE... (lora-blackbox answers, or FastChat's answers files,
    one model each: their questions come from --questions): a web page for people, or a judge model.

    The page (http://127.0.0.1:8000/ by default; its address is printed on stderr) shows one question and two
    answers of different models at a time, in random order and unlabelled; each rater picks A, B, tie or both
    bad, and never sees a pair twice. Every vote is saved at once: the same command resumes. Raters on other
    machines get secret links (--raters alice,bob: printed once; --revoke NAME); without links the page asks for
    a name and listens on 127.0.0.1 only (--open to override). --results prints win rates with 95% confidence
    intervals, Bradley-Terry strengths, votes per rater, the raters' agreement and position bias; --csv exports
    the votes. --judge MODEL asks a judge model about every pair in both orders (MT-Bench's pairwise prompt):
    a local model, or openai:MODEL behind an endpoint; its votes count as rater judge:MODEL. Manual:
    docs/human-study.md.
    """
    from blackbox.assessment.answers import question_file, read_answers, read_questions, with_questions
    from blackbox.assessment.compare.pairs import index_answers
    from blackbox.core.folders import VOTES_FILE
    from blackbox.core.votes import fetch_votes, votes_db
    from blackbox.reports.preferences import group_preferences, results_text, votes_csv

    if judge_url and not (judge_model or "").startswith("openai:"):
        raise click.UsageError("--judge-url is for a judge behind an endpoint: --judge openai:MODEL")
    if links_file and not raters:
        raise click.UsageError("--links writes the links that --raters creates: give --raters too")
    with exit_on_error(ctx):
        lines = [line for answers_file in answers_files for line in read_answers(answers_file)]
        known = read_questions(question_file(questions)[0]) if questions else []
        answers = index_answers(with_questions(lines, known))
        db = db or answers_files[0].parent / VOTES_FILE
        if raters or revoke:
            _manage_links(db, names=raters, revoke=revoke, links_file=links_file, url=url or _page_url(host, port))
            return
        if judge_model:
            _judge(
                answers,
                db,
                judge_model,
                url=judge_url,
                api_key_env=judge_api_key_env,
                requests_per_minute=judge_rpm,
                retries=judge_retries,
                timeout_s=judge_timeout,
                max_new_tokens=judge_max_new_tokens,
                batch_size=judge_batch_size,
                device=device,
            )
        if judge_model or results or csv_file:
            with votes_db(db) as connection:
                votes = fetch_votes(connection)
            if csv_file:
                csv_file.write_text(votes_csv(votes), encoding="utf-8")
                logger.info("%d votes written to %s", len(votes), csv_file)
            if judge_model or results:
                click.echo(results_text(group_preferences(votes)), nl=False)
            return
        _serve(answers, db, host=host, port=port, open_to_anyone=open_to_anyone)


_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _serve(answers: Answers, db: Path, *, host: str, port: int, open_to_anyone: bool) -> None:
    require("starlette", "uvicorn", "jinja2", "multipart", purpose="the rating page of lora-blackbox compare")
    from blackbox.assessment.compare.app import build_app, serve
    from blackbox.core.votes import links_required, votes_db

    with votes_db(db) as connection:
        by_link = links_required(connection)
    if not by_link and host not in _LOOPBACK and not open_to_anyone:
        raise click.UsageError(
            f"without rater links, the page on {host} would take votes from anyone who reaches it, under any name: "
            "create links first (--raters NAME,...), or say --open"
        )
    if not by_link and open_to_anyone:
        logger.warning("the page has no rater links: anyone who reaches it can rate, under any name")

    def ready(url: str) -> None:
        mode = "votes through rater links only" if by_link else "open: raters give a name"
        click.echo(
            f"lora-blackbox: rating page at {url} ({len(answers.pairs)} pairs; {mode}; votes in {db}; Ctrl-C stops)",
            err=True,
        )

    try:
        serve(build_app(answers, db, open_to_anyone=open_to_anyone), host=host, port=port, ready=ready)
    except OSError as e:
        raise SetupError(f"cannot listen on {host}:{port}: {e}") from e
    except KeyboardInterrupt:  # uvicorn stops cleanly on Ctrl-C, then raises it again: the page's normal end
        logger.info("stopped; the votes are in %s (the same command resumes)", db)


def _page_url(host: str, port: int) -> str:
    """The page's address for rater links when --url is not given."""
    import socket

    shown = socket.getfqdn() if host in ("0.0.0.0", "::", "") else host  # a wildcard is no address to visit
    return f"http://[{shown}]:{port}/" if ":" in shown else f"http://{shown}:{port}/"


def _manage_links(db: Path, *, names: str | None, revoke: tuple[str, ...], links_file: Path | None, url: str) -> None:
    """Revoke the links of ``revoke``, then create links for ``names`` (NAME,... or @FILE), printed on stdout or
    appended to ``links_file``; the tokens are shown here only."""
    import os

    from blackbox.core.votes import RATER_NAME, add_rater_link, name_rule, revoke_rater_link, votes_db

    wanted = _rater_names(names) if names else []
    for name in wanted:
        if not RATER_NAME.match(name):
            raise click.BadParameter(name_rule(name), param_hint="--raters")
    base = url if url.endswith("/") else url + "/"
    created: list[tuple[str, str]] = []
    with votes_db(db) as connection:
        for name in revoke:
            if revoke_rater_link(connection, name):
                logger.info("%s's link revoked (their votes stay)", name)
            else:
                logger.warning("%s has no valid link to revoke", name)
        for name in wanted:
            token = add_rater_link(connection, name)
            if token is None:
                logger.warning("%s has a link already (--revoke %s, then --raters %s, for a new one)", name, name, name)
            else:
                created.append((name, f"{base}r/{token}"))
    lines = "".join(f"{name}\t{link}\n" for name, link in created)
    if links_file and created:
        descriptor = os.open(links_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(descriptor, "a", encoding="utf-8") as out:
            out.write(lines)
        logger.info("%d rater links appended to %s", len(created), links_file)
    elif created:
        click.echo(lines, nl=False)
    if created:
        logger.info("links are shown this once (the votes file keeps their hashes); votes in %s", db)


def _rater_names(value: str) -> list[str]:
    if not value.startswith("@"):
        return [name.strip() for name in value.split(",") if name.strip()]
    path = Path(value[1:])
    try:
        return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except OSError as e:
        raise SetupError(f"cannot read the raters' names: {e}") from e


def _judge(
    answers: Answers,
    db: Path,
    judge_model: str,
    *,
    url: str | None,
    api_key_env: str,
    requests_per_minute: float,
    retries: int,
    timeout_s: float,
    max_new_tokens: int,
    batch_size: int,
    device: str,
) -> None:
    import time

    from blackbox.assessment.compare.judge import ENDPOINT_PREFIX, judge_with_endpoint, judge_with_model

    started = time.perf_counter()
    if judge_model.startswith(ENDPOINT_PREFIX):
        added = judge_with_endpoint(
            answers,
            db,
            model=judge_model.removeprefix(ENDPOINT_PREFIX),
            url=url,
            api_key_env=api_key_env,
            max_new_tokens=max_new_tokens,
            concurrency=batch_size,
            requests_per_minute=requests_per_minute,
            retries=retries,
            timeout_s=timeout_s,
        )
    else:
        added = judge_with_model(
            answers, db, model=judge_model, device=device, max_new_tokens=max_new_tokens, batch_size=batch_size
        )
    logger.info("judge %s: %d new votes in %s (%.1f s)", judge_model, added, db, time.perf_counter() - started)
