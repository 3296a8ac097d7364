"""`StemConv2d`: conv1 trained through space-to-depth in bf16 on the CPU equals the plain strided convolution;
`Dropout`: the mask drawn with ``rand`` keeps values at nn.Dropout's rate and scale. (LRN: test_lrn.py; `Linear`:
test_onednn_fc.py.)"""

import pytest
import torch
import torch.nn.functional as F

import alexnet
from alexnet import native
from alexnet.models import get_spec, layers
from alexnet.models.layers import Dropout, StemConv2d, standard_modules

BF16_PRODUCTS = layers._bf16_products.__wrapped__  # uncached, before the fixture below stubs it
STRIDED = [name for name in alexnet.list_models() if get_spec(name).convs[0].stride > 1]


def test_the_strided_stems_are_the_imagenet_variants():
    assert {"alexnet_paper", "alexnet_owt", "alexnet_d2l"} <= set(STRIDED)


@pytest.fixture(autouse=True)
def amx(monkeypatch):
    """Space-to-depth runs where bf16 products are native (AMX, AVX512-BF16: measured faster); its arithmetic is
    tested on any CPU."""
    monkeypatch.setattr(layers, "_bf16_products", lambda: True)


def _stem_and_input(name, in_channels=3):
    torch.manual_seed(0)
    size = get_spec(name).input_size
    stem = alexnet.create_model(name, in_channels=in_channels).features[0]
    assert isinstance(stem, StemConv2d)
    x = torch.randn(3, in_channels, size, size).contiguous(memory_format=torch.channels_last)
    return stem, x


@pytest.mark.parametrize("in_channels", [3, 1])
@pytest.mark.parametrize("name", STRIDED)
def test_space_to_depth_gives_the_convolution_and_its_gradients(name, in_channels):
    stem, x = _stem_and_input(name, in_channels)
    x.requires_grad_()
    with torch.autocast("cpu", torch.bfloat16):
        assert stem._space_to_depth(x)  # the path under test is the one taken
        y = stem(x)
        ref_x = x.detach().clone().requires_grad_()
        ref = F.conv2d(ref_x, stem.weight, stem.bias, stem.stride, stem.padding)
    assert y.shape == ref.shape and y.dtype == ref.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), ref.float(), rtol=1e-2, atol=5e-2)
    g = torch.randn_like(ref.float())
    y.float().backward(g)
    got = (stem.weight.grad.clone(), stem.bias.grad.clone(), x.grad.clone())
    stem.zero_grad()
    ref.float().backward(g)
    for a, b in zip(got, (stem.weight.grad, stem.bias.grad, ref_x.grad)):
        torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-2 * b.abs().max().item())


@pytest.mark.parametrize("name", STRIDED)
def test_the_plain_convolution_runs_where_space_to_depth_does_not_pay(name):
    stem, x = _stem_and_input(name)
    assert not stem._space_to_depth(x)  # fp32: measured slower
    with torch.autocast("cpu", torch.bfloat16):
        with torch.no_grad():
            assert not stem._space_to_depth(x)  # no weight gradient to speed up
        stem.weight.requires_grad_(False)
        assert not stem._space_to_depth(x)
        stem.weight.requires_grad_(True)
        assert stem._space_to_depth(x)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(layers, "_bf16_products", lambda: False)
            assert not stem._space_to_depth(x)  # a CPU converting bf16 to fp32 for products: not measured there
    # Tracers write the standard convolution into their files.
    traced = torch.jit.trace(stem.bfloat16(), x.bfloat16())
    assert "aten::_convolution" in str(traced.graph) and "permute" not in str(traced.graph)


@pytest.mark.parametrize(
    "flags, native_bf16",
    [
        ({"avx2", "avx512f", "avx512_bf16", "avx512_vnni"}, True),  # AMD EPYC Zen 4: measured 1.03x a training step
        ({"avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16"}, True),  # Intel Xeon with AMX
        ({"avx2", "avx512f", "avx512_vnni"}, False),  # AVX-512 without bf16 (Ice Lake, Zen 3 has no AVX-512)
        ({"avx2", "fma"}, False),
        (set(), False),  # not x86, or no /proc/cpuinfo
    ],
)
def test_space_to_depth_is_for_cpus_with_native_bf16_products(monkeypatch, flags, native_bf16):
    monkeypatch.setattr(native, "cpu_flags", lambda: flags)
    assert BF16_PRODUCTS() is native_bf16


@pytest.mark.parametrize("p", [0.1, 0.5, 0.75])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dropout_keeps_values_at_its_rate_and_scales_them(p, dtype):
    torch.manual_seed(0)
    layer = Dropout(p)
    x = (torch.rand(256, 4096) + 0.5).to(dtype).requires_grad_()  # no zeros: a zero out means dropped
    y = layer(x)
    kept = y != 0
    n = kept.numel()
    # The kept fraction within 5 standard deviations of 1 − p; kept values scaled by 1/(1 − p).
    assert abs(kept.float().mean().item() - (1 - p)) < 5 * ((p * (1 - p) / n) ** 0.5)
    torch.testing.assert_close(y[kept], (x[kept].float() / (1 - p)).to(dtype))
    y.float().sum().backward()
    torch.testing.assert_close(x.grad, (kept.float() / (1 - p)).to(dtype))  # the same mask, the same scale
    assert not torch.equal(layer(x), y)  # a fresh mask each call


def test_dropout_is_nn_dropout_where_the_cheaper_mask_does_not_apply():
    x = torch.randn(8, 64)
    layer = Dropout(0.5)
    assert torch.equal(layer.eval()(x), x)
    layer.train()
    assert torch.equal(Dropout(1.0)(x), torch.zeros_like(x))
    assert torch.equal(Dropout(0.0)(x), x)
    traced = torch.jit.trace(layer, x, check_trace=False)
    assert "dropout" in str(traced.graph) and "rand" not in str(traced.graph)


@pytest.mark.parametrize("output_size", [6, (6, 6), (None, 6)])
def test_the_adaptive_pool_passes_a_map_of_its_size_through_and_pools_any_other(output_size):
    pool, ref = layers.AdaptiveAvgPool2d(output_size), torch.nn.AdaptiveAvgPool2d(output_size)
    x = torch.randn(2, 8, 6, 6, dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
    assert pool(x) is x and torch.equal(ref(x), x)  # torch's pool computes the identity, at a pass's cost
    for side in (13, 7, 5):  # larger (the bins average) and smaller (they repeat)
        y = torch.randn(2, 8, side, side)
        assert torch.equal(pool(y), ref(y))
    traced = torch.jit.trace(pool, x.float())  # a program written to a file pools as torch's layer does
    assert "adaptive_avg_pool2d" in str(traced.graph)


def test_standard_modules_shows_torchs_modules_for_the_block_only():
    model = alexnet.create_model("alexnet_owt", width=0.25)
    ours = [type(m) for m in model.modules()]
    relus = [m for m in model.modules() if isinstance(m, torch.nn.ReLU)]
    with pytest.raises(RuntimeError, match="inside"), standard_modules(model):
        kinds = {type(m).__name__ for m in model.modules()}
        assert "StemConv2d" not in kinds and "Dropout" in kinds and type(model.classifier[0]) is torch.nn.Dropout
        assert "Linear" in kinds and type(model.classifier[1]) is torch.nn.Linear
        assert type(model.features[0]) is torch.nn.Conv2d and all(m.inplace for m in relus)
        assert type(model.avgpool) is torch.nn.AdaptiveAvgPool2d
        assert type(model.features) is torch.nn.Sequential  # not `Features`, whose inference takes a fused kernel
        assert type(model.classifier) is torch.nn.Sequential  # not `Stack`, whose training may take one
        raise RuntimeError("inside")  # and put back even when the block fails
    assert [type(m) for m in model.modules()] == ours and not any(m.inplace for m in relus)


def test_an_input_smaller_than_the_stem_kernel_gets_the_plain_convolutions_error():
    stem, _ = _stem_and_input("alexnet_owt")
    x = torch.randn(2, 3, 6, 6)  # 6 + 2·2 < 11
    with torch.autocast("cpu", torch.bfloat16):
        assert not stem._space_to_depth(x)
        with pytest.raises(RuntimeError, match=r"\(10 x 10\). Kernel size: \(11 x 11\)"):
            stem(x)


@pytest.mark.parametrize("name", alexnet.list_models())
def test_fused_kernels_names_the_kernels_a_first_step_asks_for(name, monkeypatch):
    """`layers.fused_kernels` lists what `native.prepare` builds ahead: exactly the kernels a training step of the
    variant (channels last, as `fit` runs it) and an inference batch (as `Predictor` runs it) ask for."""
    asked: list[str] = []
    monkeypatch.setattr(native, "load", lambda kernel_name, *a, **k: asked.append(kernel_name))  # nothing built
    model = alexnet.create_model(name, width=0.25, num_classes=10).to(memory_format=torch.channels_last)
    size = get_spec(name).input_size
    x = torch.randn(2, model.in_channels, size, size).contiguous(memory_format=torch.channels_last)

    def listed(training: bool, bf16: bool) -> set[str]:
        asked.clear()
        for kernel in layers.fused_kernels(model, training, bf16):
            kernel()
        return set(asked)

    for training, bf16 in ((True, False), (True, True), (False, False)):
        want = listed(training, bf16)
        asked.clear()
        if training:
            with torch.autocast("cpu", torch.bfloat16, enabled=bf16):  # bf16: as `fit` trains on the CPU
                F.cross_entropy(model.train()(x), torch.tensor([0, 1])).backward()
        else:
            with torch.inference_mode():
                model.eval()(x)
        assert set(asked) == want, (training, bf16, sorted(asked), sorted(want))
