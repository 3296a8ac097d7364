"""`gemv`: the batch-1 bf16 fc kernel (AVX512-BF16) equals the product to bf16 rounding, keeps NaN, and runs only
where it was measured: inference at batch 1 in bf16, on a CPU with AVX512-BF16 and no AMX."""

import pytest
import torch
import torch.nn.functional as F

from alexnet.models import gemv
from alexnet.models.layers import Linear

needs_kernel = pytest.mark.skipif(gemv.kernel() is None, reason="no AVX512-BF16 build of the kernel on this CPU")


def _within_bf16_rounding(got: torch.Tensor, weight: torch.Tensor, x: torch.Tensor, bias: torch.Tensor | None):
    # The exact sum of the bf16 products (fp64), against the kernel's fp32 sums rounded once to bf16: half a bf16
    # step of the result, plus fp32 summation over |w|·|x|.
    exact = weight.double() @ x.double() + (0 if bias is None else bias.double())
    scale = weight.double().abs() @ x.double().abs()
    assert got.dtype == torch.bfloat16 and got.shape == exact.shape
    assert ((got.double() - exact).abs() <= exact.abs() * 2**-8 + scale * 2**-20 + 1e-30).all()


@needs_kernel
@pytest.mark.parametrize(
    "out_features, in_features",
    [(4096, 9216), (1000, 4096), (7, 33), (5, 31), (1, 1), (13, 64)],  # fc6, fc8; tails of rows and of columns
)
@pytest.mark.parametrize("with_bias", [True, False])
def test_the_kernel_is_the_product_to_bf16_rounding(out_features, in_features, with_bias):
    torch.manual_seed(0)
    weight = torch.randn(out_features, in_features).bfloat16()
    x = torch.randn(in_features).bfloat16()
    bias = torch.randn(out_features).bfloat16() if with_bias else None
    _within_bf16_rounding(gemv.kernel().gemv(weight, x, bias), weight, x, bias)


@needs_kernel
def test_a_nan_or_infinity_in_the_input_reaches_the_output():
    weight = torch.randn(9, 70).bfloat16()
    for bad in (float("nan"), float("inf")):
        x = torch.randn(70).bfloat16()
        x[65] = bad  # in the tail of the row
        assert not torch.isfinite(gemv.kernel().gemv(weight, x)).any()


@pytest.fixture
def calls(monkeypatch):
    """The kernel's calls, counted; the CPU taken as one it runs on (its arithmetic is tested above)."""
    monkeypatch.setattr(gemv, "cpu_fits", lambda: True)
    seen = []
    monkeypatch.setattr(
        gemv, "kernel", lambda: type("K", (), {"gemv": lambda w, x, b: seen.append(1) or x.new_ones(w.shape[0])})
    )
    return seen


def test_it_runs_at_batch_1_in_bf16_inference_only(calls, monkeypatch):
    fc = Linear(64, 16).bfloat16()
    x = torch.randn(1, 64).bfloat16()
    with torch.no_grad():
        assert torch.equal(fc(x), torch.ones(1, 16, dtype=torch.bfloat16)) and len(calls) == 1  # taken
        fc(torch.randn(2, 64).bfloat16())  # a batch: oneDNN's product
        fc.float()(x.float())  # fp32
        fc.bfloat16()
        with torch.autocast("cpu", torch.bfloat16):
            fc(x)  # bf16 throughout under autocast: taken
        assert len(calls) == 2
        monkeypatch.setenv("ALEXNET_GEMV", "0")
        fc(x)
        monkeypatch.delenv("ALEXNET_GEMV")
    fc(x)  # the weight needs a gradient
    assert len(calls) == 2
    with torch.no_grad():
        traced = torch.jit.trace(fc, x, check_trace=False)  # tracers write the standard product into their files
    assert "aten::linear" in str(traced.graph) and len(calls) == 2
    monkeypatch.setattr(gemv, "cpu_fits", lambda: False)  # a CPU with AMX (amx_fc's) or without AVX512-BF16
    with torch.no_grad():
        fc(x)
    assert len(calls) == 2


@pytest.mark.parametrize(
    "flags, fits",
    [
        ({"avx2", "avx512f", "avx512_bf16", "avx512_vnni"}, True),  # AMD EPYC Zen 4: measured
        ({"avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16"}, False),  # Xeon with AMX: amx_fc's mv
        ({"avx2", "avx512f", "avx512_vnni"}, False),
        (set(), False),
    ],
)
def test_the_cpus_it_is_for(monkeypatch, flags, fits):
    from alexnet import native

    monkeypatch.setattr(native, "cpu_flags", lambda: flags)
    assert gemv.cpu_fits.__wrapped__() is fits


@needs_kernel
def test_alexnet_owt_at_batch_1_predicts_as_at_batch_2(monkeypatch):
    # The whole model through the kernel (fc6-fc8) against oneDNN's product of the same image in a batch of two.
    import alexnet

    torch.manual_seed(0)
    monkeypatch.setattr(gemv, "cpu_fits", lambda: True)
    model = alexnet.create_model("alexnet_owt", num_classes=10).eval().bfloat16()
    x = torch.randn(1, 3, 224, 224).bfloat16()
    with torch.no_grad():
        one, two = model(x)[0].float(), model(torch.cat([x, x]))[0].float()
    torch.testing.assert_close(one, two, rtol=0.05, atol=0.05 * two.abs().max().item())
    assert F.cosine_similarity(one, two, dim=0) > 0.999
