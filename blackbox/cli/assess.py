"""Assessment of a study's adapters beyond the validation loss: ``downstream`` (benchmark scores), ``answers``
(the models' answers to questions) and ``compare`` (a blind rating page, or a judge model)."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import click

from blackbox.cli.options import (
    NeedsExtra,
    Selection,
    number_option,
    optional_experiment_options,
    selection_options,
)
from blackbox.cli.protocol import exit_on_error
from blackbox.core.errors import SetupError
from blackbox.core.experiment import load_experiment
from blackbox.core.extras import require

if TYPE_CHECKING:
    from blackbox.assessment.answers import Engine
    from blackbox.assessment.compare.pairs import Answers

logger = logging.getLogger("blackbox")

_PAGE_MODULES = ("starlette", "uvicorn", "jinja2", "multipart")  # the rating page's (the compare extra)


@click.command("downstream", cls=NeedsExtra, needs=("lm_eval",), purpose="lora-blackbox downstream")
@click.argument("study", required=False, type=click.Path(exists=True, file_okay=False, path_type=Path))
@selection_options
@click.option("--tasks", metavar="T[:METRIC],...", help="lm-eval tasks or groups (default: [[downstream]]).")
@click.option("--include-path", default="", metavar="DIR", help="A folder of lm-eval task YAMLs of your own.")
@click.option("--num-fewshot", type=click.IntRange(min=0), help="Few-shot examples (default: each task's).")
@click.option("--limit", type=click.FloatRange(min=0), default=0, help="Examples per task (<1: a fraction).")
@number_option("--batch-size", default=8)
@click.option("--allow-code-execution", is_flag=True, help="Let tasks run model-written code (HumanEval).")
@click.option(
    "--decoding",
    type=click.Choice(["task", "model"]),
    help="Decode generations as each task says (the InstructEval tasks: greedy), or as the model's own generation "
    "config says (how InstructEval generated: Llama-2-7b-hf sampled); default: each benchmark's.",
)
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
    decoding: str | None,
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
            decoding=decoding,
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
@number_option("--max-new-tokens", default=256)
@click.option("--temperature", type=click.FloatRange(min=0, min_open=True), default=0.9, show_default=True)
@click.option("--top-p", type=click.FloatRange(min=0, max=1, min_open=True), default=0.9, show_default=True)
@number_option("--top-k", default=0, minimum=0, help="0: no top-k cut.")
@click.option("--greedy", is_flag=True, help="Greedy decoding instead of sampling (temperature, top-p, top-k unused).")
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed, same answers.")
@number_option("--batch-size", default=8, help="Questions per batch.")
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


@click.command(
    "compare", cls=NeedsExtra, needs=_PAGE_MODULES, purpose="the rating page of lora-blackbox compare", only_help=True
)
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
    help="The page's address as raters reach it (behind a proxy: https://rate.example.org/; default: "
    "http://HOST:PORT/): for their links, and, serving, the one address besides HOST:PORT the page answers at.",
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
@number_option("--judge-rpm", default=0.0, minimum=0, help="Requests per minute to the endpoint at most (0: no limit).")
@number_option(
    "--judge-retries",
    default=6,
    minimum=0,
    help="Retries of a failed request to the endpoint (exponential backoff; Retry-After honoured).",
)
@number_option(
    "--judge-timeout",
    default=600.0,
    help="Seconds one request to the endpoint may take before it is retried (a slow server: raise it).",
)
@click.option(
    "--judge-allow-http",
    is_flag=True,
    help="Send the API key to an http:// --judge-url on another machine (readable on the way; default: https:// "
    "only, or a loopback address).",
)
@number_option("--judge-max-new-tokens", default=512)
@number_option(
    "--judge-batch-size",
    default=8,
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
    judge_allow_http: bool,
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
    from blackbox.assessment.compare.votes import votes_db
    from blackbox.core.folders import VOTES_FILE
    from blackbox.reports.preferences import group_preferences, results_text, votes_csv
    from blackbox.reports.votes import fetch_votes

    if (judge_url or judge_allow_http) and not (judge_model or "").startswith("openai:"):
        raise click.UsageError(
            "--judge-url and --judge-allow-http are for a judge behind an endpoint: --judge openai:MODEL"
        )
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
                allow_http=judge_allow_http,
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
        _serve(answers, db, host=host, port=port, url=url, open_to_anyone=open_to_anyone)


def _serve(answers: Answers, db: Path, *, host: str, port: int, url: str | None, open_to_anyone: bool) -> None:
    require(*_PAGE_MODULES, purpose="the rating page of lora-blackbox compare")
    from blackbox.assessment.compare.addresses import is_loopback, page_hosts, page_origin
    from blackbox.assessment.compare.app import build_app, listen, serve
    from blackbox.assessment.compare.votes import links_required, votes_db

    with votes_db(db) as connection:
        by_link = links_required(connection)
    if not by_link and not is_loopback(host) and not open_to_anyone:
        raise click.UsageError(
            f"without rater links, the page on {host} would take votes from anyone who reaches it, under any name: "
            "create links first (--raters NAME,...), or say --open"
        )
    if not by_link and open_to_anyone:
        logger.warning("the page has no rater links: anyone who reaches it can rate, under any name")
    if by_link and not is_loopback(host):
        logger.warning(
            "the page serves rater links over plain HTTP on %s: anyone on the way can read a rater's link; serve it "
            "on 127.0.0.1 behind a TLS proxy (docs/human-study.md)",
            host,
        )
    try:
        sock = listen(host, port)
    except OSError as e:
        raise SetupError(f"cannot listen on {host}:{port}: {e}") from e
    with sock:
        bound = sock.getsockname()[1]  # port 0: the free port it got
        app = build_app(
            answers,
            db,
            hosts=page_hosts(host, bound, url),
            origins=frozenset({page_origin(url)} if url else ()),
            open_to_anyone=open_to_anyone,
        )
        mode = "votes through rater links only" if by_link else "open: raters give a name"
        click.echo(
            f"lora-blackbox: rating page at {_page_url(host, bound)} ({len(answers.pairs)} pairs; {mode}; "
            f"votes in {db}; Ctrl-C stops)",
            err=True,
        )
        try:
            serve(app, sock)
        except KeyboardInterrupt:  # uvicorn stops cleanly on Ctrl-C, then raises it again: the page's normal end
            logger.info("stopped; the votes are in %s (the same command resumes)", db)


def _page_url(host: str, port: int) -> str:
    """The page's address for rater links when --url is not given."""
    import socket

    from blackbox.assessment.compare.addresses import WILDCARDS, host_header

    shown = socket.getfqdn() if host in WILDCARDS else host  # a wildcard is no address to visit
    return f"http://{host_header(shown, port)}/"


def _manage_links(db: Path, *, names: str | None, revoke: tuple[str, ...], links_file: Path | None, url: str) -> None:
    """Revoke the links of ``revoke``, then create links for ``names`` (NAME,... or @FILE), printed on stdout or
    appended to ``links_file`` (opened first: a file that cannot take them loses no link); the tokens are shown
    here only."""
    from blackbox.assessment.compare.links import open_links_file
    from blackbox.assessment.compare.votes import (
        add_rater_link,
        is_rater_name,
        name_rule,
        normal_name,
        revoke_rater_link,
        votes_db,
    )

    wanted = [normal_name(name) for name in _rater_names(names)] if names else []
    for name in wanted:
        if not is_rater_name(name):
            raise click.BadParameter(name_rule(name), param_hint="--raters")
    base = url if url.endswith("/") else url + "/"
    created: list[tuple[str, str]] = []
    with contextlib.ExitStack() as stack:
        out = stack.enter_context(open_links_file(links_file)) if links_file and wanted else None
        with votes_db(db) as connection:
            for name in revoke:
                if revoke_rater_link(connection, name):
                    logger.info("%s's link revoked (their votes stay)", name)
                else:
                    logger.warning("%s has no valid link to revoke", name)
            for name in wanted:
                token = add_rater_link(connection, name)
                if token is None:
                    logger.warning(
                        "%s has a link already (--revoke %s, then --raters %s, for a new one)", name, name, name
                    )
                else:
                    created.append((name, f"{base}r/{token}"))
        lines = "".join(f"{name}\t{link}\n" for name, link in created)
        if out is not None and created:
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
    allow_http: bool,
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
            allow_http=allow_http,
        )
    else:
        added = judge_with_model(
            answers, db, model=judge_model, device=device, max_new_tokens=max_new_tokens, batch_size=batch_size
        )
    logger.info("judge %s: %d new votes in %s (%.1f s)", judge_model, added, db, time.perf_counter() - started)
