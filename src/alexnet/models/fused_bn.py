"""Batch norm in training mode and the ReLU after it as one CPU kernel (``csrc/bn_relu.cpp``), forward and backward,
for maps whose channels are contiguous (channels last, as the library trains on the CPU, or the fc layers' (N, C)).

torch runs the batch norm, the ReLU and their backwards as separate passes over the map, and its bf16 channels-last
batch norm well below memory speed: on 2 cores of an Intel Xeon with AMX, ``alexnet_cifar``'s training step at batch
256 (32 px) took 191 ms with them and 174 fused, 1.10x (these kernels about 31 ms of it). The running statistics are
updated as ``nn.BatchNorm2d`` updates them (momentum, or the cumulative average with ``momentum=None``; the unbiased
variance).

Registered with ``torch.library`` as ``alexnet::batch_norm_relu`` (and its backward), with fake implementations and
an autograd formula. ``torch.compile``, ``torch.export``, TorchScript and ONNX see the layers apart (`usable` is False
under them: the programs they write need no alexnet); so do other devices, eval mode, and ``ALEXNET_FUSED_BN=0``.
The kernel is compiled on first use (`alexnet.native`); where it cannot be, the layers run apart, with one warning.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import native

_SOURCE = Path(__file__).parent / "csrc" / "bn_relu.cpp"


def kernel() -> Any | None:
    """The compiled extension (``forward``, ``backward``), built on first call; None where it cannot be built or is
    turned off (``ALEXNET_FUSED_BN=0``)."""
    return native.load("alexnet_bn_relu", _SOURCE, instead="batch norm and ReLU apart", switch="ALEXNET_FUSED_BN")


def usable(x: torch.Tensor, bn: nn.Module) -> bool:
    """Whether ``bn`` (a batch norm followed by a ReLU) can run through the fused kernel on ``x``: training mode with
    an affine transform, a float or bf16 CPU tensor with its channels contiguous and more than one value a channel,
    no tracer or compiler."""
    if torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling():
        return False
    # These two types only: SyncBatchNorm (distributed training) takes its statistics over every process's batch.
    if not (type(bn) in (nn.BatchNorm1d, nn.BatchNorm2d) and bn.training and bn.affine):
        return False
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.bfloat16):
        return False
    if x.dim() == 4:
        contiguous = x.is_contiguous(memory_format=torch.channels_last)
    else:
        contiguous = x.dim() == 2 and x.is_contiguous()
    return contiguous and x.numel() > x.size(1) and kernel() is not None


def batch_norm_relu_layer(x: torch.Tensor, bn: nn.modules.batchnorm._BatchNorm) -> torch.Tensor:
    """``relu(bn(x))`` in training mode through the fused kernel, updating ``bn``'s running statistics as the layer
    does."""
    y, mean, var = batch_norm_relu(x, bn.weight, bn.bias, bn.eps)
    if bn.track_running_stats and bn.running_mean is not None:
        with torch.no_grad():
            bn.num_batches_tracked.add_(1)
            factor = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
            n = x.numel() // x.size(1)
            bn.running_mean.lerp_(mean.to(bn.running_mean.dtype), factor)
            bn.running_var.lerp_((var * (n / (n - 1))).to(bn.running_var.dtype), factor)
    return y


def _layout(x: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if x.dim() == 4 else torch.contiguous_format


@torch.library.custom_op("alexnet::batch_norm_relu", mutates_args=(), device_types="cpu")
def batch_norm_relu(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(max(w·(x − μ)/√(σ² + ε) + b, 0), μ, σ²) with the batch's statistics per channel (σ² biased, float)."""
    y, mean, var = kernel().forward(x, weight, bias, eps)
    return y, mean, var


@batch_norm_relu.register_fake
def _(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float):
    stats = x.new_empty(x.size(1), dtype=torch.float32)
    return torch.empty_like(x, memory_format=_layout(x)), stats, torch.empty_like(stats)


@torch.library.custom_op("alexnet::batch_norm_relu_backward", mutates_args=(), device_types="cpu")
def batch_norm_relu_backward(
    grad: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    mean: torch.Tensor,
    var: torch.Tensor,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The gradients of `batch_norm_relu`'s output with respect to x, the weight and the bias."""
    gx, gw, gb = kernel().backward(grad, x, weight, bias, mean, var, eps)
    return gx, gw, gb


@batch_norm_relu_backward.register_fake
def _(grad, x, weight, bias, mean, var, eps):
    return torch.empty_like(x, memory_format=_layout(x)), torch.empty_like(weight), torch.empty_like(bias)


def _setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
    x, weight, bias, eps = inputs
    _, mean, var = output
    ctx.save_for_backward(x, weight, bias, mean, var)  # x alone of the maps: the backward recomputes the mask
    ctx.eps = eps
    ctx.mark_non_differentiable(mean, var)


def _backward(ctx: Any, grad: torch.Tensor, _mean: Any, _var: Any) -> tuple[torch.Tensor | None, ...]:
    x, weight, bias, mean, var = ctx.saved_tensors
    gx, gw, gb = batch_norm_relu_backward(grad, x, weight, bias, mean, var, ctx.eps)
    return gx, gw, gb, None


batch_norm_relu.register_autograd(_backward, setup_context=_setup_context)
