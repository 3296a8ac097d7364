"""The paper's experiments that fit on one machine, one function each (the CLI's ``alexnet paper <name>``).

Figure 1 (§3.1): "A four-layer convolutional neural network with ReLUs (solid line) reaches a 25% training error
rate on CIFAR-10 six times faster than an equivalent network with tanh neurons (dashed line). The learning rates
for each network were chosen independently to make training as fast as possible. No regularization of any kind was
employed." `figure1` trains ``convnet_fig1`` (recipe ``fig1-cifar10``) once per unit, or over a grid of learning
rates per unit with ``sweep``, and reports the epochs each took to reach the target.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import load_config
from ..errors import NonFiniteLossError
from ..files import atomic_write, check_outputs, is_record, save_figure
from ..training.fit import fit

log = logging.getLogger(__name__)

# Each unit's fastest learning rate on the CIFAR-10 JPEGs (recipe fig1-cifar10; README, "The paper's figures"):
# epochs to 25% training error, ReLU: 0.0003 >6, 0.001 6, 0.003 >6; tanh: 0.0003 (64% error after 4 epochs),
# 0.001 >40 (25.05% at 40), 0.003 23, 0.01 >23 (28.7% at 23), 0.03 (50% after 5, stalled).
FIG1_LRS = {"relu": 0.001, "tanh": 0.003}
UNITS = ("relu", "tanh")


@dataclass
class Fig1Run:
    """One training run of Figure 1: a unit at a learning rate, its training error (%) per epoch."""

    unit: str
    lr: float
    train_error: list[float]
    epochs: int | None  # to the target; None: not reached
    diverged: bool
    seconds: float
    dir: str

    @property
    def reached(self) -> str:
        if self.epochs:
            return f"{self.epochs} epoch{'s' * (self.epochs != 1)}"
        return f"not within {len(self.train_error)} epoch{'s' * (len(self.train_error) != 1)}"


@dataclass
class Figure1Result:
    """Figure 1's runs, the fastest of each unit, and tanh's epochs over ReLU's (None when either never reached the
    target); ``figure`` is the PNG's path when matplotlib drew it."""

    target_error: float
    runs: list[Fig1Run]
    best: dict[str, Fig1Run]
    speedup: float | None
    paper_speedup: float = 6.0
    figure: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def epochs_to(errors: list[float], target: float) -> int | None:
    """The first epoch (1-based) whose training error (%) is at or below ``target``; None if none is."""
    return next((i + 1 for i, e in enumerate(errors) if e <= target), None)


def figure1(
    out: Path | str,
    overrides: list[str] | None = None,
    sweep: list[float] | None = None,
    target: float = 25.0,
    max_epochs: int = 60,
    resume: bool = False,
    **fields: Any,
) -> Figure1Result:
    """Train the Figure 1 network with ReLU and with tanh units until ``target`` % training error.

    Args:
        out: directory for one run directory per unit and learning rate, ``fig1.json`` and ``fig1.png``.
        overrides: ``section.key=value`` config overrides for every run (e.g. the data set).
        sweep: learning rates to try for each unit (the paper tuned each unit's); default `FIG1_LRS`.
        target: the training error (%) to reach; the paper's 25.
        max_epochs: give up on a run after this many epochs; in a sweep, later rates stop at the fastest
            rate's epoch count, since they can only tie it.
        resume: continue the runs already in ``out`` (an interrupted sweep, or one given more epochs), each from its
            last checkpoint; a run that reached the target or its epochs is read back, not trained again. Without
            it a run directory that holds a run is an error, as `alexnet.fit`'s.
        **fields: ``section__key=value`` config fields for every run, as `alexnet.config.load_config` takes.

    Returns:
        The runs, the fastest of each unit and the speed-up; also written to ``out/fig1.json``.
    """
    out = Path(out)
    ours = is_record(out / "fig1.json", ("runs", "best")) or any(out.glob("*-lr*/config.json"))
    check_outputs(out, ["fig1.json", "fig1.png"], ours, "--out")
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
                    *(['train.resume="auto"'] if resume else []),
                ],
                **fields,
            )
            try:
                history = fit(cfg).history
            except NonFiniteLossError as err:  # too high a rate for this unit: a result of the sweep, not a failure
                log.warning("%s lr %g diverged: %s", unit, lr, err)
                history = []
            errors = [round(100 - row["train_acc1"], 3) for row in history]
            run = Fig1Run(
                unit,
                lr,
                errors,
                epochs_to(errors, target),
                not history,
                history[-1]["elapsed"] if history else 0.0,
                str(run_dir),
            )
            runs.append(run)
            budget = min(budget, run.epochs or budget)
            reached = run.reached
            log.info("%s lr %g: %s to %g%% training error", unit, lr, reached, target)
    best = {unit: min((r for r in runs if r.unit == unit), key=_speed) for unit in UNITS}
    relu, tanh = best["relu"].epochs, best["tanh"].epochs
    result = Figure1Result(target, runs, best, round(tanh / relu, 2) if relu and tanh else None)
    try:
        result.figure = str(plot_figure1(result, out / "fig1.png"))
    except ImportError:  # matplotlib is the optional [report] extra
        log.warning("matplotlib is not installed (pip install 'alexnet[report]'): no fig1.png")
    atomic_write(out / "fig1.json", lambda f: f.write(json.dumps(result.to_dict(), indent=2).encode()))
    return result


def _speed(run: Fig1Run) -> tuple[float, float]:
    """Sort key: fewest epochs to the target, then the lowest final error."""
    return (run.epochs or math.inf, run.train_error[-1] if run.train_error else math.inf)


def plot_figure1(result: Figure1Result, path: Path) -> Path:
    """The paper's Figure 1: training error against epochs, ReLU solid, tanh dashed, the target as a line."""
    from .report import _pyplot

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 4))
    for unit, style in (("relu", "-"), ("tanh", "--")):
        run = result.best[unit]
        epochs = range(1, len(run.train_error) + 1)
        label = f"{'ReLU' if unit == 'relu' else 'tanh'} (lr {run.lr:g}): {run.epochs or '>'} epochs"
        ax.plot(epochs, [e / 100 for e in run.train_error], style, color="black", label=label)
    ax.axhline(result.target_error / 100, color="grey", linewidth=0.8)
    ax.set_xlabel("Epochs")
    ax.set_ylabel("Training error rate")
    ax.set_ylim(0, 0.8)
    speedup = f"{result.speedup}×" if result.speedup else "n/a"
    ax.set_title(f"CIFAR-10, four-layer CNN: ReLU {speedup} faster (paper: 6×)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    plt.close(fig)
    return path
