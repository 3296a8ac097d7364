"""The experiments of `alexnet reproduce` as data: each claim of the paper (`Experiment`) with the two configurations
that test it (`Arm`: a recipe and its overrides), grouped into budgets (`Budget`: ``small``, ``cpu``, ``full``).
`alexnet.experiments.reproduce` trains and measures them; this module only says what they are.

Budgets: ``small`` is a smoke run (about an hour on 2 CPU cores; its networks are far from converged, so most
verdicts are "within noise"); ``cpu`` trains every arm to convergence on the CIFAR-10 JPEGs, about 7 hours on 2
CPU cores; ``full`` is the paper's scale for GPUs (ImageNet, ``alexnet_paper``, the paper's recipe, 90 epochs).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .paper import FIG1_LRS


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
            ratio paper/other, the paper's arm slower), ``tencrop`` (centre-crop error minus ten-crop error of
            the ``paper`` arm's runs on the test split; no second training), or ``ensemble`` (each of the ``paper``
            arm's runs' centre-crop test error minus that of all of them, their softmax averaged; no second training).
        paper_arm: the configuration the paper used.
        other_arm: the alternative it was compared with.
        target: the training error (%) or loss the ``epochs`` and ``converge`` metrics count to.
        note: how this budget differs from the paper's setting.
        others: other published reproductions of the claim and their figures.
    """

    name: str
    section: str
    claim: str
    paper: str
    paper_effect: float | None  # None: the paper gives no figure
    metric: str
    paper_arm: Arm
    other_arm: Arm | None
    target: float = 0.0
    note: str = ""
    others: str = ""


@dataclass
class Budget:
    """A budget's experiments, the settings its runs share (for the report) and which arm is the baseline."""

    describe: str
    settings: dict[str, tuple[str, ...]]
    experiments: list[Experiment] = field(default_factory=list)
    baseline: Arm | None = None  # its runs are also evaluated with ten crops and drawn as Figure 3


MISHKIN = "Mishkin et al. 2016 (CaffeNet at 128 px, ImageNet): "


def _ablations(base: Arm, off: Any) -> list[Experiment]:
    """§3.2-§4.1's and §7's ablations against ``base``; ``off(name, *overrides)`` makes an arm without one feature. The
    towers' arm is the paper's one-GPU net: half the kernels of conv1-4 in one tower, conv5 and the fc layers whole
    (its footnote 2; `ArchSpec.one_gpu`)."""
    return [
        Experiment(
            "lrn",
            "§3.3",
            "response normalisation reduces top-1 error by 1.4% (ImageNet)",
            "−1.4 points",
            1.4,
            "error",
            base,
            off("no_lrn", 'model.overrides.norm="none"'),
            others=MISHKIN + "47.0% top-1 error with LRN and without: no difference",
        ),
        Experiment(
            "pooling",
            "§3.4",
            "overlapping pooling (3/2) reduces top-1 error by 0.4% against 2/2",
            "−0.4 points",
            0.4,
            "error",
            base,
            off("non_overlapping", 'model.overrides.pool="non_overlapping"'),
        ),
        Experiment(
            "towers",
            "§3.2",
            "two towers reduce top-1 error by 1.7% against one tower with half the kernels in conv1-4",
            "−1.7 points",
            1.7,
            "error",
            base,
            off("one_gpu", "model.overrides.groups=1", "model.overrides.one_gpu=true"),
        ),
        # conv3 and conv4 are the middle layers that keep the maps' sides ("any of the middle layers": one each)
        *(
            Experiment(
                name,
                "§7",
                f"removing any of the middle convolutional layers loses about 2% top-1 (here conv{conv})",
                "−2 points",
                2.0,
                "error",
                base,
                off(f"no_conv{conv}", f"model.overrides.drop_conv={conv}"),
            )
            for name, conv in (("depth", 4), ("depth_conv3", 3))
        ),
        Experiment(
            "pca",
            "§4.1",
            "PCA colour noise reduces top-1 error by over 1%",
            "> 1 point",
            1.0,
            "error",
            base,
            off("no_pca", "data.pca_std=0"),
        ),
    ]


def _relu_tanh(fig1: tuple[str, ...], target: float, note: str) -> Experiment:
    return Experiment(
        "relu_tanh",
        "§3.1, Figure 1",
        "a four-layer CNN with ReLUs reaches 25% training error on CIFAR-10 six times faster than with tanh units",
        "6× fewer epochs",
        6.0,
        "epochs",
        Arm("relu", "fig1-cifar10", (*fig1, 'model.overrides.activation="relu"', f"optim.lr={FIG1_LRS['relu']}")),
        Arm("tanh", "fig1-cifar10", (*fig1, 'model.overrides.activation="tanh"', f"optim.lr={FIG1_LRS['tanh']}")),
        target=target,
        note=note,
    )


def _lrn_cifar(common: tuple[str, ...], note: str) -> Experiment:
    return Experiment(
        "lrn_cifar",
        "§3.3",
        "response normalisation reduces the CIFAR-10 test error of cuda-convnet's four-layer net from 13% to 11%",
        "13% → 11%",
        2.0,
        "error",
        Arm("lrn", "cifar10", common),
        Arm("none", "cifar10", (*common, 'model.overrides.norm="none"')),
        note=note,
    )


def _dropout(paper: Arm, other: Arm, target: float, note: str = "") -> Experiment:
    claim = "dropout roughly doubles the iterations needed to converge (and reduces overfitting)"
    return Experiment("dropout", "§4.2", claim, "≈ 2× the epochs", 2.0, "converge", paper, other, target, note)


def _ten_crop(base: Arm, note: str) -> Experiment:
    return Experiment(
        "ten_crop",
        "§4.1, §6",
        "averaging the softmax over ten crops lowers the error",
        "cuda-convnet2's 1-GPU model: 42.5% → 40.4% top-1 error",
        2.1,
        "tencrop",
        base,
        None,
        note=note,
    )


def _ensemble(base: Arm, note: str) -> Experiment:
    return Experiment(
        "ensemble",
        "§6, Table 2",
        "averaging the predictions of several similar CNNs lowers the error",
        "1 CNN → 5 CNNs: 40.7% → 38.1% top-1 error (ILSVRC-2012 val)",
        2.6,
        "ensemble",
        base,
        None,
        note=note,
    )


def _crops_flips(base: Arm, off: Any, note: str) -> Experiment:
    return Experiment(
        "crops_flips",
        "§4.1",
        "without random crops and flips the network overfits substantially",
        "(no figure)",
        None,
        "error",
        base,
        off("no_crops_flips", "data.pad=0", "data.flip=false"),
        note=note,
    )


# Both CIFAR-10 budgets' baseline: alexnet_small at half width with the paper's features on top of the recipe's
# (crops, flips, dropout): LRN, two towers, PCA colour noise; batch 128 at a one-cycle rate peaking at 0.05.
PAPER_FEATURES = (
    "model.overrides.width=0.5",
    'model.overrides.norm="lrn"',
    "model.overrides.groups=2",
    "data.pca_std=0.1",
    "data.batch_size=128",
    "optim.lr=0.05",
    "optim.label_smoothing=0.0",
)


ENSEMBLE_NOTE = (
    "the baseline's seeds as the paper's similar CNNs (as many as --seeds, not five), one centre view each; "
    "measured where their weights are, in the sitting that trained them, and kept in ensemble.json"
)


def _small() -> Budget:
    # A smoke run: CIFAR-10 JPEGs and Fashion-MNIST, alexnet_small at half width with the paper's features (LRN, two
    # towers, overlapping pooling, PCA noise, crops, flips, dropout); 8 epochs of 60 batches of 128 (7,680 images
    # an epoch, 61,440 in all), a one-cycle learning rate: about 75 s a run here.
    cifar = (*PAPER_FEATURES, "train.epochs=8", "train.limit_train_batches=60")
    fashion = ("model.overrides.width=0.5", "train.epochs=6", "train.limit_train_batches=60")
    fig1 = ("train.epochs=10", "train.limit_train_batches=80")
    common = (
        "data.batch_size=128",
        # 0.05 (the cpu budget's, over 30 epochs) diverged in one seed of six at these 8 short epochs' warm-up: its
        # training loss stuck at 2.30 (chance) from epoch 4; at 0.02 all six end at a training loss of 1.30-1.34
        "optim.lr=0.02",
        "optim.label_smoothing=0.0",
        "train.epochs=8",
        "train.limit_train_batches=60",
        'model.name="convnet_cifar_local"',
    )
    base = Arm("paper", "cifar10", cifar)

    def off(name: str, *changes: str) -> Arm:
        return Arm(name, "cifar10", (*cifar, *changes))

    experiments = [
        _relu_tanh(fig1, 45.0, "epochs of 80 batches (10,240 images), target 45% training error, at most 10"),
        _lrn_cifar(common, "locally connected layers as convolutions; 8 short epochs, not cuda-convnet's schedule"),
        *_ablations(base, off),
        _crops_flips(base, off, "CIFAR crops are pad-4 shifts of the 32 px image, not 224 from 256"),
        _dropout(
            Arm("dropout", "fashion-mnist", fashion),
            Arm("no_dropout", "fashion-mnist", (*fashion, "model.overrides.dropout=0.0")),
            0.35,
            "Fashion-MNIST; epochs (of 60 batches) to a training loss of 0.35, at most 6",
        ),
        _ten_crop(base, "the `paper` arm's runs of the ablations, evaluated again with ten crops"),
        _ensemble(base, ENSEMBLE_NOTE),
    ]
    settings = {"CIFAR-10 runs": cifar, "Fashion-MNIST runs": fashion, "Figure 1 runs": fig1}
    return Budget(
        "small: a smoke run on CIFAR-10 JPEGs and Fashion-MNIST (far from converged)", settings, experiments, base
    )


# The cpu budget's CIFAR-10 runs: 45,000 training images (5,000 held out for validation), every epoch a full pass.
CPU_EPOCHS = 30
CPU_CIFAR = (*PAPER_FEATURES, f"train.epochs={CPU_EPOCHS}", "data.val_split=0.1")


def _cpu() -> Budget:
    # Converged arms on 2 CPU cores. alexnet_small at half width (32-64-96-96-64: conv1 rounded to a multiple of 16
    # for the two towers; fc 512) with every one of the paper's features: LRN, two towers, overlapping pooling, PCA
    # noise σ 0.1, pad-4 crops and flips, dropout 0.5; SGD with Nesterov momentum, a one-cycle rate peaking at 0.05,
    # batch 128, 30 epochs of 45,000 images (2,450 img/s with the fused LRN kernel on a 2-core AMD EPYC: ~10 min a
    # run; its training step ~1,100 img/s in fp32 on a Zen 2, AVX2 only). 20 epochs of it ended at 79.4% test
    # accuracy (81.0% on the held-out images), short of the 80% this budget asks of its baseline; 30 reached 81.9%
    # (three seeds).
    base = Arm("paper", "cifar10", CPU_CIFAR)

    def off(name: str, *changes: str) -> Arm:
        return Arm(name, "cifar10", (*CPU_CIFAR, *changes))

    fig1 = ("train.epochs=40",)  # at most; each run stops at the target (the recipe's stop_at_train_acc1)
    local = (
        'model.name="convnet_cifar_local"',
        "data.batch_size=128",
        "optim.lr=0.05",
        "optim.label_smoothing=0.0",
        "train.epochs=30",
        "data.val_split=0.1",
    )
    # The baseline's arms first: the runs every ablation shares, and the budget's test of convergence.
    experiments = [
        *_ablations(base, off),
        _crops_flips(base, off, "CIFAR crops are pad-4 shifts of the 32 px image, not 224 from 256"),
        _dropout(
            base,
            off("no_dropout", "model.overrides.dropout=0.0"),
            0.75,
            "epochs to a training loss of 0.75 under the shared one-cycle schedule, at most 30",
        ),
        _ten_crop(base, "the baseline's runs evaluated again on the test split with ten crops (pad-4 corners)"),
        _ensemble(base, ENSEMBLE_NOTE),
        _relu_tanh(fig1, 25.0, "the paper's target, 25% training error, on all 50,000 images; at most 40 epochs"),
        _lrn_cifar(
            local,
            "cuda-convnet's layers-conv-local-11pct/-13pct nets with convolutions in place of its "
            "locally connected layers, 30 epochs of this budget's schedule, not cuda-convnet's",
        ),
    ]
    settings = {"CIFAR-10 runs": CPU_CIFAR, "Figure 1 runs": fig1, "lrn_cifar runs": local}
    return Budget("cpu: converged arms on the CIFAR-10 JPEGs, 2 CPU cores", settings, experiments, base)


def _full() -> Budget:
    base = Arm("paper", "paper-imagenet")

    def off(name: str, *changes: str) -> Arm:
        return Arm(name, "paper-imagenet", changes)

    experiments = [
        *_ablations(base, off),
        _dropout(base, off("no_dropout", "model.overrides.dropout=0.0"), 2.5),
        _ten_crop(base, ""),
        _ensemble(base, ENSEMBLE_NOTE),
    ]
    return Budget("full: ImageNet with the paper's recipe (GPUs)", {}, experiments, base)


BUDGETS = {"small": _small, "cpu": _cpu, "full": _full}
