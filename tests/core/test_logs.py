"""The log's side of our quiet terminal: a library's prints and progress bars as log lines."""

from __future__ import annotations

import contextlib
import logging

import pytest

from blackbox.core.logs import LogLines


def test_log_lines_makes_a_record_of_each_line_and_of_each_progress_bar_update(
    caplog: pytest.LogCaptureFixture,
) -> None:
    logger = logging.getLogger("lm-eval.output")
    with caplog.at_level(logging.INFO, logger=logger.name), contextlib.closing(LogLines(logger)) as log:
        log.write("bootstrapping for stddev: acc\n")
        log.write("\r 50%|#####     | 1/2")
        log.flush()  # a bar flushes its update: not a line yet
        assert [r.getMessage() for r in caplog.records] == ["bootstrapping for stddev: acc"]
        log.write("\r100%|##########| 2/2\n\n  \n")
        log.write("no end")
    assert [r.getMessage() for r in caplog.records] == [
        "bootstrapping for stddev: acc",
        " 50%|#####     | 1/2",
        "100%|##########| 2/2",
        "no end",  # written when the stream closes
    ]
    assert {r.name for r in caplog.records} == {"lm-eval.output"}
