"""The fused CPU kernels as CPUs without AVX-512 run them (AMD Zen 1-3, Intel client and pre-Skylake-SP servers):
each source built with ``-mno-avx512f`` (8-lane vectors, AVX's 12-bit rsqrt, the scratch-buffer LRN) and held to the
layers apart, as this CPU's own build is in the tests beside this one. On an AVX-512 machine (CI's) those code paths
would otherwise be compiled by users only."""

import pytest
import torch
import torch.nn.functional as F

from alexnet import native
from alexnet.models import LocalResponseNorm, fused_bn, fused_lrn, fused_pool

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def avx2():
    """The three kernels built for AVX2 (about 10 s each, once)."""
    if "avx2" not in native.cpu_flags():
        pytest.skip("this CPU has no AVX2")
    builds = {}
    for module, name in ((fused_lrn, "lrn"), (fused_pool, "relu_pool"), (fused_bn, "bn_relu")):
        try:
            builds[module] = native.build(f"alexnet_{name}_avx2", module._SOURCE, ("-mno-avx512f",))
        except Exception as err:  # no compiler or ninja: the kernels' own tests skip the same way
            pytest.skip(f"the AVX2 build of {name} failed: {err}")
    assert builds[fused_pool].lanes() == 8  # the build took the flag: one AVX2 register of floats a vector
    return builds


def _use(monkeypatch, avx2, module):
    monkeypatch.setattr(module, "kernel", lambda: avx2[module])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    ("channels", "groups", "convention"), [(96, 2, "paper"), (20, 1, "paper"), (64, 2, "caffe"), (32, 1, "paper")]
)
def test_the_avx2_lrn_equals_the_formula_forward_gradient_and_pooled(
    avx2, monkeypatch, channels, groups, convention, dtype
):
    _use(monkeypatch, avx2, fused_lrn)
    torch.manual_seed(11)
    layer = LocalResponseNorm(5, 1e-4, 0.75, 2.0, convention, groups)
    x = (torch.randn(3, channels, 7, 5) * 30).relu()
    x[0, 3, 1, 1] = float("nan")  # propagates along its channel window, as through the formula
    x[2, 5, 4, 2], x[1, 1, 0, 0] = 1e20, -3e19  # squares past float's range: x / inf = 0 in the formula
    grad = torch.randn(3, channels, 7, 5)
    xr = x.clone().requires_grad_()
    want = layer.reference(xr)
    (want * grad).nan_to_num().sum().backward()
    xa = x.to(dtype).contiguous(memory_format=torch.channels_last).requires_grad_()
    got = layer(xa)
    (got.float() * grad).nan_to_num().sum().backward()
    tol = dict(rtol=2e-2, atol=2e-2) if dtype == torch.bfloat16 else dict(rtol=1e-5, atol=1e-5)
    assert torch.equal(got.isnan(), want.isnan()) and got.isnan().any()
    torch.testing.assert_close(got.float().nan_to_num(), want.detach().nan_to_num(), **tol)
    assert torch.equal(xa.grad.isnan(), xr.grad.isnan())
    torch.testing.assert_close(xa.grad.float().nan_to_num(), xr.grad.nan_to_num(), **tol)
    with torch.inference_mode():
        pooled = fused_lrn.lrn_pool(x.to(dtype), 5, layer._scale, 0.75, 2.0, groups, True, 3, 2)
        apart = F.max_pool2d(layer(x.to(dtype).relu()), 3, 2)  # the same build's LRN between torch's layers
    assert torch.equal(pooled.isnan(), apart.isnan())
    torch.testing.assert_close(
        pooled.nan_to_num(),
        apart.nan_to_num(),
        rtol=1e-5 if dtype == torch.float32 else 0,
        atol=1e-6 if dtype == torch.float32 else 0,
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("channels", "kernel", "stride", "padding"), [(96, 3, 2, 0), (20, 3, 2, 1), (8, 2, 2, 0)])
def test_the_avx2_relu_max_pool_equals_torchs_layers(avx2, monkeypatch, channels, kernel, stride, padding, dtype):
    _use(monkeypatch, avx2, fused_pool)
    torch.manual_seed(12)
    x = torch.randn(2, channels, 9, 11).to(dtype).contiguous(memory_format=torch.channels_last)
    x[1, 4, 2, 3] = float("nan")
    grad = torch.randn(2, channels, (9 + 2 * padding - kernel) // stride + 1, (11 + 2 * padding - kernel) // stride + 1)
    for relu in (True, False):
        xr = x.clone().requires_grad_()
        want = F.max_pool2d(xr.relu() if relu else xr, kernel, stride, padding)
        (want.float() * grad).nan_to_num().sum().backward()
        xa = x.clone().requires_grad_()
        got, _ = fused_pool.relu_max_pool(xa, kernel, stride, padding, relu)
        (got.float() * grad).nan_to_num().sum().backward()
        values = fused_pool.relu_max_pool_values(x, kernel, stride, padding, relu)
        for out in (got, values):
            assert torch.equal(out.isnan(), want.isnan()) and out.isnan().any()
            assert torch.equal(out.nan_to_num(), want.detach().nan_to_num())
        # float: the same sums in the same order; bf16: torch's backward rounds its sums of overlapping windows
        tol = dict(rtol=0, atol=0) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
        torch.testing.assert_close(xa.grad.float().nan_to_num(), xr.grad.float().nan_to_num(), **tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(4, 48, 5, 5), (3, 20, 4, 6), (64, 1024)])  # two vectors a pixel; a remainder; fc
def test_the_avx2_batch_norm_relu_equals_torchs_layers(avx2, monkeypatch, shape, dtype):
    _use(monkeypatch, avx2, fused_bn)
    torch.manual_seed(13)
    x = (torch.randn(*shape) * 3 + 1).to(dtype)
    x = x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x
    weight, bias = torch.rand(shape[1]) + 0.5, torch.randn(shape[1])
    grad = torch.randn(*shape)
    xr, wr, br = (t.clone().float().requires_grad_() for t in (x, weight, bias))
    want = F.batch_norm(xr, None, None, wr, br, training=True, eps=1e-5).relu()
    (want * grad).sum().backward()
    xa, wa, ba = x.clone().requires_grad_(), weight.clone().requires_grad_(), bias.clone().requires_grad_()
    got, mean, var = fused_bn.batch_norm_relu(xa, wa, ba, 1e-5)
    (got.float() * grad).sum().backward()
    dims = [d for d in range(x.dim()) if d != 1]
    tol = dict(rtol=2e-2, atol=2e-2) if dtype == torch.bfloat16 else dict(rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got.float(), want.detach(), **tol)
    torch.testing.assert_close(mean, x.float().mean(dims), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(var, x.float().var(dims, unbiased=False), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(xa.grad.float(), xr.grad, **tol)
    torch.testing.assert_close(wa.grad, wr.grad, rtol=1e-3, atol=1e-3 if dtype == torch.float32 else 5e-2)
    torch.testing.assert_close(ba.grad, br.grad, rtol=1e-3, atol=1e-3 if dtype == torch.float32 else 5e-2)
