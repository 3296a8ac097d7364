"""Looking inside a model: its first layer's kernels, as the paper's Figure 3 shows them."""

from __future__ import annotations

import torch
from torch import nn


def conv1_weight(model: nn.Module) -> torch.Tensor:
    """The first convolution's kernels, (out, in, k, k) fp32 on the CPU."""
    conv1 = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    return conv1.weight.detach().float().cpu()


def scaled_kernels(w: torch.Tensor) -> torch.Tensor:
    """Each kernel of (out, in, k, k) ``w`` min-max scaled to [0, 1] on its own, as the paper shows them."""
    lo, hi = w.amin((1, 2, 3), keepdim=True), w.amax((1, 2, 3), keepdim=True)
    return (w - lo) / (hi - lo).clamp_min(1e-8)
