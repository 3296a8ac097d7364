"""Initialisation schemes that depend on data: airbench's patch whitening of conv1."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from alexnet.models.init import PatchCovariance


def _correlated_images(n: int = 64, side: int = 12) -> torch.Tensor:
    """Images whose neighbouring pixels and channels correlate, as natural images' do."""
    torch.manual_seed(0)
    noise = torch.randn(n, 3, side + 2, side + 2)
    smooth = F.avg_pool2d(noise, 3, stride=1)  # (n, 3, side, side)
    return smooth + 0.5 * smooth.mean(1, keepdim=True)


@pytest.mark.parametrize("filters", [12, 9])
def test_whitened_filters_decorrelate_the_patches_and_come_in_opposite_pairs(filters):
    x = _correlated_images()
    conv = nn.Conv2d(3, filters, 3, padding=0)
    cov = PatchCovariance(conv)
    cov.add(x[:32])
    cov.add(x[32:])  # accumulated in two batches: the same as one
    cov.whiten_(eps=1e-6)
    with torch.no_grad():
        y = conv(x).permute(1, 0, 2, 3).reshape(filters, -1).double()  # (filters, every position)
    half = filters // 2
    second_moment = y[:half] @ y[:half].T / y.shape[1]
    assert torch.allclose(second_moment, torch.eye(half, dtype=torch.float64), atol=1e-3)
    assert torch.allclose(y[half : 2 * half], -y[:half])
    assert torch.equal(conv.bias, torch.zeros(filters))
    # The strongest directions first: the first filter is the covariance's top eigenvector.
    patches = F.unfold(x, 3).transpose(1, 2).reshape(-1, 27).double()
    top = torch.linalg.eigh(patches.T @ patches / len(patches)).eigenvectors[:, -1]
    first = conv.weight[0].detach().flatten().double()
    assert abs(torch.dot(first / first.norm(), top).item()) == pytest.approx(1.0, abs=1e-4)


def test_whitening_refuses_grouped_or_too_wide_convolutions():
    with pytest.raises(ValueError, match="ungrouped"):
        PatchCovariance(nn.Conv2d(4, 8, 3, groups=2))
    with pytest.raises(ValueError, match="twice as many"):
        PatchCovariance(nn.Conv2d(1, 20, 3))  # 9 patch dimensions: at most 18 filters


@pytest.mark.parametrize("scheme", ["paper", "caffe", "kaiming"])
def test_a_network_built_on_the_meta_device_draws_no_initial_weights(scheme, monkeypatch):
    """Loading builds the network on the meta device and assigns the file's tensors: an initialisation there sets
    nothing, and torch's meta ``normal_`` (these schemes' draw) imported torch._dynamo, 1.1 s of a 3 s
    `load_trained` in a fresh process."""
    import alexnet

    draws = []
    normal_ = torch.Tensor.normal_
    monkeypatch.setattr(torch.Tensor, "normal_", lambda t, *a, **k: draws.append(t.device.type) or normal_(t, *a, **k))
    for variant in alexnet.list_models():
        with torch.device("meta"):
            model = alexnet.create_model(variant, init=scheme)
        assert all(p.is_meta for p in model.parameters())
    assert draws == []
    alexnet.create_model("alexnet_small", width=0.25, init=scheme)  # on a real device it does draw them
    assert draws and set(draws) == {"cpu"}
