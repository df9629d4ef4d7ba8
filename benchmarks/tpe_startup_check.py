"""Why benchmarks/efficiency.py runs no random search at a budget of 8 (issue 22): at that budget, Optuna's
TPESampler (10 start-up trials by default) draws the same points as RandomSampler with the same seed. Checked on
the efficiency space (lora_r int 0..6, lora_alpha int 1..8, learning_rate float -5..-1, asked in that order), with
values told as they come.

    python benchmarks/tpe_startup_check.py   # one line per seed: seed, True when every point is the same
"""

import optuna

optuna.logging.set_verbosity(optuna.logging.WARNING)


def points(sampler):
    study = optuna.create_study(sampler=sampler)
    out = []
    for i in range(8):
        trial = study.ask()
        p = (
            trial.suggest_int("lora_r", 0, 6),
            trial.suggest_int("lora_alpha", 1, 8),
            trial.suggest_float("learning_rate", -5, -1),
        )
        study.tell(trial, float(i))
        out.append(p)
    return out


for seed in (0, 1, 2):
    tpe, rnd = points(optuna.samplers.TPESampler(seed=seed)), points(optuna.samplers.RandomSampler(seed=seed))
    print(seed, tpe == rnd, tpe[:2])
