"""A resumed study answers its finished points from the records: nothing finished is trained twice.

NOMAD writes its cache and hot-restart file only when it ends normally (or after a graceful Ctrl-C). After
kill -9 of the study, a machine crash or the out-of-memory killer, a rerun starts NOMAD from its last saved
state, or from scratch, and NOMAD asks again for points that were evaluated since. The records are the
truth: ``lora-blackbox study`` sets ``LORA_BLACKBOX_ANSWER_FINISHED`` for the blackbox calls NOMAD makes,
and a call answers every point that has a finished evaluation (``Status.counted``: OK, DIVERGED and the
counted failures) of the same experiment (its fingerprint) in its records folder with that record's output
line: at once, before torch is imported, without a new record. NOMAD is deterministic (``SEED``, one
evaluation at a time): it asks the same points in the same order, counts them against ``MAX_BB_EVAL`` as it
did before, and carries on from where it was killed. Interrupted, killed and never run points have no
finished record: they are evaluated again.

With parallel evaluations (``NB_THREADS_PARALLEL_EVAL``) or a surrogate the order can differ after a
restart: a finished point is still never trained twice, but one that NOMAD no longer asks for is not
counted again, and the study can then run past its budget by the evaluations that were finished and not
asked for again.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

from blackbox.core.errors import PointError
from blackbox.core.experiment import Experiment
from blackbox.core.point import parse_point
from blackbox.core.record import RecordStore

logger = logging.getLogger(__name__)

ENV_ANSWER_FINISHED = "LORA_BLACKBOX_ANSWER_FINISHED"


def answer_finished() -> bool:
    """Whether the study that started this call asked it to answer finished points from their records."""
    return os.environ.get(ENV_ANSWER_FINISHED) == "1"


def finished_answers(experiment: Experiment, lines: Sequence[str]) -> dict[int, str]:
    """The output lines of the points of ``lines`` that were evaluated already, by index in ``lines``."""
    finished = RecordStore.of(experiment).finished(experiment.fingerprint())
    if not finished:
        return {}
    answers = {}
    for index, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            record = finished.get(parse_point(line))
        except PointError:
            continue  # answered (and recorded) as invalid by the call
        if record is not None:
            logger.info(
                "point %d (%s) was evaluated before this study was restarted: answered from its record %s (%s)",
                index + 1,
                " ".join(line.split()),
                record.run_id,
                record.status.value,
            )
            answers[index] = record.output_line
    return answers
