"""Run a NOMAD parameter file with PyNomadBBO (the NOMAD library on PyPI), as the ``nomad`` binary would.

    python -m blackbox.studies.pynomad PARAM_FILE

Batch mode (``PyNomad.optimizeWithMainStep``): NOMAD itself calls BB_EXE, reads and writes its cache,
stats and hot-restart files, and stops gracefully on SIGINT. It runs in a process of its own because
PyNomadBBO aborts the interpreter on C++ errors and cannot run two optimisations in one process.
PyNomadBBO reads no parameter file: the file's lines are passed with ``PROBLEM_DIR`` added, so
relative file names resolve against the parameter file's folder, as with the binary.
"""

from __future__ import annotations

import sys
from pathlib import Path

from blackbox.core.nomad import UNSAFE_IN_PYNOMAD


def pynomad_lines(text: str) -> tuple[list[str], list[str]]:
    """The parameter lines PyNomadBBO is given, and warnings about lines left out."""
    lines, warnings = [], []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name = line.split()[0].upper()
        if name in UNSAFE_IN_PYNOMAD:
            warnings.append(
                f"{name} is left out: PyNomadBBO 4.6 aborts on a failed evaluation when it is set "
                "(the blackbox's records.jsonl holds every evaluation instead)"
            )
            continue
        if name == "PROBLEM_DIR":
            warnings.append("PROBLEM_DIR is replaced by the parameter file's folder")
            continue
        lines.append(line)
    return lines, warnings


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        sys.stderr.write("usage: python -m blackbox.studies.pynomad PARAM_FILE\n")
        return 2
    path = Path(argv[1]).resolve()
    lines, warnings = pynomad_lines(path.read_text())
    for warning in warnings:
        sys.stderr.write(f"pynomad: {warning}\n")
    lines.append(f"PROBLEM_DIR {path.parent}/")
    import PyNomad

    sys.stdout.flush()
    PyNomad.optimizeWithMainStep(lines)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
