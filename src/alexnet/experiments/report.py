"""Figures and the markdown report of a run: training curves, conv1 filters (the paper's Figure 3), confusion."""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.utils import make_grid, save_image

from ..evaluation import Evaluation
from ..files import MB, InputFileError, read_json_input, read_text_input, save_figure, write_bytes, write_text
from ..models.inspect import conv1_weight, scaled_kernels
from ..names import display_label


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _metrics_rows(path: Path | str) -> list[dict[str, str]]:
    """A run's ``metrics.csv`` rows, read through the input guard; a file that is not one is one clear error."""
    rows = list(csv.DictReader(io.StringIO(read_text_input(path, 64 * MB, "metrics file"))))
    needed = {"epoch", "train_loss", "train_acc1", "val_loss", "val_acc1"}
    if not rows or not needed <= set(rows[0]):
        raise InputFileError(f"{path} is not a run's metrics.csv (columns {sorted(needed)} expected)")
    return rows


def plot_curves(metrics_csv: Path | str, out: Path | str) -> Path:
    """Loss and top-1 accuracy per epoch, train and validation, from a run's metrics.csv."""
    plt = _pyplot()
    rows = _metrics_rows(metrics_csv)
    epoch = [int(r["epoch"]) for r in rows]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epoch, [float(r["train_loss"]) for r in rows], "o-", label="train")
    ax_loss.plot(epoch, [float(r["val_loss"]) for r in rows], "o-", label="validation")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax_acc.plot(epoch, [float(r["train_acc1"]) for r in rows], "o-", label="train")
    ax_acc.plot(epoch, [float(r["val_acc1"]) for r in rows], "o-", label="validation")
    ax_acc.set(xlabel="epoch", ylabel="top-1 accuracy (%)", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    save_figure(fig, out, dpi=100)
    plt.close(fig)
    return Path(out)


def save_conv1_filters(model: nn.Module, out: Path | str, scale: int | None = None) -> Path:
    """conv1's kernels as an image grid, each kernel min-max scaled on its own (the paper's Figure 3).

    With two towers the first half of the kernels (GPU 1) fills the top rows and the second half the bottom rows.
    """
    w = scaled_kernels(conv1_weight(model))
    scale = scale or max(1, 48 // w.shape[-1])  # ~48 px per kernel: 11×11 → ×4, 5×5 → ×9
    w = torch.nn.functional.interpolate(w, scale_factor=scale, mode="nearest")
    # 96 kernels → 8 rows of 12: rows 1-4 are tower 1's 48 kernels, rows 5-8 tower 2's.
    buffer = io.BytesIO()
    save_image(make_grid(w, nrow=12, padding=2, pad_value=1.0), buffer, format="png")
    return write_bytes(out, buffer.getvalue())


def plot_confusion(confusion: torch.Tensor, classes: list[str], out: Path | str) -> Path:
    """Row-normalised confusion matrix (rows: true class, columns: predicted)."""
    plt = _pyplot()
    m = confusion.double()
    m = m / m.sum(1, keepdim=True).clamp_min(1)
    n = len(classes)
    size = min(4 + 0.45 * n, 30)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(m.numpy(), cmap="Blues", vmin=0, vmax=1)
    if n <= 40:
        # Class names are folder names: plain text, never mathtext ("$x^2$") or escape sequences.
        labels = [display_label(c) for c in classes]
        ax.set_xticks(range(n), labels, rotation=90, parse_math=False)
        ax.set_yticks(range(n), labels, parse_math=False)
        for i in range(n):
            for j in range(n):
                if m[i, j] >= 0.01:
                    ax.text(
                        j,
                        i,
                        f"{100 * m[i, j]:.0f}",
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if m[i, j] > 0.5 else "black",
                    )
    ax.set(xlabel="predicted", ylabel="true", title="confusion (% of each true class)")
    fig.tight_layout()
    save_figure(fig, out, dpi=100)
    plt.close(fig)
    return Path(out)


# Underscores inside a word (alexnet_small, golden_retriever) never emphasise and stay as they are.
MARKDOWN = re.compile(r"([\\`*\[\]<>|&]|(?<!\w)_|_(?!\w))")


def markdown_text(text: object) -> str:
    """``text`` as it reads in Markdown, a table cell included: a class or path with ``|`` split its row into
    another column, ``*`` and ``_`` turned to emphasis, ``<b>`` to HTML (CommonMark escapes any ASCII punctuation
    with a backslash; GitHub's tables take ``\\|`` as a pipe); control characters as `display_label` shows them."""
    return MARKDOWN.sub(r"\\\1", display_label(str(text)))


def write_report(
    out_dir: Path | str, title: str, summary: dict[str, Any], evaluation: Evaluation, split: str = "Test set"
) -> Path:
    """``report.md`` with the final figures, per-class accuracy and links to the PNGs beside it."""
    out_dir = Path(out_dir)
    lines = [f"# {title}", "", "| | |", "|---|---|"]
    lines += [f"| {markdown_text(k)} | {markdown_text(v)} |" for k, v in summary.items()]
    e = evaluation
    lines += [
        "",
        f"## {split}",
        "",
        f"top-1 accuracy **{e.acc1:.2f}%** (error {e.err1:.2f}%), top-5 accuracy {e.acc5:.2f}% "
        f"(error {e.err5:.2f}%), loss {e.loss:.4f} on {e.images} images.",
        "",
        "| class | accuracy (%) |",
        "|---|---:|",
    ]
    lines += [
        f"| {markdown_text(c)} | {f'{a:.1f}' if math.isfinite(a) else 'no images'} |"
        for c, a in zip(e.classes, e.per_class_acc)
    ]
    figures = [
        ("training curves", "curves.png"),
        ("conv1 filters (the paper's Figure 3)", "conv1_filters.png"),
        ("confusion matrix", "confusion.png"),
    ]
    lines += ["", "## Figures", ""] + [f"![{alt}]({png})\n" for alt, png in figures]
    path = out_dir / "report.md"
    return write_text(path, "\n".join(lines))


def run_report(run: Path | str, evaluation: Evaluation | None = None) -> Path:
    """Write ``run/report.md`` for a training run: its summary, curves, conv1 filters and the validation split's
    confusion matrix (``evaluation`` of the final weights, as `fit` returns it; evaluated again when None)."""

    from ..artifacts.loader import load_trained
    from ..inference.evaluate import evaluate_checkpoint

    run = Path(run)
    weights = run / "last.pt"
    if not run.is_dir():
        what = "a file" if run.exists() else "not there"
        raise InputFileError(f"{run} is {what}: give a run directory, the --out of alexnet train")
    if not weights.exists():
        raise InputFileError(f"{run} is not a run directory: it has no last.pt (the --out of alexnet train)")
    trained = load_trained(weights)
    cfg = read_json_input(run / "config.json", MB, "run config") if (run / "config.json").exists() else {}
    if not isinstance(cfg, dict):
        raise InputFileError(f"{run / 'config.json'} is not a run's config (a JSON object)")
    if evaluation is None:  # at the run's precision, so the figures match what training printed
        precision = cfg.get("train", {}).get("precision", "auto")
        evaluation = evaluate_checkpoint(weights, precision=precision, progress=False)
    evaluation = dataclasses.replace(evaluation, classes=trained.classes)
    rows = _metrics_rows(run / "metrics.csv")
    plot_curves(run / "metrics.csv", run / "curves.png")
    save_conv1_filters(trained.model, run / "conv1_filters.png")
    plot_confusion(evaluation.confusion, evaluation.classes, run / "confusion.png")
    summary = {
        "recipe": cfg.get("recipe", ""),
        "model": trained.meta.model.variant
        + (f" {trained.meta.model.overrides}" if trained.meta.model.overrides else ""),
        "data set": trained.preprocessing.dataset,
        "epochs": len(rows),
        "best validation top-1 (%)": max(
            (v for r in rows if (v := float(r["val_acc1"])) == v), default="n/a"
        ),  # NaN: not validated
        "training images/s (last epoch)": rows[-1]["img_s"] if rows else "n/a",
        "training time (s)": round(sum(float(r["seconds"]) for r in rows), 1),
    }
    held_out = cfg.get("data", {}).get("val_split")
    test = rows[-1].get("test_acc1") if rows else None
    if held_out:  # validation read images held out of the training split; the test split was evaluated once
        summary["best validation top-1 (%)"] = f"{summary['best validation top-1 (%)']} (held-out training images)"
        if test and test != "nan":
            summary["test top-1 (%), after the last epoch"] = test
    title = f"alexnet train: {trained.meta.model.variant} on {trained.preprocessing.dataset}"
    split = "Test split, last epoch's weights" if held_out else "Validation split, last epoch's weights"
    return write_report(run, title, summary, evaluation, split)
