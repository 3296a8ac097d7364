"""`Linear` and `onednn_fc`: the fc layers through oneDNN's inner product on AMD CPUs equal nn.Linear, gradients
included, in eager mode and under torch.compile; they are taken only in fp32 on AMD, and never into a program
written to a file."""

import pytest
import torch
import torch._inductor.config as inductor_config
import torch.nn.functional as F

from alexnet import native
from alexnet.models import onednn_fc
from alexnet.models.layers import Linear

ONEDNN_OP = hasattr(torch.ops.mkldnn, "_linear_pointwise") and torch.backends.mkldnn.is_available()
needs_onednn = pytest.mark.skipif(not ONEDNN_OP, reason="this torch has no oneDNN inner product")


@pytest.fixture
def amd(monkeypatch):
    """The oneDNN path runs on AMD CPUs (where MKL's sgemm was measured slow); its arithmetic is tested on any.
    Returns the first operand's shape of each inner product computed."""
    monkeypatch.setattr(onednn_fc, "mkl_slow", lambda: True)
    calls = []
    product = onednn_fc._inner_product
    monkeypatch.setattr(onednn_fc, "_inner_product", lambda *a: calls.append(a[0].shape) or product(*a))
    return calls


def _grads(*tensors: torch.Tensor | None) -> list[torch.Tensor]:
    return [t.grad.clone() for t in tensors if t is not None]


@needs_onednn
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("rows", [1, 7])
def test_an_fc_layer_through_onednn_gives_nn_linear_and_its_gradients(amd, bias, rows):
    torch.manual_seed(0)
    fc = Linear(300, 70, bias=bias)
    x = torch.randn(rows, 300, requires_grad=True)
    ref_x = x.detach().clone().requires_grad_()
    y = fc(x)
    assert amd == [(rows, 300)]  # the forward went to oneDNN
    ref = F.linear(ref_x, fc.weight, fc.bias)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(ref)
    y.backward(g)
    assert amd == [(rows, 300), (70, rows)]  # so did the weight gradient: (out, N) × (in, N)ᵀ
    got = _grads(x, fc.weight, fc.bias)
    fc.zero_grad()
    ref.backward(g)
    for a, b in zip(got, _grads(ref_x, fc.weight, fc.bias), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    with torch.inference_mode():  # inference records nothing to go back through
        torch.testing.assert_close(fc(x), ref.detach(), rtol=1e-5, atol=1e-5)


@needs_onednn
def test_a_frozen_fc_layer_through_onednn_computes_only_the_gradients_asked_for(amd):
    fc = Linear(16, 4)
    fc.requires_grad_(False)
    x = torch.randn(3, 16, requires_grad=True)
    fc(x).sum().backward()
    assert amd == [(3, 16)] and fc.weight.grad is None  # no weight gradient computed
    torch.testing.assert_close(x.grad, fc.weight.sum(0).expand(3, 16))


@needs_onednn
@pytest.mark.slow
def test_a_compiled_fc_layer_runs_onednn_forward_and_backward(amd):
    """Under torch.compile (inductor, as `alexnet train --compile` and the bench's compiled case) the layer is one
    ``alexnet.linear`` node forward and backward, not MKL's addmm; an exported program holds ``nn.Linear``'s op."""
    torch.manual_seed(0)
    fc = Linear(64, 10)
    x = torch.randn(5, 64, requires_grad=True)
    ref_x = x.detach().clone().requires_grad_()
    graphs = []

    def recorded(gm, example_inputs):
        graphs.append(str(gm.graph))
        return gm.forward

    torch.compile(fc, backend=recorded, fullgraph=True)(x)
    assert len(graphs) == 1 and "alexnet.linear" in graphs[0], graphs
    amd.clear()
    # Not from inductor's caches: a cached program kept a changed backward formula's old code.
    with inductor_config.patch(force_disable_caches=True):
        y = torch.compile(fc, fullgraph=True)(x)
        assert amd == [(5, 64)]
        y.square().sum().backward()
    assert amd == [(5, 64), (10, 5)]  # the weight gradient too
    got = _grads(x, fc.weight, fc.bias)
    fc.zero_grad()
    ref = F.linear(ref_x, fc.weight, fc.bias)
    ref.square().sum().backward()
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(got, _grads(ref_x, fc.weight, fc.bias), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    program = torch.export.export(fc, (x.detach(),))
    assert "alexnet" not in str(program.graph_module.graph)


def test_an_fc_layer_goes_to_onednn_only_in_fp32_on_an_amd_cpu(amd, monkeypatch):
    fc, x = Linear(8, 4), torch.randn(2, 8)
    assert onednn_fc.usable(x, fc.weight)
    with torch.autocast("cpu", torch.bfloat16):
        assert not onednn_fc.usable(x, fc.weight)  # autocast's bf16 product goes to oneDNN already
    assert not onednn_fc.usable(x.bfloat16(), fc.weight) and not onednn_fc.usable(torch.randn(2, 3, 8), fc.weight)
    monkeypatch.setenv("ALEXNET_ONEDNN_FC", "0")
    assert not onednn_fc.usable(x, fc.weight)
    monkeypatch.delenv("ALEXNET_ONEDNN_FC")
    monkeypatch.setattr(onednn_fc, "mkl_slow", lambda: False)
    assert not onednn_fc.usable(x, fc.weight)  # an Intel CPU: MKL's own
    assert torch.equal(fc(x), F.linear(x, fc.weight, fc.bias)) and amd == []
    monkeypatch.setattr(onednn_fc, "mkl_slow", lambda: True)
    traced = torch.jit.trace(fc, x)  # tracers write the standard linear layer
    assert "aten::linear" in str(traced.graph) and "mkldnn" not in str(traced.graph)


@pytest.mark.parametrize(
    ("vendor", "slow"), [("AuthenticAMD", True), ("GenuineIntel", False), ("HygonGenuine", False), (None, False)]
)
def test_mkl_counts_as_slow_on_amd_cpus_only(vendor, slow, tmp_path, monkeypatch):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nvendor_id\t: {vendor}\nflags\t\t: fpu avx2\n" if vendor else "")
    assert native.cpu_vendor(cpuinfo) == (vendor or "")
    monkeypatch.setattr(native, "cpu_vendor", lambda: native._cpuinfo_line("vendor_id", cpuinfo))
    onednn_fc.mkl_slow.cache_clear()
    try:
        assert onednn_fc.mkl_slow() is (slow and ONEDNN_OP)
    finally:
        onednn_fc.mkl_slow.cache_clear()


@needs_onednn
def test_an_empty_batch_and_a_strided_input_train_as_through_nn_linear(amd):
    # oneDNN makes no product over an empty batch (the weight gradient's inner dimension): that batch goes to
    # nn.Linear. A strided input (a transpose, every other column) goes to oneDNN.
    torch.manual_seed(0)
    fc = Linear(8, 4)
    for x, through_onednn in (
        (torch.empty(0, 8), False),
        (torch.randn(8, 3).t(), True),
        (torch.randn(3, 16)[:, ::2], True),
    ):
        amd.clear()
        fc.zero_grad()
        x.requires_grad_()
        y = fc(x)
        y.square().sum().backward()
        assert bool(amd) is through_onednn
        got = _grads(x, fc.weight, fc.bias)
        ref_x = x.detach().clone().requires_grad_()
        fc.zero_grad()
        F.linear(ref_x, fc.weight, fc.bias).square().sum().backward()
        for a, b in zip(got, _grads(ref_x, fc.weight, fc.bias), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@needs_onednn
def test_an_input_of_the_wrong_width_gets_torchs_shape_error_not_onednns(amd):
    # An image of the wrong size reaches fc6 with the wrong number of features (alexnet_paper at 224 px: 6,400 for
    # 9,216); the message says so, as nn.Linear's does, instead of oneDNN's "could not create a primitive descriptor".
    fc = Linear(9, 4)
    with pytest.raises(RuntimeError, match=r"shapes cannot be multiplied \(2x6 and 9x4\)"):
        fc(torch.randn(2, 6))
    fc.bias = torch.nn.Parameter(torch.zeros(3))  # a bias of the wrong size: torch's broadcasting error
    with pytest.raises(RuntimeError, match=r"expanded size of the tensor \(4\) must match the existing size \(3\)"):
        fc(torch.randn(2, 9))
    assert not amd
