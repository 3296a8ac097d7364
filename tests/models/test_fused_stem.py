"""conv1's space-to-depth blocks in one pass (`alexnet.models.fused_stem`) against torch's ops
(`layers.space_to_depth_blocks`): bit for bit, NaN, ±inf and −0 included, on every geometry the blocks take; the
stem training through it equals the stem through torch's ops; an input that needs a gradient goes through torch's."""

import pytest
import torch

import alexnet
from alexnet.models import fused_stem, get_spec, layers
from alexnet.models.layers import StemConv2d, space_to_depth_blocks


@pytest.fixture(scope="module", autouse=True)
def _kernel():
    if fused_stem.kernel() is None:
        pytest.skip("the stem kernel cannot be built here (no C++ compiler or ninja)")


@pytest.fixture
def calls(monkeypatch) -> list:
    """Each call of the kernel (it still runs)."""
    seen: list = []
    original = fused_stem.space_to_depth
    monkeypatch.setattr(fused_stem, "space_to_depth", lambda *a: seen.append(a[1:]) or original(*a))
    return seen


def _geometry(h: int, w: int, k: int, s: int, pad: int) -> tuple[int, int]:
    blocks = -(-k // s)
    return (h + 2 * pad - k) // s + blocks, (w + 2 * pad - k) // s + blocks


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal bit for bit (−0 apart from +0) but for NaN's payload: torch's vectorised cast writes 0xFFFF, its scalar
    one and the kernels' 0x7FC0."""
    nan = a.isnan()
    return torch.equal(nan, b.isnan()) and torch.equal(a.view(torch.int16)[~nan], b.view(torch.int16)[~nan])


# (batch, channels, height, width, kernel, stride, padding): alexnet_owt's conv1 at 224 px, alexnet_paper's at 227
# (no padding), the d2l model's (padding 1), maps that end inside a block, padding of a whole block, one channel.
GEOMETRIES = [
    (4, 3, 224, 224, 11, 4, 2),
    (3, 3, 227, 227, 11, 4, 0),
    (2, 3, 224, 224, 11, 4, 1),
    (3, 3, 31, 29, 11, 4, 2),
    (2, 5, 20, 23, 7, 3, 3),
    (2, 1, 16, 17, 4, 4, 0),
]


@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=str)
def test_the_blocks_are_torchs_bit_for_bit(geometry, dtype, channels_last):
    b, c, h, w, k, s, pad = geometry
    torch.manual_seed(0)
    x = torch.randn(b, c, h, w) * 3
    x[0, 0, 0, :4] = torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0])
    x[-1, -1, -1, -1] = float("nan")  # the last pixel: the right and bottom edge's blocks
    x = x.to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    hb, wb = _geometry(h, w, k, s, pad)
    got = fused_stem.space_to_depth(x, s, pad, hb, wb)
    with torch.autocast("cpu", torch.bfloat16):  # the dtype conv1 computes in
        ref = space_to_depth_blocks(x, s, pad, hb, wb)
    assert got.shape == ref.shape == (b, hb, wb, s * s * c) and got.dtype == ref.dtype == torch.bfloat16
    assert _same(got, ref)


@pytest.mark.parametrize("name", ["alexnet_owt", "alexnet_paper"])
def test_the_stem_trains_through_the_kernel_as_through_torchs_ops(name, monkeypatch, calls):
    monkeypatch.setattr(
        layers, "_bf16_products", lambda: True
    )  # space-to-depth runs with native bf16; arithmetic anywhere
    torch.manual_seed(0)
    size = get_spec(name).input_size
    stem = alexnet.create_model(name).features[0]
    assert isinstance(stem, StemConv2d)
    x = torch.randn(3, 3, size, size).contiguous(memory_format=torch.channels_last)
    results = []
    for switch in ("1", "0"):  # ALEXNET_FUSED_STEM=0: torch's ops
        monkeypatch.setenv("ALEXNET_FUSED_STEM", switch)
        stem.zero_grad()
        with torch.autocast("cpu", torch.bfloat16):
            assert stem._space_to_depth(x)
            y = stem(x)
        y.float().square().sum().backward()
        results.append((y, stem.weight.grad.clone(), stem.bias.grad.clone()))
    assert len(calls) == 1  # the first pass only
    for a, b in zip(*results):
        assert torch.equal(a, b)  # the same blocks: the same convolution, bit for bit


def test_an_input_that_needs_a_gradient_goes_through_torchs_ops(monkeypatch, calls):
    monkeypatch.setattr(layers, "_bf16_products", lambda: True)
    torch.manual_seed(0)
    stem = alexnet.create_model("alexnet_owt").features[0]
    x = torch.randn(2, 3, 224, 224).contiguous(memory_format=torch.channels_last).requires_grad_()
    assert not fused_stem.usable(x) and fused_stem.usable(x.detach())
    with torch.autocast("cpu", torch.bfloat16):
        y = stem(x)
    y.float().sum().backward()
    assert not calls and x.grad is not None and x.grad.abs().sum() > 0
