"""Study drivers: what asks the blackbox for evaluations and decides what to try next.

``nomad_study`` runs NOMAD (the ``nomad`` executable, or PyNomadBBO through ``pynomad``) in a study folder
and stops, resumes and summarises it; ``optuna_study`` runs an Optuna study over the same search space and
the same evaluations. Drivers never import torch: the evaluations run in the blackbox.
"""
