"""Time to accuracy, honestly selected: the final epoch's test accuracy and the wall-clock seconds from nothing
loaded to the end of training, for a recipe, over one or several seeds.

    python benchmarks/time_to_accuracy.py                                   # fashion-mnist, target 93% in 180 s
    python benchmarks/time_to_accuracy.py --recipe cifar10-fast --target 90 --budget 1200 --seeds 3 \
        --set 'data.dataset="folder"' --set 'data.data_dir="/tmp/cifar10-jpg"'     # the CIFAR-10 JPEGs

The result is the test accuracy after the last epoch, never the best epoch's. The recipes hold a validation split
out of the training images (``data.val_split``), which is what each epoch reports; the test split is evaluated once,
after the last epoch (with ``--set data.val_split=0`` the per-epoch figure is the test split's, and the last one is
taken). Each epoch's figures are printed for the curve only. A measurement, not a test: it exits 0 either way and
says whether the target was met (mean ± std over seeds).

With ``--models K`` a run trains K models one after the other (seeds K·s … K·s + K − 1 for seed s) and scores them
as one, their softmax averaged (the paper's five CNNs, `alexnet.inference.ensemble`), on the held-out and the test
split with the recipe's views; its time is all K trainings and the scoring.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

from alexnet.config import load_config
from alexnet.errors import AlexNetError
from alexnet.inference.evaluate import evaluate_checkpoint
from alexnet.training.fit import fit


def one_run(recipe: str, overrides: list[str], seed: int) -> tuple[float, float, list[dict]]:
    """(final test top-1 %, seconds from nothing loaded to the end of training, the epoch rows)."""
    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        cfg = load_config(recipe, overrides, train__out=out, train__progress=False, train__seed=seed)
        result = fit(cfg)
    last = result.history[-1]
    # With a held-out split the test split has its own column, filled after the last epoch only.
    return last.get("test_acc1", last["val_acc1"]), time.perf_counter() - began, result.history


def ensemble_run(recipe: str, overrides: list[str], seed: int, models: int) -> tuple[float, float, list[dict]]:
    """`one_run` for ``models`` models scored as one; the rows are the last one's, with the ensemble's held-out
    figure in the last row."""
    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as root:
        outs = [Path(root, f"model{i}") for i in range(models)]
        for i, out in enumerate(outs):
            cfg = load_config(
                recipe, overrides, train__out=str(out), train__progress=False, train__seed=models * seed + i
            )
            history = fit(cfg).history
            last = history[-1]
            print(f"model {i}: held out {last['val_acc1']:.2f}%, test {last.get('test_acc1', float('nan')):.2f}%")
        paths = [out / "last.pt" for out in outs]
        test = evaluate_checkpoint(paths, progress=False)
        held = evaluate_checkpoint(paths, split="val", progress=False) if cfg.data.val_split else test
    print(f"{models} models as one: held out {held.acc1:.2f}%, test {test.acc1:.2f}%")
    history[-1] = {**history[-1], "val_acc1": held.acc1}
    return test.acc1, time.perf_counter() - began, history


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", default="fashion-mnist")
    parser.add_argument("--target", type=float, default=93.0, help="final-epoch test top-1 accuracy, percent")
    parser.add_argument("--budget", type=float, default=180.0, help="seconds the run should take at most")
    parser.add_argument("--seeds", type=int, default=1, help="runs with seeds F..F+N-1; mean ± std")
    parser.add_argument("--first-seed", type=int, default=0, metavar="F", help="the first seed (default 0)")
    parser.add_argument("--models", type=int, default=1, metavar="K", help="K models a run, scored as one")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    finals, seconds = [], []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        try:
            if args.models > 1:
                final, total, history = ensemble_run(args.recipe, args.overrides, seed, args.models)
            else:
                final, total, history = one_run(args.recipe, args.overrides, seed)
        except (AlexNetError, ValueError, FileNotFoundError) as err:  # a bad --set or recipe: one line, as the CLI
            sys.exit(f"time_to_accuracy: error: {err}")
        print(f"\nseed {seed}\n{'epoch':>5} {'elapsed s':>10} {'val acc1 %':>11}")
        for row in history:
            print(f"{row['epoch']:>5} {row['elapsed']:>10.1f} {row['val_acc1']:>11.2f}")
        print(f"seed {seed}: final-epoch test top-1 {final:.2f}% in {total:.1f} s")
        finals.append(final)
        seconds.append(total)

    def spread(values: list[float]) -> str:
        mean = statistics.mean(values)
        return f"{mean:.2f} ± {statistics.stdev(values):.2f}" if len(values) > 1 else f"{mean:.2f}"

    met = statistics.mean(finals) >= args.target and statistics.mean(seconds) <= args.budget
    alone = sum(final >= args.target and total <= args.budget for final, total in zip(finals, seconds))
    print(
        f"\n{args.recipe}: final-epoch test top-1 {spread(finals)}% in {spread(seconds)} s over {args.seeds} "
        f"seed(s); target {args.target}% in {args.budget:.0f} s: {'MET' if met else 'NOT met'} in the mean, "
        f"by {alone} of {len(finals)} seed(s) alone"
    )


if __name__ == "__main__":
    main()
