"""`packed_conv`: bf16 convolutions in CPU inference on a weight laid out for oneDNN once compute torch's outputs bit
for bit, follow every change of the weight, and run only where measured: bf16 inference on a CPU with AMX."""

import copy

import pytest
import torch
import torch.nn.functional as F

import alexnet
from alexnet import native
from alexnet.models import matmul_weights_to, packed_conv, standard_modules
from alexnet.models.layers import Conv2d

# The layout op runs wherever oneDNN has bf16 products; the tests take such a CPU as one with AMX.
needs_bf16 = pytest.mark.skipif(
    not {"amx_bf16", "avx512_bf16"} & native.cpu_flags(), reason="no native bf16 products on this CPU"
)


@pytest.fixture
def calls(monkeypatch):
    """The laid-out path's calls, counted; the CPU taken as one it runs on."""
    monkeypatch.setattr(packed_conv, "amx", lambda: True)
    seen = []
    real = packed_conv.conv2d
    monkeypatch.setattr(packed_conv, "conv2d", lambda conv, x: seen.append(1) or real(conv, x))
    return seen


def _torchs(conv: torch.nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    with torch.autocast("cpu", torch.bfloat16):
        return F.conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)


@needs_bf16
@pytest.mark.parametrize("name", alexnet.list_models())
def test_every_variant_predicts_as_with_torchs_convolutions(name, calls, monkeypatch):
    torch.manual_seed(0)
    model = alexnet.create_model(name, num_classes=10).eval().to(memory_format=torch.channels_last)
    matmul_weights_to(model, torch.bfloat16)
    side, channels = model.spec.input_size, model.in_channels
    x = torch.randn(2, channels, side, side).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16):
        got = model(x)
        convs = sum(isinstance(m, Conv2d) for m in model.modules())
        assert len(calls) == convs > 0
        monkeypatch.setenv("ALEXNET_PACKED_CONV", "0")
        want = model(x)
    assert len(calls) == convs and torch.equal(got, want)


@needs_bf16
@pytest.mark.parametrize("groups, stride, padding", [(1, 1, 1), (2, 1, 2), (1, 4, 2), (2, 2, 0)])
def test_a_change_of_the_weight_or_the_input_shape_is_followed(groups, stride, padding, calls):
    torch.manual_seed(0)
    conv = Conv2d(8, 16, 3, stride, padding, groups=groups).bfloat16().eval()
    x = torch.randn(1, 8, 13, 13)
    with torch.no_grad():
        assert torch.equal(conv(x.bfloat16()), _torchs(conv, x))
        conv.weight.mul_(-2)  # in place: a new version
        assert torch.equal(conv(x.bfloat16()), _torchs(conv, x))
        conv.bias.add_(1)
        assert torch.equal(conv(x.bfloat16()), _torchs(conv, x))
        conv.weight = torch.nn.Parameter(torch.randn_like(conv.weight))  # another tensor, perhaps at a freed address
        assert torch.equal(conv(x.bfloat16()), _torchs(conv, x))
        conv.load_state_dict({k: torch.randn_like(v) for k, v in conv.state_dict().items()})  # copied in place
        assert torch.equal(conv(x.bfloat16()), _torchs(conv, x))
        for shape in ((3, 8, 13, 13), (1, 8, 17, 11)):  # another batch, another size
            y = torch.randn(shape)
            assert torch.equal(conv(y.bfloat16()), _torchs(conv, y))
    assert len(calls) == 7


def test_it_runs_in_bf16_inference_only(calls, monkeypatch):
    conv = Conv2d(4, 4, 3, padding=1).bfloat16()
    x = torch.randn(1, 4, 8, 8)
    monkeypatch.setattr(packed_conv, "conv2d", lambda conv, x: calls.append(1) or x)
    with torch.no_grad():
        conv(x.bfloat16())
        with torch.autocast("cpu", torch.bfloat16):
            conv(x)  # fp32 input under bf16 autocast: taken
        assert len(calls) == 2
        conv.float()(x)  # fp32 weights
        conv.bfloat16()
        with torch.autocast("cpu", torch.float16):
            conv(x.bfloat16())  # another autocast dtype
        monkeypatch.setenv("ALEXNET_PACKED_CONV", "0")
        conv(x.bfloat16())
        monkeypatch.delenv("ALEXNET_PACKED_CONV")
        Conv2d(4, 4, 3, padding="same").bfloat16()(x.bfloat16())
    assert len(calls) == 2
    conv(x.bfloat16())  # the weight needs a gradient: training
    assert len(calls) == 2
    monkeypatch.setattr(packed_conv, "amx", lambda: False)  # a CPU without AMX: where it was not measured
    with torch.no_grad():
        conv(x.bfloat16())
    assert len(calls) == 2


@needs_bf16
def test_programs_see_the_standard_convolution_and_copies_carry_no_layout(calls):
    model = alexnet.create_model("alexnet_small", num_classes=4, width=0.25).eval()
    matmul_weights_to(model, torch.bfloat16)
    x = torch.randn(2, 3, 32, 32).bfloat16()
    with torch.no_grad():
        model(x)
    used = len(calls)
    assert used > 0
    with torch.no_grad(), standard_modules(model):
        program = torch.export.export(model, (x,))
    assert len(calls) == used and "aten.conv2d" in str(program.graph)
    twin = copy.deepcopy(model)  # the laid-out weights live beside the modules, not in them
    assert set(twin.state_dict()) == set(model.state_dict())
    with torch.no_grad():
        assert torch.equal(twin(x), model(x))
