"""Reports on records that real studies wrote: a NOMAD study (PyNomadBBO) and an in-process Optuna study of
the tiny model. The files are valid PNG and self-contained HTML, and the numbers shown are the records'."""

from __future__ import annotations

import base64
import io
import json
import math
import os
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import optuna
import pytest

from tests.records import read_records

# One worker runs the module: its studies fixture (two real studies) then runs once, not once per worker.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("reports-studies")]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def studies(tmp_path_factory: pytest.TempPathFactory, write_tiny_experiment, blackbox_cmd) -> dict:
    """A NOMAD study of 4 evaluations, and a quiet, in-process Optuna TPE study of 3 trials, the first of which
    diverges."""
    tmp = tmp_path_factory.mktemp("reports")
    outputs = '["OBJ:validation_loss", "EXTRA_O:run_id", "CNT_EVAL"]'
    study = {"space": "rank_lr", "name": "tiny-study", "budget": 4, "steps": 6, "outputs": outputs, "records": tmp}
    nomad_experiment = write_tiny_experiment(tmp / "nomad.toml", **study)
    param = tmp / "study.txt"
    subprocess.run(
        [*blackbox_cmd, "-q", "params", "-e", str(nomad_experiment), "--out", str(param)], check=True, timeout=600
    )
    env = {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), "/usr/bin", "/bin"])}
    env.pop("NOMAD_EXE", None)
    nomad = subprocess.run(
        [*blackbox_cmd, "study", str(param), "--dir", str(tmp / "nomad")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert nomad.returncode == 0, nomad.stderr[-3000:]

    optuna_experiment = tmp / "optuna.toml"  # room for a diverging learning rate
    optuna_experiment.write_text(nomad_experiment.read_text().replace("upper = -1", "upper = 36"))
    storage = f"sqlite:///{tmp / 'optuna.db'}"
    optuna.create_study(storage=storage, study_name="s").enqueue_trial({"lora_r": 2, "learning_rate": 36.0})
    command = [*blackbox_cmd, "--quiet", "optuna", "-e", str(optuna_experiment), "--n-trials", "3", "--in-process"]
    command += ["--storage", storage, "--study-name", "s", "--dir", str(tmp / "tpe")]
    tpe = subprocess.run(
        command,
        cwd=tmp,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert tpe.returncode == 0, tpe.stderr[-3000:]
    report = subprocess.run(
        [
            *blackbox_cmd,
            "report",
            f"NOMAD={tmp / 'nomad'}",
            f"TPE={tmp / 'tpe' / 'records.jsonl'}",
            "--out",
            str(tmp / "r"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    return {"tmp": tmp, "nomad": nomad, "tpe": tpe, "report": report}


def test_progress_on_stderr_unless_quiet(studies: dict) -> None:
    stderr = studies["nomad"].stderr
    assert "progress: 4/4 evaluations done, best objective" in stderr
    assert "ETA" in stderr
    assert "progress" not in studies["nomad"].stdout  # stdout: NOMAD's display and the summary only
    # --quiet: neither the trials' progress nor the training steps; errors still show.
    assert "evaluations done" not in studies["tpe"].stderr and "ETA" not in studies["tpe"].stderr
    assert "training loss is nan at step" in studies["tpe"].stderr
    assert json.loads(studies["tpe"].stdout)["counted_trials"] == 3


def test_in_process_optuna_runs_the_same_evaluations(studies: dict) -> None:
    records = read_records(studies["tmp"] / "tpe" / "records.jsonl")
    assert records[0]["status"] == "DIVERGED"
    assert len({r["pid"] for r in records}) == 1  # one process, the model loaded once
    trials = optuna.load_study(study_name="s", storage=f"sqlite:///{studies['tmp'] / 'optuna.db'}").trials
    assert trials[0].value == math.inf
    assert [t.value for t in trials[1:]] == [r["metrics"]["validation_loss"] for r in records[1:]]


class _Page(HTMLParser):
    """Tables (by id) as lists of rows of cell texts, and every image source and script of the page."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.images: list[str] = []
        self.scripts = 0
        self._table: str | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "table":
            self._table = attributes["id"]
            self.tables[self._table] = []
        elif tag == "tr" and self._table:
            self.tables[self._table].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "img":
            self.images.append(attributes["src"] or "")
        elif tag == "script":
            self.scripts += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._table and self._cell is not None:
            self.tables[self._table][-1].append("".join(self._cell))
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def _valid_png(data: bytes) -> tuple[int, int]:
    from PIL import Image

    assert data.startswith(PNG_SIGNATURE)
    image = Image.open(io.BytesIO(data))
    image.verify()
    return image.size


def test_report_files_are_valid_and_self_contained(studies: dict) -> None:
    report = studies["report"]
    assert report.returncode == 0, report.stderr[-3000:]
    out = studies["tmp"] / "r"
    assert report.stdout == f"{out / 'report.html'}\n"  # stdout: the page's path only
    for name in ("convergence.png", "parallel_coordinates.png"):
        width, height = _valid_png((out / name).read_bytes())
        assert width > 600 and height > 300
    page = _Page()
    page.feed((out / "report.html").read_text())
    assert page.scripts == 0
    assert len(page.images) == 2 and all(src.startswith("data:image/png;base64,") for src in page.images)
    for src in page.images:
        _valid_png(base64.b64decode(src.partition(",")[2]))


def _records_by_run_id(tmp: Path) -> dict[str, dict]:
    records = read_records(tmp / "nomad" / "records.jsonl") + read_records(tmp / "tpe" / "records.jsonl")
    return {r["run_id"]: r for r in records}


def test_report_numbers_match_the_records(studies: dict) -> None:
    tmp = studies["tmp"]
    by_id = _records_by_run_id(tmp)
    page = _Page()
    page.feed((tmp / "r" / "report.html").read_text())

    header, *rows = page.tables["top"]
    assert header[:4] == ["rank", "run", "evaluation", "validation_loss"] and header[-2:] == ["point", "run id"]
    ok = [r for r in by_id.values() if r["status"] == "OK"]
    assert len(rows) == min(10, len(ok))
    objectives = [float(row[3]) for row in rows]
    assert objectives == sorted(objectives)
    assert math.isclose(objectives[0], min(r["metrics"]["validation_loss"] for r in ok), rel_tol=1e-5)
    for row in rows:
        record = by_id[row[-1]]
        assert math.isclose(float(row[3]), record["metrics"]["validation_loss"], rel_tol=1e-5)
        for name, cell in zip(header[4:-2], row[4:-2], strict=True):
            assert math.isclose(float(cell), record["hparams"][name], rel_tol=1e-5)
        assert [float(x) for x in row[-2].split()] == pytest.approx(record["point"], rel=1e-5)
        folder = "nomad" if row[1] == "NOMAD" else "tpe"
        assert record in read_records(tmp / folder / "records.jsonl")

    header, *runs = page.tables["runs"]
    for row in runs:
        cells = dict(zip(header, row, strict=True))
        records = read_records(Path(cells["run"]) / "records.jsonl")
        values = [r["metrics"]["validation_loss"] for r in records if r["status"] == "OK"]
        assert int(cells["evaluations"]) == len(records)
        assert math.isclose(float(cells["best"]), min(values), rel_tol=1e-5)
        first = {"OK": records[0]["metrics"].get("validation_loss"), "DIVERGED": math.inf}.get(records[0]["status"])
        assert cells["best after 1"] == ("-" if first is None else f"{first:.6g}")
    nomad_row = dict(zip(header, runs[0], strict=True))
    assert nomad_row["solver"] == "NOMAD" and "cache: 4 points (4 OK)" in nomad_row["NOMAD files"]
    assert "stats: 4 evaluations" in nomad_row["NOMAD files"]

    header, *failures = page.tables["failures"]
    failed = [r for r in by_id.values() if r["status"] != "OK"]
    assert sorted(row[3] for row in failures) == sorted(r["run_id"] for r in failed)
    assert any(row[2] == "DIVERGED" for row in failures)

    summary = json.loads((tmp / "r" / "summary.json").read_text())
    for run in summary["runs"]:
        records = read_records(Path(run["folder"]) / "records.jsonl")
        values = [r["metrics"]["validation_loss"] if r["status"] == "OK" else math.inf for r in records]
        expected = [min(values[: i + 1]) for i in range(len(values))]
        assert run["best_so_far"] == [v if math.isfinite(v) else None for v in expected]


def test_report_never_imports_torch(studies: dict, tmp_path: Path) -> None:
    code = (
        "import sys; from pathlib import Path; from blackbox.reports import write_report; "
        f"write_report([{str(studies['tmp'] / 'nomad')!r}], Path({str(tmp_path)!r})); "
        "print(sorted(m for m in ('torch', 'transformers', 'optuna') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=600)
    assert result.stdout.strip() == "[]"
    assert (tmp_path / "report.html").exists()


def test_settings_are_categorical_axes_labelled_by_value() -> None:
    from blackbox.reports.plots import _Scale

    targets = _Scale([["q_proj", "v_proj"], "attention", "all-linear", "attention", math.nan])
    assert targets.ticks() == [(0.0, '"all-linear"'), (0.5, '"attention"'), (1.0, '["q_proj","v_proj"]')]
    assert targets.position("attention") == 0.5 and targets.position(math.nan) == 1.08  # nan: a failed point
    variants = _Scale([{}, {"use_dora": True}])
    assert [label for _, label in variants.ticks()] == ['{"use_dora":true}', "{}"]  # in the order of their labels
    assert _Scale([1, 2, 3]).ticks() == [(-0.02, "1"), (1.02, "3")]  # numbers: the range
