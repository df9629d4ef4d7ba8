"""Optuna's pruners and warm starts on the tiny model: an earlier study's finished evaluations seed new ones (Optuna's
trials, NOMAD's cache and starting points) without training them again; each pruner prunes a trial, in the
``lora-blackbox eval`` subprocess or in process, and its record is STOPPED; another search space is refused."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from blackbox.core.nomad import WARM_START_MARKER, read_cache
from tests.conftest import STUDY_OUTPUTS
from tests.records import read_records

# One worker runs the module: the earlier study every test starts from then runs once, not once per worker.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("earlier-study")]

CURVE = ["validation.checkpoints=[0.25,0.5,0.75]", "validation.checkpoint_rows=16", "stopping.min_finished=1"]


def _optuna(blackbox_cmd: list[str], args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    sets = [word for item in CURVE for word in ("--set", item)]
    command = [*blackbox_cmd, "optuna", *args, *sets, "--sampler", "random"]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=900, check=False)


@pytest.fixture(scope="module")
def earlier(tmp_path_factory: pytest.TempPathFactory, write_tiny_experiment, blackbox_cmd: list[str]) -> dict:
    """An Optuna random search of 3 trials, each with a learning curve: the earlier study of the others."""
    tmp = tmp_path_factory.mktemp("earlier")
    experiment = write_tiny_experiment(
        tmp / "experiment.toml", space="lr_two_starts", steps=8, outputs=STUDY_OUTPUTS, records=tmp / "unused"
    )
    folder = tmp / "earlier"
    result = _optuna(blackbox_cmd, ["-e", str(experiment), "--n-trials", "3", "--seed", "3", "--in-process",
                                    "--dir", str(folder)], tmp)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    records = read_records(folder / "records.jsonl")
    assert [r["status"] for r in records] == ["OK"] * 3 and all(len(r["curve"]) == 3 for r in records)
    return {"experiment": experiment, "folder": folder, "records": records, "tmp": tmp}


@pytest.mark.parametrize(
    ("pruner", "in_process"),
    [("median", False), ("successive-halving", True), ("hyperband", False)],
)
def test_each_pruner_prunes_a_trial_of_a_warm_started_study(
    earlier: dict, blackbox_cmd: list[str], tmp_path: Path, pruner: str, in_process: bool
) -> None:
    folder = tmp_path / "study"
    args = ["-e", str(earlier["experiment"]), "--n-trials", "3", "--seed", "5", "--pruner", pruner]
    args += ["--warm-start", str(earlier["folder"]), "--dir", str(folder), *(["--in-process"] if in_process else [])]
    result = _optuna(blackbox_cmd, args, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    assert summary["counted_trials"] == 3 and summary["states"].get("PRUNED", 0) >= 1
    trials = optuna.load_study(study_name=summary["study_name"], storage=summary["storage"]).trials
    # The warm start: the earlier evaluations are trials of the new study, with their curves; not counted, and
    # not trained again (the new folder's records are the new trials').
    warm = [t for t in trials if "warm_start" in t.user_attrs]
    assert {t.user_attrs["run_id"] for t in warm} == {r["run_id"] for r in earlier["records"]}
    assert all(t.state is TrialState.COMPLETE and len(t.intermediate_values) == 3 for t in warm)
    records = read_records(folder / "records.jsonl")
    assert len(records) == 3 and not {r["run_id"] for r in records} & {r["run_id"] for r in earlier["records"]}
    # A pruned trial is PRUNED in Optuna and STOPPED in its record: stopped at a checkpoint, with its curve.
    by_run_id = {r["run_id"]: r for r in records}
    pruned = [t for t in trials if t.state is TrialState.PRUNED]
    assert pruned and all("warm_start" not in t.user_attrs for t in pruned)
    for trial in pruned:
        record = by_run_id[trial.user_attrs["run_id"]]
        assert record["status"] == "STOPPED" and record["stopped"]["rule"] == f"optuna:{pruner}"
        assert record["metrics"]["train_steps"] == record["stopped"]["step"] < 8
        assert [p["step"] for p in record["curve"]] == sorted(trial.intermediate_values)
        assert trial.user_attrs["stopped"]["step"] == record["stopped"]["step"]


@pytest.mark.parametrize("nomad_env", ["binary"], indirect=True)
def test_a_nomad_warm_start_answers_the_earlier_points_without_training_them(
    earlier: dict, tmp_path: Path, nomad_env, make_study, run_nomad
) -> None:
    param = make_study(budget=2, steps=8, space="lr_two_starts")
    study_dir = tmp_path / "runs" / "study"
    warm = ["--warm-start", str(earlier["folder"]), "--warm-start-top", "2"]
    result = run_nomad(param, study_dir, nomad_env, warm)  # through run_nomad.sh, which passes the options on
    assert result.returncode == 0, result.stderr[-3000:]
    assert "warm start: 3 earlier evaluations in NOMAD's cache, 2 more starting point(s)" in result.stderr
    copy = (study_dir / "param.txt").read_text()
    assert WARM_START_MARKER in copy and copy.count("\nX0 ") == 4  # its own two, and the two best earlier ones
    earlier_points = {tuple(r["point"]) for r in earlier["records"]}
    records = read_records(study_dir / "records.jsonl")
    # Only NOMAD's own evaluations were trained (its budget): the earlier points were cache hits, not counted.
    assert len(records) == 2 and not {tuple(r["point"]) for r in records} & earlier_points
    cache = read_cache(study_dir / "cache.txt")  # as NOMAD rewrote it: 15 significant digits
    for record in earlier["records"]:
        [entry] = [e for e in cache if math.isclose(e.point[0], record["point"][0], rel_tol=1e-13)]
        assert entry.ok and math.isclose(float(entry.outputs[0]), float(record["outputs"][0]), rel_tol=1e-13)
    # The same command again resumes the warm-started study as it is: nothing more to evaluate. Its budget ended at
    # its starting points, so NOMAD crashed writing its hot-restart file and the stub was removed: without it,
    # NOMAD's count starts at 0, and the study's own points are asked for again and answered from their records.
    again = run_nomad(param, study_dir, nomad_env, warm)
    assert again.returncode == 0, again.stderr[-3000:]
    assert read_records(study_dir / "records.jsonl") == records
    assert again.stderr.count("answered from its record") == 2


def test_a_warm_start_from_another_search_space_is_refused(
    earlier: dict, tmp_path: Path, make_study, blackbox_cmd: list[str], write_tiny_experiment
) -> None:
    param = make_study(budget=2, steps=8, space="rank_lr")
    study = subprocess.run(
        [*blackbox_cmd, "study", str(param), "--dir", str(tmp_path / "nomad"), "--warm-start", str(earlier["folder"])],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert study.returncode == 2
    [line] = [line for line in study.stderr.splitlines() if "refused" in line]
    assert f"--warm-start {earlier['folder']}: refused, the search spaces differ" in line
    other = write_tiny_experiment(tmp_path / "other.toml", space="rank_lr", steps=8, records=tmp_path / "unused")
    trials = _optuna(blackbox_cmd, ["-e", str(other), "--n-trials", "1", "--warm-start", str(earlier["folder"]),
                                    "--dir", str(tmp_path / "optuna")], tmp_path)  # fmt: skip
    assert trials.returncode == 2 and "refused, the search spaces differ" in trials.stderr
    assert not (tmp_path / "nomad" / "records.jsonl").exists() and not (tmp_path / "optuna" / "records.jsonl").exists()
