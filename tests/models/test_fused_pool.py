"""The fused ReLU → max-pool kernel (and the max-pool alone) against torch's layers run apart: outputs bit for bit,
gradients; ties, NaN and −∞; where it is left out; and every variant training through it."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import alexnet
from alexnet import native
from alexnet.models import fused_pool
from alexnet.models.layers import Stack


@pytest.fixture(scope="module", autouse=True)
def _kernel():
    if fused_pool.kernel() is None:
        pytest.skip("the fused pool kernel cannot be built here (no C++ compiler or ninja)")


@pytest.fixture
def values_calls(monkeypatch) -> list:
    """Each call of the inference operator (the pooled values alone), recorded as its ``relu`` flag."""
    seen: list = []
    original = fused_pool.relu_max_pool_values
    monkeypatch.setattr(fused_pool, "relu_max_pool_values", lambda *a: seen.append(a[-1]) or original(*a))
    return seen


@pytest.fixture
def calls(monkeypatch, values_calls) -> list:
    """Each call of either fused operator, with or without the argmax, recorded as its ``relu`` flag (the kernel
    still runs); ``values_calls`` holds the inference operator's too."""
    seen: list = []
    original = fused_pool.relu_max_pool
    monkeypatch.setattr(fused_pool, "relu_max_pool", lambda *a: seen.append(a[-1]) or original(*a))
    inference = fused_pool.relu_max_pool_values  # the recording one
    monkeypatch.setattr(fused_pool, "relu_max_pool_values", lambda *a: seen.append(a[-1]) or inference(*a))
    return seen


def _map(shape, dtype=torch.float32, seed=2):
    torch.manual_seed(seed)
    return torch.randn(shape).to(dtype).contiguous(memory_format=torch.channels_last)


def _run(stack: nn.Module, x: torch.Tensor, grad: torch.Tensor, fused: bool, monkeypatch):
    monkeypatch.setenv("ALEXNET_FUSED_POOL", "1" if fused else "0")
    x = x.detach().clone().requires_grad_()
    y = stack(x)
    y.backward(grad)
    return y, x.grad


@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    # channels: a multiple of 16 (the kernel's vectors: 16 lanes with AVX-512, 8 without), fewer, 8 plus a tail, and 16
    # plus a tail; windows as AlexNet's (3, 2), padded as the small models' (3, 2, 1), others, one overlapping more,
    # and a map the window just covers
    ("shape", "k", "s", "p"),
    [
        ((2, 48, 13, 11), 3, 2, 0),
        ((2, 32, 8, 7), 3, 2, 1),
        ((3, 5, 9, 9), 3, 2, 0),
        ((2, 12, 7, 7), 3, 2, 0),
        ((2, 21, 8, 7), 2, 2, 0),
        ((2, 19, 7, 6), 3, 1, 1),
        ((1, 16, 3, 3), 3, 2, 0),
        ((1, 17, 2, 1), 3, 2, 1),
        ((2, 16, 6, 6), 5, 1, 2),
    ],
)
def test_the_fused_kernel_equals_relu_and_max_pool_apart(shape, k, s, p, dtype, relu, calls, values_calls, monkeypatch):
    layers = [nn.ReLU()] * relu + [nn.MaxPool2d(k, s, p)]
    x = _map(shape, dtype)
    x[:, :, :3, :3] = 0.5  # ties in a window: the first maximum takes the gradient
    x[0, :, -3:, -3:] = -1.0  # windows with nothing positive: no gradient through the ReLU (nor the padding's)
    torch.manual_seed(3)
    grad = torch.randn(F.max_pool2d(x, k, s, p).shape).to(dtype).contiguous(memory_format=torch.channels_last)
    want = _run(Stack(*layers), x, grad, False, monkeypatch)
    assert not calls
    got = _run(Stack(*layers), x, grad, True, monkeypatch)
    assert calls == [relu] and not values_calls  # with gradients: the operator that keeps the argmax
    with torch.no_grad():  # without: the pooled values alone, the same bits
        assert torch.equal(Stack(*layers)(x), want[0]) and values_calls == [relu]
    assert got[0].dtype == got[1].dtype == dtype and got[1].is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(got[0], want[0])  # a max picks one of the values: bit for bit
    if dtype == torch.float32:  # torch's backward adds the overlapping windows' gradients in this order too
        assert torch.equal(got[1], want[1])
    else:  # torch adds in bf16, rounding each sum; the kernel in float, as torch does in fp32, and rounds once
        _, exact = _run(Stack(*layers), x.float(), grad.float(), False, monkeypatch)
        assert torch.equal(got[1], exact.to(dtype))
        torch.testing.assert_close(want[1].float(), exact, rtol=0.05, atol=0.05)


@pytest.mark.parametrize("channels", [17, 6])
@pytest.mark.parametrize("relu", [True, False])
def test_nan_and_infinities_go_where_torch_sends_them(relu, channels, calls, values_calls, monkeypatch):
    """17 channels: the last in the kernel's last vector, which overlaps the first (16 lanes with AVX-512, 8 without);
    6: fewer than a vector, one at a time."""
    x = _map((1, 17, 5, 5))
    x[0, 1, 1, 1] = float("nan")  # a NaN wins its windows, forward and back (also through the ReLU)
    x[0, 2, 0, 0], x[0, 2, 3, 3] = float("nan"), float("nan")  # two in one window: the later one takes it
    x[0, 3] = float("-inf")  # nothing above -inf: the first position inside the map, without the ReLU
    x[0, 4, 0, 0], x[0, 4, 1, 1] = float("inf"), float("-inf")  # they sum to NaN as a NaN would: still inf
    x[0, 5, 4, 4] = float("nan")  # a NaN in the last place of its windows, after the maximum
    x[0, 16] = float("inf")
    x[0, 16, 2, 2] = float("nan")  # channel 16: past the kernel's first vector
    x = x[:, :channels].contiguous(memory_format=torch.channels_last)
    layers = [nn.ReLU()] * relu + [nn.MaxPool2d(3, 2, padding=1)]
    grad = (
        torch.arange(1.0, 1 + 17 * 9).reshape(1, 17, 3, 3)[:, :channels].contiguous(memory_format=torch.channels_last)
    )
    want = _run(Stack(*layers), x, grad, False, monkeypatch)
    got = _run(Stack(*layers), x, grad, True, monkeypatch)
    with torch.no_grad():
        values = Stack(*layers)(x)
    assert len(calls) == 2 and len(values_calls) == 1
    for y in (got[0], values):
        assert torch.equal(y.isnan(), want[0].isnan()) and torch.equal(y.nan_to_num(), want[0].nan_to_num())
    assert torch.equal(got[1], want[1])


def test_the_layers_run_apart_where_the_kernel_does_not_apply(calls):
    x = _map((2, 8, 7, 7))
    Stack(nn.ReLU(), nn.MaxPool2d(3, 2))(x.contiguous())  # channels first
    Stack(nn.ReLU(), nn.MaxPool2d(3, 2))(x.half())  # a dtype it does not take
    for pool in (nn.MaxPool2d(3, 2, dilation=2), nn.MaxPool2d(3, 2, ceil_mode=True), nn.MaxPool2d((3, 2), 2)):
        Stack(nn.ReLU(), pool)(x)  # what the kernel does not do
    Stack(nn.ReLU(), nn.MaxPool2d(16))(_map((1, 4, 16, 16)))  # a global pool: more window positions than a byte holds
    with pytest.raises(RuntimeError, match="too small|Output size"):
        Stack(nn.ReLU(), nn.MaxPool2d(3, 2))(_map((1, 4, 2, 2)))  # torch's own error, not the kernel's
    with pytest.raises(RuntimeError, match="pad should be at most half"):
        Stack(nn.ReLU(), nn.MaxPool2d(3, 2, padding=2))(x)
    traced = torch.jit.trace(Stack(nn.ReLU(), nn.MaxPool2d(3, 2)), x, check_trace=False)
    assert not calls and "alexnet::" not in str(traced.graph)
    seen = []
    hooked = Stack(nn.ReLU(), nn.MaxPool2d(3, 2))
    hooked[0].register_forward_hook(lambda m, i, o: seen.append(o))
    hooked(x)  # a hook must see the ReLU's own output: the ReLU apart, the pool alone through the kernel
    assert len(seen) == 1 and calls == [False]
    Stack(nn.ReLU(), nn.MaxPool2d(3, 2))(x)
    Stack(nn.ReLU(), nn.Identity(), nn.MaxPool2d(3, 2))(x)  # the pool alone, after a layer it cannot take in
    Stack(nn.ReLU(inplace=True), nn.MaxPool2d(3, 2))(x.clone())  # the map it rectifies in place is the caller's
    assert calls == [False, True, False, False]


def _uses_pool(name: str) -> bool:
    return any(type(m) is nn.MaxPool2d for m in alexnet.create_model(name, width=0.25, num_classes=10).modules())


@pytest.mark.parametrize("name", [m for m in alexnet.list_models() if _uses_pool(m)])
def test_every_variant_trains_and_infers_through_the_kernel(name, calls, values_calls, monkeypatch):
    """Each max-pool (with the ReLU before it) goes through the kernel in training and inference; the outputs and
    gradients are the layers' run apart."""
    torch.manual_seed(4)
    fused = alexnet.create_model(name, width=0.25, num_classes=10).to(memory_format=torch.channels_last)
    apart = alexnet.create_model(name, width=0.25, num_classes=10).to(memory_format=torch.channels_last)
    apart.load_state_dict(fused.state_dict())
    size = alexnet.models.get_spec(name).input_size
    x = torch.randn(2, fused.in_channels, size, size).contiguous(memory_format=torch.channels_last)
    outs = []
    for model, on in ((fused, "1"), (apart, "0")):
        monkeypatch.setenv("ALEXNET_FUSED_POOL", on)
        torch.manual_seed(5)  # the same dropout masks: the kernel draws no random numbers
        out = model(x)
        out.square().sum().backward()
        outs.append((out, [p.grad for p in model.parameters()]))
    pools = sum(type(m) is nn.MaxPool2d for m in fused.modules())
    assert 0 < len(calls) <= pools
    (out, grads), (want, want_grads) = outs
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
    floor = max(w.abs().max() for w in want_grads) * 1e-4
    for g, w in zip(grads, want_grads):
        scale = w.abs().max().clamp(min=floor)
        torch.testing.assert_close(g / scale, w / scale, rtol=0, atol=1e-4)
    assert not values_calls  # training keeps the argmax
    calls.clear()
    with torch.inference_mode():
        want = apart.eval()(x)
        monkeypatch.setenv("ALEXNET_FUSED_POOL", "1")
        torch.testing.assert_close(fused.eval()(x), want, rtol=1e-5, atol=1e-5)
    # inference too, without the argmax (the paper's ReLU → LRN → pool goes through its own fused stage instead)
    assert calls and len(values_calls) == len(calls)


def test_a_vector_is_one_register_of_this_cpu():
    # 16 floats on AVX2, two registers, GCC compiled through the stack: the forward ran 16x slower than with 8 (the
    # tests above pass either way: this one names the speed bug)
    flags = native.cpu_flags()
    if not flags:  # no /proc/cpuinfo: what -march=native found is not known here
        pytest.skip("this CPU's flags are unknown here")
    assert fused_pool.kernel().lanes() == (16 if "avx512f" in flags else 8)


def test_the_operator_has_shapes_for_compilers():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        x = torch.empty(2, 8, 13, 11).contiguous(memory_format=torch.channels_last)
        y, argmax = fused_pool.relu_max_pool(x, 3, 2, 1, True)
        gx = fused_pool.relu_max_pool_backward(y, argmax, 13, 11, 3, 2, 1)
    assert y.shape == argmax.shape == (2, 8, 7, 6) and argmax.dtype == torch.uint8
    assert gx.shape == x.shape and gx.is_contiguous(memory_format=torch.channels_last)


def test_what_the_backward_keeps_is_a_byte_a_pooled_value():
    x = _map((2, 32, 9, 9)).requires_grad_()
    y, argmax = fused_pool.relu_max_pool(x, 3, 2, 0, True)
    assert argmax.dtype == torch.uint8 and not argmax.requires_grad
    want, index = F.max_pool2d(F.relu(x.detach()), 3, 2, return_indices=True)
    assert torch.equal(y.detach(), want)
    # 255 where nothing in the window is positive, else the position in the window of torch's own index
    row, col = index // 9 - torch.arange(4).view(4, 1) * 2, index % 9 - torch.arange(4) * 2
    assert torch.equal(argmax, torch.where(want > 0, row * 3 + col, 255).to(torch.uint8))
