"""bf16 fc layers at batch 1 at the pace their weights can be read, on CPUs with AVX512-BF16 and no AMX
(``csrc/gemv.cpp``).

One image through an fc layer is a matrix-vector product: every weight is read once and used once, so the layer
takes as long as reading its weight. On 2 cores of an AMD EPYC (Zen 4) oneDNN's product for one row read fc6's 75 MB
bf16 weight at ~20 GB/s where a plain sum over it ran at ~39; torch's ``mv`` was no faster. The kernel reads four
weight rows at a time as they lie and multiplies them with AVX512-BF16's pair dot products into fp32 sums, rounded to
bf16 once: the kernels alone, fc6 5.1 → 2.9 ms, fc7 1.6 → 0.8, fc8 0.23 → 0.06 (its 8 MB from cache), within bf16
rounding of ``F.linear``. On a CPU with AMX `amx_fc` runs batch 1 through torch's ``mv`` at ~55 GB/s, so this is
for CPUs without it (measured there only). Inference only (no weight or input that needs a gradient), bf16 weights
and input, as `alexnet.Predictor` runs them; tracers and compilers see ``F.linear`` (``torch.compile`` packs the
weights itself); ``ALEXNET_GEMV=0`` turns it off.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch

from .. import native

_SOURCE = Path(__file__).parent / "csrc" / "gemv.cpp"


def kernel() -> Any | None:
    """The compiled extension (``gemv``), built on first call; None where it cannot be built, lacks AVX512-BF16, or
    is turned off (``ALEXNET_GEMV=0``)."""
    module = native.load("alexnet_gemv", _SOURCE, instead="oneDNN's matrix product", switch="ALEXNET_GEMV")
    return module if module is not None and module.available() else None


def usable(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> bool:
    """Whether ``x`` (1, in) times ``weight`` (out, in) plus ``bias`` runs here: one row, every operand a bf16 CPU
    tensor (a contiguous weight), no gradient wanted, no tracer or compiler, a CPU with AVX512-BF16 and no AMX."""
    if native.tracing():
        return False
    operands = [t for t in (x, weight, bias) if t is not None]
    return (
        x.dim() == 2
        and x.shape[0] == 1
        and x.shape[1] == weight.shape[1] > 0
        and weight.shape[0] > 0
        and (bias is None or bias.shape == weight.shape[:1])
        and all(t.device.type == "cpu" and t.dtype == torch.bfloat16 for t in operands)
        and weight.is_contiguous()
        and not (torch.is_grad_enabled() and any(t.requires_grad for t in operands))
        and (not torch.is_autocast_enabled("cpu") or torch.get_autocast_dtype("cpu") == torch.bfloat16)
        and wanted()
    )


def wanted() -> bool:
    """AVX512-BF16 without AMX, the kernel built, and not turned off (read per call: the tests turn it off)."""
    return native.enabled("ALEXNET_GEMV") and cpu_fits() and kernel() is not None


@functools.cache
def cpu_fits() -> bool:
    """AVX512-BF16 without AMX (/proc/cpuinfo's avx512_bf16, amx_bf16): where the kernel was measured."""
    flags = native.cpu_flags()
    return "avx512_bf16" in flags and "amx_bf16" not in flags


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` for one row: (1, out) bf16. Where `usable`."""
    return kernel().gemv(weight, x[0], bias).unsqueeze(0)
