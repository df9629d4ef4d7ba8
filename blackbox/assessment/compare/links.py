"""The file of rater links (``compare --raters NAMES --links FILE``): each link is a rater's password, so the file
is readable by its owner only."""

from __future__ import annotations

import errno
import logging
import os
import stat
from pathlib import Path
from typing import TextIO

from blackbox.core.errors import SetupError

logger = logging.getLogger(__name__)


def open_links_file(path: Path) -> TextIO:
    """``path`` opened to append rater links: created readable by its owner only (0600), or narrowed to that with
    a warning; a symbolic link (``O_NOFOLLOW``) or anything but a plain file is refused.

    Raises:
        SetupError: the file cannot be opened, or is refused.
    """
    # O_NONBLOCK: a FIFO without a reader fails the open instead of blocking it; no effect on a plain file.
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    try:
        descriptor = os.open(path, flags, 0o600)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise SetupError(f"--links {path} is a symbolic link: refused (name the file itself)") from e
        raise SetupError(f"cannot write the rater links to {path}: {e.strerror}") from e
    mode = os.fstat(descriptor).st_mode
    if not stat.S_ISREG(mode):
        os.close(descriptor)
        raise SetupError(f"--links {path} is not a plain file: refused")
    if stat.S_IMODE(mode) & 0o077:
        os.fchmod(descriptor, 0o600)
        logger.warning("%s was readable by others (mode %o): now by you only (600)", path, stat.S_IMODE(mode))
    return os.fdopen(descriptor, "a", encoding="utf-8")
