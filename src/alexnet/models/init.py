"""Weight initialisation schemes.

``paper`` is §5: "weights in each layer from a zero-mean Gaussian distribution with standard deviation 0.01 …
biases in the second, fourth, and fifth convolutional layers, as well as in the fully-connected hidden layers,
with the constant 1 … remaining layers with the constant 0". ``caffe`` is BVLC's bvlc_alexnet train_val.prototxt,
which found bias 1 gave a flat loss and uses 0.1, with std 0.005 on fc6 and fc7.
"""

from __future__ import annotations

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
    if scheme == "torch":
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
