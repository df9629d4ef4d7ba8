"""A slim install: ``pip install lora-blackbox`` runs ``eval`` and a NOMAD study without any extra, and a part whose
extra is missing says so in one line with its install command (``blackbox.core.extras``).

The extras are hidden from the subprocesses (a ``sitecustomize`` that makes their modules unimportable, as if
they were not installed): the same processes a fresh virtual environment would run."""

from __future__ import annotations

from pathlib import Path

import pytest

from blackbox.core.extras import EXTRA_OF, missing
from tests.records import read_records

# Every optional module but those of the demo (its model and data come from it) and bitsandbytes (gpu): what the
# base install lacks. peft and transformers look the optional ones up and go on without them.
HIDDEN = sorted(set(EXTRA_OF) - {"gguf", "chitchat_dataset"})
SITECUSTOMIZE = """
import sys
for name in {hidden!r}:
    sys.modules[name] = None  # import fails as for a module that is not installed
"""


def _hiding(folder: Path, hidden: list[str]) -> dict[str, str]:
    """The environment of a process in which the ``hidden`` modules are not installed."""
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(SITECUSTOMIZE.format(hidden=hidden))
    return {"PYTHONPATH": str(folder)}


@pytest.fixture
def without_extras(tmp_path: Path) -> dict[str, str]:
    return _hiding(tmp_path / "slim", HIDDEN)


def test_missing_names_the_extra_and_its_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    assert missing("json", purpose="x") is None
    monkeypatch.setitem(sys.modules, "optuna", None)
    assert missing("json", "optuna", purpose="lora-blackbox optuna") == (
        "lora-blackbox optuna needs optuna, which is not installed: pip install 'lora-blackbox[optuna]'"
    )


@pytest.mark.parametrize(
    ("args", "extra"),
    [
        (["optuna", "-e", "{experiment}", "--n-trials", "1", "--dir", "{tmp}/o"], "optuna"),
        (["optuna", "-e", "{experiment}", "--n-trials", "1", "--sampler", "cmaes", "--dir", "{tmp}/o"], "optuna"),
        (["report", "{tmp}/no-study"], "report"),
        (["downstream", "{tmp}/no-study", "--out", "{tmp}/o/scores.jsonl"], "assess"),
        (["compare", "{tmp}/answers.jsonl"], "compare"),
    ],
    ids=["optuna", "cmaes", "report", "downstream", "compare"],
)
def test_a_part_without_its_extra_fails_with_one_line(
    tmp_path, tiny_experiment, run_blackbox, without_extras, args, extra
) -> None:
    (tmp_path / "answers.jsonl").write_text(
        '{"question_id": "q", "question": "?", "model": "base", "answer": "a"}\n'
        '{"question_id": "q", "question": "?", "model": "tuned", "answer": "b"}\n'
    )
    (tmp_path / "no-study").mkdir()
    (tmp_path / "no-study" / "records.jsonl").write_text("")
    args = [a.format(experiment=tiny_experiment, tmp=tmp_path) for a in args]
    # CMA-ES: Optuna is installed, its sampler's package is not.
    env = _hiding(tmp_path / "no-cmaes", ["cmaes"]) if "cmaes" in args else without_extras
    result = run_blackbox(args, env=env)
    stderr = result.stderr.decode()
    assert result.returncode == 1 and result.stdout == b"", stderr
    [line] = stderr.splitlines()
    assert line.startswith("lora-blackbox ERROR: ") and line.endswith(f"pip install 'lora-blackbox[{extra}]'"), line
    assert not (tmp_path / "o").exists()  # nothing made before the check (optuna's --dir)


@pytest.mark.parametrize(
    ("command", "extra"), [("optuna", "optuna"), ("report", "report"), ("downstream", "assess"), ("compare", "compare")]
)
def test_the_help_of_a_command_says_first_that_its_extra_is_missing(
    run_blackbox, without_extras, command: str, extra: str
) -> None:
    slim = run_blackbox([command, "--help"], env=without_extras)
    first, *rest = slim.stdout.decode().splitlines()
    assert slim.returncode == 0 and first.endswith(f"which is not installed: pip install 'lora-blackbox[{extra}]'")
    assert rest[1].startswith(f"Usage: lora-blackbox {command} ")  # then the help as usual
    whole = run_blackbox([command, "--help"])  # this install has every extra: the help alone
    assert whole.stdout.decode().startswith(f"Usage: lora-blackbox {command} "), whole.stdout.decode()[:300]


@pytest.mark.slow
def test_a_nomad_study_runs_without_any_extra(tmp_path, make_study, run_nomad, nomad_env, without_extras) -> None:
    """The PyNomadBBO study (and the binary's) of a slim install: every evaluation trains, none needs an extra."""
    param = make_study(budget=2, steps=2)
    env = {**nomad_env, **without_extras}
    done = run_nomad(param, tmp_path / "study", env)
    assert done.returncode == 0, done.stderr[-3000:]
    records = read_records(tmp_path / "study" / "records.jsonl")
    assert [r["status"] for r in records] == ["OK", "OK"]
