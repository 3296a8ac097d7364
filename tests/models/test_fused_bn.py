"""The fused batch norm → ReLU kernel (training mode) against torch's layers run apart: outputs, gradients, running
statistics; where it is left out; and every batch-norm variant training through it."""

import pytest
import torch
from torch import nn

import alexnet
from alexnet.models import fused_bn
from alexnet.models.layers import Stack


@pytest.fixture(scope="module", autouse=True)
def _kernel():
    if fused_bn.kernel() is None:
        pytest.skip("the fused batch-norm kernel cannot be built here (no C++ compiler or ninja)")


@pytest.fixture
def calls(monkeypatch) -> list:
    """Each call of the fused layer, recorded (the kernel still runs)."""
    seen: list = []
    original = fused_bn.batch_norm_relu_layer
    monkeypatch.setattr(fused_bn, "batch_norm_relu_layer", lambda *a: seen.append(a) or original(*a))
    return seen


def _pair(c: int, dim: int, momentum: float | None = 0.1):
    torch.manual_seed(1)
    bn = (nn.BatchNorm2d if dim == 4 else nn.BatchNorm1d)(c, momentum=momentum)
    with torch.no_grad():  # not the identity init, so the weight's and the bias's gradients both matter
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    return Stack(bn, nn.ReLU())


def _input(shape, dtype, offset=5.0):
    torch.manual_seed(2)
    # A mean well away from 0 against its spread: what the sums' shift is for.
    x = (torch.randn(shape) * 3 + offset).to(dtype)
    return x.contiguous(memory_format=torch.channels_last) if len(shape) == 4 else x


def _run(stack, x, grad, fused: bool, monkeypatch):
    monkeypatch.setenv("ALEXNET_FUSED_BN", "1" if fused else "0")
    x = x.detach().clone().requires_grad_()
    stack.zero_grad()
    y = stack(x)
    y.backward(grad)
    bn = stack[0]
    return y, x.grad, bn.weight.grad.clone(), bn.bias.grad.clone(), bn.running_mean.clone(), bn.running_var.clone()


@pytest.mark.parametrize("shape", [(4, 48, 6, 5), (3, 7, 5, 3), (32, 24), (2, 1000)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_fused_kernel_equals_batch_norm_and_relu_apart(shape, dtype, calls, monkeypatch):
    apart, fused = _pair(shape[1], len(shape)), _pair(shape[1], len(shape))
    x = _input(shape, dtype)
    torch.manual_seed(3)
    grad = torch.randn(shape).to(dtype)
    want = _run(apart, x, grad, False, monkeypatch)
    assert not calls
    got = _run(fused, x, grad, True, monkeypatch)
    assert len(calls) == 1
    assert got[0].dtype == dtype and got[0].stride() == x.stride()
    if dtype == torch.float32:
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4)
    else:  # torch's bf16 batch norm and ours both compute in float: outputs a bf16 rounding apart at most
        torch.testing.assert_close(got[0].float(), want[0].float(), rtol=1e-2, atol=2e-2)
        scale = want[1].float().abs().max()
        torch.testing.assert_close(got[1].float() / scale, want[1].float() / scale, rtol=0, atol=2e-2)
        for g, w in zip(got[2:], want[2:]):
            torch.testing.assert_close(g, w, rtol=2e-2, atol=2e-2)
    assert torch.equal(fused[0].num_batches_tracked, apart[0].num_batches_tracked)


def test_the_cumulative_average_without_momentum_is_the_layers(monkeypatch):
    apart, fused = _pair(8, 4, momentum=None), _pair(8, 4, momentum=None)
    for step in range(3):
        x = _input((4, 8, 3, 3), torch.float32, offset=step)
        grad = torch.ones(4, 8, 3, 3)
        want, got = _run(apart, x, grad, False, monkeypatch), _run(fused, x, grad, True, monkeypatch)
        torch.testing.assert_close(got[4:], want[4:])
    assert int(fused[0].num_batches_tracked) == 3


def test_the_backward_masks_what_the_forward_zeroed(monkeypatch):
    # Channels whose values the ReLU zeroes entirely get no gradient through y: their bias gradient is 0.
    stack = _pair(4, 4)
    with torch.no_grad():
        stack[0].bias.copy_(torch.tensor([-100.0, 100.0, -100.0, 100.0]))
    *_, gb, _, _ = _run(stack, _input((2, 4, 3, 3), torch.float32), torch.ones(2, 4, 3, 3), True, monkeypatch)
    assert torch.equal(gb[[0, 2]], torch.zeros(2)) and torch.allclose(gb[[1, 3]], torch.full((2,), 18.0))


def test_nan_propagates_as_through_the_layers(monkeypatch):
    x = _input((2, 6, 3, 3), torch.float32)
    x[0, 2, 1, 1] = float("nan")
    got = _run(_pair(6, 4), x, torch.ones_like(x), True, monkeypatch)
    want = _run(_pair(6, 4), x, torch.ones_like(x), False, monkeypatch)
    assert torch.equal(got[0].isnan(), want[0].isnan()) and got[0][:, 2].isnan().all()
    torch.testing.assert_close(got[0].nan_to_num(), want[0].nan_to_num())


def test_the_layers_run_apart_where_the_kernel_does_not_apply(calls):
    stack = _pair(8, 4)
    x = _input((2, 8, 4, 4), torch.float32)
    stack(x.contiguous())  # channels first: the kernel reads rows of channels
    stack(x.half())  # a dtype it does not take
    stack.eval()(x)  # eval mode: the running statistics, an affine map
    stack.train()
    seen = []
    stack[1].register_forward_hook(lambda m, i, o: seen.append(o))
    stack(x)  # a hook must see the ReLU's own output
    assert not calls and len(seen) == 1
    sync = Stack(nn.SyncBatchNorm(8), nn.ReLU())  # its statistics span the processes: never the kernel
    assert not fused_bn.usable(x, sync[0]) and fused_bn.usable(x, stack[0])
    one = _pair(8, 2)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        one(torch.randn(1, 8))  # torch's own error, not the kernel's
    assert not calls


@pytest.mark.parametrize("name", [m for m in alexnet.list_models() if alexnet.models.get_spec(m).norm == "batch"])
def test_every_batch_norm_variant_trains_through_the_fused_kernel(name, calls, monkeypatch):
    """Each batch norm followed by a ReLU goes through the kernel in training, conv stack and classifier; the
    outputs, the gradients and the running statistics are the layers' run apart."""
    torch.manual_seed(4)
    fused = alexnet.create_model(name, width=0.25, num_classes=10).to(memory_format=torch.channels_last)
    apart = alexnet.create_model(name, width=0.25, num_classes=10).to(memory_format=torch.channels_last)
    apart.load_state_dict(fused.state_dict())
    size = alexnet.models.get_spec(name).input_size
    x = torch.randn(4, fused.in_channels, size, size).contiguous(memory_format=torch.channels_last)
    outs = []
    for model, on in ((fused, "1"), (apart, "0")):
        monkeypatch.setenv("ALEXNET_FUSED_BN", on)
        torch.manual_seed(5)  # the same dropout masks: the kernel draws no random numbers
        out = model(x)
        out.square().sum().backward()
        outs.append((out, [p.grad for p in model.parameters()], [b.clone() for b in model.buffers()]))
    modules = list(fused.modules())
    pairs = [(a, b) for a, b in zip(modules, modules[1:]) if type(b) is nn.ReLU and "BatchNorm" in type(a).__name__]
    assert len(calls) == len(pairs) > 0
    (out, grads, buffers), (want, want_grads, want_buffers) = outs
    torch.testing.assert_close(out, want, rtol=1e-4, atol=1e-4)
    # Sums in another order through a whole network: each tensor equal to a thousandth of its largest value (or of
    # the largest gradient's, for the convolutions' biases before a batch norm, whose gradients are 0 up to rounding).
    floor = max(w.abs().max() for w in want_grads) * 1e-3
    for g, w in zip(grads + buffers, want_grads + want_buffers):
        scale = w.float().abs().max().clamp(min=floor)
        torch.testing.assert_close(g.float() / scale, w.float() / scale, rtol=0, atol=1e-3)


def test_the_operator_has_shapes_for_compilers():
    # The fake implementations give the outputs' shapes and layouts without running the kernel.
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        x = torch.empty(2, 8, 4, 4).contiguous(memory_format=torch.channels_last)
        w = torch.empty(8)
        y, mean, var = fused_bn.batch_norm_relu(x, w, w, 1e-5)
        gx, gw, gb = fused_bn.batch_norm_relu_backward(y, x, w, w, mean, var, 1e-5)
    assert y.shape == gx.shape == x.shape and y.is_contiguous(memory_format=torch.channels_last)
    assert mean.shape == var.shape == gw.shape == gb.shape == (8,) and mean.dtype == torch.float32


def test_a_hook_on_every_module_sees_the_layers_own_backward(monkeypatch):
    monkeypatch.setenv("ALEXNET_FUSED_BN", "1")
    stack = _pair(8, 4)
    x = _input((2, 8, 4, 4), torch.float32).requires_grad_()
    seen = []
    handle = nn.modules.module.register_module_full_backward_hook(lambda m, gi, go: seen.append(type(m).__name__))
    try:
        stack(x).sum().backward()
    finally:
        handle.remove()
    assert seen == ["ReLU", "BatchNorm2d", "Stack"]
