"""Blind pairwise comparison of models' answers (``lora-blackbox compare``): a local web page where people rate
two answers to one question at a time (``app``), the order of the pairs (``pairs``), and a judge model that rates
them when no people are at hand (``judge``). Votes: :mod:`blackbox.core.votes`; results:
:mod:`blackbox.reports.preferences`.
Torch-free: the judge model runs in :mod:`blackbox.training.judge`.
"""
