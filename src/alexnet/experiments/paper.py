"""The paper's experiments that fit on one machine, one function each (the CLI's ``alexnet paper <name>``).

Figure 1 (§3.1): "A four-layer convolutional neural network with ReLUs (solid line) reaches a 25% training error
rate on CIFAR-10 six times faster than an equivalent network with tanh neurons (dashed line). The learning rates
for each network were chosen independently to make training as fast as possible. No regularization of any kind was
employed." `figure1` trains ``convnet_fig1`` (recipe ``fig1-cifar10``) once per unit, or over a grid of learning
rates per unit with ``sweep``, and reports the epochs each took to reach the target.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from ..config import load_config
from ..errors import NonFiniteLossError
from ..files import atomic_write, save_figure
from ..training.fit import fit

log = logging.getLogger(__name__)

# Each unit's fastest learning rate on the CIFAR-10 JPEGs (recipe fig1-cifar10; README, "The paper's figures"):
# epochs to 25% training error, ReLU: 0.0003 >6, 0.001 6, 0.003 >6; tanh: 0.0003 (64% error after 4 epochs),
# 0.001 >40 (25.05% at 40), 0.003 23, 0.01 >23 (28.7% at 23), 0.03 (50% after 5, stalled).
FIG1_LRS = {"relu": 0.001, "tanh": 0.003}
UNITS = ("relu", "tanh")


def epochs_to(errors: list[float], target: float) -> int | None:
    """The first epoch (1-based) whose training error (%) is at or below ``target``; None if none is."""
    return next((i + 1 for i, e in enumerate(errors) if e <= target), None)


def figure1(
    out: Path | str,
    overrides: list[str] | None = None,
    sweep: list[float] | None = None,
    target: float = 25.0,
    max_epochs: int = 60,
    **fields: Any,
) -> dict[str, Any]:
    """Train the Figure 1 network with ReLU and with tanh units until ``target`` % training error.

    Args:
        out: directory for one run directory per unit and learning rate, ``fig1.json`` and ``fig1.png``.
        overrides: ``section.key=value`` config overrides for every run (e.g. the data set).
        sweep: learning rates to try for each unit (the paper tuned each unit's); default `FIG1_LRS`.
        target: the training error (%) to reach; the paper's 25.
        max_epochs: give up on a run after this many epochs; in a sweep, later rates stop at the fastest
            rate's epoch count, since they can only tie it.
        **fields: ``section__key=value`` config fields for every run, as `alexnet.config.load_config` takes.

    Returns:
        ``runs`` (unit, lr, per-epoch training error, epochs to the target), ``best`` (the fastest run of each
        unit) and ``speedup`` (tanh's epochs over ReLU's; None when either never reached the target).
    """
    out = Path(out)
    runs = []
    for unit in UNITS:
        budget = max_epochs  # a later rate only has to beat the fastest so far: stop it there
        for lr in sweep or [FIG1_LRS[unit]]:
            run_dir = out / f"{unit}-lr{lr:g}"
            cfg = load_config(
                "fig1-cifar10",
                [
                    *(overrides or []),
                    f'model.overrides.activation="{unit}"',
                    f"optim.lr={lr}",
                    f"train.epochs={budget}",
                    f"train.stop_at_train_acc1={100 - target}",
                    f'train.out="{run_dir}"',
                ],
                **fields,
            )
            try:
                history = fit(cfg).history
            except NonFiniteLossError as err:  # too high a rate for this unit: a result of the sweep, not a failure
                log.warning("%s lr %g diverged: %s", unit, lr, err)
                history = []
            errors = [round(100 - row["train_acc1"], 3) for row in history]
            runs.append(
                {
                    "unit": unit,
                    "lr": lr,
                    "train_error": errors,
                    "epochs": epochs_to(errors, target),
                    "diverged": not history,
                    "seconds": history[-1]["elapsed"] if history else 0.0,
                    "dir": str(run_dir),
                }
            )
            budget = min(budget, runs[-1]["epochs"] or budget)
            reached = f"{runs[-1]['epochs']} epochs" if runs[-1]["epochs"] else f"not within {len(errors)} epochs"
            log.info("%s lr %g: %s to %g%% training error", unit, lr, reached, target)
    best = {unit: min((r for r in runs if r["unit"] == unit), key=_speed) for unit in UNITS}
    relu, tanh = best["relu"]["epochs"], best["tanh"]["epochs"]
    result = {
        "target_error": target,
        "runs": runs,
        "best": best,
        "speedup": round(tanh / relu, 2) if relu and tanh else None,
        "paper_speedup": 6.0,
    }
    atomic_write(out / "fig1.json", lambda f: f.write(json.dumps(result, indent=2).encode()))
    try:
        result["figure"] = str(plot_figure1(result, out / "fig1.png"))
    except ImportError:  # matplotlib is the optional [report] extra
        log.warning("matplotlib is not installed (pip install 'alexnet[report]'): no fig1.png")
    return result


def _speed(run: dict[str, Any]) -> tuple[float, float]:
    """Sort key: fewest epochs to the target, then the lowest final error."""
    return (run["epochs"] or math.inf, run["train_error"][-1] if run["train_error"] else math.inf)


def plot_figure1(result: dict[str, Any], path: Path) -> Path:
    """The paper's Figure 1: training error against epochs, ReLU solid, tanh dashed, the target as a line."""
    from .report import _pyplot

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 4))
    for unit, style in (("relu", "-"), ("tanh", "--")):
        run = result["best"][unit]
        epochs = range(1, len(run["train_error"]) + 1)
        label = f"{'ReLU' if unit == 'relu' else 'tanh'} (lr {run['lr']:g}): {run['epochs'] or '>'} epochs"
        ax.plot(epochs, [e / 100 for e in run["train_error"]], style, color="black", label=label)
    ax.axhline(result["target_error"] / 100, color="grey", linewidth=0.8)
    ax.set_xlabel("Epochs")
    ax.set_ylabel("Training error rate")
    ax.set_ylim(0, 0.8)
    speedup = f"{result['speedup']}×" if result["speedup"] else "n/a"
    ax.set_title(f"CIFAR-10, four-layer CNN: ReLU {speedup} faster (paper: 6×)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    plt.close(fig)
    return path
