"""`alexnet reproduce`: the paper's ablations and claims as ordinary training runs, and a report beside its numbers.

Every experiment compares arms (the paper's choice against the alternative) over seeds; each run is an ordinary
run directory ``OUT/<experiment>/<arm>/seed<k>/``. A run with ``done.json`` is skipped; one without resumes from
its ``last.pt``, so a killed reproduction loses at most one run's progress. Runs shared by several experiments (the
baseline of the ablations) are trained once. ``OUT/report.md`` has one table per claim.

Budgets: ``small`` fits this 2-core CPU in about an hour (CIFAR-10 JPEGs and Fashion-MNIST, a half-width network,
a subset of each epoch's batches; the report states them); ``full`` is the paper's scale for GPUs (ImageNet,
``alexnet_paper``, the paper's recipe, 90 epochs).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import load_config
from ..errors import AlexNetError
from ..training.checkpoint import atomic_write
from ..training.fit import fit

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Arm:
    """One configuration: a name, a recipe and ``section.key=value`` overrides."""

    name: str
    recipe: str
    overrides: tuple[str, ...] = ()


@dataclass(frozen=True)
class Experiment:
    """A claim of the paper and the two arms that test it.

    Attributes:
        name: directory and ``--only`` name.
        section: where the paper makes the claim.
        claim: the claim in the paper's words (or close to them).
        paper: the paper's figure, as printed.
        paper_effect: the claimed effect in this experiment's unit (error points, or a ratio for ``ratio`` metrics).
        metric: ``error`` (final test top-1 error, %; the paper's arm should be lower), ``epochs`` (epochs to reach
            ``target`` % training error; ratio other/paper), ``converge`` (epochs to a training loss of ``target``;
            ratio paper/other, the paper's arm slower), or ``tencrop`` (centre-crop error minus ten-crop error of
            the ``paper`` arm's runs; no second training).
        paper_arm: the configuration the paper used.
        other_arm: the alternative it was compared with.
        target: the training error (%) or loss the ``epochs`` and ``converge`` metrics count to.
        note: how this budget differs from the paper's setting.
    """

    name: str
    section: str
    claim: str
    paper: str
    paper_effect: float
    metric: str
    paper_arm: Arm
    other_arm: Arm | None
    target: float = 0.0
    note: str = ""


@dataclass
class Budget:
    """The common settings of a budget's runs, per data set: recipe overrides, and what the report says of them."""

    cifar: tuple[str, ...]
    fashion: tuple[str, ...]
    fig1: tuple[str, ...]
    describe: str
    experiments: list[Experiment] = field(default_factory=list)


def _ablations(base: Arm, off: Any, half: float, towers_note: str = "") -> list[Experiment]:
    """§3.2-§4.1's ablations against ``base``; ``off(name, *overrides)`` makes an arm without one feature, and the
    one-tower arm has ``half`` the base's width (half its kernels)."""
    return [
        Experiment("lrn", "§3.3", "response normalisation reduces top-1 error by 1.4% (ImageNet)", "−1.4 points",
                   1.4, "error", base, off("no_lrn", 'model.overrides.norm="none"')),
        Experiment("pooling", "§3.4", "overlapping pooling (3/2) reduces top-1 error by 0.4% against 2/2",
                   "−0.4 points", 0.4, "error", base, off("non_overlapping", 'model.overrides.pool="non_overlapping"')),
        Experiment("towers", "§3.2", "two towers reduce top-1 error by 1.7% against one tower with half the kernels",
                   "−1.7 points", 1.7, "error", base,
                   off("one_tower", "model.overrides.groups=1", f"model.overrides.width={half}"), note=towers_note),
        Experiment("pca", "§4.1", "PCA colour noise reduces top-1 error by over 1%", "> 1 point", 1.0, "error",
                   base, off("no_pca", "data.pca_std=0")),
    ]  # fmt: skip


def _small() -> Budget:
    # CIFAR-10 JPEGs (50,000 train, 10,000 test), alexnet_small at half width with the paper's features (LRN, two
    # towers, overlapping pooling, PCA noise, crops, flips, dropout); 8 epochs of 60 batches of 128 (7,680 images
    # an epoch, 61,440 in all), a one-cycle learning rate: about 75 s a run here.
    cifar = ("model.overrides.width=0.5", 'model.overrides.norm="lrn"', "model.overrides.groups=2",
             "data.pca_std=0.1", "data.batch_size=128", "optim.lr=0.05", "optim.label_smoothing=0.0",
             "train.epochs=8", "train.limit_train_batches=60")  # fmt: skip
    fashion = ("model.overrides.width=0.5", "train.epochs=6", "train.limit_train_batches=60")
    fig1 = ("train.epochs=10", "train.limit_train_batches=80")
    common = ("data.batch_size=128", "optim.lr=0.05", "optim.label_smoothing=0.0", "train.epochs=8",
              "train.limit_train_batches=60", 'model.name="convnet_cifar_local"')  # fmt: skip
    base = Arm("paper", "cifar10", cifar)

    def off(name: str, *changes: str) -> Arm:
        return Arm(name, "cifar10", (*cifar, *changes))

    experiments = [
        Experiment(
            "relu_tanh",
            "§3.1, Figure 1",
            "a four-layer CNN with ReLUs reaches 25% training error on CIFAR-10 six times faster than with tanh units",
            "6× fewer epochs",
            6.0,
            "epochs",
            Arm("relu", "fig1-cifar10", (*fig1, 'model.overrides.activation="relu"', "optim.lr=0.001")),
            Arm("tanh", "fig1-cifar10", (*fig1, 'model.overrides.activation="tanh"', "optim.lr=0.003")),
            target=45.0,
            note="epochs of 80 batches (10,240 images), target 45% training error, at most 10",
        ),
        Experiment(
            "lrn_cifar",
            "§3.3",
            "response normalisation reduces the CIFAR-10 test error of cuda-convnet's four-layer net from 13% to 11%",
            "13% → 11%",
            2.0,
            "error",
            Arm("lrn", "cifar10", common),
            Arm("none", "cifar10", (*common, 'model.overrides.norm="none"')),
            note="locally connected layers as convolutions; 8 short epochs, not cuda-convnet's schedule",
        ),
        *_ablations(base, off, 0.25, "the one-tower arm halves the fc layers too (width applies to every layer)"),
        Experiment(
            "crops_flips",
            "§4.1",
            "without random crops and flips the network overfits substantially",
            "(no figure)",
            1.0,
            "error",
            base,
            off("no_crops_flips", "data.pad=0", "data.flip=false"),
            note="CIFAR crops are pad-4 shifts of the 32 px image, not 224 from 256",
        ),
        Experiment(
            "dropout",
            "§4.2",
            "dropout roughly doubles the iterations needed to converge (and reduces overfitting)",
            "≈ 2× the epochs",
            2.0,
            "converge",
            Arm("dropout", "fashion-mnist", fashion),
            Arm("no_dropout", "fashion-mnist", (*fashion, "model.overrides.dropout=0.0")),
            target=0.35,
            note="Fashion-MNIST; epochs (of 60 batches) to a training loss of 0.35, at most 6",
        ),
        Experiment(
            "ten_crop",
            "§4.1, §6",
            "averaging the softmax over ten crops lowers the error",
            "cuda-convnet2's 1-GPU model: 42.5% → 40.4% top-1 error",
            2.1,
            "tencrop",
            base,
            None,
            note="the `paper` arm's runs of the ablations, evaluated again with ten crops",
        ),
    ]
    return Budget(cifar, fashion, fig1, "small: CIFAR-10 JPEGs and Fashion-MNIST on a CPU", experiments)


def _full() -> Budget:
    base = Arm("paper", "paper-imagenet")

    def off(name: str, *changes: str) -> Arm:
        return Arm(name, "paper-imagenet", changes)

    experiments = [
        *_ablations(base, off, 0.5),
        Experiment(
            "dropout",
            "§4.2",
            "dropout roughly doubles the iterations to converge",
            "≈ 2×",
            2.0,
            "converge",
            base,
            off("no_dropout", "model.overrides.dropout=0.0"),
            target=2.5,
        ),
        Experiment(
            "ten_crop", "§6", "ten crops lower the error", "≈ 2 points (cuda-convnet2)", 2.1, "tencrop", base, None
        ),
    ]
    return Budget((), (), (), "full: ImageNet with the paper's recipe (GPUs)", experiments)


BUDGETS = {"small": _small, "full": _full}


def _stats(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _verdict(effect: float, se: float, paper: float, ratio: bool) -> str:
    """Reproduced in sign and size (significant and within a factor of two of the paper's effect), in sign only,
    or not. ``effect`` is signed so that positive agrees with the paper; for ratios, 1 is no effect."""
    null = 1.0 if ratio else 0.0
    if effect - 2 * se <= null:
        return "not reproduced" + (" (opposite)" if effect + 2 * se < null else " (within noise)")
    size = (effect / paper) if not ratio else math.log(effect) / math.log(paper)
    return "reproduced in sign and size" if 0.5 <= size <= 2 else "reproduced in sign only"


def _run(arm: Arm, seed: int, path: Path, common: list[str], fields: dict[str, Any]) -> dict[str, Any]:
    """Train one arm with one seed into ``path`` (skipped when done, resumed when interrupted)."""
    done = path / "done.json"
    if done.is_file():
        return json.loads(done.read_text())
    overrides = [*arm.overrides, *common, f"train.seed={seed}", f'train.out="{path}"']
    if (path / "last.pt").is_file() or (path / "best.pt").is_file():
        overrides.append('train.resume="auto"')
    cfg = load_config(arm.recipe, overrides, **fields)
    began = time.perf_counter()
    result = fit(cfg)
    summary = {"history": result.history, "seconds": round(time.perf_counter() - began, 1), "seed": seed,
               "arm": arm.name, "recipe": arm.recipe, "overrides": list(arm.overrides)}  # fmt: skip
    atomic_write(done, lambda f: f.write(json.dumps(summary, indent=1).encode()))
    return summary


def _value(exp: Experiment, summary: dict[str, Any]) -> float:
    history = summary["history"]
    if exp.metric == "error":
        return 100 - history[-1]["val_acc1"]  # the last epoch: never selected on the test set
    if exp.metric == "epochs":
        hit = [i + 1 for i, r in enumerate(history) if 100 - r["train_acc1"] <= exp.target]
        return float(hit[0]) if hit else float(len(history) + 1)  # not reached: counted as one more epoch
    hit = [i + 1 for i, r in enumerate(history) if r["train_loss"] <= exp.target]
    return float(hit[0]) if hit else float(len(history) + 1)


def reproduce(out: Path | str, budget: str = "small", seeds: int = 3, only: list[str] | None = None,
              cifar_dir: str | None = None, fashion_dir: str | None = None, overrides: list[str] | None = None,
              **fields: Any) -> dict[str, Any]:  # fmt: skip
    """Run the budget's experiments (or ``only`` those) over ``seeds`` seeds and write ``out/report.md``.

    Args:
        out: the reproduction's directory.
        budget: ``small`` (this CPU, about an hour) or ``full`` (ImageNet on GPUs).
        seeds: runs per arm (seeds 0, 1, ...).
        only: experiment names to run; default all.
        cifar_dir: the CIFAR-10 JPEG folder (``train/``, ``test/``) for the small budget.
        fashion_dir: where Fashion-MNIST is (default: the usual places).
        overrides: ``section.key=value`` for every run (tests: a fake data set, tiny limits).
        **fields: ``section__key=value`` for every run.

    Returns:
        per experiment: the arms' values per seed, mean and std, the effect and its standard error, the verdict.
    """
    if budget not in BUDGETS:
        raise AlexNetError(f"unknown budget {budget!r}; choose one of {list(BUDGETS)}")
    plan = BUDGETS[budget]()
    names = [e.name for e in plan.experiments]
    unknown = sorted(set(only or []) - set(names))
    if unknown:
        raise AlexNetError(f"unknown experiment(s) {unknown}; choose from {names}")
    if seeds < 1:
        raise AlexNetError("--seeds must be at least 1")
    out = Path(out)
    chosen = [e for e in plan.experiments if not only or e.name in only]
    paths: dict[Arm, Path] = {}  # an arm shared by experiments (the ablations' baseline) trains once
    results: dict[str, Any] = {}
    for exp in chosen:
        arms = [a for a in (exp.paper_arm, exp.other_arm) if a is not None]
        runs: dict[str, list[dict[str, Any]]] = {}
        for arm in arms:
            base = paths.setdefault(arm, out / exp.name / arm.name)
            data = _data_overrides(arm, cifar_dir, fashion_dir)
            runs[arm.name] = [
                _run(arm, s, base / f"seed{s}", [*data, *(overrides or [])], fields) for s in range(seeds)
            ]
        results[exp.name] = _measure(exp, runs, paths[exp.paper_arm], seeds, cifar_dir, fields)
    write_report(out, plan, chosen, results, seeds)
    return results


def _data_overrides(arm: Arm, cifar_dir: str | None, fashion_dir: str | None) -> list[str]:
    if arm.recipe.startswith(("cifar10", "fig1")) and cifar_dir:
        return ['data.dataset="folder"', f'data.data_dir="{cifar_dir}"', "model.overrides.input_size=32"]
    if arm.recipe == "fashion-mnist" and fashion_dir:
        return [f'data.data_dir="{fashion_dir}"']
    return []


def _measure(exp: Experiment, runs: dict[str, list[dict[str, Any]]], paper_dir: Path, seeds: int,
             cifar_dir: str | None, fields: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    if exp.metric == "tencrop":
        from ..inference.evaluation import evaluate_checkpoint

        centre, ten = [], []
        for s in range(seeds):
            weights = paper_dir / f"seed{s}" / "last.pt"
            kwargs = {"data_dir": cifar_dir, "progress": False, "dataset": fields.get("data__dataset")}
            centre.append(100 - evaluate_checkpoint(weights, **kwargs)["acc1"])
            ten.append(100 - evaluate_checkpoint(weights, ten_crop=True, **kwargs)["acc1"])
        arms = {"centre crop": centre, "ten crops": ten}
        diffs = [c - t for c, t in zip(centre, ten)]  # paired: the same weights
        effect, sd = _stats(diffs)
        se = sd / math.sqrt(len(diffs))
        ratio = False
    else:
        arms = {name: [_value(exp, r) for r in rs] for name, rs in runs.items()}
        paper_values, other_values = list(arms.values())
        (mp, sp), (mo, so) = _stats(paper_values), _stats(other_values)
        ratio = exp.metric in ("epochs", "converge")
        if ratio:  # a ratio of means; its standard error by the delta method
            effect = mo / mp if exp.metric == "epochs" else mp / mo
            rel = math.sqrt((sp / mp) ** 2 / len(paper_values) + (so / mo) ** 2 / len(other_values))
            se = effect * rel
        else:
            effect = mo - mp  # error points the paper's choice saves
            se = math.sqrt(sp**2 / len(paper_values) + so**2 / len(other_values))
    return {
        "arms": {
            k: {"values": [round(v, 3) for v in vs], "mean": round(_stats(vs)[0], 3), "std": round(_stats(vs)[1], 3)}
            for k, vs in arms.items()
        },
        "effect": round(effect, 3),
        "se": round(se, 3),
        "ratio": ratio,
        "verdict": _verdict(effect, se, exp.paper_effect, ratio),
        "seconds": round(sum(r["seconds"] for rs in runs.values() for r in rs), 1),
    }


def _fmt(arm: dict[str, Any], ratio: bool) -> str:
    unit = "" if ratio else "%"
    return f"{arm['mean']:.2f}{unit} ± {arm['std']:.2f}"


def write_report(out: Path, plan: Budget, experiments: list[Experiment], results: dict[str, Any],
                 seeds: int) -> Path:  # fmt: skip
    """``out/report.md``: per claim, the paper's figure, the arms (mean ± std over seeds), the effect ± its
    standard error, the verdict; ``curves_<experiment>.png`` beside it when matplotlib is installed."""
    lines = [f"# The paper's claims, reproduced ({plan.describe})", "",
             f"{seeds} seed(s) per arm; mean ± sample standard deviation over seeds; effect ± its standard error "
             "(verdict: reproduced in sign when the effect exceeds two standard errors, and in size when it is also "
             "within a factor of two of the paper's). Errors are the last epoch's test top-1 error, never the best.",
             ""]  # fmt: skip
    if plan.cifar:
        lines += ["Settings of this budget: CIFAR-10 runs `" + " ".join(plan.cifar) + "`; Fashion-MNIST runs `"
                  + " ".join(plan.fashion) + "`; Figure 1 runs `" + " ".join(plan.fig1) + "`.", ""]  # fmt: skip
    lines += ["| claim | paper | arms | effect (ours) | verdict | time |", "|---|---|---|---|---|---:|"]
    for exp in experiments:
        r = results[exp.name]
        arms = "; ".join(f"{name} {_fmt(a, r['ratio'])}" for name, a in r["arms"].items())
        effect = f"{r['effect']:.2f}× ± {r['se']:.2f}" if r["ratio"] else f"{r['effect']:+.2f} points ± {r['se']:.2f}"
        lines.append(f"| **{exp.name}** ({exp.section}): {exp.claim} | {exp.paper} | {arms} | {effect} | "
                     f"{r['verdict']} | {r['seconds'] / 60:.1f} min |")  # fmt: skip
    lines += [
        "",
        "Metrics: `error` experiments compare test error (points the paper's choice saves); `relu_tanh` "
        "the epochs to the target training error (tanh's over ReLU's); `dropout` the epochs to the target "
        "training loss (with dropout over without); `ten_crop` the same weights evaluated both ways.",
        "",
    ]
    notes = [f"- **{e.name}**: {e.note}" for e in experiments if e.note]
    if notes:
        lines += ["Notes:", *notes, ""]
    with contextlib.suppress(ImportError):  # matplotlib is the optional [report] extra
        lines += _curves(out, experiments)
    path = out / "report.md"
    atomic_write(path, lambda f: f.write("\n".join(lines).encode()))
    (out / "results.json").write_text(json.dumps(results, indent=1))
    return path


def _curves(out: Path, experiments: list[Experiment]) -> list[str]:
    from .report import _pyplot

    plt = _pyplot()
    lines = ["## Curves", ""]
    for exp in experiments:
        if exp.other_arm is None:
            continue
        fig, ax = plt.subplots(figsize=(5, 3.2))
        key = "val_acc1" if exp.metric == "error" else ("train_acc1" if exp.metric == "epochs" else "train_loss")
        for arm, style in ((exp.paper_arm, "-"), (exp.other_arm, "--")):
            runs = sorted((out / exp.name / arm.name).glob("seed*/done.json"))
            if not runs:  # the arm was trained under another experiment's directory
                runs = sorted(out.glob(f"*/{arm.name}/seed*/done.json"))
            for i, done in enumerate(runs):
                rows = json.loads(done.read_text())["history"]
                ys = [r[key] if key == "train_loss" else 100 - r[key] for r in rows]
                ax.plot(range(1, len(ys) + 1), ys, style, color=f"C{(arm is exp.other_arm) * 1}", alpha=0.8,
                        label=arm.name if i == 0 else None)  # fmt: skip
        ax.set(xlabel="epoch", ylabel={"val_acc1": "test error (%)", "train_acc1": "training error (%)",
                                        "train_loss": "training loss"}[key], title=exp.name)  # fmt: skip
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / f"curves_{exp.name}.png", dpi=90)
        plt.close(fig)
        lines.append(f"![{exp.name}](curves_{exp.name}.png)")
    return lines
