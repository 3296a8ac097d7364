"""The one AlexNet module, built from an `ArchSpec`.

Children are ``features`` / ``avgpool`` / ``classifier`` in torchvision's order (conv, [BN], act, [LRN], [pool]; with
``pool_first``: conv, [pool], [BN], act, [LRN]; in the classifier [dropout], fc, [BN with ``fc_norm``], act,
[dropout]), so torchvision's AlexNet state dict loads unchanged into ``alexnet_owt``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .init import initialize
from .layers import AdaptiveAvgPool2d, Conv2d, Dropout, Features, Linear, LocalResponseNorm, Stack, StemConv2d
from .specs import POOLS, ArchSpec


def _activation(name: str) -> nn.Module:
    # ReLU not in place: on the CPU an in-place bf16 ReLU of conv1's output (64 × 96 × 55 × 55) took 2.9 ms, a new
    # tensor 2.6 (conv2's: 1.8 against 1.1); alexnet_paper's bf16 inference ran 1.11× as fast (Intel Xeon, 2 cores).
    return {"relu": lambda: nn.ReLU(inplace=False), "tanh": nn.Tanh, "gelu": nn.GELU}[name]()


class AlexNet(nn.Module):
    """AlexNet-family network: five conv stages and three fully-connected layers.

    Args:
        spec: the resolved architecture.
        num_classes: outputs of the last layer.
        in_channels: input image channels (3 RGB, 1 grayscale).
    """

    def __init__(self, spec: ArchSpec, num_classes: int = 1000, in_channels: int = 3) -> None:
        super().__init__()
        self.spec, self.num_classes, self.in_channels = spec, num_classes, in_channels
        self.config: dict[str, Any] = {}  # how to rebuild this model; filled by create_model
        k_pool, s_pool = POOLS[spec.pool]
        layers: list[nn.Module] = []
        convs: list[nn.Conv2d] = []
        prev = in_channels
        for conv, out in zip(spec.convs, spec.channels()):
            groups = spec.groups if conv.tower else 1
            batch_norm = spec.norm == "batch"
            # The first takes the image: in bf16 training on a CPU with AMX a strided one runs as space-to-depth.
            layer = StemConv2d if not convs and conv.stride > 1 else Conv2d
            convs.append(layer(prev, out, conv.kernel, conv.stride, conv.pad, groups=groups))
            stage: list[nn.Module] = [nn.BatchNorm2d(out, momentum=spec.bn_momentum)] if batch_norm else []
            stage.append(_activation(spec.activation))
            if conv.lrn and spec.norm == "lrn":
                # Per tower where the conv stack is split (groups=2), unless the spec says across them (Caffe).
                lrn_groups = 1 if spec.lrn_across_towers else spec.groups
                norm = LocalResponseNorm(
                    spec.lrn_size, spec.lrn_alpha, spec.lrn_beta, spec.lrn_k, spec.lrn_convention, lrn_groups
                )
                stage.append(norm)
            pool = [nn.MaxPool2d(k_pool, s_pool, spec.pool_pad)] if conv.pool else []
            layers += [convs[-1], *pool, *stage] if spec.pool_first else [convs[-1], *stage, *pool]
            prev = out
        self.features = Features(*layers)
        self.avgpool = AdaptiveAvgPool2d(spec.adaptive_pool) if spec.adaptive_pool else nn.Identity()

        c, h, w = spec.feature_shape()
        widths = [c * h * w, *spec.hidden(), num_classes]
        head: list[nn.Module] = []
        linears: list[nn.Linear] = []
        for i, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:])):
            last = i == len(widths) - 2
            linears.append(Linear(fan_in, fan_out))  # through oneDNN in fp32 on AMD CPUs
            if not last and spec.dropout_position == "before":
                head.append(Dropout(spec.dropout))
            head.append(linears[-1])
            if not last:
                head += [nn.BatchNorm1d(fan_out, momentum=spec.bn_momentum)] if spec.fc_norm else []
                head.append(_activation(spec.activation))
                if spec.dropout_position == "after":
                    head.append(Dropout(spec.dropout))
        self.classifier = Stack(*head)
        initialize(convs, linears, spec.init)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) images -> (B, C·h·w) flattened conv features (9216 for the paper net)."""
        return torch.flatten(self.avgpool(self.features(x)), 1)

    def forward_hidden(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, 4096) last hidden layer (fc7 after its activation): the paper's Figure 4 codes."""
        return self.classifier[:-1](self.forward_features(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) images -> (B, num_classes) logits."""
        return self.classifier(self.forward_features(x))
