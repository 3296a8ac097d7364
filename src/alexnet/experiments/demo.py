"""The demo behind ``make demo``: get Fashion-MNIST, train the default recipe, evaluate, and write a report."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from ..artifacts.loader import load_trained
from ..config import load_config
from ..data.sources import load_tensor_split
from ..inference.evaluate import evaluate_checkpoint
from ..training.fit import fit
from .report import plot_confusion, plot_curves, save_conv1_filters, write_report

log = logging.getLogger(__name__)


def ensure_fashion_mnist(data_dir: str | None) -> None:
    """Find Fashion-MNIST, or download it with torchvision.

    Raises:
        DataNotFoundError: neither, naming where it looked; offline, Debian's ``dataset-fashion-mnist`` package is
            one place it looks (``make demo`` installs it when it can).
    """
    load_tensor_split("fashion-mnist", data_dir, train=False, download=True)


def run_demo(out: str = "runs/demo", recipe: str = "fashion-mnist", overrides: list[str] | None = None) -> Path:
    """Train ``recipe`` into ``out`` (or continue it there), evaluate the final epoch's weights on the test split, and
    write ``out/report.md``.

    The final epoch, not ``best.safetensors``: with ``data.val_split=0`` the small data sets' validation split is
    their test split, so the "best" epoch would be chosen by test accuracy. Scored with the recipe's test-time views.
    """
    began = time.perf_counter()
    # Resumed, so that `make demo` is idempotent: a finished demo is evaluated and reported again without training,
    # an interrupted one continues, and a run of another recipe there is refused by the resume's checks.
    cfg = load_config(recipe, overrides, train__out=out, train__resume="auto")
    ensure_fashion_mnist(cfg.data.data_dir)
    result = fit(cfg)
    trained_s = time.perf_counter() - began
    weights = result.out / "last.pt"  # the final epoch (see the docstring)
    # Scored with the run's own test-time views (evaluate_checkpoint's default), as fit scored the test split.
    evaluation = evaluate_checkpoint(weights, data_dir=cfg.data.data_dir, progress=cfg.train.progress)
    plot_curves(result.out / "metrics.csv", result.out / "curves.png")
    save_conv1_filters(load_trained(weights).model, result.out / "conv1_filters.png")
    plot_confusion(evaluation.confusion, evaluation.classes, result.out / "confusion.png")
    last = result.history[-1] if result.history else {}
    summary = {
        "recipe": recipe,
        "model": cfg.model.name,
        "data set": cfg.data.dataset,
        "epochs": len(result.history),
        "training images/s (last epoch)": last.get("img_s", "n/a"),
        "wall time, data to report (s)": f"{time.perf_counter() - began:.0f} (training {trained_s:.0f})",
        "weights": f"{weights.name} (the final epoch: never selected on the test set)",
        "test-time views": _views_text(**evaluation.views),
    }
    path = write_report(result.out, f"alexnet demo: {cfg.model.name} on {cfg.data.dataset}", summary, evaluation)
    log.info(
        "test top-1 %.2f%%, top-5 %.2f%% in %.0f s; report %s",
        evaluation.acc1,
        evaluation.acc5,
        time.perf_counter() - began,
        path,
    )
    return path


def _views_text(ten_crop: bool, flip: bool, translate: int) -> str:
    """How each test image was scored, in words."""
    if ten_crop:
        return "ten crops (corners, centre, their mirrors), softmax averaged"
    views = ["the image"] + (["its mirror"] if flip else [])
    if translate:
        views.append(f"each shifted by ±{translate} px (half the weight)")
    return ", ".join(views) + (", softmax averaged" if len(views) > 1 else "")
