"""fp32 fc layers through oneDNN's inner product on AMD CPUs, where MKL's sgemm (which torch calls for an fp32
``addmm``) takes a slower path: on 2 cores of an AMD EPYC (Zen 2, AVX2) MKL ran fc6 (batch 64, 9,216 → 4,096) at
~55 GFLOP/s, oneDNN at ~120 (86 → 38 ms; fc7 40 → 18, fc8 6.7 → 4.9; at batch 1, fc6 9.5 → 4.6 ms). The weight
gradient goes through oneDNN too (fc6 90 → 81 ms); the input gradient stays with torch's ``mm`` (MKL was as fast or
faster there).

Registered with ``torch.library`` as ``alexnet::linear`` (a fake implementation for shapes, an autograd formula), so
eager mode and ``torch.compile`` run the same op: inductor's own lowering of oneDNN's inner product takes only frozen
weights, and without this a compiled model's fc layers went back to MKL. ``torch.export``, TorchScript and ONNX see
``nn.Linear``: the programs they write run without alexnet installed.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from .. import native


def usable(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> bool:
    """Whether ``x`` (N, in) times ``weight`` (out, in), plus ``bias`` (out), takes oneDNN's inner product: fp32 on
    an AMD CPU, outside autocast (whose bf16 product goes to oneDNN already), none of them empty, their shapes
    matching, not while a program is traced for a file, and unless ``ALEXNET_ONEDNN_FC=0``."""
    if torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_exporting():
        return False
    return (
        x.device.type == "cpu"
        and x.dtype == weight.dtype == torch.float32
        and x.dim() == 2
        and x.numel() > 0  # oneDNN makes no product over an empty batch (the weight gradient's inner dimension)
        and weight.numel() > 0
        # Else torch's own shape error, not oneDNN's "could not create a primitive descriptor".
        and x.shape[1] == weight.shape[1]
        and (bias is None or bias.shape == weight.shape[:1])
        and not torch.is_autocast_enabled("cpu")
        and _wanted()
    )


@native.compile_constant
def _wanted() -> bool:
    # Read on each eager call (the tests turn it off and on); a constant to torch.compile, not a graph break.
    return native.enabled("ALEXNET_ONEDNN_FC") and mkl_slow()


@functools.cache
def mkl_slow() -> bool:
    """An AMD CPU, where MKL's fp32 GEMMs were measured at half oneDNN's rate, and a torch with oneDNN's op."""
    amd = native.cpu_vendor() == "AuthenticAMD"
    return amd and hasattr(torch.ops.mkldnn, "_linear_pointwise") and torch.backends.mkldnn.is_available()


def _inner_product(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    # (N, in) × (out, in)ᵀ → (N, out): oneDNN's fp32 inner product (what inductor calls for a frozen linear layer).
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


@torch.library.custom_op("alexnet::linear", mutates_args=(), device_types="cpu")
def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` for a 2-D fp32 ``x``, by oneDNN."""
    return _inner_product(x, weight, bias)


@linear.register_fake
def _(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return x.new_empty((x.shape[0], weight.shape[0]))


def _setup_context(ctx: Any, inputs: tuple, output: torch.Tensor) -> None:
    x, weight, bias = inputs
    ctx.save_for_backward(x, weight)
    ctx.has_bias = bias is not None


def _backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
    x, weight = ctx.saved_tensors
    needs_x, needs_w, needs_b = ctx.needs_input_grad
    grad_x = grad @ weight if needs_x else None  # (N, out) × (out, in)
    grad_w = linear(grad.t(), x.t(), None) if needs_w else None  # (out, N) × (in, N)ᵀ → (out, in)
    grad_b = grad.sum(0) if needs_b and ctx.has_bias else None
    return grad_x, grad_w, grad_b


linear.register_autograd(_backward, setup_context=_setup_context)
