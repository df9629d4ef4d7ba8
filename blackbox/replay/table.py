"""A replay table: real evaluations of an experiment's grid, in one CSV file with what it was measured on.

The file opens with ``#`` lines (``pandas.read_csv(path, comment="#")`` skips them): the format, ``about`` (the
command, the machine, the versions, the dates) and ``experiment`` (the grid's experiment as JSON, its learning
curve's checkpoints included). Then one row per evaluation:

- ``kind``: ``grid`` (a point of the experiment's grid: what a replay answers), ``baseline`` (untuned settings off
  the grid) or ``seed`` (a point trained again with another training seed); ``name`` and ``overrides`` (the
  ``--set`` items that made the row's experiment differ from the grid's) say which;
- ``point`` (NOMAD's coordinates), the four hyperparameters, ``status``;
- the metrics of :data:`METRICS` (``objective`` as the solver received it);
- ``ckptK_step``, ``ckptK_train_tokens``, ``ckptK_loss``, ``ckptK_train_s`` (training seconds up to it),
  ``ckptK_s`` (its own validation), for each checkpoint K = 1, 2, ... of the table;
- the measured seconds of each phase (:data:`PHASES`), ``startup_s`` included: every row was its own
  ``lora-blackbox eval`` call, as NOMAD's binary makes one call per point;
- ``run_id``, ``started_at``, ``finished_at`` of its record.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from blackbox.core.curves import CurvePoint
from blackbox.core.errors import OptionError
from blackbox.core.experiment import HPARAM_NAMES, Experiment
from blackbox.core.failures import Status
from blackbox.core.point import format_point
from blackbox.core.record import EvalRecord
from blackbox.core.space import SearchSpace
from blackbox.core.warm_start import differences
from blackbox.replay.grid import nearest

REPLAYED_OBJECTIVES = ("validation_loss", "train_seconds", "trainable_params")
"""The objectives a table answers whatever objective it was built for: every row measured them."""

FORMAT = 1
HEADER = "# lora-blackbox replay table"
METRICS = (
    "objective",
    "validation_loss",
    "train_loss",
    "train_last_loss",
    "train_steps",
    "train_tokens",
    "train_target_tokens",
    "train_seconds",
    "trainable_params",
    "validation_tokens",
    "checkpoint_rows",
    "peak_memory_gib",
    "precision",
)
PHASES = (
    "startup_s",
    "tokenizer_load_s",
    "data_prep_s",
    "model_load_s",
    "train_s",
    "checkpoint_s",
    "validation_s",
    "total_s",
)
LOAD_PHASES = ("tokenizer_load_s", "data_prep_s", "model_load_s")
"""What a call pays once, for its first point (the model loads once per call)."""
_CURVE_FIELDS = ("step", "train_tokens", "loss", "train_s", "s")


@dataclass(frozen=True)
class Row:
    """One real evaluation of the table."""

    kind: str
    name: str
    overrides: tuple[str, ...]
    point: tuple[float, ...]
    hparams: dict[str, Any]
    status: Status
    metrics: dict[str, Any]
    curve: tuple[CurvePoint, ...]
    timings: dict[str, float]
    run_id: str
    started_at: str = ""
    finished_at: str = ""

    @property
    def seconds(self) -> float:
        """What it cost, as one call of its own: start-up and everything after it."""
        return self.timings.get("startup_s", 0.0) + self.timings.get("total_s", 0.0)


@dataclass(frozen=True)
class ReplayTable:
    """A replay table as read from its file (:func:`read_table`)."""

    path: Path
    experiment: Experiment  # the grid's, with the checkpoints of its curves
    about: dict[str, Any]
    rows: tuple[Row, ...]
    _grid: dict[tuple[float, ...], Row] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._grid.update({row.point: row for row in self.rows if row.kind == "grid"})

    @property
    def grid(self) -> Mapping[tuple[float, ...], Row]:
        """The grid's rows by point: what a replay answers."""
        return self._grid

    @property
    def checkpoints(self) -> tuple[float, ...]:
        return self.experiment.validation.checkpoints

    def check(self, experiment: Experiment) -> None:
        """Whether this table can answer ``experiment``'s points: the same search space and evaluation settings
        (as a warm start compares them), its checkpoints among the table's, on the same rows. Its objectives may
        differ from the table's where every row measured them (:data:`REPLAYED_OBJECTIVES`: the validation loss and
        the costs), as in a study of several objectives on a table of one.

        Raises:
            OptionError: it cannot (one line: what differs).
        """
        comparable = experiment
        if all(o.name in REPLAYED_OBJECTIVES for o in experiment.all_objectives):  # what every row measured
            comparable = experiment.model_copy(update={"objective": self.experiment.objective, "objectives": ()})
        differ = differences(comparable, self.experiment)
        if differ:
            raise OptionError(f"replay.table {self.path} was built for another experiment: {differ[0]}")
        missing = sorted(set(experiment.validation.checkpoints) - set(self.checkpoints))
        if missing:
            raise OptionError(
                f"replay.table {self.path} has learning curves at {list(self.checkpoints)}, not at {missing}: "
                "replay checkpoints among those"
            )
        rows, table_rows = experiment.validation.checkpoint_rows, self.experiment.validation.checkpoint_rows
        if experiment.validation.checkpoints and rows != table_rows:
            raise OptionError(
                f"replay.table {self.path} measured its curves on {table_rows} checkpoint rows, the experiment on "
                f"{rows}: set validation.checkpoint_rows={table_rows}"
            )

    def row(self, point: tuple[float, ...], space: SearchSpace) -> Row:
        """The grid's row of a checked point (:meth:`SearchSpace.check`: integers and granularities snapped).

        Raises:
            OptionError: the table has no row of the point (the message names the nearest point it has).
        """
        row = self._grid.get(point)
        if row is None:
            on_grid = nearest(space, point) == point
            why = "has no row in" if on_grid else "is not on the grid of"
            build = " (an incomplete build: run the build again)" if on_grid else ""
            hint = f"the nearest grid point with a row is ({format_point(self.nearest_row(point, space))})"
            raise OptionError(f"point ({format_point(point)}) {why} replay.table {self.path}{build}: {hint}")
        return row

    def nearest_row(self, point: tuple[float, ...], space: SearchSpace) -> tuple[float, ...]:
        """The point of the grid's rows nearest to ``point``, each coordinate measured in its variable's range."""
        spans = [max(v.upper - v.lower, 1e-12) for v in space.variables]

        def distance(other: tuple[float, ...]) -> float:
            return sum(((a - b) / s) ** 2 for a, b, s in zip(point, other, spans, strict=True))

        return min(self._grid, key=distance)


def curve_of(row: Row, fractions: Sequence[float], table_fractions: Sequence[float]) -> tuple[CurvePoint, ...]:
    """The row's learning curve at ``fractions`` (some of the table's checkpoints, ``table_fractions``; none: no
    curve). The K-th point of a row's curve is at the table's K-th checkpoint (:func:`write_table` checks it); a
    training that diverged has the points before it diverged."""
    wanted = set(fractions)
    return tuple(p for p, f in zip(row.curve, table_fractions, strict=False) if f in wanted)


# -- writing -----------------------------------------------------------------------------------------------------


def write_table(
    path: Path,
    *,
    experiment: Experiment,
    rows: Sequence[tuple[str, str, Sequence[str], EvalRecord]],
    about: Mapping[str, Any],
) -> None:
    """Write a table of ``rows`` (kind, name, the ``--set`` items of its evaluation, its record): the grid's
    experiment ``experiment`` (with the checkpoints of the curves) and ``about`` (how it was built) in its head.

    Raises:
        ValueError: a row's curve lacks a checkpoint of the experiment.
    """
    fractions = experiment.validation.checkpoints
    snapshot = experiment.model_copy(update={"records": type(experiment.records)()})  # no machine's folder
    dates = sorted(r.started_at or "" for *_, r in rows) + sorted(r.finished_at or "" for *_, r in rows)
    head = {
        **about,
        "built": {"first_started": dates[0] if dates else "", "last_finished": dates[-1] if dates else ""},
    }
    columns = _columns(len(fractions))
    buffer = io.StringIO()
    buffer.write(f"{HEADER} (format {FORMAT})\n")
    buffer.write(f"# about: {json.dumps(head, sort_keys=True)}\n")
    buffer.write(f"# experiment: {snapshot.model_dump_json()}\n")
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    grid_sets = set()  # the grid rows' own --set items: what every row shares
    for kind, _, sets, _ in rows:
        if kind == "grid":
            grid_sets = set(sets)
    for kind, name, sets, record in rows:
        writer.writerow(_cells(kind, name, [s for s in sets if s not in grid_sets], record, len(fractions)))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(buffer.getvalue(), encoding="utf-8")


def _columns(checkpoints: int) -> list[str]:
    curve = [f"ckpt{k}_{name}" for k in range(1, checkpoints + 1) for name in _CURVE_FIELDS]
    return [
        "kind",
        "name",
        "overrides",
        "point",
        *HPARAM_NAMES,
        "status",
        *METRICS,
        *curve,
        *PHASES,
        "run_id",
        "started_at",
        "finished_at",
    ]


def _cells(kind: str, name: str, overrides: Sequence[str], record: EvalRecord, checkpoints: int) -> dict[str, Any]:
    hparams = record.hparams or {}
    cells: dict[str, Any] = {
        "kind": kind,
        "name": name,
        "overrides": json.dumps(list(overrides)),
        "point": format_point(record.point or ()),
        **{name: hparams.get(name, "") for name in HPARAM_NAMES},
        "status": record.status.value,
        **{name: _cell(record.metrics.get(name)) for name in METRICS},
        **{name: _cell(record.timings.get(name)) for name in PHASES},
        "run_id": record.run_id,
        "started_at": record.started_at or "",
        "finished_at": record.finished_at or "",
    }
    if len(record.curve) > checkpoints or (record.status is Status.OK and len(record.curve) != checkpoints):
        # The K-th point of a curve must be at the K-th checkpoint: a training too short for distinct checkpoint
        # steps (checkpoint_steps merges them) cannot make a table.
        raise ValueError(f"record {record.run_id} has {len(record.curve)} checkpoints, the table {checkpoints}")
    for k, point in enumerate(record.curve, start=1):
        values = (point.step, point.train_tokens, point.loss, point.train_seconds, point.seconds)
        cells |= {f"ckpt{k}_{name}": _cell(value) for name, value in zip(_CURVE_FIELDS, values, strict=True)}
    return cells


def _cell(value: Any) -> Any:
    return "" if value is None else value


# -- reading -----------------------------------------------------------------------------------------------------


def read_table(path: Path) -> ReplayTable:
    """Read a table written by :func:`write_table`.

    Raises:
        OptionError: no such file, or not a replay table of this format (one line).
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise OptionError(f"replay.table {path}: {e.strerror or e}") from None
    lines = text.splitlines(keepends=True)
    head = [line for line in lines[:3] if line.startswith("#")]
    if len(head) < 3 or not head[0].startswith(HEADER) or f"(format {FORMAT})" not in head[0]:
        first = _first(text)
        raise OptionError(f"replay.table {path} is not a replay table of format {FORMAT} (its first line: {first})")
    try:
        about = json.loads(head[1].removeprefix("# about: "))
        experiment = Experiment.model_validate_json(head[2].removeprefix("# experiment: "))
        reader = csv.DictReader(io.StringIO("".join(lines[3:])))
        rows = tuple(_row(cells, len(experiment.validation.checkpoints)) for cells in reader)
    except (ValueError, KeyError, ValidationError) as e:
        raise OptionError(f"replay.table {path} is damaged: {type(e).__name__}: {str(e).splitlines()[0]}") from None
    return ReplayTable(path, experiment, about, rows)


def _first(text: str) -> str:
    line = text.splitlines()[0] if text else "(empty)"
    return repr(line[:60])


def _row(cells: dict[str, str], checkpoints: int) -> Row:
    curve = []
    for k in range(1, checkpoints + 1):
        values = [cells.get(f"ckpt{k}_{name}", "") for name in _CURVE_FIELDS]
        if values[0] == "":
            break
        step, tokens, loss, train_s, seconds = values
        curve.append(CurvePoint(int(step), int(tokens), float(loss), _float(train_s), _float(seconds)))
    return Row(
        kind=cells["kind"],
        name=cells["name"],
        overrides=tuple(json.loads(cells["overrides"] or "[]")),
        point=tuple(float(x) for x in cells["point"].split()),
        hparams={name: _number(cells[name]) for name in HPARAM_NAMES if cells.get(name, "") != ""},
        status=Status(cells["status"]),
        metrics={name: _number(cells[name]) for name in METRICS if cells.get(name, "") != ""},
        curve=tuple(curve),
        timings={name: float(cells[name]) for name in PHASES if cells.get(name, "") != ""},
        run_id=cells["run_id"],
        started_at=cells.get("started_at", ""),
        finished_at=cells.get("finished_at", ""),
    )


def _float(text: str) -> float | None:
    return None if text == "" else float(text)


def _number(text: str) -> int | float | str:
    """A cell as the record held it: an int, a float (nan and inf included) or text."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text
