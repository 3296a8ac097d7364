"""An exponential moving average of the weights, with timm's ``ModelEmaV3`` semantics.

After every optimizer step each floating-point entry of the model's state (parameters and buffers such as batch norm's
running statistics) moves toward the live value: ``ema ← ema + (1 − d)·(live − ema)``; integer buffers are copied.
With warm-up the decay grows with the step count, ``d = 1 − (1 + step / γ)^(−p)`` (γ = 1, p = 2/3, @crowsonkb's
schedule), capped at ``decay``, so early averages are not dominated by the random initialisation.

The average is validated beside the live weights each epoch (``ema_val_*`` in metrics.csv), written as
``ema.safetensors``, and saved in every checkpoint so a resumed run continues it bitwise.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


class WeightEma:
    """The moving average of ``model``'s state, kept in its own copy of the network (``module``)."""

    def __init__(
        self,
        model: nn.Module,
        decay: float,
        warmup: bool = False,
        warmup_gamma: float = 1.0,
        warmup_power: float = 2 / 3,
        min_decay: float = 0.0,
    ) -> None:
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay, self.warmup, self.min_decay = decay, warmup, min_decay
        self.warmup_gamma, self.warmup_power = warmup_gamma, warmup_power
        self.step = 0  # optimizer steps averaged so far

    def decay_at(self, step: int) -> float:
        """The decay applied at update number ``step`` (0-based)."""
        if not self.warmup:
            return self.decay
        d = 1 - (1 + step / self.warmup_gamma) ** -self.warmup_power
        return max(min(d, self.decay), self.min_decay)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Average in ``model``'s current state (call after each optimizer step)."""
        weight = 1 - self.decay_at(self.step)
        live = model.state_dict()
        for name, ema in self.module.state_dict().items():
            value = live[name].detach()
            if ema.is_floating_point():
                ema.lerp_(value.to(ema.dtype), weight)
            else:
                ema.copy_(value)
        self.step += 1

    def state_dict(self) -> dict[str, Any]:
        """The average and its step count, for checkpoints (tensors on the CPU)."""
        return {"step": self.step, "model": {k: v.detach().cpu() for k, v in self.module.state_dict().items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["model"])
        self.step = int(state["step"])
