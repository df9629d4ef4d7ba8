"""The front of a NOMAD study of several objectives (DMultiMads): the non-dominated evaluations its records hold,
checked against the front NOMAD's display lists at its end; and what a parameter file's study optimises.

Both NOMADs list the front under "Best feasible solutions" (``core.nomad.read_reported_front``): every point's
objective values in full precision (the same doubles as the records' output tokens), at most 8 of them, and how
many there are. The front agrees with the records' when the counts match and every listed point is on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from blackbox.core.experiment import load_experiment
from blackbox.core.nomad import ReportedFront, read_bb_exe_experiment, read_outputs_and_budget, read_reported_front
from blackbox.core.pareto import front_indices
from blackbox.core.record import EvalRecord


@dataclass(frozen=True)
class StudyFront:
    """A study's objectives (as its outputs name them, ``objective:`` left out), its records' non-dominated
    evaluations, and the front NOMAD listed (None when it listed none: it did not reach its end)."""

    objectives: tuple[str, ...]
    front: tuple[EvalRecord, ...]
    reported: ReportedFront | None

    @property
    def agrees(self) -> bool:
        """Whether NOMAD's front is the records' (True when NOMAD listed none)."""
        if self.reported is None:
            return True
        values = {r.objective_values() for r in self.front}
        return self.reported.total == len(self.front) and set(self.reported.values) <= values

    def lines(self, *, warm_started: bool) -> list[str]:
        """The summary's lines: the objectives, the front, and whether NOMAD's agrees."""
        lines = [f"objectives (minimised, as NOMAD sees them): {', '.join(self.objectives)}"]
        if not self.front:
            return [*lines, "no successful evaluation yet"]
        lines.append(f"front: {len(self.front)} non-dominated evaluation(s) in the records")
        for record in self.front:
            values = ", ".join(f"{n} {v:.6g}" for n, v in zip(self.objectives, record.objective_values(), strict=True))
            hparams = ", ".join(f"{k}={v}" for k, v in (record.hparams or {}).items())
            lines.append(f"  {values}  ({hparams}; run {record.run_id})")
        if self.reported is not None and self.agrees:
            lines.append(f"NOMAD's front: {self.reported.total} point(s), the same as the records'")
        elif self.reported is not None:
            source = " (its cache holds earlier studies' evaluations: --warm-start)" if warm_started else ""
            lines.append(f"note: NOMAD's front differs from the records' ({self.reported.total} point(s)){source}")
        return lines


def study_front(records: list[EvalRecord], display: str | None) -> StudyFront | None:
    """The front of a study of several objectives from its finished, full-fidelity records (OK), and the front
    NOMAD's ``display`` lists (this run's part of ``nomad.log``; None: not read); None for a study of one."""
    specs = next((r.output_specs for r in records if r.output_specs), ())
    objectives = tuple(s.partition(":")[2].removeprefix("objective:") for s in specs if s.startswith("OBJ:"))
    if len(objectives) < 2:
        return None
    feasible = [r for r in records if _feasible(r)]
    front = tuple(feasible[i] for i in front_indices([r.objective_values() for r in feasible]))
    return StudyFront(objectives, front, read_reported_front(display) if display is not None else None)


def _feasible(record: EvalRecord) -> bool:
    """Every constraint output satisfied (<= 0), as NOMAD's "feasible"."""
    specs = record.output_specs
    return all(float(t) <= 0 for s, t in zip(specs, record.outputs, strict=False) if s.split(":")[0] in ("PB", "EB"))


def objectives_in_words(param_file: Path) -> str:
    """What a parameter file's study optimises: the objectives of its experiment (by the metrics they are), or
    the number of its OBJ outputs when its BB_EXE is another blackbox."""
    found = read_bb_exe_experiment(param_file)
    if found is not None:
        keys = [o.key for o in load_experiment(*found).all_objectives]
    else:
        keys = [f"OBJ {i}" for i, kind in enumerate(read_outputs_and_budget(param_file)[0], start=1) if kind == "OBJ"]
    return f"{len(keys)} objective{'s' if len(keys) > 1 else ''} ({', '.join(keys)})"
