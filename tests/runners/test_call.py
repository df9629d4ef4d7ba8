"""One blackbox call without its command line (``runners.call.answer_call``): what it prints and how it ends,
decided for each case of the failure policy; the subprocess tests (tests/test_cli_eval.py) run the same calls
as NOMAD makes them."""

from __future__ import annotations

from pathlib import Path

import pytest

from blackbox.core.errors import RecordsError
from blackbox.core.experiment import load_experiment
from blackbox.core.failures import Call
from blackbox.core.record import RecordStore
from blackbox.core.resume import ENV_ANSWER_FINISHED
from blackbox.core.stopping import ENV_STOP_FILE
from blackbox.runners.call import Answer, Spread, answer_call

LINES = ["2 -2 0.1", "", "3 -3 0", "nonsense"]


@pytest.fixture
def experiment(tiny_experiment: Path):
    return load_experiment(str(tiny_experiment))


def test_a_stopping_study_is_answered_at_once(experiment, tmp_path, monkeypatch) -> None:
    stop = tmp_path / "stop-requested"
    stop.touch()
    monkeypatch.setenv(ENV_STOP_FILE, str(stop))
    answer = answer_call(experiment, LINES, str(tmp_path / "x.txt"), Spread("unused"))
    assert answer == Answer(("nan nan nan",) * 3)  # the blank line gets no output; CNT_EVAL is not printed here
    records = RecordStore.of(experiment).records()
    assert [r.status.value for r in records] == ["NOT_RUN"] * 3 and [r.block_index for r in records] == [0, 2, 3]


def test_finished_points_are_answered_from_their_records(experiment, tmp_path, monkeypatch) -> None:
    """A resumed study's call whose points all finished before: their recorded lines, nothing evaluated."""
    from blackbox.core.failures import Status
    from blackbox.core.point import PointSource
    from blackbox.core.record import build_record

    store = RecordStore.of(experiment)
    for line, loss in (("2 -2 0.1", 1.25), ("3 -3 0", 2.5)):
        point = tuple(float(v) for v in line.split())
        metrics = {"validation_loss": loss, "train_loss": loss}
        store.append(build_record(experiment, Status.OK, PointSource(line, point), metrics=metrics))
    monkeypatch.setenv(ENV_ANSWER_FINISHED, "1")
    answer = answer_call(experiment, ["2 -2 0.1", "", " 3  -3  0 "], str(tmp_path / "x.txt"), Spread("unused"))
    assert [line.split()[:2] for line in answer.lines] == [["1.25", "1.25"], ["2.5", "2.5"]]
    assert answer.call is Call.GOES_ON and len(store.records()) == 2  # no new record


def test_a_model_that_cannot_load_fails_the_call_and_records_every_point(tiny_experiment, tmp_path) -> None:
    experiment = load_experiment(str(tiny_experiment), [f"model.name_or_path={tmp_path}/no-such-model"])
    answer = answer_call(experiment, LINES, str(tmp_path / "x.txt"), Spread("unused"))
    assert answer.lines == () and answer.call is Call.FAILS and "no-such-model" in (answer.error or "")
    statuses = [r.status.value for r in RecordStore.of(experiment).records()]
    assert statuses == ["NOT_RUN", "NOT_RUN", "NOT_RUN"]


def test_a_records_folder_that_cannot_be_written_escapes_before_anything_loads(tiny_experiment, tmp_path) -> None:
    (tmp_path / "a-file").write_text("")  # a folder under a file: not even root can create it
    experiment = load_experiment(str(tiny_experiment), [f"records.dir={tmp_path}/a-file/runs"])
    with pytest.raises(RecordsError, match="cannot write records"):
        answer_call(experiment, LINES, str(tmp_path / "x.txt"), Spread("unused"))
