"""Local response normalisation as the paper defines it (§3.3), optionally within each GPU tower; the strided stem
convolution that trains through space-to-depth; fc layers through oneDNN on AMD CPUs; dropout with a cheaper mask on
the CPU; and the sequential containers that run some runs of layers as one fused kernel on the CPU."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .. import native
from . import amx_fc, fused_bn, fused_lrn, fused_pool, fused_stem, gemv, onednn_fc, packed_conv


class LocalResponseNorm(nn.Module):
    """b_i = a_i / (k + α' Σ_{j=i-n/2}^{i+n/2} a_j²)^β over channels, computed separately in each of ``groups``
    contiguous channel blocks (the paper's towers; cuda-convnet2's ``rnorm1a`` sees 48 of conv1's 96 maps).

    ``convention="paper"`` takes α literally (α' = α, as printed in §3.3); ``"caffe"`` divides by n
    (α' = α/n, as Caffe, cuda-convnet and ``torch.nn.LocalResponseNorm`` do). Channels beyond the block's edge
    count as zero, which equals the paper's clipped sum.

    Args:
        size: window n in channels (odd).
        alpha: α under ``convention``.
        beta: exponent β.
        k: additive constant k.
        convention: ``paper`` or ``caffe``.
        groups: number of independent channel blocks.
    """

    def __init__(
        self, size: int, alpha: float, beta: float, k: float, convention: str = "paper", groups: int = 1
    ) -> None:
        super().__init__()
        self.size, self.alpha, self.beta, self.k = size, alpha, beta, k
        self.convention, self.groups = convention, groups
        # Coefficient of the window's sum of squares; the caffe form averages over the window.
        self._scale = alpha if convention == "paper" else alpha / size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The same formula in one pass (1.9× faster training of alexnet_small on a CPU).
        if fused_lrn.usable(x, self.size):
            return fused_lrn.fused_lrn(x, self.size, self._scale, self.beta, self.k, self.groups)
        return self.reference(x)

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        """The formula in PyTorch operations: the oracle of the fused kernel, and what tracers and compilers see."""
        b, c, h, w = x.shape
        g = self.groups
        # (B, C, H, W) -> (B, G, C/G, H, W): pad and slide within each tower, so windows never cross towers.
        sq = x.reshape(b, g, c // g, h, w).square()
        half = self.size // 2
        sq = F.pad(sq, (0, 0, 0, 0, half, half))  # zero channels beyond each tower's edge: (B, G, C/G + n-1, H, W)
        # The window sum as n shifted slices: plain elementwise adds, several times faster on CPU than
        # F.local_response_norm's avg_pool3d, and layout-agnostic (works in channels_last).
        window = sq[:, :, 0 : c // g]
        for i in range(1, self.size):
            window = window + sq[:, :, i : i + c // g]
        denom = (self.k + self._scale * window.reshape(b, c, h, w)).pow(self.beta)
        return x / denom

    def extra_repr(self) -> str:
        return (
            f"size={self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}, "
            f"convention={self.convention!r}, groups={self.groups}"
        )


class Stack(nn.Sequential):
    """``nn.Sequential``, except that on the CPU some runs of its layers go through one fused kernel, forward and
    backward: in training each batch norm → ReLU pair (`fused_bn`: ``alexnet_cifar``'s training step at batch 256 ran
    1.10x as fast, 191 → 174 ms on 2 cores of an Intel Xeon with AMX), each ReLU → LRN pair (`fused_lrn.relu_lrn`),
    and each max-pool with the ReLU before it (`fused_pool`). The same layers and state dict; a layer with hooks,
    other devices, tracers and compilers run them apart."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu":
            return super().forward(x)
        layers, i = list(self), 0
        while i < len(layers):
            fused = self._fused(layers, i, x)
            if fused is None:
                x, i = layers[i](x), i + 1
            else:
                x, i = fused
        return x

    def _fused(self, layers: list[nn.Module], i: int, x: torch.Tensor) -> tuple[torch.Tensor, int] | None:
        # (the output, the next layer's index) where layers[i] starts a run one kernel does; None otherwise.
        pair = layers[i : i + 2]
        if len(pair) == 2 and type(pair[1]) is nn.ReLU and _unhooked(pair) and fused_bn.usable(x, pair[0]):
            return fused_bn.batch_norm_relu_layer(x, pair[0]), i + 2
        # A ReLU in place would have overwritten the previous layer's output, which the kernels leave as it was.
        relu = type(layers[i]) is nn.ReLU and not layers[i].inplace
        norm = layers[i + 1] if relu and i + 1 < len(layers) else None
        # (Not under torch.compile, as the other runs: a compiled graph keeps the layers, and fuses them itself.)
        lrn = isinstance(norm, LocalResponseNorm) and not torch.compiler.is_compiling()
        if lrn and _unhooked(layers[i : i + 2]) and fused_lrn.usable(x, norm.size):
            out = fused_lrn.relu_lrn(x, norm.size, norm._scale, norm.beta, norm.k, norm.groups)
            return out, i + 2
        run = layers[i : i + 1 + relu]
        pool = run[-1]
        if _square_pool(pool) and _unhooked(run) and fused_pool.usable(x, pool.kernel_size, pool.padding):
            args = (x, pool.kernel_size, pool.stride, pool.padding, relu)
            if torch.is_grad_enabled() and x.requires_grad:
                return fused_pool.relu_max_pool(*args)[0], i + len(run)
            return fused_pool.relu_max_pool_values(*args), i + len(run)  # nothing flows back: no argmax to keep
        return None


class Features(Stack):
    """The conv stack: a `Stack` which, also, in inference on the CPU runs each ReLU → LRN → max-pool run of its
    layers (the paper's conv1 and conv2 stages; the ReLU optional) through one fused kernel (`fused_lrn.lrn_pool`),
    which writes only the pooled map: the three layers apart each read and wrote the whole of it. On 2 cores of an
    Intel Xeon with AMX, bf16 at batch 64: conv1's stage 18.8 → 10.0 ms, conv2's 12.7 → 6.3. With gradients only
    the `Stack`'s runs are fused."""

    def _fused(self, layers: list[nn.Module], i: int, x: torch.Tensor) -> tuple[torch.Tensor, int] | None:
        if torch.is_grad_enabled():
            return super()._fused(layers, i, x)
        relu = type(layers[i]) is nn.ReLU
        j = i + relu  # where an LRN and a pool would be
        # usable: the tensor there (autocast may have made it fp16, which the kernel does not take), no tracer.
        stage = j + 1 < len(layers) and isinstance(layers[j], LocalResponseNorm) and _plain_pool(layers[j + 1])
        if stage and _unhooked(layers[i : j + 2]) and fused_lrn.usable(x, layers[j].size):
            norm, pool = layers[j], layers[j + 1]
            out = fused_lrn.lrn_pool(
                x, norm.size, norm._scale, norm.beta, norm.k, norm.groups, relu, pool.kernel_size, pool.stride
            )
            return out, j + 2
        return super()._fused(layers, i, x)


def _unhooked(layers: list[nn.Module]) -> bool:
    # A hook on a layer sees that layer's own input and output, which a fused run never makes: run them apart.
    # Hooks registered for every module (nn.modules.module.register_module_*_hook) count as each layer's.
    hooks = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    every = nn.modules.module
    if any(getattr(every, f"_global{h}", None) for h in hooks):
        return False
    return not any(getattr(m, h, None) for m in layers for h in hooks)


def _square_pool(m: nn.Module) -> bool:
    # What `fused_pool` does: a square window, stride and padding given as ints, no dilation, floor mode.
    return (
        type(m) is nn.MaxPool2d
        and all(isinstance(v, int) for v in (m.kernel_size, m.stride, m.padding))
        and m.dilation == 1
        and not m.ceil_mode
        and not m.return_indices
    )


def _plain_pool(m: nn.Module) -> bool:
    # What `fused_lrn.lrn_pool` does: `_square_pool`, unpadded.
    return _square_pool(m) and m.padding == 0


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` whose bf16 inference on a CPU with AMX runs on its weight laid out for oneDNN once rather than
    reordered on every call (`packed_conv`: ``alexnet_owt`` at batch 1 1.09×, the outputs the same bit for bit).
    Elsewhere (training, other dtypes and devices, tracers, ``ALEXNET_PACKED_CONV=0``) it is ``nn.Conv2d``.
    Parameters and state dict are ``nn.Conv2d``'s."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if packed_conv.usable(self, x):
            return packed_conv.conv2d(self, x)
        return super().forward(x)


class StemConv2d(Conv2d):
    """``nn.Conv2d`` for a strided convolution over few input channels (conv1: 3 channels, 11 × 11, stride 4), which
    in bf16 training on a CPU with native bf16 products (AMX, AVX512-BF16) runs as space-to-depth: each s × s block of
    input pixels becomes s²·C channels and the kernel, zero-padded to a multiple of s, becomes a ⌈k/s⌉ × ⌈k/s⌉ kernel
    over them, stride 1. The same products (and zeros): measured, the weight gradient came out bit for bit, the output
    equal to bf16 rounding. But oneDNN's weight-gradient kernel for 3 input channels is slow: on 2 cores of an Intel
    Xeon with AMX, ``alexnet_owt``'s conv1 at batch 64 took 25.1 ms forward and backward, 15.3 this way (its input
    rearranged in 4.7 of them by torch's ops; `alexnet.models.fused_stem` now does that in ~1.9); on 2 cores of an AMD
    EPYC with AVX512-BF16 and no AMX, 69.2 → 58.2 ms (the paper's conv1 98.8 → 95.1), its whole bf16 training step
    1.03× as fast. In fp32 it was slower (61.2 ms against 50.8) and without a weight gradient the rearrangement costs
    what it saves: there, on CPUs without native bf16 products, and under tracers and compilers, it is the plain
    convolution. Parameters and state dict are ``nn.Conv2d``'s."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._space_to_depth(x):
            return super().forward(x)
        s, k, pad = self.stride[0], self.kernel_size[0], self.padding[0]
        blocks = -(-k // s)  # ⌈k/s⌉
        c, h, w = x.shape[1:]
        # (B, C, H, W) → (B, Hb, Wb, s²·C) blocks, Hb = H_out − 1 + blocks: (B, s²·C, Hb, Wb) channels last
        hb, wb = (h + 2 * pad - k) // s + blocks, (w + 2 * pad - k) // s + blocks
        blocks_of = fused_stem.space_to_depth if fused_stem.usable(x) else space_to_depth_blocks
        xs = blocks_of(x, s, pad, hb, wb)
        # (O, C, k, k) → (O, C, blocks·s, blocks·s) → (O, s²·C, blocks, blocks), channels ordered as xs's
        o, fill = self.out_channels, blocks * s - k
        weight = F.pad(self.weight, (0, fill, 0, fill)).view(o, c, blocks, s, blocks, s)
        weight = weight.permute(0, 3, 5, 1, 2, 4).reshape(o, s * s * c, blocks, blocks)
        return F.conv2d(xs.permute(0, 3, 1, 2), weight, self.bias)

    def _space_to_depth(self, x: torch.Tensor) -> bool:
        # bf16 training on a CPU with native bf16 products, the measured cases; a plain zero-padded, undilated,
        # ungrouped square convolution.
        if native.tracing() or not _bf16_products():
            return False
        return (
            x.device.type == "cpu"
            and _compute_dtype(x) == torch.bfloat16
            and torch.is_grad_enabled()
            and self.weight.requires_grad
            and x.dim() == 4
            and self.groups == 1
            and self.padding_mode == "zeros"
            and not isinstance(self.padding, str)
            and self.dilation == (1, 1)
            and self.stride[0] == self.stride[1] > 1
            and self.kernel_size[0] == self.kernel_size[1]
            and self.padding[0] == self.padding[1]
            # an input smaller than the kernel gets the plain convolution's own error
            and min(x.shape[-2:]) + 2 * self.padding[0] >= self.kernel_size[0]
        )


def space_to_depth_blocks(x: torch.Tensor, s: int, pad: int, hb: int, wb: int) -> torch.Tensor:
    """(N, C, H, W) → (N, hb, wb, s²·C) in the compute dtype: each s × s block of ``x`` zero-padded by ``pad`` at the
    top and left, its channels ordered (row, column, channel) as `StemConv2d`'s kernel; torch's ops, with a gradient
    (`alexnet.models.fused_stem` does it in one pass where none is needed)."""
    b, c, h, w = x.shape
    # (B, C, H, W) → (B, hb·s, wb·s, C) zero-padded → (B, hb, wb, s²·C)
    padded = x.new_zeros((b, hb * s, wb * s, c), dtype=_compute_dtype(x))
    nh, nw = min(h, hb * s - pad), min(w, wb * s - pad)
    padded[:, pad : pad + nh, pad : pad + nw] = x.permute(0, 2, 3, 1)[:, :nh, :nw]
    return padded.view(b, hb, s, wb, s, c).permute(0, 1, 3, 2, 4, 5).reshape(b, hb, wb, s * s * c)


class Linear(nn.Linear):
    """``nn.Linear`` whose fp32 product on an AMD CPU runs as oneDNN's inner product (`onednn_fc`) rather than MKL's
    sgemm, at twice its rate there (fc6 at batch 64: 86 → 38 ms on a Zen 2), in eager mode and under
    ``torch.compile``, and whose bf16 product on a CPU with AMX runs with its operands in the order oneDNN's AMX GEMM
    is fast in (`amx_fc`: fc6's forward at batch 64 3.9 → 2.7 ms, its weight gradient 17.6 → 3.9), and whose bf16
    inference at batch 1 on a CPU with AVX512-BF16 but no AMX reads its weight at the memory's pace (`gemv`: fc6 5.1
    → 2.9 ms). Elsewhere (other devices, tracers that write a program, ``ALEXNET_ONEDNN_FC=0``, ``ALEXNET_AMX_FC=0``,
    ``ALEXNET_GEMV=0``) it is ``nn.Linear``.
    Parameters and state dict are ``nn.Linear``'s."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if onednn_fc.usable(x, self.weight, self.bias):
            return onednn_fc.linear(x, self.weight, self.bias)
        if amx_fc.usable(x, self.weight, self.bias):
            return amx_fc.linear(x, self.weight, self.bias)
        if gemv.usable(x, self.weight, self.bias):
            return gemv.linear(x, self.weight, self.bias)
        return super().forward(x)


class AdaptiveAvgPool2d(nn.AdaptiveAvgPool2d):
    """``nn.AdaptiveAvgPool2d`` that passes a map already of its output size through: each output is then the mean
    of one value, the value itself, and torch still ran a pass and, in training, a backward pass for it (at 224 and
    227 px the conv stack ends at 6 × 6, the pool's size: in bf16 channels last on the Xeon with AMX its backward took
    3.6-4.5 ms of `alexnet_owt`'s step for 64 × 256 × 6 × 6 values). Tracers and compilers see
    ``nn.AdaptiveAvgPool2d``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = self.output_size if isinstance(self.output_size, tuple) else (self.output_size,) * 2
        if all(s is None or s == d for s, d in zip(size, x.shape[-2:])) and not native.tracing():  # None: the input's
            return x
        return super().forward(x)


class Dropout(nn.Dropout):
    """``nn.Dropout`` whose mask on the CPU comes from 16 random bits a value, four from each 64-bit draw, rather than
    ``bernoulli_``: each value kept with probability 1 − p (p rounded to a multiple of 1/65,536: exact for 0.5 and
    0.25, 0.1 drops 0.100006 of them), scaled by 1/(1 − p). torch's CPU ``bernoulli_`` draws each value through a
    generic sampler and ``rand`` one 32-bit number a value: on 2 cores of an Intel Xeon, fc6's dropout (64 × 9,216,
    bf16) took 6.5 ms forward and backward with the first, its forward 2.3 ms with the second and 1.05 this way.
    Elsewhere (CUDA's fused kernel, tracers, compilers, p = 1) it is ``nn.Dropout``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not 0 < self.p < 1 or x.device.type != "cpu" or self.inplace or native.tracing():
            return super().forward(x)
        n = x.numel()
        # int64 draws over their whole range, read as int16s uniform on [−32,768, 32,767]: kept from the threshold up
        bits = torch.empty(-(-n // 4), dtype=torch.int64, device=x.device).random_(-(2**63), None)
        keep = bits.view(torch.int16)[:n].view(x.shape) >= round(self.p * 65536) - 32768
        return x * keep * (1 / (1 - self.p))


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    # What the convolution computes in: autocast's dtype where it is on, else the input's.
    return torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype


@functools.cache
def _bf16_products() -> bool:
    # AMX's bf16 tiles or AVX512-BF16's dot products: where space-to-depth was measured faster. Elsewhere bf16 is
    # converted to fp32 for the products, unmeasured.
    return native.bf16_products()


_STANDARD = {
    AdaptiveAvgPool2d: nn.AdaptiveAvgPool2d,
    Conv2d: nn.Conv2d,
    StemConv2d: nn.Conv2d,
    Linear: nn.Linear,
    Dropout: nn.Dropout,
    Features: nn.Sequential,
    Stack: nn.Sequential,
}


def fused_kernels(model: nn.Module, training: bool, bf16: bool = False) -> list[Callable[[], Any]]:
    """The fused CPU kernels ``model``'s `Stack` containers would ask for on their first step (each kernel module's
    ``kernel`` function), for `alexnet.native.prepare` to build side by side: ReLU → max-pool's where a stack
    max-pools, the LRN's where it normalises so, and in ``training`` batch norm → ReLU's and, in ``bf16`` on a CPU
    with native bf16 products, conv1's space-to-depth blocks (`StemConv2d`); in bf16 inference on a CPU with
    AVX512-BF16 and no AMX, the batch-1 fc kernel (`gemv`)."""
    kinds = {type(m) for stack in model.modules() if isinstance(stack, Stack) for m in stack}
    stem = any(isinstance(m, StemConv2d) for m in model.modules())
    wanted = (
        (nn.MaxPool2d in kinds, fused_pool.kernel),
        (LocalResponseNorm in kinds, fused_lrn.kernel),
        (training and bool(kinds & {nn.BatchNorm1d, nn.BatchNorm2d}), fused_bn.kernel),
        (training and bf16 and stem and _bf16_products(), fused_stem.kernel),
        (
            not training and bf16 and any(isinstance(m, Linear) for m in model.modules()) and gemv.cpu_fits(),
            gemv.kernel,
        ),
    )
    return [kernel for used, kernel in wanted if used]


def matmul_weights_to(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """``model`` with the weights and biases of its convolutions and fc layers in ``dtype``, in place; the rest
    (batch norm) stays as it was. For inference under autocast to ``dtype``, which otherwise casts every such weight
    on every call (fc6's 151 MB of fp32 into 75 MB of bf16 per image at batch 1): autocast rounds a weight as
    ``Tensor.to`` does and leaves one already in ``dtype`` as it is, so the outputs are the same bit for bit."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            m.to(dtype)  # its own weight and bias: these modules have no children
    return model


@contextlib.contextmanager
def standard_modules(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` with torch's own modules while the block runs (the same objects, weights untouched): `Conv2d` and
    `StemConv2d` as ``nn.Conv2d``, `Linear` as ``nn.Linear``, `Dropout` as ``nn.Dropout``, `Features` and `Stack` as
    ``nn.Sequential``, ReLU in place as torchvision has it. For what traces it into a program (``torch.export``, the
    int8 quantizer, ONNX, TorchScript): their graphs are then the standard ones. The int8 quantizer (torchao's
    X86InductorQuantizer) picks layers by module type: given `StemConv2d` it left conv1 in fp32, and ``alexnet_owt``'s
    batch-64 program ran at 955-1,511 img/s instead of 1,500-2,650 (2 cores of an Intel Xeon with AMX, before
    `alexnet.artifacts.aoti_cpu` aligned its weights)."""
    changed: list[tuple[nn.Module, type]] = []
    relus: list[nn.ReLU] = []
    for m in model.modules():
        if type(m) in _STANDARD:
            changed.append((m, type(m)))
            m.__class__ = _STANDARD[type(m)]  # torch's class they extend: no state of their own to drop
        elif type(m) is nn.ReLU and not m.inplace:
            relus.append(m)
            m.inplace = True
    try:
        yield model
    finally:
        for m, cls in changed:
            m.__class__ = cls
        for m in relus:
            m.inplace = False
