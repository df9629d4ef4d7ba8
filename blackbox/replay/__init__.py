"""Replay: answer the points of a grid from a table of real evaluations, in milliseconds, through the real code paths.

A replay table (:mod:`blackbox.replay.table`) holds one real evaluation per point of an experiment's grid: its
objective and metrics, its learning curve at the table's checkpoints, and the measured seconds of each phase
(start-up, loading, training up to each checkpoint, each checkpoint, the final validation). With the experiment
setting ``replay.table``, ``lora-blackbox eval`` answers every point from that table (:mod:`blackbox.replay.
objective`) instead of training: the same records, outputs, stopping rules and Optuna pruners, NOMAD (binary and
PyNomadBBO) and Optuna drivers, resume and warm starts, with a simulated clock that advances by each evaluation's
measured seconds (only up to the checkpoint where a rule stops it). As Syne Tune's blackbox repository and its
simulator backend do for tabulated benchmarks, it makes a comparison of methods over many seeds cheap.
"""
