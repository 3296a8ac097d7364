"""Weight initialisation schemes.

``paper`` is §5: "weights in each layer from a zero-mean Gaussian distribution with standard deviation 0.01 …
biases in the second, fourth, and fifth convolutional layers, as well as in the fully-connected hidden layers,
with the constant 1 … remaining layers with the constant 0". ``caffe`` is BVLC's bvlc_alexnet train_val.prototxt,
which found bias 1 gave a flat loss and uses 0.1, with std 0.005 on fc6 and fc7.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Zero-based positions of the paper's "second, fourth, and fifth convolutional layers".
BIAS_ONE_CONVS = (1, 3, 4)


def initialize(convs: list[nn.Conv2d], linears: list[nn.Linear], scheme: str) -> None:
    """Initialise conv and linear layers in place.

    Args:
        convs: the conv layers in order (conv1…conv5).
        linears: the fc layers in order; all but the last are hidden.
        scheme: ``paper``, ``caffe``, ``xavier`` (d2l's ``init_cnn``: Xavier-uniform weights, biases left at
            PyTorch's default), ``kaiming`` (He-normal, fan-in, zero biases; N(0, 0.01²) for the classifier)
            or ``torch`` (leave PyTorch's defaults, as torchvision does).
    """
    if scheme == "torch" or convs[0].weight.is_meta:
        # A network built on the meta device is about to be given its weights (assigned, not copied): there are no
        # values to set, and torch's meta normal_ runs through torch._refs, which imports torch._dynamo (~1.1 s).
        return
    hidden = set(range(len(linears) - 1))
    for i, m in enumerate([*convs, *linears]):
        is_conv = i < len(convs)
        j = i if is_conv else i - len(convs)
        bias_layer = (j in BIAS_ONE_CONVS) if is_conv else (j in hidden)
        if scheme in ("paper", "caffe"):
            std = 0.005 if scheme == "caffe" and not is_conv and j in hidden else 0.01
            nn.init.normal_(m.weight, 0.0, std)
            bias = (1.0 if scheme == "paper" else 0.1) if bias_layer else 0.0
            nn.init.constant_(m.bias, bias)
        elif scheme == "xavier":
            nn.init.xavier_uniform_(m.weight)
        elif scheme == "kaiming":
            if is_conv or j in hidden:
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            else:  # the classifier: small logits, so the first loss is ln(classes) (as torchvision's VGG)
                nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)
        else:
            raise ValueError(f"unknown init {scheme!r}")


class PatchCovariance:
    """The second moment of a first conv layer's input patches, accumulated batch by batch."""

    def __init__(self, conv: nn.Conv2d) -> None:
        if conv.groups != 1 or conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1] * 2 < conv.out_channels:
            raise ValueError(
                f"a whitening initialisation needs an ungrouped conv with at most twice as many filters as patch "
                f"dimensions; this one is {conv}"
            )
        self.conv = conv
        dims = conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
        self.sum = torch.zeros(dims, dims, dtype=torch.float64)
        self.count = 0

    def add(self, x: torch.Tensor) -> None:
        """Add the patches of normalised inputs ``x`` (B, C, H, W), every position at stride 1, no padding."""
        patches = F.unfold(x.float().cpu(), self.conv.kernel_size)  # (B, C·kh·kw, L)
        flat = patches.transpose(1, 2).reshape(-1, patches.shape[1]).double()  # (B·L, D)
        self.sum += flat.T @ flat
        self.count += flat.shape[0]

    @torch.no_grad()
    def whiten_(self, eps: float = 5e-4) -> None:
        """airbench's patch-whitening initialisation: the filters are the covariance's top eigenvectors scaled by
        1/√(λ + eps), each with its negative (so a ReLU after keeps both signs); biases 0."""
        eigval, eigvec = torch.linalg.eigh(self.sum / max(self.count, 1))  # ascending
        half = self.conv.out_channels // 2
        top = eigvec[:, -half:].flip(1).T / (eigval[-half:].flip(0)[:, None] + eps).sqrt()  # (half, D), largest first
        filters = torch.cat([top, -top]) if self.conv.out_channels % 2 == 0 else torch.cat([top, -top, top[:1]])
        w = self.conv.weight
        w.copy_(filters.view(-1, *w.shape[1:]).to(w.dtype))
        if self.conv.bias is not None:
            self.conv.bias.zero_()
