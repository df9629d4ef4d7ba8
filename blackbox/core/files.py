"""Files and folders that readers never see half-written: written under a temporary name, then renamed.

A rename within one folder is atomic: a reader (another evaluation, a resumed study, NOMAD) finds the old
file or the new one, never a torn one, whatever kills the writer.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path


def write_text_atomic(path: Path, text: str) -> None:
    """Replace ``path``'s content with ``text`` in one step."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def folder_published_at(folder: Path) -> Iterator[Path]:
    """A temporary folder beside ``folder`` to fill; renamed to ``folder`` when the block ends without error.

    When another process published the same folder first, its copy is kept (both are the same content by
    construction: caches keyed by what they hold) and this one is discarded.
    """
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        try:
            tmp.rename(folder)
        except OSError:
            pass  # another process published it first: its copy is identical
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
