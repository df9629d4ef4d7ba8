"""Loading an experiment: from a TOML file or a shipped name, with ``--set`` overrides and its local paths made
absolute; how another process names it; and its snapshot beside the records of a study."""

from __future__ import annotations

import os
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from blackbox.core.errors import ConfigError
from blackbox.core.experiment.checks import describe_error
from blackbox.core.experiment.schema import Experiment
from blackbox.core.files import write_text_atomic
from blackbox.core.folders import EXPERIMENTS_DIR

ENV_EXPERIMENT = "LORA_BLACKBOX_EXPERIMENT"


def write_snapshot(experiment: Experiment) -> Path:
    """Keep the experiment next to its records (``experiments/<fingerprint>.json``), once per fingerprint, so that
    the adapters of a study can be scored, asked questions or retrained later without its TOML file."""
    path = experiment.records_dir.resolve() / EXPERIMENTS_DIR / f"{experiment.fingerprint()}.json"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, experiment.model_dump_json(indent=1))
    return path


def read_snapshot(study_dir: Path, fingerprint: str) -> Experiment:
    """The experiment that ran the evaluations of ``fingerprint`` in a study folder.

    Raises:
        ConfigError: no snapshot of that fingerprint (records of an older version): give the experiment.
    """
    path = study_dir / EXPERIMENTS_DIR / f"{fingerprint}.json"
    if not path.is_file():
        raise ConfigError(f"{study_dir} keeps no experiment {fingerprint} ({path}): give it with --experiment")
    try:
        return Experiment.model_validate_json(path.read_text())
    except ValidationError as e:
        raise ConfigError(f"{path}: {e}") from e


def shipped_experiments() -> list[str]:
    """Names of the experiments that ship with the package."""
    folder = resources.files("blackbox").joinpath("experiments")
    return sorted(p.name.removesuffix(".toml") for p in folder.iterdir() if p.name.endswith(".toml"))


def resolve_experiment(name_or_path: str) -> tuple[str, str]:
    """Find an experiment file. Returns (its TOML text, where it came from).

    A path to an existing file wins; otherwise the name of a shipped experiment.
    """
    path = Path(name_or_path).expanduser()
    if path.is_file():
        try:
            return path.read_text(encoding="utf-8"), str(path)
        except OSError as e:
            raise ConfigError(f"cannot read {path}: {e}") from e
    shipped = resources.files("blackbox").joinpath("experiments", f"{name_or_path}.toml")
    if "/" not in name_or_path and shipped.is_file():
        return shipped.read_text(encoding="utf-8"), f"shipped experiment {name_or_path!r}"
    raise ConfigError(
        f"no experiment file {name_or_path!r} and no shipped experiment of that name; "
        f"shipped: {', '.join(shipped_experiments())}"
    )


def experiment_reference(name_or_path: str) -> str:
    """How another process (an evaluation, NOMAD's BB_EXE, a Ray worker) names this experiment: a file by its
    absolute path (``~`` expanded; another working directory resolves it alike), a shipped name as it is."""
    path = Path(name_or_path).expanduser()
    return str(path.resolve()) if path.is_file() else name_or_path


def load_experiment(name_or_path: str, overrides: list[str] | tuple[str, ...] = ()) -> Experiment:
    """Load, override and validate an experiment.

    Local paths become absolute (:func:`absolute_paths`): those of an experiment file resolve against its folder
    (data kept beside the experiment is found from any working directory), those of overrides and of a shipped
    experiment against the working directory. The snapshot, the records and NOMAD's BB_EXE carry them so.

    Args:
        name_or_path: a TOML file, or the name of a shipped experiment (``demo``, ``paper_exp2``, ...).
        overrides: ``KEY=VALUE`` strings with dotted keys, applied in order.

    Returns:
        The validated, frozen experiment.

    Raises:
        ConfigError: with every problem found (syntax, unknown keys, wrong types, inconsistent space).
    """
    text, source = resolve_experiment(name_or_path)
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"not valid TOML: {e}", source=source) from e
    path = Path(name_or_path).expanduser()
    absolute_paths(raw, path.resolve().parent if path.is_file() else Path.cwd())
    problems = []
    for item in overrides:
        try:
            apply_override(raw, item)
        except ConfigError as e:
            problems.extend(e.problems)
    if problems:
        raise ConfigError(problems, source=source)
    absolute_paths(raw, Path.cwd())  # the overrides' (those of the file are absolute already)
    try:
        return Experiment.model_validate(raw)
    except ValidationError as e:
        raise ConfigError([describe_error(err) for err in e.errors()], source=source) from e


def absolute_overrides(overrides: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """``--set`` items with their local paths made absolute against the working directory (:func:`absolute_paths`),
    so that processes started elsewhere (NOMAD's BB_EXE in a study folder, a container, a Ray worker) read the same
    files. Other items, and lists, stay as they are."""
    result = []
    for item in overrides:
        key, sep, text = item.partition("=")
        parts = key.strip().split(".")
        value = parse_value(text)
        if sep and isinstance(value, str) and value and len(parts) >= 2:
            raw: dict[str, Any] = {}
            node = raw
            for part in parts[:-1]:
                node = node.setdefault(part, {})
            node[parts[-1]] = value
            absolute_paths(raw, Path.cwd())
            for part in parts[:-1]:
                raw = raw[part]
            if raw[parts[-1]] != value:
                item = f"{key}={raw[parts[-1]]}"
        result.append(item)
    return tuple(result)


DATA_FILE_SUFFIXES = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
"""Local data files by suffix, and the ``datasets`` builder that reads each."""


def absolute_paths(raw: dict[str, Any], base: Path) -> None:
    """Make the local paths of a raw experiment absolute, relative ones against ``base``: data files and folders
    (``data.train``, ``data.validation``, ``data.test``), a local model folder (``model.name_or_path``),
    ``records.dir``, ``replay.table`` and the benchmarks' ``include_path``. A name that is no local path stays as it
    is: a hub id (``meta-llama/Llama-2-7b-hf`` unless such a folder exists under ``base``), a hub data set,
    ``embedded:...``."""
    data = raw.get("data")
    if isinstance(data, dict):
        for key in ("train", "validation", "test"):
            value = data.get(key)
            if isinstance(value, str):
                data[key] = _local_source(value, base)
            elif isinstance(value, list):
                data[key] = [_local_source(v, base) if isinstance(v, str) else v for v in value]
    model = raw.get("model")
    if isinstance(model, dict) and isinstance(model.get("name_or_path"), str):
        model["name_or_path"] = _local_source(model["name_or_path"], base, files=False)
    for section, key in (("records", "dir"), ("replay", "table")):
        table = raw.get(section)
        if isinstance(table, dict) and isinstance(table.get(key), str) and table[key]:
            table[key] = _absolute(table[key], base)
    objective: dict[str, Any] = raw["objective"] if isinstance(raw.get("objective"), dict) else {}
    benchmarks = [objective.get("benchmark"), objective.get("test"), *raw.get("downstream", [])]
    benchmarks += [c.get("benchmark") for c in raw.get("constraints", []) if isinstance(c, dict)]
    benchmarks += [o.get(k) for o in raw.get("objectives", []) if isinstance(o, dict) for k in ("benchmark", "test")]
    for benchmark in benchmarks:
        if isinstance(benchmark, dict) and isinstance(benchmark.get("include_path"), str) and benchmark["include_path"]:
            benchmark["include_path"] = _absolute(benchmark["include_path"], base)


def _absolute(value: str, base: Path) -> str:
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else Path(os.path.normpath(base / path)))


def _local_source(value: str, base: Path, *, files: bool = True) -> str:
    """``value`` as an absolute path when it names a local file or folder, else as it is (a hub name)."""
    if not value or value.startswith("embedded:"):
        return value
    path = Path(value).expanduser()
    explicit = value.startswith(("./", "../", "~", "/"))
    is_file = files and path.suffix.lower() in DATA_FILE_SUFFIXES
    if explicit or is_file or (base / path).exists():
        return _absolute(value, base)
    return value


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Set ``KEY=VALUE`` (dotted KEY) in a raw experiment dict, checking KEY against the schema."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
    parts = key.split(".")
    model: type[BaseModel] = Experiment
    for depth, part in enumerate(parts):
        field = model.model_fields.get(part)
        if field is None:
            where = ".".join(parts[:depth]) or "the experiment"
            known = ", ".join(model.model_fields)
            raise ConfigError(f"unknown key {key!r}: {where} has no {part!r} (known: {known})")
        annotation = field.annotation
        is_last = depth == len(parts) - 1
        if is_last:
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                raise ConfigError(f"{key!r} is a section; set one of its keys, e.g. {key}.<key>=...")
            break
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            raise ConfigError(f"unknown key {key!r}: {'.'.join(parts[: depth + 1])} has no sub-keys")
        model = annotation
    if parts[0] == "space":
        raise ConfigError("the search space cannot be changed with --set: edit the experiment file")
    node = raw
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{key!r}: {part!r} in the file is not a table")
        node = child
    node[parts[-1]] = parse_value(text)


def parse_value(text: str) -> Any:
    """A TOML value where the text parses as one, else the text itself."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text
