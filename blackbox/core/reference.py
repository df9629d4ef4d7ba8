"""The experiment file's reference, generated from its pydantic models: ``docs/reference/experiment.md``.

``python -m blackbox.core.reference`` prints it; a test fails when the committed page differs, so the reference
never drifts from the code that validates experiment files.
"""

from __future__ import annotations

import inspect
import re
import sys
import types
import typing
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from blackbox.core.experiment import Experiment

_INTRO = """# Experiment files: the reference

An experiment is one TOML file (or a shipped name: `lora-blackbox eval -e demo`); every key below can also be set
on the command line with `--set SECTION.KEY=VALUE`. A relative path in an experiment file is read from the file's
folder; on the command line, from the working directory. Unknown keys are errors. The guide to writing one:
[Experiments](../experiments.md).

This page is generated from the code that validates experiment files (`python -m blackbox.core.reference`).
"""


def reference() -> str:
    """The whole page, in Markdown."""
    parts = [_INTRO]
    for name, field in Experiment.model_fields.items():
        model, many = _section_model(field.annotation)
        if model is None:
            continue
        header = f"[[{name}]]" if many else f"[{name}]"
        parts.append(f"## `{header}`\n")
        doc = model.__dict__.get("__doc__")  # its own, not pydantic's BaseModel's
        if doc:
            parts.append(_doc(inspect.cleandoc(doc)).strip() + "\n")
        parts.append(_table(model))
        for nested_name, nested in model.model_fields.items():
            nested_model, nested_many = _section_model(nested.annotation)
            if nested_model is not None:
                nested_header = f"[[{name}.{nested_name}]]" if nested_many else f"[{name}.{nested_name}]"
                parts.append(f"### `{nested_header}`: {_plain(nested_model.__name__)}\n")
                benchmark = nested_model.__name__ == "BenchmarkConfig"
                parts.append("The keys of a benchmark: see `[[downstream]]`.\n" if benchmark else _table(nested_model))
    return "\n".join(parts).rstrip("\n") + "\n"


def _table(model: type[BaseModel]) -> str:
    rows = ["| key | type | default | what it is |", "|---|---|---|---|"]
    for key, field in model.model_fields.items():
        if field.is_required():
            default = "required"
        elif field.default_factory is not None:
            default = f"`{field.default_factory()!r}`"  # type: ignore[call-arg]
        elif field.default is None:
            default = "unset"
        else:
            default = "" if field.default is PydanticUndefined else f"`{_toml(field.default)}`"
        what = _doc(field.description or "").replace("|", "\\|")
        rows.append(f"| `{key}` | {_type(field.annotation)} | {default} | {what} |")
    return "\n".join(rows) + "\n"


def _section_model(annotation: Any) -> tuple[type[BaseModel] | None, bool]:
    """The section model of a field (and whether it is an array of tables), or None for a plain value."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    origin = typing.get_origin(annotation)
    args = [a for a in typing.get_args(annotation) if a is not Ellipsis and a is not type(None)]
    if origin in (tuple, list) and args and isinstance(args[0], type) and issubclass(args[0], BaseModel):
        return args[0], True
    if origin in (typing.Union, types.UnionType) and len(args) == 1:
        return _section_model(args[0])
    return None, False


def _type(annotation: Any) -> str:
    return _describe_type(annotation).replace("|", "\\|")


def _describe_type(annotation: Any) -> str:
    """A type as a reader of TOML sees it: ``int``, ``"I" | "R" | "B"``, ``[str, ...]``, ``float | none``."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return _describe_type(args[0])
    if origin is typing.Literal:
        return " | ".join(f"`{_toml(a)}`" for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join("none" if a is type(None) else _describe_type(a) for a in args)
    if origin in (tuple, list):
        return f"[{_describe_type(args[0])}, ...]" if args else "[...]"
    if origin is dict:
        return "table"
    if annotation is Any:
        return "any"
    return f"`{getattr(annotation, '__name__', str(annotation))}`"


def _doc(text: str) -> str:
    """A docstring as Markdown: reST's double backquotes and roles become code spans."""
    text = re.sub(r":[a-z]+:`~?([^`]+)`", r"`\1`", text)
    return text.replace("``", "`")


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, BaseModel):
        return "{}"
    return repr(value)


def _plain(name: str) -> str:
    return name.removesuffix("Config")


if __name__ == "__main__":
    sys.stdout.write(reference())
