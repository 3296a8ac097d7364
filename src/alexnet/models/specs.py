"""The AlexNet family as data: one frozen `ArchSpec` per variant, and the rules for overriding its fields.

Every architectural number here is sourced in ../README.md ("Models") and in the paper: Krizhevsky,
Sutskever, Hinton, "ImageNet Classification with Deep Convolutional Neural Networks", NIPS 2012, §3.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..names import did_you_mean


@dataclass(frozen=True)
class ConvSpec:
    """One convolutional stage: conv → [BN] → activation → [LRN] → [max-pool].

    Attributes:
        out: output channels at width 1.0.
        kernel: square kernel size (px).
        stride: conv stride (px).
        pad: zero padding (px, each side).
        tower: True where the paper's two GPUs do not talk (conv2, conv4, conv5): the layer gets
            ``groups=spec.groups``.
        lrn: local response normalisation after the activation (paper: conv1 and conv2 only).
        pool: max-pool after this stage (kernel and stride from ``spec.pool``).
    """

    out: int
    kernel: int
    stride: int = 1
    pad: int = 0
    tower: bool = False
    lrn: bool = False
    pool: bool = False


# Pooling modes of the paper's §3.4 ablation: (kernel, stride). "overlapping" is z=3, s=2.
POOLS = {"overlapping": (3, 2), "non_overlapping": (2, 2)}
NORMS = ("lrn", "batch", "none")
ACTIVATIONS = ("relu", "tanh", "gelu")
LRN_CONVENTIONS = ("paper", "caffe")
INITS = ("paper", "caffe", "xavier", "kaiming", "torch")
DROPOUT_POSITIONS = ("after", "before")


@dataclass(frozen=True)
class ArchSpec:
    """A complete, resolved description of one network.

    Attributes:
        convs: the five conv stages at width 1.0.
        fc: hidden fully-connected widths at width 1.0 (fc6, fc7).
        input_size: default square input side (px) the variant is designed for.
        width: channel multiplier applied to every conv and hidden fc layer.
        groups: tower count for ``tower`` convs (2 = the paper's two GPUs, 1 = one tower).
        one_gpu: the paper's comparison net for its two towers (§3.2): one tower (``groups=1``) with half the
            kernels of the two-tower net in conv1-4, and conv5 and the fc layers whole ("to make the two nets have
            approximately the same number of parameters", footnote 2): for the paper's widths 48-128-192-192-256.
        drop_conv: a middle conv stage taken out (1-based, as the variant's table numbers them; §7: "removing any
            of the middle layers results in a loss of about 2% for the top-1 performance"); one that neither pools
            nor normalises, so the maps keep their sides (the next conv takes the channels before it). ``convs`` no
            longer holds it; 0 keeps them all.
        norm: ``lrn`` (where a stage asks for it), ``batch`` (BatchNorm after every conv), or ``none``.
        lrn_size: LRN window n (channels).
        lrn_alpha: LRN α as the convention below defines it.
        lrn_beta: LRN exponent β.
        lrn_k: LRN additive constant k.
        lrn_convention: ``paper`` sums α·Σa² (α not divided by n, as printed in §3.3); ``caffe`` uses α/n,
            as Caffe, cuda-convnet and ``torch.nn.LocalResponseNorm`` do.
        lrn_across_towers: LRN windows span both towers' channels (Caffe's bvlc_alexnet, whose LRN layer sees all
            96 / 256 maps) instead of staying within one tower (the paper's two GPUs, cuda-convnet).
        activation: ``relu``, ``tanh`` (the paper's Figure 1 comparison) or ``gelu`` (airbench's).
        pool: key of ``POOLS``.
        pool_first: max-pool straight after the conv, then its norm and activation (airbench's order), instead of
            conv, norm, activation, [LRN], pool (the paper's). The norm and activation then run on a quarter of the
            pixels: `alexnet_small` trains 6-12% faster. Max-pooling commutes with ReLU but not with a norm.
        fc_norm: BatchNorm1d after each hidden fc layer, before its activation (with ``norm="batch"`` the convs have
            it too): the classifier's inputs stay normalised as its weights grow, as in the conv trunk.
        bn_momentum: weight of each batch's statistics in every BatchNorm's running mean and variance (torch's
            convention and default, 0.1; airbench's 0.6 is 0.4 here).
        pool_pad: max-pool padding (px); the small model pads so 28 and 32 px inputs both end at 4×4.
        adaptive_pool: output side of an AdaptiveAvgPool2d before the classifier (torchvision: 6), or None.
        dropout: dropout probability on the fc layers.
        dropout_position: ``after`` the fc6/fc7 ReLU (paper, Caffe, d2l) or ``before`` fc6/fc7 (torchvision).
        init: weight-initialisation scheme, see `alexnet.models.init`.
        note: one line for tables.
        source: where the architecture comes from.
    """

    convs: tuple[ConvSpec, ...]
    fc: tuple[int, ...] = (4096, 4096)
    input_size: int = 224
    width: float = 1.0
    groups: int = 1
    one_gpu: bool = False
    drop_conv: int = 0
    norm: str = "lrn"
    lrn_size: int = 5
    lrn_alpha: float = 1e-4
    lrn_beta: float = 0.75
    lrn_k: float = 2.0
    lrn_convention: str = "paper"
    lrn_across_towers: bool = False
    activation: str = "relu"
    pool: str = "overlapping"
    pool_first: bool = False
    fc_norm: bool = False
    bn_momentum: float = 0.1
    pool_pad: int = 0
    adaptive_pool: int | None = None
    dropout: float = 0.5
    dropout_position: str = "after"
    init: str = "torch"
    note: str = field(default="", compare=False)
    source: str = field(default="", compare=False)

    def channels(self) -> list[int]:
        """Conv output channels after the width multiplier, rounded to a multiple of 8 (and of the towers)."""
        if self.one_gpu:  # half of what each layer of the two-tower net has (a multiple of 16), but the last
            last = len(self.convs) - 1
            return [_scale(c.out, self.width, 16) // (1 if i == last else 2) for i, c in enumerate(self.convs)]
        return [_scale(c.out, self.width, 8 * self.groups) for c in self.convs]

    def hidden(self) -> list[int]:
        """Hidden fc widths after the width multiplier."""
        return [_scale(f, self.width, 8) for f in self.fc]

    def _sides(self, size: int | None = None) -> list[tuple[int, int | None]]:
        """Each conv stage's (output side, pooled side or None) in px for a square input.

        Raises:
            ValueError: if the input is too small for the trunk.
        """
        side = size or self.input_size
        k_pool, s_pool = POOLS[self.pool]
        sides: list[tuple[int, int | None]] = []
        for i, c in enumerate(self.convs):
            side = conv = (side + 2 * c.pad - c.kernel) // c.stride + 1
            if c.pool:
                side = (side + 2 * self.pool_pad - k_pool) // s_pool + 1
            if side < 1:
                raise ValueError(f"input {size or self.input_size}px is too small: conv{i + 1} has no output")
            sides.append((conv, side if c.pool else None))
        return sides

    def feature_shape(self, size: int | None = None) -> tuple[int, int, int]:
        """(C, H, W) of the conv trunk's output (after the adaptive pool, if any) for a square input.

        Raises:
            ValueError: if the input is too small for the trunk.
        """
        conv, pooled = self._sides(size)[-1]
        side = self.adaptive_pool or pooled or conv
        return self.channels()[-1], side, side

    def activations(self, size: int | None = None, in_channels: int = 3) -> list[int]:
        """Values one image's forward pass produces, layer by layer: the input, each conv's output (and its pooled
        map), each hidden fc's output. What a batch's memory is reckoned from (`alexnet.memory`).

        Raises:
            ValueError: if the input is too small for the trunk.
        """
        counts = [in_channels * (size or self.input_size) ** 2]
        for (conv, pooled), out in zip(self._sides(size), self.channels()):
            counts += [out * conv**2] + ([out * pooled**2] if pooled else [])
        return counts + self.hidden()

    def parameters(self, num_classes: int = 1000, in_channels: int = 3) -> int:
        """How many values the network learns (weights, biases, BatchNorm's scales and shifts), as built."""
        total, prev = 0, in_channels
        for c, out in zip(self.convs, self.channels()):
            total += out * (prev // (self.groups if c.tower else 1)) * c.kernel**2 + out
            total += 2 * out if self.norm == "batch" else 0
            prev = out
        c, h, w = self.feature_shape()
        widths = [c * h * w, *self.hidden(), num_classes]
        total += sum(a * b + b for a, b in zip(widths, widths[1:]))
        return total + (2 * sum(self.hidden()) if self.fc_norm else 0)

    def macs(self, num_classes: int = 1000, in_channels: int = 3) -> int:
        """Multiply-accumulates of one image's forward pass at the spec's input size: the convolutions' and the fc
        layers' (what ``torch.utils.flop_counter`` counts of the built network, halved)."""
        total, prev = 0, in_channels
        for c, out, (side, _) in zip(self.convs, self.channels(), self._sides()):
            total += side**2 * out * (prev // (self.groups if c.tower else 1)) * c.kernel**2
            prev = out
        c, h, w = self.feature_shape()
        widths = [c * h * w, *self.hidden(), num_classes]
        return total + sum(a * b for a, b in zip(widths, widths[1:]))


def _scale(channels: int, width: float, multiple: int) -> int:
    return max(multiple, int(round(channels * width / multiple)) * multiple)


_C = ConvSpec
VARIANTS: dict[str, ArchSpec] = {
    # The 2012 network, §3.5 and Figure 2, with Caffe's strides and paddings (not stated in the paper).
    # 227 px input: the paper's "224" only yields 55×55 conv1 maps with cuda-convnet's 3 px overhang.
    "alexnet_paper": ArchSpec(
        convs=(
            _C(96, 11, 4, 0, lrn=True, pool=True),
            _C(256, 5, 1, 2, tower=True, lrn=True, pool=True),
            _C(384, 3, 1, 1),
            _C(384, 3, 1, 1, tower=True),
            _C(256, 3, 1, 1, tower=True, pool=True),
        ),
        input_size=227,
        groups=2,
        init="paper",
        note="the 2012 paper: two towers (groups=2), per-tower LRN, overlapping pooling",
        source="Krizhevsky et al. 2012 §3; strides/pads from Caffe bvlc_alexnet",
    ),
    # torchvision.models.alexnet: Krizhevsky 2014 "one weird trick" 1-GPU model, without LRN.
    "alexnet_owt": ArchSpec(
        convs=(
            _C(64, 11, 4, 2, pool=True),
            _C(192, 5, 1, 2, tower=True, pool=True),
            _C(384, 3, 1, 1),
            _C(256, 3, 1, 1, tower=True),
            _C(256, 3, 1, 1, tower=True, pool=True),
        ),
        norm="none",
        adaptive_pool=6,
        dropout_position="before",
        note="torchvision's AlexNet (one weird trick, 2014): 64-192-384-256-256, no LRN",
        source="torchvision/models/alexnet.py; arXiv:1404.5997",
    ),
    # d2l.ai §8.1 (PyTorch): LazyConv2d(96, 11, 4, padding=1) ... flatten 6400 at 224 px.
    "alexnet_d2l": ArchSpec(
        convs=(
            _C(96, 11, 4, 1, pool=True),
            _C(256, 5, 1, 2, tower=True, pool=True),
            _C(384, 3, 1, 1),
            _C(384, 3, 1, 1, tower=True),
            _C(256, 3, 1, 1, tower=True, pool=True),
        ),
        norm="none",
        init="xavier",
        note="Dive into Deep Learning §8.1: paper widths, no LRN, conv1 padding 1",
        source="d2l.ai chapter_convolutional-modern/alexnet",
    ),
    # Designed for 28-32 px: 5×5 convs at stride 1 keep conv1-2 at full and half resolution, and
    # padded 3/2 pooling takes both 28 (→14→7→4) and 32 (→16→8→4) px to a 4×4 map for the classifier.
    "alexnet_small": ArchSpec(
        convs=(
            _C(48, 5, 1, 2, lrn=True, pool=True),
            _C(128, 5, 1, 2, tower=True, lrn=True, pool=True),
            _C(192, 3, 1, 1),
            _C(192, 3, 1, 1, tower=True),
            _C(128, 3, 1, 1, tower=True, pool=True),
        ),
        fc=(1024, 1024),
        input_size=32,
        pool_pad=1,
        norm="batch",
        init="kaiming",
        note="AlexNet topology for 28-32 px (MNIST, Fashion-MNIST, CIFAR): 48-128-192-192-128, fc 1024",
        source="this project",
    ),
    # alexnet_small with conv2 at 3×3 instead of 5×5 (its 16×16 map made it 41% of the MACs) and what that saves
    # spent on the 8×8 layers: the `cifar10-fast` recipe's network (held out +0.60 and +0.36 points on two seeds, at
    # 0.94× the training rate), and batch norm in the classifier too (fc_norm: +0.64, +0.76 more). Written out in
    # full like every row, so editing alexnet_small cannot change it.
    "alexnet_cifar": ArchSpec(
        convs=(
            _C(48, 5, 1, 2, lrn=True, pool=True),
            _C(96, 3, 1, 1, tower=True, lrn=True, pool=True),
            _C(192, 3, 1, 1),
            _C(256, 3, 1, 1, tower=True),
            _C(256, 3, 1, 1, tower=True, pool=True),
        ),
        fc=(1024, 1024),
        input_size=32,
        pool_pad=1,
        norm="batch",
        fc_norm=True,
        init="kaiming",
        note="alexnet_small for CIFAR at 32 px: a 3×3 conv2, wider conv4-5 (48-96-192-256-256), batch norm in fc 1024",
        source="this project",
    ),
    # The paper's Figure 1 experiment (§3.1): "a four-layer convolutional neural network" on CIFAR-10, ReLU against
    # tanh. The layout of cuda-convnet's layers-80sec.cfg (3 conv + 1 fc); its average pools 2-3 are max pools here.
    "convnet_fig1": ArchSpec(
        convs=(_C(32, 5, 1, 2, pool=True), _C(32, 5, 1, 2, pool=True), _C(64, 5, 1, 2, pool=True)),
        fc=(),
        input_size=32,
        pool_pad=1,
        norm="none",
        dropout=0.0,
        note="the paper's Figure 1 network for ReLU vs tanh: 32-32-64 5×5 convs and one fc layer, 32 px",
        source="Krizhevsky et al. 2012 §3.1, Fig. 1; layout of cuda-convnet's layers-80sec.cfg",
    ),
    # The paper's CIFAR-10 LRN claim (§3.3, "13% → 11% test error"): cuda-convnet's layers-conv-local-11pct.cfg,
    # whose two cmrnorm layers (size 9, scale 0.001, pow 0.75, α divided by the size) norm="none" removes to give
    # the 13pct net. Its locally connected local3/local4 (3×3, 64 and 32 filters, unshared weights) are
    # convolutions here, and its first norm follows pool1 where ours precedes it.
    "convnet_cifar_local": ArchSpec(
        convs=(
            _C(64, 5, 1, 2, lrn=True, pool=True),
            _C(64, 5, 1, 2, lrn=True, pool=True),
            _C(64, 3, 1, 1),
            _C(32, 3, 1, 1),
        ),
        fc=(),
        input_size=32,
        pool_pad=1,
        lrn_size=9,
        lrn_alpha=0.001,
        lrn_k=1.0,
        lrn_convention="caffe",
        dropout=0.0,
        note="cuda-convnet's CIFAR-10 11% net (LRN) or, with norm='none', its 13% net; local layers as convs",
        source="cuda-convnet layers-conv-local-11pct.cfg / -13pct.cfg; Krizhevsky et al. 2012 §3.3",
    ),
}

# Fields a user may override, with a validator each; other ArchSpec fields are the architecture itself.
_CHOICES: dict[str, tuple[Any, ...]] = {
    "norm": NORMS,
    "activation": ACTIVATIONS,
    "lrn_convention": LRN_CONVENTIONS,
    "pool": tuple(POOLS),
    "init": INITS,
    "dropout_position": DROPOUT_POSITIONS,
    "lrn_across_towers": (False, True),
    "pool_first": (False, True),
    "fc_norm": (False, True),
    "one_gpu": (False, True),
}
_NUMBERS: dict[str, tuple[type, float, float]] = {  # field: (type, lowest, highest), inclusive
    "width": (float, 1e-3, 64.0),
    "groups": (int, 1, 64),
    "lrn_size": (int, 1, 255),
    "lrn_alpha": (float, 0.0, 1e3),
    "lrn_beta": (float, 0.0, 10.0),
    "lrn_k": (float, 0.0, 1e3),
    "dropout": (float, 0.0, 0.999),
    "bn_momentum": (float, 1e-3, 1.0),
    "input_size": (int, 8, 4096),
    "drop_conv": (int, 0, 64),
}
OVERRIDABLE = tuple(sorted([*_CHOICES, *_NUMBERS]))


def apply_overrides(name: str, spec: ArchSpec, overrides: dict[str, Any]) -> ArchSpec:
    """Return ``spec`` with ``overrides`` applied, after checking every key and value.

    Raises:
        ValueError: naming the bad key or value and what is valid.
    """
    for key, value in overrides.items():
        if key in _CHOICES:
            if value not in _CHOICES[key] or type(value) not in {type(c) for c in _CHOICES[key]}:  # 1 is not True
                hint = did_you_mean(value, _CHOICES[key])
                raise ValueError(f"{key}={value!r} is not valid; {hint}choose one of {list(_CHOICES[key])}")
        elif key in _NUMBERS:
            kind, low, high = _NUMBERS[key]
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            if kind is int:
                ok = ok and float(value).is_integer()
            if not ok or not low <= value <= high:
                raise ValueError(f"{key}={value!r} is not valid; expected {kind.__name__} in [{low}, {high}]")
        else:
            raise ValueError(f"unknown override {key!r} for {name}; valid overrides: {list(OVERRIDABLE)}")
    resolved = {k: int(v) if _NUMBERS.get(k, (None,))[0] is int else v for k, v in overrides.items()}
    spec = dataclasses.replace(spec, **resolved)
    if spec.drop_conv:
        spec = _without_conv(name, spec)
    _check(name, spec)
    return spec


def _without_conv(name: str, spec: ArchSpec) -> ArchSpec:
    """``spec`` without its conv stage ``drop_conv``.

    Raises:
        ValueError: not a middle stage, or one that pools or normalises (the layers after it would change size).
    """
    k, convs = spec.drop_conv, spec.convs
    if not 1 < k < len(convs) or convs[k - 1].pool or convs[k - 1].lrn:
        middle = [i for i, c in enumerate(convs[1:-1], 2) if not (c.pool or c.lrn)]
        why = f"a middle conv that neither pools nor normalises: {middle}"
        raise ValueError(f"drop_conv={k} is not valid for {name}: {why}")
    return dataclasses.replace(spec, convs=convs[: k - 1] + convs[k:])


def _check(name: str, spec: ArchSpec) -> None:
    if spec.one_gpu and spec.groups != 1:
        why = "the paper's one-GPU net is one tower (groups=1)"
        raise ValueError(f"one_gpu=True is not valid with groups={spec.groups}: {why}")
    if spec.lrn_size % 2 == 0:
        raise ValueError(f"lrn_size={spec.lrn_size} must be odd so the window is centred on the channel")
    spec.feature_shape()  # raises for an input too small for the trunk
