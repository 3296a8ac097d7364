"""conv1's input rearranged for `alexnet.models.layers.StemConv2d`'s space-to-depth convolution in one CPU pass
(``csrc/stem.cpp``): each s × s block of pixels, zero-padded, becomes one pixel of s²·C bf16 channels.

torch's ops took two passes for it (the cast into a zero-filled padded copy, then a 6-D permute): on 2 cores of an
Intel Xeon with AMX, ``alexnet_owt``'s batch of 64 at 224 px took 4.0-4.3 ms so, 1.8-1.9 this way; the values are
the same, bit for bit. Images need no gradient, so there is no backward: an input that requires one (an attribution
method, an adversarial attack) goes through torch's ops. Compiled on first use (`alexnet.native`); where it cannot
be, or with ``ALEXNET_FUSED_STEM=0``, torch's ops run, with one warning.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .. import native

_SOURCE = Path(__file__).parent / "csrc" / "stem.cpp"


def kernel() -> Any | None:
    """The compiled extension (``space_to_depth``), built on first call; None where it cannot be built or is turned
    off (``ALEXNET_FUSED_STEM=0``)."""
    return native.load("alexnet_stem", _SOURCE, instead="torch's ops for conv1's blocks", switch="ALEXNET_FUSED_STEM")


def usable(x: torch.Tensor) -> bool:
    """Whether ``x`` can be rearranged by the kernel: a float or bf16 CPU image batch that needs no gradient."""
    return (
        x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16) and not x.requires_grad
    ) and kernel() is not None


def space_to_depth(x: torch.Tensor, s: int, pad: int, hb: int, wb: int) -> torch.Tensor:
    """(N, C, H, W) → (N, hb, wb, s²·C) bf16: ``y[n, i, j, (u·s + v)·C + c] = x[n, c, i·s + u − pad, j·s + v − pad]``,
    0 outside the image."""
    return kernel().space_to_depth(x, s, pad, hb, wb)
