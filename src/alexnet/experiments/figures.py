"""The paper's Figure 3 (conv1's kernels, and the towers' colour specialisation) and Figure 4 (top-5 predictions
and nearest training images in fc7 space) for any trained model."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from ..artifacts.loader import load_network, model_file, say_model_file
from ..artifacts.trained import TrainedModel
from ..errors import AlexNetError
from ..files import check_outputs, is_record, save_figure, write_text
from ..models.inspect import conv1_weight

log = logging.getLogger(__name__)


def colour_specificity(kernels: torch.Tensor) -> torch.Tensor:
    """Per kernel, the share of its energy outside its grey component: ‖w − w̄‖² / ‖w‖², where w̄ repeats the mean
    over input channels. 0 for a kernel that weighs R, G and B alike (it sees luminance only); 1 for one whose
    channels cancel (an opponent-colour kernel such as R − G).

    Args:
        kernels: (out, 3, k, k) conv1 weights.
    """
    w = kernels.double()
    grey = w.mean(1, keepdim=True)
    return ((w - grey).square().sum((1, 2, 3)) / w.square().sum((1, 2, 3)).clamp_min(1e-12)).float()


def random_split_p(spec: torch.Tensor, groups: int, draws: int = 20000, seed: int = 0) -> float:
    """How often a random split of the same kernels into ``groups`` equal towers puts the towers' mean colour
    specificity at least as far apart (largest mean minus smallest) as the real split does: a permutation test of
    "the towers specialise", with the +1 correction so it is never 0."""
    parts = spec.double().chunk(groups)
    observed = max(p.mean() for p in parts) - min(p.mean() for p in parts)
    generator = torch.Generator().manual_seed(seed)
    # (draws, n) random permutations, each split into the towers' sizes: one tower mean per split and draw
    shuffled = spec.double()[torch.rand(draws, len(spec), generator=generator).argsort(1)]
    means = torch.stack([part.mean(1) for part in shuffled.split([len(p) for p in parts], dim=1)], dim=1)
    spread = means.max(1).values - means.min(1).values
    return round(((spread >= observed - 1e-12).sum().item() + 1) / (draws + 1), 4)


def figure3(source: Path | str, out: Path | str) -> dict[str, Any]:
    """conv1's kernels per tower as ``out/fig3.png`` and each tower's colour specificity.

    The paper (§6.1, Figure 3): "the kernels on GPU 1 are largely color-agnostic, while the kernels on GPU 2 are
    largely color-specific". A tower's conv1 kernels are the ones whose maps feed that tower's conv2 (the first
    and second halves of conv1's channels with ``groups=2``).

    Returns:
        ``towers``: per tower, the mean, median and per-kernel colour specificity; ``ratio``: the more colourful
        tower's mean over the other's; ``p_random_split``: `random_split_p`; ``figure``: the PNG's path.
    """
    trained = load_network(taken := model_file(source), "to draw Figure 3 from")
    w = conv1_weight(trained.model)
    if w.shape[1] != 3:
        raise ValueError(f"Figure 3 needs a colour model; this conv1 takes {w.shape[1]} channel(s)")
    say_model_file(source, taken)
    groups = trained.model.spec.groups
    spec = colour_specificity(w)
    towers = []
    for k, part in enumerate(spec.chunk(groups)):
        values = [round(v, 4) for v in part.tolist()]
        towers.append(
            {
                "tower": k + 1,
                "kernels": len(part),
                "mean": round(part.mean().item(), 4),
                "median": round(part.median().item(), 4),
                "values": values,
            }
        )
    means = sorted(t["mean"] for t in towers)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    figure = _plot_fig3(w, spec, groups, out / "fig3.png")
    return {
        "towers": towers,
        "ratio": round(means[-1] / max(means[0], 1e-9), 2) if groups > 1 else None,
        "p_random_split": random_split_p(spec, groups) if groups > 1 else None,
        "figure": str(figure),
        "source": str(source),
    }


def _plot_fig3(w: torch.Tensor, spec: torch.Tensor, groups: int, path: Path) -> Path:
    from torchvision.utils import make_grid

    from ..models.inspect import scaled_kernels
    from .report import _pyplot

    plt = _pyplot()
    w = scaled_kernels(w)
    fig, axes = plt.subplots(1, groups + 1, figsize=(4 * groups + 4, 4), squeeze=False)
    for k, (part, s) in enumerate(zip(w.chunk(groups), spec.chunk(groups))):
        grid = make_grid(part, nrow=max(1, int(len(part) ** 0.5 + 0.999)), padding=1, pad_value=1.0)
        ax = axes[0][k]
        ax.imshow(grid.permute(1, 2, 0).numpy(), interpolation="nearest")
        ax.set_title(f"tower {k + 1}: colour specificity {s.mean():.3f}", fontsize=9)
        ax.axis("off")
    ax = axes[0][-1]
    for k, s in enumerate(spec.chunk(groups)):
        ax.hist(s.numpy(), bins=20, range=(0, 1), alpha=0.6, label=f"tower {k + 1}")
    ax.set(xlabel="energy outside the grey component", ylabel="kernels", title="colour specificity")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=100)
    plt.close(fig)
    return path


def _splits(trained: TrainedModel, dataset: str | None, data_dir: str | None, limit: int | None):
    """The training and test splits as uint8 (N, C, S, S) images at the model's stored size, with labels."""
    import dataclasses

    from ..data.config import TENSOR_DATASETS, DataConfig
    from ..data.stored import stored_split

    prep = trained.preprocessing
    cfg = dataclasses.replace(trained.config.data) if trained.config else DataConfig()
    cfg.dataset = dataset or prep.dataset or cfg.dataset
    cfg.data_dir = data_dir or trained.data_dir
    limit = None if cfg.dataset in TENSOR_DATASETS else limit  # tensor sets are in memory whole: only folders are cut
    splits = [
        stored_split(
            cfg.dataset,
            cfg.data_dir,
            train=train,
            size=prep.stored_size,
            limit=limit,
            pick="spread",
            workers=cfg.workers,
            max_bad_fraction=cfg.max_bad_fraction,
        )
        for train in (True, False)
    ]
    trained.check_classes(splits[0].classes, trained.source, cfg.dataset)
    return splits


def figure4(
    source: Path | str,
    out: Path | str,
    dataset: str | None = None,
    data_dir: str | None = None,
    queries: int = 5,
    neighbours: int = 6,
    k: int = 5,
    limit: int | None = None,
    retrieval_queries: int = 1000,
) -> dict[str, Any]:
    """The paper's Figure 4 for a trained model: for the first ``queries`` test images, the top-5 predictions (with
    the true class) and the ``neighbours`` training images nearest in fc7 space (Euclidean), as ``out/fig4.png``;
    and the retrieval precision of fc7 neighbours: over ``retrieval_queries`` test images, the share of their
    ``k`` nearest training images with the query's class.

    Args:
        limit: use at most this many training (and test) images of a folder (memory: they are held decoded).
    """
    from ..inference.features import extract_features

    trained = load_network(taken := model_file(source), "to take fc7 features from")
    train, test = _splits(trained, dataset, data_dir, limit)
    say_model_file(source, taken)  # once the data set is known good
    train_feats = extract_features(trained, train.images)  # (N, D)
    m = min(len(test.labels), retrieval_queries)
    test_feats = extract_features(trained, test.images[:m])
    distances = torch.cdist(test_feats, train_feats)  # (m, N), Euclidean as the paper
    nearest = distances.topk(max(k, neighbours), largest=False).indices  # (m, max(k, neighbours))
    same = (train.labels[nearest[:, :k]] == test.labels[:m, None]).float()
    precision = same.mean().item()
    chance = torch.bincount(train.labels).float().div(len(train.labels)).square().sum().item()
    with torch.no_grad():
        x = trained.preprocessing.transform().eval(test.images[:queries])
        probs = trained.model(x).float().softmax(1)
    top = probs.topk(min(5, probs.shape[1]), dim=1)
    labels = trained.meta.labels
    rows = []
    for i in range(min(queries, m)):
        rows.append(
            {
                "true": labels[int(test.labels[i])],
                "top5": [(labels[int(j)], round(float(p), 4)) for p, j in zip(top.values[i], top.indices[i])],
                "neighbours": [int(j) for j in nearest[i, :neighbours]],
                "neighbour_classes": [labels[int(train.labels[j])] for j in nearest[i, :neighbours]],
            }
        )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    figure = _plot_fig4(test.images, train.images, rows, out / "fig4.png")
    return {
        "queries": rows,
        "retrieval_precision": round(precision, 4),
        "k": k,
        "retrieval_queries": m,
        "chance_precision": round(chance, 4),
        "train_images": len(train.labels),
        "figure": str(figure),
        "feature_dim": train_feats.shape[1],
    }


def _plot_fig4(test_images: torch.Tensor, train_images: torch.Tensor, rows: list[dict[str, Any]], path: Path) -> Path:
    from .report import _pyplot

    plt = _pyplot()
    n = len(rows[0]["neighbours"]) if rows else 0
    fig, axes = plt.subplots(len(rows), n + 2, figsize=(1.6 * (n + 2) + 1.5, 1.7 * len(rows)), squeeze=False)

    def show(ax, image: torch.Tensor, title: str = "") -> None:
        img = image.permute(1, 2, 0).numpy()
        ax.imshow(img.squeeze(-1) if img.shape[-1] == 1 else img, cmap="gray" if img.shape[-1] == 1 else None)
        ax.set_title(title, fontsize=7, parse_math=False)
        ax.axis("off")

    for r, row in enumerate(rows):
        show(axes[r][0], test_images[r], f"true: {row['true']}")
        ax = axes[r][1]
        names = [name for name, _ in row["top5"]][::-1]
        values = [p for _, p in row["top5"]][::-1]
        colours = ["tab:red" if name == row["true"] else "tab:blue" for name in names]
        ax.barh(range(len(names)), values, color=colours)
        ax.set_yticks(range(len(names)), names, fontsize=6, parse_math=False)
        ax.set_xlim(0, 1)
        ax.tick_params(axis="x", labelsize=6)
        for c, j in enumerate(row["neighbours"]):
            show(axes[r][c + 2], train_images[j], row["neighbour_classes"][c])
    fig.suptitle("top-5 (true class in red) and the nearest training images in fc7 space", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)
    return path


def run_figure(
    kind: str,
    source: Path | str | None,
    out: Path | str | None = None,
    dataset: str | None = None,
    data_dir: str | None = None,
    queries: int = 5,
    limit: int | None = None,
) -> dict[str, Any]:
    """Figure 3 (``fig3``) or 4 (``fig4``) of a trained model into ``out`` (default: beside the model), with the
    result as ``out/<kind>.json``.

    Raises:
        AlexNetError: no source, an unknown figure, or ``out`` is a file.
    """
    if kind not in ("fig3", "fig4"):
        raise AlexNetError(f"unknown figure {kind!r}: fig3 or fig4")
    if not source:
        raise AlexNetError(f"alexnet paper {kind} needs a run directory, weights or a checkpoint")
    # beside the model: a run directory itself, else the file's directory (figure3/4 resolve the model, once)
    out = Path(out or (source if Path(source).is_dir() else Path(source).parent))
    if out.exists() and not out.is_dir():
        raise AlexNetError(f"{out} is a file: {kind} writes its figure and record into a directory")
    check_outputs(out, [f"{kind}.png", f"{kind}.json"], is_record(out / f"{kind}.json", ("figure",)), "--out")
    if kind == "fig3":
        result = figure3(source, out)
    else:
        result = figure4(source, out, dataset, data_dir, queries, limit=limit)
    write_text(out / f"{kind}.json", json.dumps(result, indent=1))
    return result
