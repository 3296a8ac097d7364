"""Every registered variant: forward, backward, parameter counts, init statistics, overrides."""

import math

import pytest
import torch
import torchvision

import alexnet
from alexnet.models import OVERRIDABLE, get_spec
from alexnet.models.init import BIAS_ONE_CONVS
from alexnet.models.layers import LocalResponseNorm

MODELS = alexnet.list_models()
# Counts at 1000 classes, 3 channels, from the paper spec (Caffe bvlc_alexnet, torchvision meta).
PARAMS = {"alexnet_paper": 60_965_224, "alexnet_owt": 61_100_840}
# Multiply-accumulates of one image at the default input size, 1000 classes (the README's table).
MACS = {
    "alexnet_paper": 724_406_816,
    "alexnet_owt": 714_188_480,
    "alexnet_d2l": 1_009_945_728,
    "alexnet_small": 96_722_944,
    "alexnet_cifar": 97_247_232,  # by hand: 3,686,400 + 2 × 10,616,832 + 28,311,552 + 37,748,736 + fc 6,266,880
    "convnet_cifar_local": 36_716_544,
    "convnet_fig1": 13_312_000,
}


def test_paper_macs_by_hand():
    """conv: out × in/groups × k² × out side²; fc: in × out (227 px: 55, 27, 13, 13, 13 and 6×6×256 = 9216)."""
    convs = [
        96 * 3 * 121 * 55**2,
        256 * 48 * 25 * 27**2,
        384 * 256 * 9 * 13**2,
        384 * 192 * 9 * 13**2,
        256 * 192 * 9 * 13**2,
    ]
    fcs = [9216 * 4096, 4096 * 4096, 4096 * 1000]
    assert sum(convs) + sum(fcs) == MACS["alexnet_paper"] == alexnet.model_info("alexnet_paper").macs


def _convs_linears(model):
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    return convs, linears


@pytest.mark.parametrize("name", MODELS)
def test_forward_backward(name):
    size = get_spec(name).input_size
    model = alexnet.create_model(name, num_classes=7)
    x = torch.randn(2, 3, size, size, requires_grad=True)
    out = model(x)
    assert out.shape == (2, 7)
    out.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("name", MODELS)
def test_grayscale_input(name):
    size = get_spec(name).input_size
    model = alexnet.create_model(name, num_classes=10, in_channels=1).eval()
    assert model(torch.randn(1, 1, size, size)).shape == (1, 10)


@pytest.mark.parametrize("name", MODELS)
def test_model_info_counts_parameters_and_macs(name):
    info = alexnet.model_info(name)
    model = alexnet.create_model(name)
    assert info.params == sum(p.numel() for p in model.parameters())
    if name in PARAMS:
        assert info.params == PARAMS[name]
    assert info.macs == MACS[name]  # the README's table (1000 classes, 3 channels, the default input size)


def _flop_counter_macs(name: str, num_classes: int = 1000, in_channels: int = 3, **overrides) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    spec = alexnet.get_spec(name, **overrides)
    with torch.device("meta"):
        model = alexnet.create_model(name, num_classes=num_classes, in_channels=in_channels, **overrides).eval()
        x = torch.empty(1, in_channels, spec.input_size, spec.input_size)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    return counter.get_total_flops() // 2


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"groups": 2, "width": 0.5},
        {"groups": 1, "pool": "non_overlapping", "norm": "batch", "input_size": 64},
        {"groups": 1, "one_gpu": True, "width": 0.5},
    ],
    ids=str,
)
def test_the_specs_macs_are_what_torchs_flop_counter_counts_of_the_built_network(name, overrides):
    """`model_info` reads MACs from the spec (building and running the network on the meta device imported
    torch._dynamo: `alexnet models` took 3.6-4.3 s): the built network's forward, counted by torch, is the oracle."""
    spec = alexnet.get_spec(name, **overrides)
    assert spec.macs(10, 1) == _flop_counter_macs(name, 10, 1, **overrides)
    info = alexnet.model_info(name, **overrides)
    assert (info.params, info.macs) == (spec.parameters(), _flop_counter_macs(name, **overrides))


def test_param_counts_named_by_the_issue():
    assert alexnet.model_info("alexnet_paper", groups=1).params == 62_378_344
    d2l = alexnet.create_model("alexnet_d2l", num_classes=10, in_channels=1)
    assert d2l.classifier[0].in_features == 6400  # d2l's LazyLinear sees 256×5×5 at 224 px


def test_paper_layer_shapes():
    model = alexnet.create_model("alexnet_paper").eval()
    shapes = []
    hooks = [
        m.register_forward_hook(lambda _m, _i, o: shapes.append(tuple(o.shape[1:])))
        for m in model.features
        if isinstance(m, torch.nn.Conv2d)
    ]
    with torch.no_grad():
        feats = model.forward_features(torch.randn(1, 3, 227, 227))
    for h in hooks:
        h.remove()
    assert shapes == [(96, 55, 55), (256, 27, 27), (384, 13, 13), (384, 13, 13), (256, 13, 13)]
    assert feats.shape == (1, 9216)
    assert [m.groups for m in model.features if isinstance(m, torch.nn.Conv2d)] == [1, 2, 1, 2, 2]


def test_owt_matches_torchvision(monkeypatch):
    torch.manual_seed(0)
    reference = torchvision.models.alexnet().eval()
    ours = alexnet.create_model("alexnet_owt").eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        # On an AMD CPU the fc layers go through oneDNN, whose sums round in another order than MKL's.
        torch.testing.assert_close(ours(x), reference(x), rtol=1e-5, atol=1e-6)
        monkeypatch.setenv("ALEXNET_ONEDNN_FC", "0")
        assert torch.equal(ours(x), reference(x))  # the same layers: bit for bit with the same GEMMs
    assert list(ours.state_dict()) == list(reference.state_dict())


def _std_of(m):
    return m.weight.detach().double().std().item()


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("init", ["paper", "caffe", "xavier", "kaiming", "torch"])
def test_init_statistics(name, init):
    torch.manual_seed(0)
    model = alexnet.create_model(name, init=init)
    convs, linears = _convs_linears(model)
    for i, m in enumerate(convs + linears):
        is_conv = i < len(convs)
        j = i if is_conv else i - len(convs)
        hidden = not is_conv and j < len(linears) - 1
        bias_layer = (j in BIAS_ONE_CONVS) if is_conv else hidden
        w = m.weight.detach().double()
        fan_in = w[0].numel()
        fan_out = w.shape[0] * w[0, 0].numel()
        assert abs(w.mean().item()) < 0.2 * w.std().item() + 1e-4
        if init in ("paper", "caffe"):
            std = 0.005 if init == "caffe" and hidden else 0.01
            assert _std_of(m) == pytest.approx(std, rel=0.1)
            one = 1.0 if init == "paper" else 0.1
            assert torch.all(m.bias == (one if bias_layer else 0.0))
        elif init == "xavier":
            assert _std_of(m) == pytest.approx(math.sqrt(2.0 / (fan_in + fan_out)), rel=0.1)
        elif init == "kaiming":
            std = math.sqrt(2.0 / fan_in) if is_conv or hidden else 0.01
            assert _std_of(m) == pytest.approx(std, rel=0.1)
            assert torch.all(m.bias == 0)
        else:  # PyTorch default: kaiming_uniform(a=√5) gives std 1/√(3·fan_in)
            assert _std_of(m) == pytest.approx(1 / math.sqrt(3 * fan_in), rel=0.1)


GOOD_OVERRIDES = [
    {"width": 0.5},
    {"norm": "batch"},
    {"norm": "none"},
    {"norm": "lrn", "lrn_convention": "caffe", "lrn_k": 1.0},
    {"lrn_size": 3, "lrn_alpha": 1e-3, "lrn_beta": 0.5},
    {"activation": "tanh"},
    {"activation": "gelu"},
    {"pool": "non_overlapping"},
    {"dropout": 0.0},
    {"groups": 1},
    {"groups": 2},
    {"dropout_position": "before"},
    {"lrn_across_towers": True, "lrn_convention": "caffe"},
    {"pool_first": True},
    {"fc_norm": True},
    {"fc_norm": True, "dropout_position": "before"},
    {"norm": "batch", "fc_norm": True, "bn_momentum": 0.4},
    {"groups": 1, "one_gpu": True},  # drop_conv: test_drop_conv_... (not every variant has a conv it may take out)
]


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("overrides", GOOD_OVERRIDES, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_good_overrides_build_and_run(name, overrides):
    spec = get_spec(name, **overrides)
    model = alexnet.create_model(name, num_classes=3, **overrides).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, spec.input_size, spec.input_size)).shape == (1, 3)
    for key, value in overrides.items():
        assert getattr(model.spec, key) == value
    assert model.config["overrides"] == overrides


def test_override_effects():
    paper = alexnet.create_model("alexnet_paper", groups=1)
    assert all(m.groups == 1 for m in paper.modules() if isinstance(m, torch.nn.Conv2d))
    narrow = alexnet.create_model("alexnet_paper", width=0.5)
    assert [m.out_channels for m in narrow.features if isinstance(m, torch.nn.Conv2d)] == [
        48,
        128,
        192,
        192,
        128,
    ]
    tanh = alexnet.create_model("alexnet_owt", activation="tanh")
    assert any(isinstance(m, torch.nn.Tanh) for m in tanh.modules())
    assert not any(isinstance(m, torch.nn.ReLU) for m in tanh.modules())
    gelu = alexnet.create_model("alexnet_small", activation="gelu")
    assert sum(isinstance(m, torch.nn.GELU) for m in gelu.modules()) == 7  # five convs, fc6, fc7
    assert not any(isinstance(m, (torch.nn.ReLU, torch.nn.Tanh)) for m in gelu.modules())
    bn = alexnet.create_model("alexnet_paper", norm="batch")
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in bn.modules()) == 5
    pools = alexnet.create_model("alexnet_paper", pool="non_overlapping")
    assert {m.kernel_size for m in pools.modules() if isinstance(m, torch.nn.MaxPool2d)} == {2}
    lrns = [m for m in alexnet.create_model("alexnet_paper").modules() if isinstance(m, LocalResponseNorm)]
    caffe = [
        m
        for m in alexnet.create_model("alexnet_paper", lrn_across_towers=True).modules()
        if isinstance(m, LocalResponseNorm)
    ]
    assert [m.groups for m in lrns] == [2, 2] and [m.groups for m in caffe] == [1, 1]


def test_pool_first_moves_each_pool_before_its_norm_and_activation():
    def kinds(model):
        return [type(m).__name__ for m in model.features][:4]

    assert kinds(alexnet.create_model("alexnet_small")) == ["Conv2d", "BatchNorm2d", "ReLU", "MaxPool2d"]
    assert kinds(alexnet.create_model("alexnet_small", pool_first=True)) == [
        "Conv2d",
        "MaxPool2d",
        "BatchNorm2d",
        "ReLU",
    ]
    lrn = alexnet.create_model("alexnet_paper", pool_first=True)
    assert kinds(lrn) == ["StemConv2d", "MaxPool2d", "ReLU", "LocalResponseNorm"]  # conv1 strided: `StemConv2d`
    # Without a norm the two orders are one function (max-pooling commutes with ReLU); the weights share names.
    torch.manual_seed(0)
    paper_order = alexnet.create_model("alexnet_owt", norm="none").eval()
    pool_first = alexnet.create_model("alexnet_owt", norm="none", pool_first=True).eval()
    pool_first.load_state_dict(paper_order.state_dict())
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(pool_first(x), paper_order(x))


def test_fc_norm_puts_batch_norm_between_each_hidden_fc_and_its_activation():
    def kinds(model):
        return [type(m).__name__ for m in model.classifier]

    assert kinds(alexnet.create_model("alexnet_small", fc_norm=True)) == [
        *("Linear", "BatchNorm1d", "ReLU", "Dropout"),
        *("Linear", "BatchNorm1d", "ReLU", "Dropout"),
        "Linear",
    ]
    before = alexnet.create_model("alexnet_owt", fc_norm=True, num_classes=10)
    assert kinds(before) == [
        *("Dropout", "Linear", "BatchNorm1d", "ReLU"),
        *("Dropout", "Linear", "BatchNorm1d", "ReLU"),
        "Linear",
    ]
    assert [m.num_features for m in before.classifier if isinstance(m, torch.nn.BatchNorm1d)] == [4096, 4096]
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in alexnet.create_model("alexnet_small").modules())


def test_bn_momentum_sets_every_batch_norm_and_the_running_statistics_follow_it():
    """Each BatchNorm, the convs' and the classifier's, takes the spec's momentum, and one training step moves its
    running mean that far towards the batch's mean (through the fused kernels where they apply)."""
    model = alexnet.create_model("alexnet_small", num_classes=10, fc_norm=True, bn_momentum=0.4)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert len(norms) == 7 and {m.momentum for m in norms} == {0.4}
    assert {m.momentum for m in alexnet.create_model("alexnet_small").modules() if hasattr(m, "momentum")} == {0.1}
    first = model.features[0]
    seen = {}

    def keep_mean(module, inputs, out):
        seen["mean"] = out.detach().mean((0, 2, 3))  # (C,) the batch's mean of conv1's output, what BN normalises

    first.register_forward_hook(keep_mean)
    model.train()(torch.randn(8, 3, 28, 28))
    torch.testing.assert_close(norms[0].running_mean, 0.4 * seen["mean"])


BAD_OVERRIDES = [
    ({"nrom": "batch"}, "unknown override 'nrom'"),
    ({"norm": "group"}, "choose one of"),
    ({"activation": "swish"}, "choose one of"),
    ({"lrn_convention": "tf"}, "choose one of"),
    ({"pool": "avg"}, "choose one of"),
    ({"init": "orthogonal"}, "choose one of"),
    ({"width": 0}, "width=0"),
    ({"width": "wide"}, "width='wide'"),
    ({"dropout": 1.0}, "dropout=1.0"),
    ({"groups": 1.5}, "groups=1.5"),
    ({"groups": True}, "groups=True"),
    ({"lrn_size": 4}, "must be odd"),
    ({"input_size": 16}, "too small"),
    ({"lrn_across_towers": 1}, "choose one of"),
    ({"fc_norm": "yes"}, "choose one of"),
    ({"bn_momentum": 0.0}, "bn_momentum=0.0"),
    ({"bn_momentum": 1.5}, "bn_momentum=1.5"),
    ({"one_gpu": 1}, "choose one of"),
    ({"one_gpu": True}, "one_gpu=True is not valid with groups=2"),  # the paper's two towers
    ({"drop_conv": -1}, "drop_conv=-1"),
    ({"drop_conv": 2}, "drop_conv=2 is not valid for alexnet_paper: a middle conv that neither pools"),
]


@pytest.mark.parametrize(("overrides", "message"), BAD_OVERRIDES, ids=lambda o: str(o))
def test_bad_overrides_raise(overrides, message):
    with pytest.raises(ValueError, match="valid|odd|small") as err:
        alexnet.create_model("alexnet_paper", **overrides)
    assert message in str(err.value)


def test_every_overridable_field_is_tested():
    tested = {k for o in GOOD_OVERRIDES + [b for b, _ in BAD_OVERRIDES] for k in o}
    assert set(OVERRIDABLE) <= tested


def test_unknown_model_and_bad_counts():
    with pytest.raises(ValueError, match="available: .*alexnet_paper"):
        alexnet.create_model("alexnet_2013")
    with pytest.raises(ValueError, match="num_classes"):
        alexnet.create_model("alexnet_owt", num_classes=0)
    with pytest.raises(ValueError, match="in_channels"):
        alexnet.create_model("alexnet_owt", in_channels=2.0)


@pytest.mark.parametrize("name", MODELS)
def test_model_from_config_round_trip(name):
    model = alexnet.create_model(name, num_classes=5, width=0.5)
    again = alexnet.model_from_config(model.config)
    assert again.config == model.config
    assert [p.shape for p in again.parameters()] == [p.shape for p in model.parameters()]


def test_small_model_sizes():
    model = alexnet.create_model("alexnet_small", num_classes=10, in_channels=1).eval()
    for side in (28, 32):
        assert model.features(torch.randn(1, 1, side, side)).shape[-2:] == (4, 4)


def test_listing_describing_and_validating_import_no_torch():
    """`alexnet models` and a config's validation read the spec table only (`alexnet.models.catalog`): 2.2 →
    0.1 s for ``alexnet models`` when the package imported its network and layers (and torch) eagerly."""
    import subprocess
    import sys

    probe = (
        "import sys, alexnet, alexnet.models as m; from alexnet.config import load_config;"
        "infos = [m.model_info(name) for name in m.list_models()];"
        "load_config('paper-imagenet', ['model.name=\"alexnet_owt\"']);"
        "print(len(infos), 'torch' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == [str(len(MODELS)), "False"], done.stderr


@pytest.mark.parametrize("name", ["alexnet_paper", "alexnet_small"])
def test_drop_conv_takes_out_one_middle_layer_and_nothing_else(name):
    """§7's depth claim: conv4 out, every other layer the same (conv4 maps as many channels in as out here)."""
    whole, cut = alexnet.create_model(name, num_classes=10), alexnet.create_model(name, num_classes=10, drop_conv=4)
    convs = [m for m in whole.modules() if isinstance(m, torch.nn.Conv2d)]
    kept = [m for m in cut.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.weight.shape for c in kept] == [c.weight.shape for i, c in enumerate(convs) if i != 3]
    gone = sum(p.numel() for p in convs[3].parameters())
    assert sum(p.numel() for p in cut.parameters()) == sum(p.numel() for p in whole.parameters()) - gone - (
        2 * convs[3].out_channels if alexnet.get_spec(name).norm == "batch" else 0  # conv4's batch norm
    )
    spec = alexnet.get_spec(name, drop_conv=4)
    assert spec.macs(10, 3) == _flop_counter_macs(name, 10, 3, drop_conv=4)
    assert spec.parameters(10, 3) == sum(p.numel() for p in cut.parameters())
    with pytest.raises(ValueError, match="drop_conv=2 is not valid .* neither pools nor normalises: \\[3, 4\\]"):
        alexnet.get_spec(name, drop_conv=2)
