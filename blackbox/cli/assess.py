"""Assessment of a study's adapters beyond the validation loss: ``downstream`` (benchmark scores), ``answers``
(the models' answers to questions) and ``compare`` (a blind rating page, or a judge model)."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from blackbox.cli.options import Selection, optional_experiment_options, selection_options
from blackbox.cli.protocol import exit_on_error
from blackbox.core.errors import SetupError
from blackbox.core.experiment import load_experiment
from blackbox.core.extras import require

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
        generate_answers(chosen, experiment, asked, out, sampling=sampling, seed=seed, raw_prompt=prompt == "raw")
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
    answers_files: tuple[Path, ...],
    questions: str | None,
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
    """Blind pairwise rating of the answers of ANSWERS_FILE... (lora-blackbox answers, or FastChat's answers files,
    one model each: their questions come from --questions): a web page for people, or a judge model.

    The page (http://127.0.0.1:8000/ by default; its address is printed on stderr) shows one question and two
    answers of different models at a time, in random order and unlabelled; each rater, by name, picks A, B, tie
    or both bad, and never sees a pair twice. Every vote is saved at once: the same command resumes. --results
    prints win rates with 95% confidence intervals, Bradley-Terry strengths, votes per rater and the raters'
    agreement; --csv exports the votes. --judge MODEL asks a judge model about every pair in both orders
    (MT-Bench's pairwise prompt); its votes count as rater judge:MODEL.
    """
    from blackbox.assessment.answers import question_file, read_answers, read_questions, with_questions
    from blackbox.assessment.compare.pairs import index_answers
    from blackbox.core.folders import VOTES_FILE
    from blackbox.core.votes import fetch_votes, votes_db
    from blackbox.reports.preferences import group_preferences, results_text, votes_csv

    with exit_on_error(ctx):
        lines = [line for answers_file in answers_files for line in read_answers(answers_file)]
        known = read_questions(question_file(questions)[0]) if questions else []
        answers = index_answers(with_questions(lines, known))
        db = db or answers_files[0].parent / VOTES_FILE
        if judge_model:
            from blackbox.assessment.compare.judge import judge_with_model

            added = judge_with_model(
                answers,
                db,
                model=judge_model,
                device=device,
                max_new_tokens=judge_max_new_tokens,
                batch_size=judge_batch_size,
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
        require("starlette", "uvicorn", "jinja2", "multipart", purpose="the rating page of lora-blackbox compare")
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
