"""bf16 fc layers on a CPU with AMX, with their operands in the order oneDNN's AMX GEMM is fast in.

oneDNN's bf16 GEMM reads its left operand as it lies and repacks its right one into AMX's tile layout on every call.
torch's ``F.linear`` computes x·Wᵀ, so each call repacks the weight (fc6's: 75 MB) for a batch of rows; computed as
(W·xᵀ)ᵀ it repacks the activations instead (fc6's input at batch 64: 1.2 MB). On 2 cores of an Intel Xeon with AMX
(bf16, the kernels alone) fc6's forward at batch 64 took 3.9 ms as x·Wᵀ and 2.7 as (W·xᵀ)ᵀ; for fc6, fc7 and fc8,
1.4-2.0× faster at batch 2-256 and 1.1-1.2× at 512-1024. With a batch over a quarter of the outputs (fc8's 1,000 at
batch 512: 0.73×) x·Wᵀ was faster: there ``F.linear``'s order stays. At batch 1 both orders ran alike, and torch's
matrix-vector product (``addmv``), which reads the weight once as it lies, at the memory's pace: fc6 2.17 → 1.36 ms
(75 MB at 55 GB/s), fc7 1.12 → 0.65, fc8 0.26 → 0.19.

In training, autograd computes the weight gradient gᵀ·x with gᵀ a transposed view of the output's gradient, which
oneDNN takes on a slow path: fc6's took 17.6 ms of the step, 3.9 from a contiguous gᵀ (a 0.5 MB copy; the kernels
alone, 1.3-2.3× at batch 2-512). The input gradient g·W stays as autograd computes it (as W·gᵀ the weight would be
the transposed operand: slower).

Both only for weights of 4 M values or more (AlexNet's fc6-fc8 at 224 px): the small variants' fc layers (1-2 M)
measured alike or slower (a contiguous gᵀ: 0.66-0.94× for 1,024 × 1,024 at batch 64-512). Used only on AMX, and
only in bf16: on 2 cores of an AMD EPYC with AVX512-BF16 and no AMX (the kernels alone, medians of 5 interleaved
rounds) neither order won (batch 64: fc6 14.0 → 11.9 ms, fc7 6.2 → 7.0, fc8 1.38 → 1.28), a contiguous gᵀ was slower
(fc6's weight gradient 36.5 → 38.7 ms, fc7's 16.2 → 18.1) and so was ``addmv`` at batch 1 (fc7 1.9 → 3.4 ms, fc8
0.24 → 0.63). Tracers and compilers see ``nn.Linear``; ``ALEXNET_AMX_FC=0`` turns it off.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from .. import native

MIN_WEIGHTS = 4_000_000  # fc8's 4,096,000 and up


def usable(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> bool:
    """Whether ``x`` (N, in) times ``weight`` (out, in) plus ``bias`` runs here: bf16 on a CPU with AMX (under
    autocast, or every operand bf16), a weight of `MIN_WEIGHTS` or more, shapes matching, no tracer or
    compiler."""
    if native.tracing():
        return False
    autocast = torch.is_autocast_enabled("cpu")
    dtype = torch.get_autocast_dtype("cpu") if autocast else x.dtype
    return (
        x.device.type == weight.device.type == "cpu"
        and dtype == torch.bfloat16
        # Outside autocast torch's dtype errors stand: no operand is cast here that F.linear would refuse.
        and (autocast or all(t.dtype == dtype for t in (weight, bias) if t is not None))
        and x.dim() == 2
        and x.shape[0] > 0
        and x.shape[1] == weight.shape[1]
        and weight.numel() >= MIN_WEIGHTS
        and (bias is None or bias.shape == weight.shape[:1])
        and native.enabled("ALEXNET_AMX_FC")
        and amx()
    )


@functools.cache
def amx() -> bool:
    """AMX's bf16 tiles (/proc/cpuinfo's amx_bf16), where the order above was measured faster."""
    return "amx_bf16" in native.cpu_flags()


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` in bf16 as autocast computes it (each operand cast to bf16, the gradient of a
    cast flowing back to its fp32 tensor), the products in the order above. Where `usable`."""
    bf16 = torch.bfloat16
    b = None if bias is None else bias.to(bf16)
    return _Linear.apply(x.to(bf16), weight.to(bf16), b)


class _Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        if x.shape[0] == 1:  # a matrix-vector product: torch's own kernel reads the weight once, as it lies
            y = torch.mv(weight, x[0]) if bias is None else torch.addmv(bias, weight, x[0])
            return y.unsqueeze(0)
        if x.shape[0] > weight.shape[0] // 4:
            return torch.nn.functional.linear(x, weight, bias)
        # (out, in) × (in, N) → (out, N), made (N, out) contiguous (a small copy) for the layers after it.
        if bias is None:
            y = torch.mm(weight, x.t())
        else:
            y = torch.addmm(bias.unsqueeze(1), weight, x.t())
        return y.t().contiguous()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        needs_x, needs_w, needs_b = ctx.needs_input_grad
        grad_x = grad @ weight if needs_x else None  # (N, out) × (out, in)
        grad_w = grad.t().contiguous() @ x if needs_w else None  # (out, N) × (N, in), gᵀ laid out for oneDNN
        grad_b = grad.sum(0) if needs_b and ctx.has_bias else None
        return grad_x, grad_w, grad_b
