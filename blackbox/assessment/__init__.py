"""How good the tuned models are beyond the validation loss: the base model and chosen adapters of a study,
scored on lm-evaluation-harness benchmarks (``downstream``), answering questions (``answers``) and compared
by people or a judge model (``compare``).

Torch-free itself: the models are loaded and run by ``blackbox.training``.
"""
