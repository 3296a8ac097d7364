"""LRN against the paper's formula written out, and the per-tower property."""

import pytest
import torch

import alexnet
from alexnet.models import LocalResponseNorm


def paper_lrn(a, n=5, k=2.0, alpha=1e-4, beta=0.75):
    """§3.3 literally: b_i = a_i / (k + α Σ_{j=max(0, i-n/2)}^{min(N-1, i+n/2)} a_j²)^β, over all N channels."""
    out = torch.empty_like(a)
    big_n = a.shape[1]
    for i in range(big_n):
        lo, hi = max(0, i - n // 2), min(big_n - 1, i + n // 2)
        s = sum(a[:, j] ** 2 for j in range(lo, hi + 1))
        out[:, i] = a[:, i] / (k + alpha * s) ** beta
    return out


@pytest.mark.parametrize("n", [3, 5, 7])
def test_lrn_equals_paper_formula(n):
    torch.manual_seed(0)
    # Post-ReLU activations large enough that α Σ a² matters against k: values up to ~30.
    a = (torch.randn(2, 16, 3, 3, dtype=torch.float64) * 30).relu()
    got = LocalResponseNorm(n, 1e-4, 0.75, 2.0, "paper")(a)
    assert torch.allclose(got, paper_lrn(a, n=n), rtol=1e-12, atol=0)
    assert not torch.allclose(got, a / 2.0**0.75)  # the sum term is not negligible


def test_caffe_convention_divides_alpha_by_n():
    torch.manual_seed(1)
    a = (torch.randn(2, 16, 3, 3, dtype=torch.float64) * 30).relu()
    ours = LocalResponseNorm(5, 1e-4, 0.75, 1.0, "caffe")(a)
    assert torch.allclose(ours, paper_lrn(a, k=1.0, alpha=1e-4 / 5), rtol=1e-12)
    assert torch.allclose(ours, torch.nn.LocalResponseNorm(5, 1e-4, 0.75, 1.0)(a), rtol=1e-12)


def test_per_tower_windows_do_not_cross():
    torch.manual_seed(2)
    a = (torch.randn(1, 96, 4, 4, dtype=torch.float64) * 30).relu()
    lrn = LocalResponseNorm(5, 1e-4, 0.75, 2.0, "paper", groups=2)
    out = lrn(a)
    # Each tower equals the formula applied to its own 48 channels.
    assert torch.allclose(out[:, :48], paper_lrn(a[:, :48]), rtol=1e-12)
    assert torch.allclose(out[:, 48:], paper_lrn(a[:, 48:]), rtol=1e-12)
    # Perturbing tower 2 (including the channel next to the boundary) leaves tower 1 unchanged.
    b = a.clone()
    b[:, 48:] += 100.0
    out_b = lrn(b)
    assert torch.equal(out_b[:, :48], out[:, :48])
    assert not torch.equal(out_b[:, 48:], out[:, 48:])
    # One tower across all channels does see the neighbour.
    across = LocalResponseNorm(5, 1e-4, 0.75, 2.0, "paper", groups=1)
    assert not torch.equal(across(b)[:, 47], across(a)[:, 47])


def test_paper_model_uses_per_tower_lrn():
    lrns = [m for m in alexnet.create_model("alexnet_paper").modules() if isinstance(m, LocalResponseNorm)]
    assert [(m.groups, m.size, m.alpha, m.beta, m.k, m.convention) for m in lrns] == [
        (2, 5, 1e-4, 0.75, 2.0, "paper")
    ] * 2
    one = [m for m in alexnet.create_model("alexnet_paper", groups=1).modules() if isinstance(m, LocalResponseNorm)]
    assert [m.groups for m in one] == [1, 1]


def test_lrn_channels_last_and_bf16():
    a = (torch.randn(2, 32, 5, 5) * 10).relu()
    lrn = LocalResponseNorm(5, 1e-4, 0.75, 2.0, groups=2)
    ref = lrn(a)
    assert torch.allclose(lrn(a.to(memory_format=torch.channels_last)), ref)
    assert torch.allclose(lrn(a.bfloat16()).float(), ref, rtol=2e-2, atol=1e-2)


def _fused_or_skip():
    from alexnet.models import fused_lrn

    if fused_lrn.kernel() is None:
        pytest.skip("the fused LRN kernel cannot be built here (no C++ compiler or ninja)")
    return fused_lrn


@pytest.mark.parametrize(
    ("n", "convention", "beta", "groups", "channels"),
    [
        (5, "paper", 0.75, 2, 24),
        (5, "caffe", 0.75, 1, 24),
        (9, "caffe", 0.75, 1, 64),
        (3, "paper", 0.6, 2, 12),
        (5, "paper", 0.75, 2, 96),
        (5, "paper", 0.75, 1, 16),  # the register forms (n = 5, β = 3/4, 16k channels a group): one vector a run
        (5, "caffe", 0.75, 2, 64),  # and two
    ],
)
def test_the_fused_kernel_equals_the_reference_forward_and_gradient(n, convention, beta, groups, channels):
    """The fused CPU kernel against the formula (its oracle): both conventions, a β that is not 0.75, per tower
    and across towers, NCHW and channels-last inputs; forward and gradient in fp32, and bf16 to bf16's precision."""
    fused = _fused_or_skip()
    # The kernel splits its 105 pixel rows between threads: two here (an xdist worker has one), so the split is
    # checked too.
    torch.set_num_threads(2)
    torch.manual_seed(3)
    layer = LocalResponseNorm(n, 1e-3, beta, 2.0, convention, groups)
    x = (torch.randn(3, channels, 7, 5) * 20).relu()
    grad = torch.randn(3, channels, 7, 5)
    for memory_format in (torch.contiguous_format, torch.channels_last):
        xa = x.clone().to(memory_format=memory_format).requires_grad_()
        ya = layer.reference(xa)
        (ya * grad).sum().backward()
        xb = x.clone().to(memory_format=memory_format).requires_grad_()
        assert fused.usable(xb, n)
        yb = layer(xb)
        (yb * grad).sum().backward()
        assert torch.allclose(ya, yb, rtol=1e-5, atol=1e-5), (ya - yb).abs().max()
        assert torch.allclose(xa.grad, xb.grad, rtol=1e-5, atol=1e-6), (xa.grad - xb.grad).abs().max()
    xh = x.bfloat16().requires_grad_()
    yh = layer(xh)
    (yh * grad.bfloat16()).sum().backward()
    assert yh.dtype == torch.bfloat16 and xh.grad.dtype == torch.bfloat16
    assert torch.allclose(yh.float(), ya.detach(), rtol=2e-2, atol=2e-2)
    assert torch.allclose(xh.grad.float(), xa.grad, rtol=3e-2, atol=3e-2)


def test_the_fused_kernel_equals_the_paper_formula_and_is_off_where_asked(monkeypatch):
    fused = _fused_or_skip()
    torch.manual_seed(4)
    a = (torch.randn(2, 16, 3, 3) * 30).relu()
    assert torch.allclose(LocalResponseNorm(5, 1e-4, 0.75, 2.0, "paper")(a), paper_lrn(a.double()).float(), rtol=1e-5)
    monkeypatch.setenv("ALEXNET_FUSED_LRN", "0")
    assert not fused.usable(a, 5)
    assert not fused.usable(a.double(), 5)  # float64 (the tests' oracle dtype) always takes the formula


def test_torch_compile_sees_one_operator_and_export_the_formula(monkeypatch):
    """Under torch.compile the layer is one ``alexnet::lrn`` node (no graph break), even compiled before any eager
    call has loaded the kernel; forward and gradient equal to the formula; torch.export traces the formula, so an
    exported program needs no alexnet to run."""
    from alexnet import native
    from alexnet.models import fused_lrn

    if fused_lrn.kernel() is None:
        pytest.skip("the fused kernel cannot be built here (no compiler)")
    monkeypatch.setattr(native, "_loaded", {})  # not loaded yet: the compiler meets the loading code, and its lock
    torch.manual_seed(0)
    layer = LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0)
    x = torch.randn(4, 16, 9, 9).contiguous(memory_format=torch.channels_last).requires_grad_()
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(str(gm.graph))
        return gm.forward

    y = torch.compile(layer, backend=backend, fullgraph=True)(x)
    assert len(graphs) == 1 and "alexnet.lrn" in graphs[0]
    y.sum().backward()
    compiled_grad, x.grad = x.grad.clone(), None
    reference = layer.reference(x)
    reference.sum().backward()
    assert torch.allclose(y, reference, atol=1e-5) and torch.allclose(compiled_grad, x.grad, atol=1e-5)
    program = torch.export.export(layer, (x.detach(),))
    assert "alexnet" not in str(program.graph_module.graph)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_training_keeps_only_the_input_and_inference_equals_the_formula(dtype):
    """Autograd keeps the layer's input alone for the backward (which recomputes the denominators), and without
    autograd the operator's output equals the formula's."""
    from alexnet.models import fused_lrn

    if fused_lrn.kernel() is None:
        pytest.skip("the fused kernel cannot be built here (no compiler)")
    layer = LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0, groups=2)
    x = (torch.randn(3, 16, 7, 7) * 30).relu().to(dtype).contiguous(memory_format=torch.channels_last)
    saved = []
    xg = x.clone().requires_grad_()
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        layer(xg)
    assert len(saved) == 1 and saved[0].shape == x.shape and saved[0].dtype == dtype
    with torch.no_grad():
        y = layer(x)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert torch.allclose(y.float(), layer.reference(x.float()), rtol=tol, atol=tol)


@pytest.mark.parametrize("shape", [(2, 0, 5, 5), (0, 96, 5, 5), (2, 96, 0, 5)])
def test_the_fused_kernel_takes_empty_tensors(shape):
    """No channels once divided the block size by zero in the C++ kernel: the process died of SIGFPE."""
    from alexnet.models import fused_lrn

    x = torch.zeros(*shape, requires_grad=True)
    assert fused_lrn.usable(x, 5)
    y = LocalResponseNorm(5, 1e-4, 0.75, 2.0, groups=1)(x)
    y.sum().backward()
    assert y.shape == x.grad.shape == shape


def _stage(x, relu, groups=2, n=5, kernel=3, stride=2, convention="paper"):
    """The layers apart: [ReLU], LRN (the fused kernel, itself tested against the formula above), max-pool."""
    x = torch.relu(x) if relu else x
    return torch.nn.functional.max_pool2d(LocalResponseNorm(n, 1e-4, 0.75, 2.0, convention, groups)(x), kernel, stride)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    ("shape", "groups", "n", "kernel", "stride", "relu"),
    [
        ((3, 96, 15, 13), 2, 5, 3, 2, True),  # conv1's stage: per tower, a 3 x 3 window at stride 2
        ((2, 20, 9, 10), 1, 3, 2, 2, False),  # no ReLU before the LRN; windows that do not overlap
        ((2, 18, 7, 7), 3, 7, 3, 1, True),  # stride 1: every row in three windows
        ((2, 32, 7, 9), 1, 5, 3, 1, True),  # the same where the paper's LRN takes the column maxima as it goes
        ((2, 64, 11, 9), 2, 5, 3, 2, False),  # and its towers of 32 without a ReLU
        ((1, 16, 3, 3), 1, 5, 3, 3, True),  # one output pixel
    ],
)
def test_the_fused_inference_stage_equals_relu_lrn_and_pool_apart(dtype, shape, groups, n, kernel, stride, relu):
    fused = _fused_or_skip()
    torch.manual_seed(5)
    x = (torch.randn(*shape) * 30).to(dtype)  # contiguous, not channels last: the kernel converts
    got = fused.lrn_pool(x, n, 1e-4, 0.75, 2.0, groups, relu, kernel, stride)
    want = _stage(x, relu, groups, n, kernel, stride)  # the fused LRN kernel alone between the two
    assert got.shape == want.shape and got.is_contiguous(memory_format=torch.channels_last)
    # bf16: the max of rounded values is the rounded max, so bit for bit; fp32: values at other places in a block
    # take the kernel's vector or scalar powers, an ulp apart.
    tol = dict(rtol=0, atol=0) if dtype == torch.bfloat16 else dict(rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got, want, **tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("channels", "groups", "stride"), [(96, 2, 2), (32, 1, 1), (20, 1, 2)])
def test_the_fused_stage_keeps_the_zero_the_layers_keep(dtype, channels, groups, stride):
    """Windows of zeros of both signs (ReLU passes -0, as torch's does, and LRN keeps the sign): torch's max-pool keeps
    the first of equal values, so the pooled zero's sign is that of the window's first in raster order; the fused
    stage's column maxima (taken as the LRN goes, or after) must keep the same one."""
    fused = _fused_or_skip()
    torch.manual_seed(9)
    x = torch.where(torch.rand(2, channels, 7, 9) < 0.5, -0.0, 0.0).to(dtype)
    got = fused.lrn_pool(x, 5, 1e-4, 0.75, 2.0, groups, True, 3, stride)
    want = _stage(x, True, groups, 5, 3, stride)
    assert (want == 0).all() and want.signbit().any() and (~want.signbit()).any()
    assert torch.equal(got.signbit(), want.signbit())


# the pool's one-at-a-time path; its vectors of 16 and the rest; its column maxima, which only rows without NaN take
@pytest.mark.parametrize("channels", [8, 20, 32])
def test_the_fused_stage_propagates_nan_as_the_layers_do(channels):
    fused = _fused_or_skip()
    x = torch.rand(1, channels, 5, 5)
    x[0, 3, 1, 1] = float("nan")  # in the pool windows of output (0, 0) and (0, 1), across LRN's channel window
    x[0, -1, 4, 4] = float("nan")
    got = fused.lrn_pool(x, 5, 1e-4, 0.75, 2.0, 1, True, 3, 2)
    want = _stage(x, True, groups=1)
    assert torch.equal(got.isnan(), want.isnan()) and got.isnan().any()
    torch.testing.assert_close(got.nan_to_num(), want.nan_to_num())


@pytest.mark.parametrize(("channels", "groups"), [(96, 2), (32, 1)])  # the paper's towers; one 32-channel group
def test_the_bf16_kernel_is_within_a_bf16_step_of_the_exact_lrn(channels, groups):
    """In bf16 the paper's LRN (n = 5, β = 3/4) takes d^(-3/4) from unrefined reciprocal square roots: every output
    within one bf16 step of the exact value rounded, and few of them a step off (torch's formula in bf16: a third)."""
    fused = _fused_or_skip()
    torch.manual_seed(8)
    x = (torch.randn(4, channels, 9, 9) * 60).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    exact = LocalResponseNorm(5, 1e-4, 0.75, 2.0, "paper", groups).reference(x.double()).to(torch.bfloat16)
    with torch.inference_mode():
        got = fused.fused_lrn(x, 5, 1e-4, 0.75, 2.0, groups)
        pooled = fused.lrn_pool(x, 5, 1e-4, 0.75, 2.0, groups, False, 3, 2)
    step = torch.finfo(torch.bfloat16).eps * exact.double().abs().clamp_min(1e-30).log2().floor().exp2()
    assert ((got.double() - exact.double()).abs() <= step).all()
    assert (got != exact).double().mean() < 0.02
    assert torch.equal(pooled, torch.nn.functional.max_pool2d(got, 3, 2))  # the stage normalises the same way


def test_the_fused_stage_pools_infinities_of_both_signs_as_the_layers_do():
    """A window holding +inf and -inf (a k so small that (k + a·Σx²)^(-β) lifts large inputs past float's range):
    the fast pooling path's NaN check (a sum of the window, NaN for inf - inf) must pool it again, not mistake it
    for a NaN."""
    fused = _fused_or_skip()
    x = torch.rand(1, 16, 5, 5)
    x[0, 3, 1, 1], x[0, 3, 1, 2] = 1e17, -1e17  # the LRN's outputs there: +inf and -inf, both in window (0, 0)
    got = fused.lrn_pool(x, 5, 0.0, 0.75, 1e-30, 1, False, 3, 2)
    norm = LocalResponseNorm(5, 0.0, 0.75, 1e-30, "paper", 1)
    want = torch.nn.functional.max_pool2d(norm.reference(x), 3, 2)
    assert want[0, 3, 0, 0] == float("inf") and not want.isnan().any()
    torch.testing.assert_close(got, want)


def _fusable(norm, pool):
    return isinstance(norm, LocalResponseNorm) and alexnet.models.layers._plain_pool(pool)


@pytest.mark.parametrize("name", [m for m in alexnet.list_models() if alexnet.models.get_spec(m).norm == "lrn"])
def test_every_lrn_variant_infers_through_the_fused_stage_as_layer_by_layer(name):
    """The models' conv stacks (`Features`) take the fused kernel in inference: the same output as their layers run
    one by one, in fp32 and bf16, and with gradients the layers run one by one (the kernel has no backward)."""
    fused = _fused_or_skip()
    torch.manual_seed(6)
    model = alexnet.create_model(name, width=0.25).eval()
    size = alexnet.models.get_spec(name).input_size
    x = torch.randn(2, model.in_channels, size, size)
    layers = [torch.nn.Identity(), *model.features]
    calls = []
    original = fused.lrn_pool
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fused, "lrn_pool", lambda *a: calls.append(a) or original(*a))
        for dtype in (torch.float32, torch.bfloat16):
            m, xd = model.to(dtype), x.to(dtype)
            with torch.no_grad():
                got = m.features(xd)
                want = torch.nn.Sequential.forward(m.features, xd)
            tol = dict(rtol=0, atol=0) if dtype == torch.bfloat16 else dict(rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(got, want, **tol)
        stages = [(type(a) is torch.nn.ReLU) for a, b, c in zip(layers, layers[1:], layers[2:]) if _fusable(b, c)]
        assert [call[6] for call in calls] == stages * 2  # each LRN followed by a max-pool, ReLU fused, per dtype
        calls.clear()
        out = model.float().features(x.requires_grad_())
        out.sum().backward()
        assert not calls and x.grad is not None


def test_the_fused_stage_is_left_out_for_a_dtype_it_does_not_take():
    # Under a CPU autocast to fp16 conv1's output is fp16, which the kernel does not take: the layers run apart.
    _fused_or_skip()
    model = alexnet.create_model("alexnet_paper", width=0.25).eval()
    x = torch.randn(1, 3, 227, 227)
    with torch.no_grad(), torch.autocast("cpu", torch.float16):
        got = model.features(x)
        want = torch.nn.Sequential.forward(model.features, x)
    assert got.dtype == torch.float16 and torch.equal(got, want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("channels", "groups"), [(96, 2), (20, 1), (18, 3)])  # 48 a tower: the vectors' fast path
def test_relu_and_lrn_in_one_pass_equal_the_two_layers_apart(channels, groups, dtype):
    """``alexnet::relu_lrn`` (what `Stack` runs in training): the output and gradient of ReLU then the LRN kernel,
    with zeros, negatives and a NaN in the input (the ReLU's gradient passes where x > 0, and at NaN)."""
    fused = _fused_or_skip()
    torch.manual_seed(7)
    x = (torch.randn(2, channels, 5, 4) * 20).to(dtype)
    x[0, :, 0, 0] = 0.0
    x[1, 2, 1, 1] = float("nan")
    grad = torch.randn(2, channels, 5, 4).to(dtype)
    layer = LocalResponseNorm(5, 1e-4, 0.75, 2.0, "paper", groups)
    xa = x.clone().requires_grad_()
    ya = layer(torch.relu(xa))
    (ya * grad).nan_to_num().sum().backward()
    xb = x.clone().requires_grad_()
    yb = fused.relu_lrn(xb, 5, layer._scale, 0.75, 2.0, groups)
    (yb * grad).nan_to_num().sum().backward()
    assert yb.dtype == dtype and yb.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(ya.isnan(), yb.isnan()) and torch.equal(xa.grad.isnan(), xb.grad.isnan())
    # The same arithmetic after the same ReLU; the compiler may contract it into FMAs differently: an ulp apart.
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-2, atol=1e-5)
    torch.testing.assert_close(yb.nan_to_num(), ya.nan_to_num(), **tol)
    torch.testing.assert_close(xb.grad.nan_to_num(), xa.grad.nan_to_num(), **tol)
    assert bool((xb.grad[x <= 0] == 0).all())


def test_the_paper_model_trains_through_relu_lrn_as_through_its_layers(monkeypatch):
    fused = _fused_or_skip()
    torch.manual_seed(8)
    model = alexnet.create_model("alexnet_paper", width=0.25, num_classes=10).to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 227, 227).contiguous(memory_format=torch.channels_last)
    calls = []
    original = fused.relu_lrn
    monkeypatch.setattr(fused, "relu_lrn", lambda *a: calls.append(a) or original(*a))
    grads = []
    for run in (
        model,
        lambda t: torch.nn.Sequential.forward(
            model.classifier, model.avgpool(torch.nn.Sequential.forward(model.features, t)).flatten(1)
        ),
    ):
        model.zero_grad()
        torch.manual_seed(9)  # the same dropout masks
        run(x).square().sum().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    assert len(calls) == 2  # conv1's and conv2's ReLU → LRN, in the first run only
    for g, w in zip(*grads):
        scale = w.abs().max().clamp(min=1e-12)
        torch.testing.assert_close(g / scale, w / scale, rtol=0, atol=1e-4)


@pytest.mark.parametrize("n", [2, 4])
def test_an_even_window_takes_the_reference_formula(n):
    # The kernels' windows are symmetric (n odd); the formula pads n // 2 before and n // 2 - 1 after, as torch's
    # local_response_norm does: an even window is that, not the kernel's error.
    torch.manual_seed(10)
    x = (torch.randn(2, 8, 5, 5) * 20).relu()
    layer = LocalResponseNorm(n, 1e-4, 0.75, 2.0, "caffe")
    torch.testing.assert_close(layer(x), torch.nn.LocalResponseNorm(n, 1e-4, 0.75, 2.0)(x))
    stage = alexnet.models.layers.Features(torch.nn.ReLU(), layer, torch.nn.MaxPool2d(3, 2))
    for grad in (False, True):
        with torch.set_grad_enabled(grad):
            want = torch.nn.functional.max_pool2d(layer.reference(x.relu()), 3, 2)
            torch.testing.assert_close(stage(x.contiguous(memory_format=torch.channels_last)), want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("channels", "groups"), [(96, 2), (32, 1), (20, 1)])  # register forms; the scratch buffer
def test_squares_past_float_range_normalise_to_about_zero_as_the_formula_does(channels, groups, dtype):
    """|x| above ~1.8e19: the window's sum of squares is inf and the formula's x / inf is 0; the kernel's fast
    d^(-3/4) (reciprocal square roots refined by Newton steps) gave NaN there (inf · 0) unless d is clamped."""
    fused = _fused_or_skip()
    torch.manual_seed(10)
    x = torch.rand(2, channels, 5, 5) * 10
    x[0, 5, 1, 1], x[1, 2, 3, 3] = 1e20, -3e19
    x = x.to(dtype)
    layer = LocalResponseNorm(5, 1e-4, 0.75, 2.0, "paper", groups)
    xr = x.float().clone().requires_grad_()
    want = layer.reference(xr)
    want.sum().backward()
    xa = x.clone().requires_grad_()
    got = layer(xa)
    got.float().sum().backward()
    with torch.inference_mode():
        pooled = fused.lrn_pool(x, 5, 1e-4, 0.75, 2.0, groups, False, 3, 2)
    tol = dict(rtol=0, atol=2e-2) if dtype == torch.bfloat16 else dict(rtol=0, atol=1e-5)
    torch.testing.assert_close(got.float(), want.detach(), **tol)
    torch.testing.assert_close(xa.grad.float(), xr.grad, **tol)
    torch.testing.assert_close(pooled.float(), torch.nn.functional.max_pool2d(want.detach(), 3, 2), **tol)
