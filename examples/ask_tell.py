"""Drive the LoRA blackbox from any Python optimizer that can ask for a point and be told its value.

    python examples/ask_tell.py --experiment demo --budget 10 [--set KEY=VALUE ...] [--seed 0] [--isolate]

The loop is the whole integration::

    blackbox = Blackbox(experiment, overrides)
    for _ in range(budget):
        point = optimizer.ask()                  # in the space's coordinates: blackbox.space.variables
        result = blackbox.evaluate_point(point)  # trains, validates, appends a record
        optimizer.tell(point, result.objective)  # nan: the evaluation failed; inf: it diverged

The optimizer here is a (1+1) evolution strategy with the 1/5th success rule, started at the experiment's
X0 and written out below in a few lines. Any optimizer with ask and tell fits the same loop: Optuna's
``study.ask()`` / ``study.tell()`` (that is what ``lora-blackbox optuna`` does), nevergrad's
``optimizer.ask()`` / ``optimizer.tell()``, scikit-optimize's ``Optimizer.ask()`` / ``Optimizer.tell()``.
The best result is printed on stdout as JSON; everything else goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import math

import numpy as np

from blackbox import Blackbox, SearchSpace


class OnePlusOneES:
    """Mutate the best point so far with Gaussian steps scaled to each variable's range; integers rounded."""

    def __init__(self, space: SearchSpace, seed: int) -> None:
        self.space = space
        self.rng = np.random.default_rng(seed)
        self.lower = np.array([v.lower for v in space.variables])
        self.upper = np.array([v.upper for v in space.variables])
        self.best: tuple[tuple[float, ...], float] | None = None
        self.sigma = 0.25  # step size, as a fraction of each variable's range

    def ask(self) -> tuple[float, ...]:
        if self.best is None:
            return self.space.x0
        step = self.rng.normal(0.0, self.sigma, len(self.lower)) * (self.upper - self.lower)
        x = np.clip(np.array(self.best[0]) + step, self.lower, self.upper)
        for i, var in enumerate(self.space.variables):
            if var.type in ("I", "B"):
                x[i] = round(x[i])
            elif var.granularity:
                x[i] = round(x[i] / var.granularity) * var.granularity
        return self.space.check(tuple(float(v) for v in x))

    def tell(self, point: tuple[float, ...], value: float) -> None:
        value = math.inf if math.isnan(value) else value  # a failed point is never the incumbent
        success = self.best is None or value < self.best[1]
        if success:
            self.best = (point, value)
        # 1/5th success rule: widen the steps after a success, narrow them after a failure.
        self.sigma = min(0.5, self.sigma * 1.5) if success else max(0.02, self.sigma * 1.5**-0.25)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", "-e", required=True, help="experiment file or shipped name, e.g. demo")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--budget", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--isolate", action="store_true", help="each evaluation in a lora-blackbox eval subprocess")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")  # logs on stderr

    blackbox = Blackbox(args.experiment, args.overrides, isolate=args.isolate)
    optimizer = OnePlusOneES(blackbox.space, args.seed)
    best = None
    for evaluation in range(1, args.budget + 1):
        point = optimizer.ask()
        result = blackbox.evaluate_point(point)
        optimizer.tell(point, result.objective)
        logging.info(
            "evaluation %d/%d: %s -> %s %s", evaluation, args.budget, point, result.status.value, result.objective
        )
        if not result.failed and (best is None or result.objective < best.objective):
            best = result
    summary = None if best is None else {"objective": best.objective, "hparams": best.hparams, "point": best.point}
    print(json.dumps({"best": summary, "records": str(blackbox.records_file)}))


if __name__ == "__main__":
    main()
