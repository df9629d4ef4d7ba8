"""Generated NOMAD parameter files: what is committed is what ``params`` writes, and NOMAD accepts it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from blackbox.cli import main
from blackbox.core.errors import ConfigError
from blackbox.core.experiment import load_experiment
from blackbox.core.nomad import bb_exe_words, drop_from_cache, read_cache, render_params
from blackbox.core.space import SearchSpace

REPO = Path(__file__).resolve().parents[1]

COMMITTED = sorted((REPO / "nomad_params").glob("*.txt"))
# How each committed file is generated (the file name is the experiment name unless listed here).
GENERATED_BY: dict[str, list[str]] = {
    "demo_container": ["--experiment", "demo", "--container", "lora-blackbox:latest"],
    "demo_surrogate": ["--experiment", "demo", "--surrogate-fidelity", "0.25"],
}


def _arguments(path: Path) -> list[str]:
    return GENERATED_BY.get(path.stem, ["--experiment", path.stem])


def test_the_paper_studies_and_the_demo_are_committed() -> None:
    assert {"demo", "paper_exp1", "paper_exp2", "paper_exp3", "lora_variants", "demo_variants"} <= {
        p.stem for p in COMMITTED
    }


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: p.name)
def test_committed_file_is_what_params_generates(path: Path) -> None:
    result = CliRunner().invoke(main, ["params", *_arguments(path)])
    assert result.exit_code == 0, result.output
    assert result.stdout == path.read_text(), f"regenerate with: lora-blackbox params {' '.join(_arguments(path))}"


@pytest.mark.parametrize(("name", "budget"), [("paper_exp1", 50), ("paper_exp2", 100), ("paper_exp3", 50)])
def test_paper_budgets(name: str, budget: int) -> None:
    assert f"\nMAX_BB_EVAL {budget}\n" in (REPO / "nomad_params" / f"{name}.txt").read_text()


def _value(text: str, name: str) -> str:
    match = re.search(rf"^{name} (.*)$", text, flags=re.MULTILINE)
    assert match, name
    return match.group(1)


@pytest.mark.parametrize("name", ["demo", "paper_exp1", "paper_exp2", "paper_exp3", "lora_variants", "demo_variants"])
def test_the_space_in_the_file_is_the_experiments(name: str) -> None:
    experiment = load_experiment(name)
    space = SearchSpace.from_experiment(experiment)
    text = render_params(experiment, experiment_ref=name)
    numbers = lambda key: [float(v) for v in _value(text, key).strip("( )").split()]  # noqa: E731
    assert int(_value(text, "DIMENSION")) == space.dimension
    assert _value(text, "BB_INPUT_TYPE").strip("( )").split() == [v.type for v in space.variables]
    assert numbers("LOWER_BOUND") == [v.lower for v in space.variables]
    assert numbers("UPPER_BOUND") == [v.upper for v in space.variables]
    assert tuple(numbers("X0")) == space.x0
    assert _value(text, "BB_OUTPUT_TYPE").split() == [o.split(":")[0] for o in experiment.study.outputs]
    assert int(_value(text, "MAX_BB_EVAL")) == experiment.study.budget
    bb_exe = _value(text, "BB_EXE").strip('"').split()
    assert all(w.startswith("$") for w in bb_exe)
    assert bb_exe[:4] == ["$lora-blackbox", "$eval", "$--experiment", f"${name}"]
    for unsafe in ("HISTORY_FILE", "SOLUTION_FILE"):
        assert unsafe not in text


def test_overrides_travel_in_bb_exe_and_spaces_are_refused() -> None:
    assert bb_exe_words("demo", ("training.max_steps=5",))[-4:] == [
        "--set",
        "training.max_steps=5",
        "--set",
        "records.dir=.",
    ]
    with pytest.raises(ConfigError, match="spaces"):
        bb_exe_words("demo", ("data.train=/my data/train.jsonl",))


def test_experiment_files_are_named_by_absolute_path(tmp_path: Path, tiny_experiment: Path) -> None:
    result = CliRunner().invoke(main, ["params", "-e", str(tiny_experiment), "--set", "training.max_steps=3"])
    assert result.exit_code == 0, result.output
    assert (
        f'"$lora-blackbox $eval $--experiment ${tiny_experiment.resolve()} $--set $training.max_steps=3'
        in result.stdout
    )


# One token per BB_OUTPUT_TYPE word: the objective, x for each EXTRA_O, 1 for CNT_EVAL (the evaluation counts).
CONSTANT_BLACKBOX = "import sys\nfor line in open(sys.argv[-1]):\n    print({line!r})\n"


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: p.name)
def test_nomad_accepts_every_committed_file(tmp_path: Path, path: Path, nomad_env: dict[str, str]) -> None:
    """NOMAD's own parameter checking (the 4.5.1 binary, and the library in PyNomadBBO) reads each file:
    unknown, deprecated or malformed parameters abort it. Only BB_EXE and the budget are swapped, for
    a constant blackbox and two evaluations (NOMAD crashes when it writes the hot-restart file of a study
    that ends at its starting point: README, "Troubleshooting")."""
    text = path.read_text()
    tokens = {"OBJ": "1.5", "EXTRA_O": "x", "CNT_EVAL": "1"}
    line = " ".join(tokens[kind] for kind in _value(text, "BB_OUTPUT_TYPE").split())
    (tmp_path / "bb.py").write_text(CONSTANT_BLACKBOX.format(line=line))
    for exe in ("BB_EXE", "SURROGATE_EXE"):
        text = re.sub(rf"^{exe} .*$", f'{exe} "${sys.executable} bb.py"', text, flags=re.MULTILINE)
    text = re.sub(r"^MAX_BB_EVAL .*$", "MAX_BB_EVAL 2", text, flags=re.MULTILINE)
    (tmp_path / "param.txt").write_text(text)
    nomad = nomad_env.get("NOMAD_EXE")
    command = [nomad] if nomad else [sys.executable, "-m", "blackbox.studies.pynomad"]
    result = subprocess.run(
        [*command, str(tmp_path / "param.txt")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Blackbox evaluations:" in result.stdout
    evaluated = [e for e in read_cache(tmp_path / "cache.txt") if e.ok]  # (surrogate-only points are not)
    assert len(evaluated) == 2 and all(e.outputs[0] == "1.5" for e in evaluated)


def test_drop_from_cache_removes_failed_entries_unless_told(tmp_path: Path) -> None:
    cache = tmp_path / "cache.txt"
    cache.write_text(
        "CACHE_HITS 0\nBB_OUTPUT_TYPE OBJ\n"
        "( 1   0                ) BB_EVAL_OK ( 1.5 ) SURROGATE_EVAL_NOT_STARTED ( )\n"
        "( 3   0                ) BB_EVAL_ERROR (  ) SURROGATE_EVAL_NOT_STARTED ( )\n"
        "( 4   -0.5             ) BB_EVAL_FAILED ( nan ) SURROGATE_EVAL_NOT_STARTED ( )\n"
    )
    assert drop_from_cache(cache, [(3.0, 0.0), (1.0, 0.0), (9.0, 9.0)]) == 1
    assert [e.point for e in read_cache(cache)] == [(1.0, 0.0), (4.0, -0.5)]
    assert cache.read_text().startswith("CACHE_HITS 0\nBB_OUTPUT_TYPE OBJ\n")
    # successful_too: the successful entry of a given point goes as well, the others stay.
    assert drop_from_cache(cache, [(1.0, 0.0)], successful_too=True) == 1
    assert [e.point for e in read_cache(cache)] == [(4.0, -0.5)]
