"""`Linear` and `amx_fc`: bf16 fc layers with their operands reordered for AMX give autocast's ``F.linear`` and its
gradients, in both orders of the forward; they are taken only in bf16, for large weights, on a CPU with AMX, and
never into a program written to a file."""

import pytest
import torch
import torch.nn.functional as F

from alexnet.models import amx_fc
from alexnet.models.layers import Linear

OUT, IN = 256, 96  # 24,576 weights: the threshold is lowered for the tests; rows up to OUT / 4 take (W·xᵀ)ᵀ


@pytest.fixture
def amx(monkeypatch):
    """The path runs on CPUs with AMX and large weights; its arithmetic is tested on any CPU at a small size."""
    monkeypatch.setattr(amx_fc, "amx", lambda: True)
    monkeypatch.setattr(amx_fc, "MIN_WEIGHTS", OUT * IN)
    monkeypatch.delenv("ALEXNET_AMX_FC", raising=False)


def _through_amx_fc(y: torch.Tensor) -> bool:
    return type(y.grad_fn).__name__ == "_LinearBackward"


def _grads(*tensors: torch.Tensor | None) -> list[torch.Tensor]:
    return [t.grad.clone() for t in tensors if t is not None]


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("rows", [1, 5, OUT // 4, OUT // 4 + 1])  # F.linear's order, (W·xᵀ)ᵀ twice, F.linear's
def test_under_autocast_an_fc_layer_gives_f_linear_and_its_gradients(amx, bias, rows):
    """fp32 weights under autocast (bf16 training without bf16 copies): the output and every gradient as autocast's
    F.linear gives them, to bf16's rounding (the products are summed in another order), the weight's gradient fp32
    on the fp32 weight."""
    torch.manual_seed(0)
    fc = Linear(IN, OUT, bias=bias)
    x = torch.randn(rows, IN, requires_grad=True)
    ref_x = x.detach().clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = fc(x)
        ref = F.linear(ref_x, fc.weight, fc.bias)
    assert _through_amx_fc(y) and y.dtype == ref.dtype == torch.bfloat16 and y.is_contiguous()
    torch.testing.assert_close(y, ref, rtol=2e-2, atol=2e-2)
    g = torch.randn_like(ref)
    y.backward(g)
    got = _grads(x, fc.weight, fc.bias)
    fc.zero_grad()
    ref.backward(g)
    for a, b in zip(got, _grads(ref_x, fc.weight, fc.bias), strict=True):
        assert a.dtype == b.dtype and a.stride() == b.stride()
        torch.testing.assert_close(a, b, rtol=2e-2, atol=5e-2)


def test_bf16_weights_without_autocast_give_f_linear_and_bf16_gradients(amx):
    """bf16 weights and input, no autocast: the bf16 copies of training (`alexnet.training.bf16_copies`) and the
    weights cast once for inference."""
    torch.manual_seed(0)
    fc = Linear(IN, OUT).to(torch.bfloat16)
    x = torch.randn(16, IN, dtype=torch.bfloat16, requires_grad=True)
    y = fc(x)
    assert _through_amx_fc(y)
    ref_x = x.detach().clone().requires_grad_()
    ref = F.linear(ref_x, fc.weight, fc.bias)
    torch.testing.assert_close(y, ref, rtol=2e-2, atol=2e-2)
    g = torch.randn_like(ref)
    y.backward(g)
    got = _grads(x, fc.weight, fc.bias)
    fc.zero_grad()
    ref.backward(g)
    for a, b in zip(got, _grads(ref_x, fc.weight, fc.bias), strict=True):
        assert a.dtype == torch.bfloat16 and a.is_contiguous()
        torch.testing.assert_close(a, b, rtol=2e-2, atol=5e-2)
    with torch.inference_mode():
        torch.testing.assert_close(fc(x), ref.detach(), rtol=2e-2, atol=2e-2)


def test_a_frozen_layer_computes_only_the_input_gradient(amx):
    fc = Linear(IN, OUT).to(torch.bfloat16).requires_grad_(False)
    x = torch.randn(8, IN, dtype=torch.bfloat16, requires_grad=True)
    y = fc(x)
    assert _through_amx_fc(y)
    y.float().sum().backward()
    assert fc.weight.grad is None and fc.bias.grad is None
    torch.testing.assert_close(x.grad, fc.weight.sum(0).expand(8, IN), rtol=2e-2, atol=5e-2)


def test_it_is_taken_only_in_bf16_for_large_weights_on_amx(amx, monkeypatch):
    x = torch.randn(8, IN, requires_grad=True)
    fc = Linear(IN, OUT)
    assert not _through_amx_fc(fc(x))  # fp32, no autocast: torch's (MKL's) product
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert _through_amx_fc(fc(x))
        assert not _through_amx_fc(Linear(IN, OUT - 1)(x))  # under the threshold
        monkeypatch.setenv("ALEXNET_AMX_FC", "0")
        assert not _through_amx_fc(fc(x))
        monkeypatch.delenv("ALEXNET_AMX_FC")
        monkeypatch.setattr(amx_fc, "amx", lambda: False)  # a CPU without AMX
        assert not _through_amx_fc(fc(x))


def test_outside_autocast_torchs_dtype_error_stands(amx):
    fc = Linear(IN, OUT).to(torch.bfloat16)
    with pytest.raises(RuntimeError):
        fc(torch.randn(8, IN))  # fp32 input, bf16 weight: F.linear refuses, and so does the layer


@pytest.mark.slow
def test_an_exported_program_holds_nn_linears_op(amx):
    fc = Linear(IN, OUT).to(torch.bfloat16)
    program = torch.export.export(fc, (torch.randn(8, IN, dtype=torch.bfloat16),))
    graph = str(program.graph)
    assert "aten.linear" in graph and "mm" not in graph.replace("aten.linear", "")
