"""Commands that train: ``train``, ``demo``, ``report``, ``stats``."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from ..config import DEFAULT_RECIPE, LOGGERS, PARALLEL_MODES
from . import options

log = logging.getLogger(__name__)


def add_train(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--recipe",
        help="a recipe name (see --list-recipes) or a .toml/.json file; by default the --dataset's own (mnist, "
        "cifar10; cifar100: cifar10; imagenet: paper-imagenet), else fashion-mnist",
    )
    p.add_argument("--list-recipes", action="store_true", help="print the built-in recipes and exit")
    p.add_argument("--model", dest="model__name", help="model variant (alexnet models)")
    p.add_argument(
        "--dataset", dest="data__dataset", help="fashion-mnist, mnist, cifar10, cifar100, imagenet, folder, fake"
    )
    options.data_dir(p, "data__data_dir")
    p.add_argument("--out", dest="train__out", metavar="DIR", help="run directory (default runs/<time>-<model>-<data>)")
    p.add_argument("--epochs", dest="train__epochs", type=options.positive_int, metavar="N")
    p.add_argument("-b", "--batch-size", dest="data__batch_size", type=options.positive_int, metavar="N")
    p.add_argument("--lr", dest="optim__lr", type=float, metavar="LR")
    p.add_argument(
        "--scale-lr",
        dest="optim__lr_reference_batch",
        type=options.positive_int,
        metavar="REF_BATCH",
        help="linear scaling rule: lr × (batch × processes × accumulate) / REF_BATCH (the paper's lr: 128)",
    )
    p.add_argument(
        "--accumulate",
        dest="train__accumulate",
        type=options.positive_int,
        metavar="N",
        help="accumulate gradients over N batches per optimizer step",
    )
    p.add_argument(
        "--sync-bn",
        dest="train__sync_bn",
        action=argparse.BooleanOptionalAction,
        help="batch norm over every process's images (default: on under torchrun for BN models)",
    )
    p.add_argument("-j", "--workers", dest="data__workers", type=int, metavar="N", help="image-decoding processes")
    options.device(p, "train__device")
    options.precision(p, "train__precision")
    p.add_argument("--seed", dest="train__seed", type=int, metavar="N")
    p.add_argument("--resume", dest="train__resume", metavar="PATH|auto", help="a checkpoint, or auto: OUT/last.pt")
    p.add_argument(
        "--weights",
        dest="model__weights",
        action=options.Once,
        metavar="NAME|PATH",
        help="start from these weights (fine-tuning): their network and preprocessing; the last layer is replaced "
        "when the classes differ",
    )
    p.add_argument(
        "--freeze",
        dest="model__freeze",
        metavar="features|N",
        help="train only what follows: every conv layer, or the first N weight layers",
    )
    options.allow_changes(p)
    p.add_argument(
        "--limit-train-batches",
        dest="train__limit_train_batches",
        type=options.positive_int,
        metavar="N",
        help="train on the first N batches of each epoch (batches of -b images)",
    )
    p.add_argument(
        "--limit-val-batches",
        dest="train__limit_val_batches",
        type=options.positive_int,
        metavar="N",
        help="validate on the first N batches (batches of data.eval_batch_size images, 256 by default)",
    )
    p.add_argument("--ten-crop", dest="data__ten_crop", action="store_const", const=True, help="10-crop validation")
    p.add_argument("--compile", dest="train__compile", action="store_const", const=True, help="torch.compile")
    p.add_argument(
        "--parallel",
        dest="train__parallel",
        choices=PARALLEL_MODES,
        help="under torchrun: data (DDP, default), towers (the paper's two-GPU split), hybrid (data-parallel convs, "
        "model-parallel fc)",
    )
    p.add_argument(
        "--logger",
        dest="train__loggers",
        type=_loggers,
        metavar="NAMES",
        help="comma-separated: csv (metrics.csv, always written), tensorboard (event files in OUT/tensorboard)",
    )
    options.no_progress(p)
    options.overrides(p, "override any config field, e.g. --set model.overrides.width=0.5 (repeatable)")


def _loggers(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = sorted(set(names) - set(LOGGERS))
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"{text!r}: choose from {', '.join(LOGGERS)}")
    return names


def run_train(args: argparse.Namespace) -> int:
    from ..config import default_recipe, given_value, list_recipes, load_config

    if args.list_recipes:  # before training's imports (torch, 3 s): a listing answers at once
        print("\n".join(list_recipes()))
        return 0
    from ..training.fit import fit

    fields = options.config_fields(args)
    dataset = given_value("data.dataset", args.overrides, fields)  # --dataset, or --set data.dataset=...
    result = fit(load_config(args.recipe or default_recipe(dataset), args.overrides, **fields))  # training names it
    final = result.final
    if final is not None and os.environ.get("RANK", "0") == "0":  # under torchrun, one process reports
        print(
            f"done: {result.out}  best val acc1 {result.best_acc1:.2f}%  last val acc1 {final.acc1:.2f}% "
            f"acc5 {final.acc5:.2f}%  loss {final.loss:.4f}"
            + (f"  test acc1 {result.test.acc1:.2f}% (once, after the last epoch)" if result.test else "")
        )
        try:
            from ..experiments.report import run_report

            # The report's figures: the test split when validation held images out of training, else validation.
            print(f"report: {run_report(result.out, result.test or final)}")
        except ImportError:  # matplotlib is the optional [report] extra
            print("report: skipped (pip install 'alexnet[report]' for figures)")
    return 0


def add_report(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="a run directory (config.json, metrics.csv, last.pt)")


def run_report(args: argparse.Namespace) -> int:
    from ..experiments.report import run_report

    print(f"report: {run_report(args.run)}")
    return 0


def add_demo(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/demo", metavar="DIR", help="the run directory (default runs/demo)")
    p.add_argument("--recipe", default=DEFAULT_RECIPE, help=f"a recipe name or file (default {DEFAULT_RECIPE})")
    options.allow_changes(p)  # the demo resumes what --out holds: its refusals name this flag
    options.overrides(p)


def run_demo(args: argparse.Namespace) -> int:
    from ..experiments.demo import run_demo as demo

    allow = ["train.allow_changes=true"] if args.train__allow_changes else []
    path = demo(args.out, args.recipe, [*(args.overrides or []), *allow])
    print(path.read_text().split("## Figures")[0].rstrip())
    print(f"\nreport: {path}")
    return 0


def add_stats(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", required=True)
    options.data_dir(p)
    p.add_argument(
        "--resize",
        type=options.positive_int,
        metavar="PX",
        help="folders: shorter side resized to this before measuring (default 256)",
    )
    p.add_argument(
        "-j", "--workers", type=options.nonnegative_int, default=2, metavar="N", help="image-decoding processes"
    )
    p.add_argument(
        "--limit-batches",
        type=options.positive_int,
        metavar="N",
        help="measure only this many batches of 256 images",
    )


def run_stats(args: argparse.Namespace) -> int:
    from ..config import Config
    from ..data.config import DataConfig
    from ..data.stats import dataset_stats

    cfg = DataConfig(
        dataset=args.dataset, data_dir=args.data_dir, resize=args.resize, workers=args.workers, batch_size=256
    )
    Config(data=cfg).validate()  # the bounds training keeps (data.resize at most 8,192 px)
    stats = dataset_stats(cfg, limit_batches=args.limit_batches)
    print(json.dumps(stats, indent=2))
    keys = ("mean", "std", "pca_eigval", "pca_eigvec")
    # Single quotes keep the shell from splitting the lists at their spaces: paste as it is.
    print(
        "use with: " + " ".join(f"--set 'data.{k}={json.dumps(stats[k])}'" for k in keys if k in stats), file=sys.stderr
    )
    return 0


COMMANDS = {
    "train": ("train a model from a recipe, with checkpoints, metrics and a report", add_train, run_train),
    "demo": ("get Fashion-MNIST, train the default recipe, evaluate, write a report", add_demo, run_demo),
    "report": ("rebuild a run's report.md: curves, conv1 filters, confusion matrix", add_report, run_report),
    "stats": ("mean, std and RGB PCA of a training set, for data.mean/std/pca_*", add_stats, run_stats),
}
