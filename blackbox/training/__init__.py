"""The training layer: everything that needs torch, transformers and peft.

One evaluation is ``objective.Evaluator.evaluate``: the data (``data``, ``embedded``), the base model and a
fresh LoRA adapter (``model``, ``precision``, ``attention``), the training loop (``train``, ``batches``,
``distributed``) and the validation (``validate``). Nothing above this package imports torch (an
import-linter contract checks it), so the command line, the reports and the study drivers start fast.
"""
