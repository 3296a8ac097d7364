"""Time to accuracy: wall-clock seconds from nothing loaded to a target test accuracy, for a recipe.

    python benchmarks/time_to_accuracy.py                      # fashion-mnist recipe, target 92%
    python benchmarks/time_to_accuracy.py --recipe cifar10 --target 85 --set train.epochs=20

Prints each epoch's elapsed time (data loading included) and test accuracy, then the first time the target was
reached. A measurement, not a test: it exits 0 either way and says whether the target was met.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time

from alexnet.config import load_config
from alexnet.training.fit import fit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", default="fashion-mnist")
    parser.add_argument("--target", type=float, default=92.0, help="test top-1 accuracy, percent")
    parser.add_argument("--budget", type=float, default=300.0, help="seconds the target should be reached in")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        cfg = load_config(args.recipe, args.overrides, train__out=out, train__progress=False)
        result = fit(cfg)
    total = time.perf_counter() - began
    print(f"\n{'epoch':>5} {'elapsed s':>10} {'test acc1 %':>12}")
    reached = None
    for row in result.history:
        print(f"{row['epoch']:>5} {row['elapsed']:>10.1f} {row['val_acc1']:>12.2f}")
        if reached is None and row["val_acc1"] >= args.target:
            reached = row["elapsed"]
    final = result.history[-1]["val_acc1"]
    if reached is None:
        print(f"target {args.target}% NOT reached: final {final:.2f}% after {total:.1f} s")
    else:
        verdict = "within" if reached <= args.budget else "OVER"
        print(f"target {args.target}% reached at {reached:.1f} s ({verdict} the {args.budget:.0f} s budget); "
              f"final {final:.2f}% after {total:.1f} s")  # fmt: skip


if __name__ == "__main__":
    main()
