"""bf16 convolutions in CPU inference with their weights laid out for oneDNN once, not on every call.

torch's eager convolution hands oneDNN its weight as it lies (channels last), and oneDNN reorders it into the
blocked layout its kernel reads on every call: at batch 1 on 2 cores of an Intel Xeon with AMX, five reorders took
0.65 ms of ``alexnet_owt``'s ~6.7 ms forward (``ONEDNN_VERBOSE``), about what its five convolutions themselves took
(0.78). Here the weight is reordered once (``mkldnn::_reorder_convolution_weight``, what inductor's freezing does) and
kept for the input shape it was laid out for; the convolution then runs on it (``mkldnn::_convolution_pointwise``,
no post-op). The same kernel on the same values: the outputs are torch's bit for bit. Measured there, eight
interleaved rounds in one process with ``ALEXNET_PACKED_CONV=0``, bf16 weights as `alexnet.Predictor` casts them:
``alexnet_owt`` at batch 1 1.09× (1.06-1.25), ``alexnet_paper`` 1.10× (1.04-1.14), ``alexnet_owt`` at batch 8 1.06×
(1.03-1.10), at batch 64 1.00× (0.97-1.06).

Inference only (no gradient wanted), bf16 weights on a CPU with AMX (where it was measured; on others the reorders are
there too, unmeasured), under bf16 autocast or with a bf16 input. A weight changed in place, replaced, or met with
another input shape is laid out again. The laid-out copies are kept beside the modules (a weak mapping), not in them:
state dicts, ``copy.deepcopy`` and pickling carry none of them. Tracers and compilers see ``F.conv2d``;
``ALEXNET_PACKED_CONV=0`` turns it off.
"""

from __future__ import annotations

import weakref

import torch
from torch import nn

from .. import native
from .amx_fc import amx  # AMX's bf16 tiles: where it was measured

# module → (weight and bias as weak references, key, laid-out weight): the key names their storage and version and
# the input's shape; the references, that they are the same tensors (a new one can take a freed one's address).
_PACKED: weakref.WeakKeyDictionary[nn.Conv2d, tuple] = weakref.WeakKeyDictionary()


def usable(conv: nn.Conv2d, x: torch.Tensor) -> bool:
    """Whether ``conv(x)`` runs on a laid-out weight: a bf16 weight (and bias) on a CPU with AMX, a 4-D input in bf16
    or under bf16 autocast, no gradient wanted, zero padding given as numbers, no tracer or compiler."""
    if native.tracing():
        return False
    w, b = conv.weight, conv.bias
    autocast = torch.is_autocast_enabled("cpu")
    if autocast and torch.get_autocast_dtype("cpu") != torch.bfloat16:
        return False
    return (
        x.device.type == w.device.type == "cpu"
        and x.dim() == 4
        and x.numel() > 0
        and w.dtype == torch.bfloat16
        and (b is None or b.dtype == torch.bfloat16)
        and not any(t.is_inference() for t in (w, b) if t is not None)  # no version counter to follow
        and (autocast or x.dtype == torch.bfloat16)
        and x.shape[1] == w.shape[1] * conv.groups
        and conv.padding_mode == "zeros"
        and not isinstance(conv.padding, str)  # "same" / "valid": torch's own path
        and not (torch.is_grad_enabled() and any(t.requires_grad for t in (x, w, b) if t is not None))
        and torch.backends.mkldnn.is_available()
        and native.enabled("ALEXNET_PACKED_CONV")
        and amx()
    )


def conv2d(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)`` on its weight laid out for oneDNN (laid out now if it was not, or no longer fits). Where `usable`."""
    w, b = conv.weight, conv.bias
    x = x.to(torch.bfloat16)
    padding, stride, dilation = list(conv.padding), list(conv.stride), list(conv.dilation)
    key = (w.data_ptr(), w._version, None if b is None else (b.data_ptr(), b._version), tuple(x.shape))
    kept = _PACKED.get(conv)
    if kept is None or kept[0]() is not w or kept[1]() is not b or kept[2] != key:
        packed = torch.ops.mkldnn._reorder_convolution_weight(w, padding, stride, dilation, conv.groups, list(x.shape))
        refs = weakref.ref(w), (lambda: None) if b is None else weakref.ref(b)
        _PACKED[conv] = kept = (*refs, key, packed)
    return torch.ops.mkldnn._convolution_pointwise(
        x, kept[3], b, padding, stride, dilation, conv.groups, "none", [], ""
    )
