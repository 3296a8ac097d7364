"""bf16 training on the CPU without per-step weight casts: the model keeps its fp32 weights (what checkpoints, the
weight average and every reader see), the forward and backward run on bf16 copies of the convolution and fc weights,
and the optimizer updates both in one pass (``csrc/sgd_bf16.cpp``).

Under autocast each step casts every fp32 weight to bf16 in the forward and every bf16 weight gradient back to fp32
in the backward: for ``alexnet_owt`` (61 M weights, batch 64 bf16, 2 cores of an AMD EPYC) 30-45 ms of a 380-400 ms
step, more than the optimizer's own 12-19 ms. With the copies those casts are gone and the update costs what torch's
fused SGD costs. The arithmetic is the same: a copy is the weight rounded to bf16 as autocast rounds it, the gradient
is the same bf16 gradient, and the update rounds as torch's fused SGD does, so the weights come out bit for bit as
autocast and `alexnet.training.optim.PaperSGD` give them (tested).

It applies where that arithmetic is all there is (`applies`): bf16 on the CPU, SGD, one process, no gradient
accumulation (the copies' gradients would add up in bf16), no clipping, no ``torch.compile``, and a C++ compiler to
build the kernel with (`alexnet.native`); elsewhere training runs as before. ``train.bf16_copies=false`` turns it off.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from .. import native

_SOURCE = Path(__file__).parent / "csrc" / "sgd_bf16.cpp"
# The kernel matches torch's rounding only when the compiler fuses no multiply-add the source does not write.
_FLAGS = ("-ffp-contract=off",)


def kernel() -> Any | None:
    """The compiled update (``step``), built on first call; None where it cannot be built."""
    return native.load("alexnet_sgd_bf16", _SOURCE, _FLAGS, instead="autocast's per-step casts")


def applies(
    device: torch.device,
    precision: str,
    *,
    accumulate: int = 1,
    clip: float | None = None,
    compile: bool = False,
    distributed: bool = False,
) -> bool:
    """Whether an SGD run with these settings trains on bf16 copies (builds the kernel to know)."""
    plain = accumulate == 1 and not clip and not compile and not distributed
    return device.type == "cpu" and precision == "bf16" and plain and kernel() is not None


class Bf16Copies(nn.Module):
    """``module`` run on bf16 copies of its ``nn.Conv2d`` and ``nn.Linear`` parameters; the rest (batch norm) stays
    fp32, as autocast leaves it. A copy whose fp32 weight was changed in place since it was made (a checkpoint loaded,
    a weight edited) is made again before the next forward."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module
        # By parameter name: the fp32 weight, its bf16 copy, and the weight's version when the copy was made. The
        # copies are not registered: the wrapper's parameters and state are the module's own.
        self._weights: dict[str, nn.Parameter] = {}
        self._copies: dict[str, torch.Tensor] = {}
        self._versions: dict[str, int] = {}
        for prefix, layer in module.named_modules():
            if isinstance(layer, (nn.Conv2d, nn.Linear)):
                for name, p in layer.named_parameters(prefix=prefix, recurse=False):
                    # torch's fused SGD rounds the last numel mod 16 values of a tensor in a scalar loop whose
                    # multiply-adds its compiler chose; such tensors (small biases, in practice) keep autocast's cast
                    # and torch's step, so every weight stays equal to what autocast training gives.
                    if p.dtype == torch.float32 and p.numel() % 16 == 0:
                        self._weights[name] = p
                        copy = p.detach().to(torch.bfloat16)  # with p's strides
                        self._copies[name] = copy.requires_grad_(p.requires_grad)
                        self._versions[name] = p._version

    def copies(self) -> dict[nn.Parameter, torch.Tensor]:
        """Each fp32 weight's bf16 copy, for the optimizer (`alexnet.training.optim.PaperSGD.use_copies`)."""
        return {self._weights[name]: copy for name, copy in self._copies.items()}

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        self._refresh()
        return functional_call(self.module, self._copies, args, kwargs, strict=False)

    @torch.no_grad()
    def _refresh(self) -> None:
        # The kernel writes weights through raw pointers, which leaves their version alone; anything else that
        # changes a weight in place (load_state_dict's copy_, an edit under no_grad) moves it on.
        for name, p in self._weights.items():
            if p._version != self._versions[name]:
                self._copies[name].copy_(p)
                self._versions[name] = p._version


def sgd_step(
    weights: list[torch.Tensor],
    copies: list[torch.Tensor],
    buffers: list[torch.Tensor],
    first: list[bool],
    lr: float,
    momentum: float,
    weight_decay: float,
    nesterov: bool,
) -> None:
    """torch's SGD step on ``weights`` from their ``copies``' gradients, writing the copies too (see the module)."""
    grads = []
    for w, copy in zip(weights, copies):
        g = copy.grad
        if g.stride() != w.stride():  # autograd keeps a leaf's gradient in its layout; this is the rare exception
            g = torch.empty_like(copy).copy_(g)
        grads.append(g)
    kernel().step(weights, grads, buffers, copies, first, lr, momentum, weight_decay, nesterov)
