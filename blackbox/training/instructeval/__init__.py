"""lm-eval tasks that score as InstructEval (declare-lab/instruct-eval) did, the benchmark table of Tribes et al.:
``instructeval_mmlu`` (5-shot), ``instructeval_bbh`` (3-shot, answer only), ``instructeval_drop`` (3-shot) and
``instructeval_humaneval`` (0-shot, pass@1), each correct when the stripped generation starts with the answer
(``scoring``). :class:`blackbox.training.benchmarks.Scorer` finds them by name, without an include path.
"""

from pathlib import Path

TASKS_DIR = Path(__file__).resolve().parent
"""The folder of the task YAMLs."""
