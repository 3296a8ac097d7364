"""A max-pool, and the ReLU before it, as one CPU kernel (``csrc/relu_pool.cpp``), forward and backward, for
channels-last maps (as the library trains on the CPU).

torch runs the ReLU and the pool and their backwards as four passes over the map and keeps for the backward the
ReLU's whole output and the pool's int64 indices; the kernel reads the map once forward, writing the pooled map and a
byte a pooled value (where in its window the maximum was), and its backward reads the pooled gradient and those bytes
and writes the map's gradient once. Outputs are torch's bit for bit (a max picks a value), gradients equal up to the
order of float sums (torch's order, where overlapping windows add).

Registered with ``torch.library`` as ``alexnet::relu_max_pool`` (and its backward), with fake implementations and an
autograd formula; for inference ``alexnet::relu_max_pool_values`` writes the pooled map alone. ``torch.compile``,
``torch.export``, TorchScript and ONNX see the layers apart (`usable` is False under them: the programs they write need
no alexnet); so do other devices and ``ALEXNET_FUSED_POOL=0``. The kernel is compiled on first use (`alexnet.native`);
where it cannot be, the layers run apart, with one warning.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .. import native

_SOURCE = Path(__file__).parent / "csrc" / "relu_pool.cpp"


def kernel() -> Any | None:
    """The compiled extension (``forward``, ``backward``), built on first call; None where it cannot be built or is
    turned off (``ALEXNET_FUSED_POOL=0``)."""
    return native.load("alexnet_relu_pool", _SOURCE, instead="ReLU and max-pool apart", switch="ALEXNET_FUSED_POOL")


def usable(x: torch.Tensor, kernel_size: int, padding: int) -> bool:
    """Whether a max-pool of window ``kernel_size`` can run through the kernel on ``x``: a float or bf16 channels-last
    CPU map at least the window's size when padded, no tracer or compiler."""
    if torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling():
        return False
    return (
        x.device.type == "cpu"
        and x.dtype in (torch.float32, torch.bfloat16)
        and x.dim() == 4
        and x.is_contiguous(memory_format=torch.channels_last)
        and min(x.shape[-2:]) + 2 * padding >= kernel_size
        and 0 <= 2 * padding <= kernel_size  # else torch's own error
        and kernel_size <= 15  # a window's positions in a byte, 255 kept for "no gradient"
        and x.numel() > 0
        and kernel() is not None
    )


def _pooled(x: torch.Tensor, k: int, s: int, p: int) -> torch.Tensor:
    b, c, h, w = x.shape
    size = (b, c, (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1)
    return x.new_empty(size).contiguous(memory_format=torch.channels_last)


@torch.library.custom_op("alexnet::relu_max_pool", mutates_args=(), device_types="cpu")
def relu_max_pool(
    x: torch.Tensor, kernel_size: int, stride: int, padding: int, relu: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """(max_pool2d(relu(x)) or max_pool2d(x), each pooled value's position in its window as uint8, 255 where no
    gradient flows back), channels last; a square window, floor mode."""
    y, argmax = kernel().forward(x, kernel_size, stride, padding, relu)
    return y, argmax


@relu_max_pool.register_fake
def _(x: torch.Tensor, kernel_size: int, stride: int, padding: int, relu: bool):
    y = _pooled(x, kernel_size, stride, padding)
    return y, torch.empty_like(y, dtype=torch.uint8)


@torch.library.custom_op("alexnet::relu_max_pool_values", mutates_args=(), device_types="cpu")
def relu_max_pool_values(x: torch.Tensor, kernel_size: int, stride: int, padding: int, relu: bool) -> torch.Tensor:
    """`relu_max_pool`'s pooled map alone, for inference (no gradient): without the argmax to keep, the running max
    is one instruction a value (AVX-512)."""
    return kernel().values(x, kernel_size, stride, padding, relu)


@relu_max_pool_values.register_fake
def _(x: torch.Tensor, kernel_size: int, stride: int, padding: int, relu: bool):
    return _pooled(x, kernel_size, stride, padding)


@torch.library.custom_op("alexnet::relu_max_pool_backward", mutates_args=(), device_types="cpu")
def relu_max_pool_backward(
    grad: torch.Tensor, argmax: torch.Tensor, height: int, width: int, kernel_size: int, stride: int, padding: int
) -> torch.Tensor:
    """The gradient with respect to `relu_max_pool`'s input, (N, C, height, width)."""
    return kernel().backward(grad, argmax, height, width, kernel_size, stride, padding)


@relu_max_pool_backward.register_fake
def _(grad, argmax, height, width, kernel_size, stride, padding):
    b, c = grad.shape[:2]
    return grad.new_empty((b, c, height, width)).contiguous(memory_format=torch.channels_last)


def _setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
    x, ctx.kernel_size, ctx.stride, ctx.padding, _ = inputs
    ctx.size = x.shape[-2:]
    ctx.save_for_backward(output[1])  # the argmax alone: a byte a pooled value, not the map
    ctx.mark_non_differentiable(output[1])


def _backward(ctx: Any, grad: torch.Tensor, _argmax: Any) -> tuple[torch.Tensor | None, ...]:
    (argmax,) = ctx.saved_tensors
    gx = relu_max_pool_backward(grad, argmax, *ctx.size, ctx.kernel_size, ctx.stride, ctx.padding)
    return gx, None, None, None, None


relu_max_pool.register_autograd(_backward, setup_context=_setup_context)
