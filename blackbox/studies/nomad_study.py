"""Run a NOMAD study in its own folder, stop it gracefully, resume it, and report what it found.

The study folder (``runs/<parameter file name>/`` by default) holds everything of one study: the
parameter file it runs (``param.txt``), NOMAD's cache, stats and hot-restart files, NOMAD's display
(``nomad.log``), and the blackbox's records (``records.jsonl``, ``evals/``). NOMAD runs there, either
the ``nomad`` executable (on PATH, or ``$NOMAD_EXE``) or PyNomadBBO (the NOMAD library, ``studies.pynomad``).

Ctrl-C: the first one asks NOMAD to stop after the running evaluations (NOMAD then writes its cache
and hot-restart file); a second one also cuts the running evaluations (recorded as INTERRUPTED);
a third kills everything (NOMAD's cache of this run is then lost; the records are not). Running the
same command again resumes: finished points are cache hits, the budget counts across restarts, and
interrupted points are dropped from the cache so that NOMAD can evaluate them again.

kill -9 of the driver, or any other end of it, takes NOMAD and the running evaluations with it, and a
study folder runs one study at a time (``studies.guard``). A rerun after a kill, which left NOMAD no time to
save its cache, records the evaluations the kill cut as KILLED and answers finished points from the records
(``blackbox.core.resume``): nothing finished is trained twice, and the budget counts every finished evaluation.
"""

from __future__ import annotations

import contextlib
import filecmp
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TextIO

import psutil

from blackbox.core.bounds import OnBound, study_on_bounds
from blackbox.core.bounds import warning as bounds_warning
from blackbox.core.compute import Compute, compute_of
from blackbox.core.errors import OptionError, SetupError
from blackbox.core.experiment import load_experiment
from blackbox.core.failures import Call, Status, call_of_study, describe_exit
from blackbox.core.files import write_text_atomic
from blackbox.core.folders import CACHE_FILE, HOT_RESTART_FILE, PARAM_COPY, STATS_FILE, STOP_FILE
from blackbox.core.nomad import (
    WARM_START_MARKER,
    drop_from_cache,
    is_crash_stub,
    read_bb_exe_experiment,
    read_cache,
    read_outputs_and_budget,
    with_warm_start,
    without_warm_start,
    write_cache,
)
from blackbox.core.output import output_tokens
from blackbox.core.point import format_point
from blackbox.core.progress import format_duration
from blackbox.core.record import EvalRecord, RecordStore, writing_records
from blackbox.core.resume import ENV_ANSWER_FINISHED
from blackbox.core.space import SearchSpace
from blackbox.core.stopping import ENV_STOP_FILE
from blackbox.core.warm_start import best_points, earlier_evaluations
from blackbox.studies.fronts import StudyFront, objectives_in_words, study_front
from blackbox.studies.guard import Unit, lock_study
from blackbox.tracking import ENV_TRACKING_URI, StudyTracking, start_study

logger = logging.getLogger(__name__)

ENV_NOMAD_EXE = "NOMAD_EXE"


def find_nomad() -> str | None:
    """The ``nomad`` executable to use: ``$NOMAD_EXE``, else ``nomad`` on PATH, else None (embedded).

    Raises:
        SetupError: ``$NOMAD_EXE`` names no executable file.
    """
    configured = os.environ.get(ENV_NOMAD_EXE)
    if configured:
        if not (os.path.isfile(configured) and os.access(configured, os.X_OK)):
            raise SetupError(f"{ENV_NOMAD_EXE}={configured} is not an executable file")
        return configured
    return shutil.which("nomad")


def prepare_study_dir(param_file: Path, study_dir: Path) -> Path:
    """Create the study folder with a copy of the parameter file, or check that a resumed study runs
    the same file. Returns the copy's path.

    Raises:
        SetupError: the file is missing, or the folder holds a study of another parameter file.
        OptionError: the folder holds a study of other objectives (another number, or another order).
    """
    if not param_file.is_file():
        raise SetupError(f"no parameter file {param_file}")
    study_dir.mkdir(parents=True, exist_ok=True)
    copy = study_dir / PARAM_COPY
    if copy.exists() and copy.resolve() != param_file.resolve() and not _same_study(copy, param_file):
        before, now = objectives_in_words(copy), objectives_in_words(param_file)
        if before != now:
            raise OptionError(
                f"{study_dir} holds a study of {before}, and {param_file} is one of {now}: resuming it would mix "
                "two studies. Use another study folder."
            )
        raise SetupError(
            f"{study_dir} holds a study of a different parameter file ({copy}); resuming it with "
            f"{param_file} would mix two studies. Use another study folder, or remove {study_dir}."
        )
    if not copy.exists():  # a resumed study's copy is the file already, maybe with a warm start's starting points
        shutil.copyfile(param_file, copy)
    return copy


def _same_study(copy: Path, param_file: Path) -> bool:
    """Whether a study's copy of its parameter file is ``param_file``, but for the starting points a warm start
    added to it."""
    if filecmp.cmp(copy, param_file, shallow=False):
        return True
    return without_warm_start(copy.read_text(encoding="utf-8")) == param_file.read_text(encoding="utf-8")


def warm_start(copy: Path, study_dir: Path, sources: Sequence[Path], *, top: int) -> None:
    """Seed a new study with the finished evaluations of earlier studies (``core.warm_start``): all of them go into
    NOMAD's cache file (answered without training, not counted against MAX_BB_EVAL) and the ``top`` best become
    starting points besides the file's own X0 (cache hits too). A study that was warm-started when it began
    resumes as it is.

    Raises:
        OptionError: the folder holds a study already, the parameter file's BB_EXE is not ``lora-blackbox eval``,
            or an earlier study is of another search space or other settings.
    """
    text = copy.read_text(encoding="utf-8")
    if WARM_START_MARKER in text:
        logger.info("the study was warm-started when it began (%s): resuming it", copy)
        return
    if RecordStore(study_dir).exists() or (study_dir / CACHE_FILE).exists():
        raise OptionError(
            f"--warm-start seeds a new study, and {study_dir} holds one already: use another study folder"
        )
    found = read_bb_exe_experiment(copy)
    if found is None:
        raise OptionError(f"--warm-start needs a parameter file whose BB_EXE is lora-blackbox eval ({copy})")
    reference, overrides = found
    experiment = load_experiment(reference, (*overrides, f"records.dir={study_dir.resolve()}"))
    records = earlier_evaluations(experiment, sources)
    entries = []
    for record in records:
        try:
            outputs = output_tokens(experiment.study.outputs, record.status, record.metrics)
        except KeyError as e:  # a metric the study prints and that evaluation did not record
            logger.warning("warm start: %s is left out, it has no metric %s", record.run_id, e)
            continue
        assert record.point is not None
        entries.append((record.point, outputs))
    outputs_types = [spec.partition(":")[0] for spec in experiment.study.outputs]
    write_cache(study_dir / CACHE_FILE, outputs_types, entries)
    own = SearchSpace.from_experiment(experiment).starting_points
    starts = [p for p in best_points(records, top) if p not in own]
    comment = (
        f"lora-blackbox study --warm-start {' '.join(str(s) for s in sources)}: {len(entries)} earlier evaluations "
        f"in NOMAD's cache file ({CACHE_FILE}), answered without training;\nthe best {len(starts)} of them are "
        "starting points too."
    )
    write_text_atomic(copy, with_warm_start(text, starts, comment))
    _say(f"warm start: {len(entries)} earlier evaluations in NOMAD's cache, {len(starts)} more starting point(s)")


def repair_after_crash(study_dir: Path) -> bool:
    """Undo what a NOMAD that crashed writing its hot-restart file left behind; True when it did.

    NOMAD 4.5/4.6 crash (SIGSEGV) writing the hot-restart file of a study that ends before its first
    iteration: when every starting point failed or was interrupted (see ``nomad.is_crash_stub``). A rerun
    would fail on the stub file ("No iteration to run"), and without it would take the failed starting
    points as cache hits and crash again without evaluating anything. So the stub goes, and so do the
    failed cache entries (before the first iteration these are the starting points): the rerun evaluates
    them again. NOMAD's input files of the crashed run go too.
    """
    if not is_crash_stub(study_dir / HOT_RESTART_FILE):
        return False
    (study_dir / HOT_RESTART_FILE).unlink()
    dropped = drop_from_cache(study_dir / CACHE_FILE, None)
    for leftover in study_dir.glob("nomadtmp.*"):
        leftover.unlink(missing_ok=True)
    logger.debug("%d failed starting point(s) removed from NOMAD's cache", dropped)
    return True


def prepare_resume(study_dir: Path) -> None:
    """Before a rerun: keep the previous run's stats file, record the evaluations an earlier run lost to a
    kill as KILLED, and let NOMAD re-evaluate interrupted and killed points."""
    if repair_after_crash(study_dir):  # left by a driver that was killed before it could repair
        logger.warning("removed the hot-restart file of a NOMAD that crashed in an earlier run of this study")
    store = RecordStore(study_dir)
    killed = store.record_unfinished(alive=False)  # under the study's lock: none of its evaluations runs
    if killed:
        _say(
            f"{len(killed)} evaluation(s) of an earlier run were killed before they could finish (recorded as "
            "KILLED): they are evaluated again"
        )
    stats = study_dir / STATS_FILE
    if stats.exists():
        run = 1
        while (study_dir / f"stats.{run}.txt").exists():
            run += 1
        stats.rename(study_dir / f"stats.{run}.txt")
    records = store.records()
    finished = {r.point for r in records if r.point and r.counted}
    unfinished = [r.point for r in records if not r.counted and r.point and r.point not in finished]
    dropped = drop_from_cache(study_dir / CACHE_FILE, unfinished)
    if dropped:
        logger.info("%d interrupted point(s) removed from NOMAD's cache: NOMAD may evaluate them again", dropped)
    if not (study_dir / HOT_RESTART_FILE).exists():
        # NOMAD restores its evaluation count from the hot-restart file only, and a cache hit is not counted: a
        # study that has none (budget 1 writes none; a crash stub was removed) would spend its whole budget
        # again on new points. Its own finished points leave the cache, so that NOMAD asks for them again and
        # their records answer (blackbox.core.resume): counted, never trained twice. A warm start's entries of
        # earlier studies stay: those are not this study's evaluations.
        forgotten = drop_from_cache(study_dir / CACHE_FILE, sorted(finished), successful_too=True)
        if forgotten:
            logger.info(
                "%d finished point(s) removed from NOMAD's cache (no hot-restart file): their records answer them "
                "when NOMAD asks for them, and they count against its budget",
                forgotten,
            )


class _Interrupts:
    """Escalating Ctrl-C: stop after running evaluations, then cut them, then kill everything.

    NOMAD alone would evaluate every point it has queued before it stops (see ``blackbox.core.stopping``): the
    stop file makes the blackbox calls after the first Ctrl-C decline at once.
    """

    def __init__(self, nomad: subprocess.Popen[str], stop_file: Path, *, hot_restart: bool = True) -> None:
        self.nomad = nomad
        self.stop_file = stop_file
        self.count = 0
        # DMultiMads (several objectives) writes no cache or hot-restart file when interrupted: it ends with an
        # error instead, and the rerun answers its finished points from the records.
        self.then = (
            "NOMAD writes its cache and hot-restart file" if hot_restart else "NOMAD ends (the records are kept)"
        )

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1
        if self.count == 1:
            _say(
                f"stopping: the running evaluations finish and no new one starts; then {self.then} (Ctrl-C again to "
                "cut the running evaluations)"
            )
            self.stop_file.touch()
            self.nomad.send_signal(signal.SIGINT)
        elif self.count == 2:
            _say(
                "cutting the running evaluations (recorded as INTERRUPTED; a rerun may evaluate them again); "
                "Ctrl-C once more kills NOMAD without saving its cache"
            )
            for child in _descendants(self.nomad.pid):
                _signal(child, signal.SIGINT)
        else:
            _say("killing NOMAD and the running evaluations: this run's NOMAD cache is lost, the records are kept")
            for process in [*_descendants(self.nomad.pid), self.nomad.pid]:
                _signal(process, signal.SIGKILL)


def run_study(
    param_file: Path,
    study_dir: Path,
    *,
    out: TextIO = sys.stdout,
    quiet: bool = False,
    mlflow_uri: str | None = None,
    warm_start_from: Sequence[Path] = (),
    warm_start_top: int = 3,
) -> int:
    """Run (or resume) a study. Returns its exit status (``failures.call_of_study``: 0, 130 when interrupted, 1
    when it failed at its start or NOMAD was killed, or NOMAD's own non-zero exit status).

    ``warm_start_from``: earlier study folders whose finished evaluations seed a new study (:func:`warm_start`; the
    ``warm_start_top`` best become starting points).

    Unless ``quiet``, stderr shows evaluations done / budget, the best objective and an ETA as records
    arrive; ``quiet`` also makes the blackbox calls quiet (no training progress). With tracking on
    (``mlflow_uri``, ``$MLFLOW_TRACKING_URI`` or the experiment's ``[tracking]``), the study is a parent
    run in MLflow and every evaluation a run nested in it (``blackbox.tracking``).

    Raises:
        SetupError: bad parameter file or study folder, or no way to run NOMAD.
        OptionError: a warm start from an earlier study of another search space (or into a folder that holds a study).
    """
    with writing_records(study_dir):
        copy = prepare_study_dir(param_file, study_dir)
    lock = lock_study(study_dir)
    try:
        if warm_start_from:
            warm_start(copy, study_dir, warm_start_from, top=warm_start_top)
        return _run_locked(copy, study_dir, lock, out=out, quiet=quiet, mlflow_uri=mlflow_uri)
    finally:
        os.close(lock)


def _run_locked(copy: Path, study_dir: Path, lock: int, *, out: TextIO, quiet: bool, mlflow_uri: str | None) -> int:
    prepare_resume(study_dir)
    records_before = len(RecordStore(study_dir).records())
    log_file = study_dir / "nomad.log"
    log_before = log_file.stat().st_size if log_file.exists() else 0  # this run's display follows
    nomad = find_nomad()
    command = [nomad, PARAM_COPY] if nomad else [sys.executable, "-m", "blackbox.studies.pynomad", PARAM_COPY]
    _say(f"study folder {study_dir}; NOMAD: {nomad or 'PyNomadBBO ' + _pynomad_version() + ' (the NOMAD library)'}")
    # BB_EXE calls lora-blackbox by name: the one installed beside this Python comes first.
    env = {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    stop_file = (study_dir / STOP_FILE).resolve()
    stop_file.unlink(missing_ok=True)
    env[ENV_STOP_FILE] = str(stop_file)
    env[ENV_ANSWER_FINISHED] = "1"  # a point evaluated before a kill is answered from its record (blackbox.core.resume)
    if quiet:
        env["LORA_BLACKBOX_QUIET"] = "1"
    if mlflow_uri:
        env[ENV_TRACKING_URI] = mlflow_uri
    tracking = _start_tracking(copy, study_dir, mlflow_uri, nomad)
    if tracking is not None:
        env.update(tracking.env)
    # Started first: nothing may fail between starting NOMAD and the try block that waits for it.
    watcher = None if quiet else _ProgressWatcher(study_dir, copy)
    if watcher:
        watcher.start()
    # NOMAD and its evaluations are one process group that dies with this driver (studies.guard).
    unit = Unit(command, lock, cwd=study_dir, env=env, stdout=subprocess.PIPE, text=True, bufsize=1)
    process = unit.process
    several = read_outputs_and_budget(copy)[0].count("OBJ") > 1  # DMultiMads
    interrupts = _Interrupts(process, stop_file, hot_restart=not several)
    previous = signal.signal(signal.SIGINT, interrupts)
    try:
        assert process.stdout is not None
        with log_file.open("a", encoding="utf-8") as log:
            for line in process.stdout:
                out.write(line)
                out.flush()
                log.write(line)
        returncode = process.wait()
    finally:
        signal.signal(signal.SIGINT, previous)
        unit.close()  # whatever NOMAD left running is killed
        stop_file.unlink(missing_ok=True)
        if watcher:
            watcher.stop()
        if tracking is not None:
            tracking.end(interrupted=interrupts.count > 0)
    interrupted = interrupts.count > 0
    # An evaluation that never recorded its end died alone or was cut with the study: the failure policy tells.
    killed = RecordStore(study_dir).record_unfinished(alive=False, solver_exit=returncode, interrupted=interrupted)
    if killed and killed[0].status is Status.ERROR:
        _say(f"{len(killed)} evaluation process(es) died without a record (recorded as ERROR; the OOM killer?)")
    elif killed:
        _say(f"{len(killed)} evaluation(s) were killed before they could finish (recorded as KILLED)")
    crashed = repair_after_crash(study_dir)
    summary = read_summary(study_dir, copy, display_from=log_before)
    out.write(summary.text())
    if crashed:
        how = signal.Signals(-returncode).name if -returncode in signal.valid_signals() else f"exit {returncode}"
        _say(
            f"NOMAD crashed ({how}) writing its hot-restart file, a defect of NOMAD 4.5/4.6 when a study ends "
            "before its first iteration; the broken file was removed, so that the same command runs again"
        )
    started = None if interrupted else _failed_start(study_dir, records_before)
    call, status = call_of_study(
        interrupted=interrupted, failed_start=started is not None, solver_exit=returncode, solver_crashed=crashed
    )
    if call is Call.INTERRUPTED:
        _say(f"interrupted: run the same command again to resume ({summary.ok} evaluations kept)")
    elif started is not None:
        _say(started)
    elif call is Call.FAILS and returncode < 0:  # killed from outside: resumable like an interrupted study
        _say(
            f"NOMAD {describe_exit(returncode)}: the study stopped; run the same command again to resume "
            f"({summary.ok} evaluations kept; NOMAD's output: {study_dir / 'nomad.log'})"
        )
    elif call is Call.FAILS:
        _say(f"NOMAD exited with status {returncode}: see {study_dir / 'nomad.log'}")
    return status


def _start_tracking(param_file: Path, study_dir: Path, uri: str | None, nomad: str | None) -> StudyTracking | None:
    """The study's parent run in MLflow, when tracking is on and BB_EXE names the experiment it evaluates."""
    found = read_bb_exe_experiment(param_file)
    if found is None:  # another blackbox, or a container's: its calls track themselves, if they can
        return None
    reference, overrides = found
    experiment = load_experiment(reference, (*overrides, f"records.dir={study_dir.resolve()}"))
    _, budget = read_outputs_and_budget(param_file)
    settings = {"nomad.budget": budget, "nomad": nomad or f"PyNomadBBO {_pynomad_version()}"}
    tracking = start_study(experiment, study_dir, solver="nomad", settings=settings, uri=uri)
    if tracking is not None:
        tracking.log_file(param_file)
    return tracking


def _failed_start(study_dir: Path, records_before: int) -> str | None:
    """Why the study stopped at its starting point, or None when it did not: no evaluation of the study
    succeeded, and this run's evaluations all failed (NOMAD stops when its starting point fails)."""
    records = RecordStore(study_dir).records()
    if any(r.status.finished for r in records):
        return None
    new = records[records_before:]
    hint = (
        "check the experiment and its files (lora-blackbox eval on a file holding that line shows the error), or "
        "choose another X0 in the experiment; then run the same command again: the study starts at X0 again"
    )
    if not new:
        return f"the starting point was not evaluated: the blackbox call failed first (see the errors above); {hint}"
    first = new[0]
    point = " ".join((first.point_line or "").split()) or format_point(first.point or [])
    where = f"{first.run_dir}/eval.log" if first.run_dir else f"run {first.run_id}"
    return (
        f"the starting point failed, so NOMAD stopped before its first iteration: X0 ({point}) -> "
        f"{first.status.value}: {first.error} ({where}); {hint}"
    )


@dataclass(frozen=True)
class StudySummary:
    study_dir: Path
    budget: int | None
    statuses: dict[str, int]
    best: EvalRecord | None  # the best evaluation
    objective_index: int
    nomad_best: float | None  # the best objective in NOMAD's cache, to cross-check the records
    warm_started: bool = False  # NOMAD's cache holds earlier studies' evaluations too (--warm-start)
    compute: Compute | None = None  # what its evaluations cost
    front: StudyFront | None = None  # with several objectives (DMultiMads): the records' and NOMAD's fronts
    on_bounds: tuple[OnBound, ...] = ()  # the best point's variables at a bound of the space (core.bounds)

    @property
    def ok(self) -> int:
        return self.statuses.get("OK", 0)

    def text(self) -> str:
        lines = ["", f"== study {self.study_dir}"]
        done = ", ".join(f"{n} {s}" for s, n in sorted(self.statuses.items())) or "none"
        lines.append(f"evaluations: {done}" + (f" (budget {self.budget})" if self.budget else ""))
        if self.compute is not None:
            lines.append(f"compute: {self.compute.describe()}")
        if self.front is not None:
            lines += self.front.lines(warm_started=self.warm_started)
        elif self.best is None:
            lines.append("no successful evaluation yet")
        else:
            best = self.best
            objective = best.outputs[self.objective_index]
            lines.append(f"best objective: {objective}  (run {best.run_id})")
            lines.append("best point: " + format_point(best.point or ()))
            lines.append("hyperparameters: " + ", ".join(f"{k}={v}" for k, v in (best.hparams or {}).items()))
            if self.nomad_best is not None and float(objective) != self.nomad_best:
                source = ": an earlier study's evaluation (--warm-start)" if self.warm_started else ""
                lines.append(f"note: NOMAD's cache holds a different best objective ({self.nomad_best}){source}")
            lines.append(f"its run folder: {best.run_dir}")
            if self.on_bounds:
                lines.append(f"warning: {bounds_warning(self.on_bounds)}")
        lines.append(f"records: {RecordStore(self.study_dir).path}")
        lines.append(
            f"NOMAD's files: {self.study_dir / CACHE_FILE}, {self.study_dir / STATS_FILE}, "
            f"{self.study_dir / 'hotrestart.txt'}, {self.study_dir / 'nomad.log'}"
        )
        return "\n".join(lines) + "\n"


def read_summary(study_dir: Path, param_file: Path, *, display_from: int | None = None) -> StudySummary:
    """The state of a study from its records, cross-checked with NOMAD's cache; with several objectives, with the
    front NOMAD's display listed after ``display_from`` (an offset in ``nomad.log``: the run that just ended; None:
    not read)."""
    outputs, budget = read_outputs_and_budget(param_file)
    objective_index = outputs.index("OBJ") if "OBJ" in outputs else 0
    records = RecordStore(study_dir).records()
    statuses: dict[str, int] = {}
    for r in records:
        statuses[r.status.value] = statuses.get(r.status.value, 0) + 1
    # Low-fidelity (surrogate) evaluations share the records file; the best point is a full evaluation.
    ok = [r for r in records if r.status is Status.OK and r.point and r.full_fidelity]
    best = min(ok, key=lambda r: float(r.outputs[objective_index]), default=None)
    cache = study_dir / CACHE_FILE
    nomad_best = None
    if cache.exists():
        values = [float(e.outputs[objective_index]) for e in read_cache(cache) if e.ok]
        nomad_best = min(values, default=None)
    warm = WARM_START_MARKER in param_file.read_text(encoding="utf-8")
    display = None
    log = study_dir / "nomad.log"
    if display_from is not None and log.exists():
        with log.open(encoding="utf-8", errors="replace") as text:
            text.seek(display_from)
            display = text.read()
    compute = compute_of(records)
    front = study_front(ok, display)
    if front is not None:  # several objectives: no best point, and NOMAD's cache holds no best objective
        return StudySummary(study_dir, budget, statuses, None, objective_index, None, warm, compute, front)
    on_bounds: list[OnBound] = []
    if best is not None:
        same = sorted(
            (r for r in ok if r.fingerprint == best.fingerprint), key=lambda r: float(r.outputs[objective_index])
        )
        on_bounds = study_on_bounds(study_dir, best.fingerprint, [r.point for r in same if r.point])
    return StudySummary(
        study_dir, budget, statuses, best, objective_index, nomad_best, warm, compute, on_bounds=tuple(on_bounds)
    )


class _ProgressWatcher(threading.Thread):
    """Watches the records file while NOMAD runs; logs evaluations done / budget, the best objective and an
    ETA on stderr whenever an evaluation ends. Reads only: NOMAD and the blackbox do not know it is there.
    Low-fidelity (surrogate) evaluations are not counted: NOMAD's budget counts the true blackbox."""

    def __init__(self, study_dir: Path, param_file: Path, *, interval_s: float = 1.0) -> None:
        super().__init__(name="study-progress", daemon=True)
        self.study_dir, self.param_file, self.interval_s = study_dir, param_file, interval_s
        self._stop_event = threading.Event()
        self._began = time.monotonic()
        self._before = self._seen = self._count()  # a resumed study's earlier evaluations: not this run's speed

    def run(self) -> None:
        while not self._stop_event.wait(self.interval_s):
            self.poll()

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=5)
        self.poll()  # the last evaluation, when it ended between two polls

    def _count(self) -> int:
        return sum(r.full_fidelity and r.counted for r in RecordStore(self.study_dir).records())

    def poll(self) -> None:
        counted = self._count()
        if counted == self._seen:
            return
        self._seen = counted
        summary = read_summary(self.study_dir, self.param_file)
        budget = summary.budget or 0
        here = counted - self._before
        eta = ""
        if here > 0 and budget > counted:
            eta = ", ETA " + format_duration((time.monotonic() - self._began) / here * (budget - counted))
        if summary.front is not None:
            standing = f"a front of {len(summary.front.front)}"
        else:
            standing = f"best objective {summary.best.outputs[summary.objective_index] if summary.best else '-'}"
        _say(f"progress: {counted}/{budget or '?'} evaluations done, {standing}{eta}")


def _descendants(pid: int) -> list[int]:
    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _signal(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
        os.kill(pid, signum)


def _pynomad_version() -> str:
    from importlib.metadata import version

    return version("PyNomadBBO")


def _say(message: str) -> None:
    sys.stderr.write(f"run_nomad: {message}\n")
    sys.stderr.flush()
