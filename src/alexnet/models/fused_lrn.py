"""A fused kernel for `alexnet.models.layers.LocalResponseNorm`: one pass over each pixel's channels forward and one
backward (``csrc/lrn.cpp`` on the CPU, `alexnet.models.lrn_triton` on CUDA), instead of the reference formula's dozen
elementwise passes. The backward recomputes the denominators from the saved input rather than keeping them: smaller,
and on the CPU faster too.

On a 2-core AMD EPYC (bf16, batch 128, 32 px) it trains ``alexnet_small`` at half width with LRN at 2,439 img/s
against 1,254 with the reference formula (1.9×; 3,893 without LRN), and at full width 1,219 against 676; conv1's LRN
in ``alexnet_paper`` (batch 128, 96 × 55 × 55) takes 14 ms forward and 25 backward (the formula: 110 and 375).

The CPU kernel is compiled on first use (about 25 s, by `alexnet.native`, for this CPU) and cached. Where it cannot be
built (or Triton is missing on a GPU),
or with ``ALEXNET_FUSED_LRN=0``, the reference formula runs: it is also the tests' oracle.

The kernels are registered with ``torch.library`` as the operators ``alexnet::lrn`` and ``alexnet::lrn_backward``
(CPU and CUDA implementations, fake implementations for shapes, an autograd formula), so eager mode and
``torch.compile`` run the same one op (a compiled graph holds it as one node, without a graph break).
``torch.export``, TorchScript and ONNX trace the reference formula instead: the programs they write then run without
alexnet installed. On the CPU, ``alexnet::relu_lrn`` runs the ReLU before the LRN in the same pass, forward and
backward (`alexnet.models.layers.Stack` calls it in training), and for inference ``alexnet::lrn_pool`` runs a ReLU, the
LRN and the max-pool after it in one pass (`alexnet.models.layers.Features` calls it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .. import native
from . import lrn_triton

_SOURCE = Path(__file__).parent / "csrc" / "lrn.cpp"


def kernel() -> Any | None:
    """The compiled extension (``forward``, ``backward``), built on first call; None where it cannot be built or is
    turned off (``ALEXNET_FUSED_LRN=0``)."""
    return native.load("alexnet_lrn", _SOURCE, instead="the reference formula", switch="ALEXNET_FUSED_LRN")


def usable(x: torch.Tensor, size: int) -> bool:
    """Whether ``x`` can take the fused kernel here, for a window of ``size`` channels (odd, as the kernels' windows
    are symmetric; an even one takes the reference formula): a float or bf16 tensor on the CPU (the C++ kernel) or on
    a CUDA GPU (the Triton one, `alexnet.models.lrn_triton`), in eager mode or under ``torch.compile`` (which sees the
    ``alexnet::lrn`` operator); tracers that write a portable program (``torch.export``, TorchScript, ONNX) see the
    reference formula instead, so their files need no alexnet to run."""
    if torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_exporting() or size % 2 == 0:
        return False
    if x.device.type == "cpu":
        return x.dtype in (torch.float32, torch.bfloat16) and _built()
    if x.device.type == "cuda":
        return x.dtype in (torch.float32, torch.bfloat16, torch.float16) and _triton()
    return False


@native.compile_constant
def _built() -> bool:
    # One answer per process (building takes seconds and may fail): a constant to torch.compile, not a graph break.
    return kernel() is not None


@native.compile_constant
def _triton() -> bool:
    return native.enabled("ALEXNET_FUSED_LRN") and lrn_triton.available()


def _layout(x: torch.Tensor) -> torch.memory_format:
    # The CPU kernel works on rows of channels and writes channels last; the Triton kernels keep x's layout.
    return lrn_triton.memory_format(x) if x.device.type == "cuda" else torch.channels_last


@torch.library.custom_op("alexnet::lrn", mutates_args=(), device_types="cpu")
def lrn(x: torch.Tensor, size: int, a: float, beta: float, k: float, groups: int) -> torch.Tensor:
    """y = x · (k + a Σ_window x²)^(-β) per channel group; (B, C, H, W) in, channels last out."""
    return kernel().forward(x, size, a, beta, k, groups, False)


@lrn.register_kernel("cuda")
def _(x: torch.Tensor, size: int, a: float, beta: float, k: float, groups: int) -> torch.Tensor:
    return lrn_triton.forward(x, size, a, beta, k, groups)


@lrn.register_fake
def _(x: torch.Tensor, size: int, a: float, beta: float, k: float, groups: int) -> torch.Tensor:
    return torch.empty_like(x, memory_format=_layout(x))


@torch.library.custom_op("alexnet::lrn_backward", mutates_args=(), device_types="cpu")
def lrn_backward(
    grad: torch.Tensor, x: torch.Tensor, size: int, a: float, beta: float, k: float, groups: int
) -> torch.Tensor:
    """The gradient of `lrn` with respect to ``x``, in one pass that recomputes the denominators from ``x``."""
    return kernel().backward(grad, x, size, a, beta, k, groups, False)


@lrn_backward.register_kernel("cuda")
def _(grad: torch.Tensor, x: torch.Tensor, size: int, a: float, beta: float, k: float, groups: int) -> torch.Tensor:
    return lrn_triton.backward(grad, x, size, a, beta, k, groups)


@lrn_backward.register_fake
def _(grad: torch.Tensor, x: torch.Tensor, size: int, a: float, beta: float, k: float, groups: int) -> torch.Tensor:
    return torch.empty_like(x, memory_format=_layout(x))


def _setup_context(ctx: Any, inputs: tuple, output: torch.Tensor) -> None:
    x, *settings = inputs
    ctx.save_for_backward(x)  # the input alone: the backward recomputes the denominators, nothing else is kept
    ctx.settings = settings


def _backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
    (x,) = ctx.saved_tensors
    return lrn_backward(grad, x, *ctx.settings), None, None, None, None, None


lrn.register_autograd(_backward, setup_context=_setup_context)


@torch.library.custom_op("alexnet::relu_lrn", mutates_args=(), device_types="cpu")
def relu_lrn(x: torch.Tensor, size: int, a: float, beta: float, k: float, groups: int) -> torch.Tensor:
    """`lrn` of ``relu(x)`` in the same pass; its backward masks where x <= 0, as the ReLU's does. The ReLU's own
    passes over the map (its output written and kept, its backward's read of both) are saved: on the CPU, where
    `alexnet.models.layers.Stack` calls it in training for the paper's conv1 and conv2 stages."""
    return kernel().forward(x, size, a, beta, k, groups, True)


@relu_lrn.register_fake
def _(x: torch.Tensor, size: int, a: float, beta: float, k: float, groups: int) -> torch.Tensor:
    return torch.empty_like(x, memory_format=torch.channels_last)


@torch.library.custom_op("alexnet::relu_lrn_backward", mutates_args=(), device_types="cpu")
def relu_lrn_backward(
    grad: torch.Tensor, x: torch.Tensor, size: int, a: float, beta: float, k: float, groups: int
) -> torch.Tensor:
    """The gradient of `relu_lrn` with respect to ``x``."""
    return kernel().backward(grad, x, size, a, beta, k, groups, True)


@relu_lrn_backward.register_fake
def _(grad: torch.Tensor, x: torch.Tensor, size: int, a: float, beta: float, k: float, groups: int) -> torch.Tensor:
    return torch.empty_like(x, memory_format=torch.channels_last)


def _relu_backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
    (x,) = ctx.saved_tensors
    return relu_lrn_backward(grad, x, *ctx.settings), None, None, None, None, None


relu_lrn.register_autograd(_relu_backward, setup_context=_setup_context)


@torch.library.custom_op("alexnet::lrn_pool", mutates_args=(), device_types="cpu")
def lrn_pool(
    x: torch.Tensor, size: int, a: float, beta: float, k: float, groups: int, relu: bool, kernel_size: int, stride: int
) -> torch.Tensor:
    """Inference only (no autograd formula): ``max_pool2d(lrn(relu(x)), kernel_size, stride)`` in one pass, no
    padding, floor mode; channels last out. Equal to the three layers run apart, in bf16 bit for bit."""
    return kernel().pool_forward(x, size, a, beta, k, groups, relu, kernel_size, stride)


@lrn_pool.register_fake
def _(
    x: torch.Tensor, size: int, a: float, beta: float, k: float, groups: int, relu: bool, kernel_size: int, stride: int
) -> torch.Tensor:
    b, c, h, w = x.shape
    out = (b, c, (h - kernel_size) // stride + 1, (w - kernel_size) // stride + 1)
    return x.new_empty(out).contiguous(memory_format=torch.channels_last)


def fused_lrn(x: torch.Tensor, size: int, a: float, beta: float, k: float, groups: int) -> torch.Tensor:
    """The LRN layer's output through the ``alexnet::lrn`` operator."""
    return lrn(x, size, a, beta, k, groups)
