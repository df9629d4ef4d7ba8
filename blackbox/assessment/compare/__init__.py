"""Blind pairwise comparison of models' answers (``lora-blackbox compare``): a local web page where people rate
two answers to one question at a time (``app``, behind the checks of ``guard`` and the addresses of
``addresses``), the order of the pairs and their sides (``pairs``), the votes store with its rater links and the
study's secret (``votes``), and a judge model that rates them when no people are at hand (``judge``, ``endpoint``).
Results: :mod:`blackbox.reports.preferences`. Torch-free: the judge model runs in :mod:`blackbox.training.judge`.
"""
