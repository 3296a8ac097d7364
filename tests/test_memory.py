"""A batch too large for the memory left is one line before it is allocated, not a silent kill.

Measured before: in a cgroup of 2 GB (as a container's limit), ``alexnet predict --weights owt -b 1000`` on 1,000
CIFAR-10 images was ended by the out-of-memory killer with exit 137 and not a word; ``eval -b 5000`` of a
Fashion-MNIST model in 1 GB likewise.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

import alexnet.memory as memory
from alexnet.cli import main
from alexnet.inference.predictor import Predictor
from alexnet.memory import Available, MemoryBudgetError, available, check_batch
from alexnet.models import create_model, get_spec, list_models

from .conftest import make_folder, make_weights

GIB = 2**30


def _tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


MEMINFO = "MemTotal:       24683772 kB\nMemAvailable:   20000000 kB\n"


def test_the_machines_available_memory(tmp_path):
    root = _tree(tmp_path, {"proc/meminfo": MEMINFO, "proc/self/cgroup": "4:memory:/\n3:cpu:/\n"})
    assert available(root) == Available(20000000 * 1024, "available on this machine")
    assert available(tmp_path / "nothing") is None  # not Linux: nothing read, nothing refused
    # Swap lets a larger batch run (slowly): it is counted, so nothing that would run is refused.
    (root / "proc/meminfo").write_text(MEMINFO + "SwapTotal:       4000000 kB\nSwapFree:        1000000 kB\n")
    assert available(root) == Available(21000000 * 1024, "available on this machine, swap included")


def test_a_cgroup_v1_limit_below_the_machine_bounds_it(tmp_path):
    # A container's limit: its own cgroup's path may not exist below the mount; its parent's limit still holds.
    root = _tree(
        tmp_path,
        {
            "proc/meminfo": MEMINFO,
            "proc/self/cgroup": "9:name=systemd:/\n4:memory:/pod/abc\n1:cpu:/\n",
            "sys/fs/cgroup/memory/memory.limit_in_bytes": "9223372036854771712\n",  # no limit at the root
            "sys/fs/cgroup/memory/memory.usage_in_bytes": "5000000000\n",
            "sys/fs/cgroup/memory/pod/memory.limit_in_bytes": str(2 * GIB),
            "sys/fs/cgroup/memory/pod/memory.usage_in_bytes": str(GIB),
            # a quarter GiB of it file cache, active or not, which the kernel reclaims before it kills
            "sys/fs/cgroup/memory/pod/memory.stat": (
                f"cache 1\ninactive_file 7\ntotal_inactive_file {GIB // 8}\ntotal_active_file {GIB // 8}\n"
            ),
        },
    )
    assert available(root) == Available(GIB + GIB // 4, "left under the memory limit of cgroup /pod")


def test_a_cgroup_v2_limit_and_the_tightest_of_several(tmp_path):
    root = _tree(
        tmp_path,
        {
            "proc/meminfo": MEMINFO,
            "proc/self/cgroup": "0::/user/job\n",
            "sys/fs/cgroup/user/memory.max": str(8 * GIB),
            "sys/fs/cgroup/user/memory.current": str(7 * GIB),
            "sys/fs/cgroup/user/job/memory.max": "max\n",  # no limit of its own
            "sys/fs/cgroup/user/job/memory.current": str(GIB),
            "sys/fs/cgroup/user/memory.stat": f"anon 5\nactive_file {GIB // 4}\ninactive_file {GIB // 4}\n",
        },
    )
    assert available(root) == Available(GIB + GIB // 2, "left under the memory limit of cgroup /user")
    (root / "sys/fs/cgroup/user/memory.current").write_text(str(9 * GIB))  # over its limit: nothing left, not < 0
    assert available(root).bytes == 0


def test_a_batch_is_refused_only_when_it_cannot_fit():
    limit = Available(10**9, "available on this machine")
    check_batch("prediction", 1000, 10**6, limit)  # exactly what is left: let through
    with pytest.raises(MemoryBudgetError) as refused:
        check_batch("prediction", 1001, 10**6, limit)
    assert str(refused.value) == (  # as many decimals as it takes for the two to differ
        "prediction: a batch of 1,001 needs at least 1.001 GB and 1.000 GB is available on this machine: use a "
        "smaller batch size"
    )
    check_batch("prediction", 10**9, 10**9, None) if available() is None else None  # nothing known: nothing refused


@pytest.mark.parametrize("name", list_models())
def test_the_activations_reckoned_are_the_networks(name):
    """What a batch's memory is reckoned from counts what the network produces: the input, each conv's output and
    pooled map, each hidden fc's output, for every registered variant (a real forward pass of one image)."""
    spec = get_spec(name)
    model = create_model(name, num_classes=10).eval()
    seen = [spec.input_size**2 * 3]
    kinds = (torch.nn.Conv2d, torch.nn.MaxPool2d, torch.nn.Linear)
    hooks = [
        m.register_forward_hook(lambda m, i, o: seen.append(o[0].numel()))
        for m in model.modules()
        if isinstance(m, kinds)
    ]
    with torch.no_grad():
        model(torch.zeros(1, 3, spec.input_size, spec.input_size))
    for hook in hooks:
        hook.remove()
    assert spec.activations() == seen[:-1]  # the logits' few values aside


@pytest.mark.parametrize("name", list_models())
def test_the_parameters_reckoned_are_the_networks(name):
    """Training's memory floor counts the weights (and their gradients) before the network is made."""
    with torch.device("meta"):  # nothing allocated
        model = create_model(name, num_classes=7, in_channels=1)
    assert get_spec(name).parameters(7, 1) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    "settings, per_parameter, held",
    [
        ([], 12, "the weights, gradients and optimizer state"),  # SGD's momentum
        (["optim.momentum=0"], 8, "the weights and gradients"),
        (["optim.name=adamw"], 16, "the weights, gradients and optimizer state"),  # two moments
        (["train.ema_decay=0.99"], 16, "the weights, gradients, optimizer state and moving average"),
        (["model.freeze=features"], 4, "the weights"),  # frozen layers hold no gradient nor state: values only
    ],
)
def test_weights_that_cannot_fit_are_said_as_such(settings, per_parameter, held, tmp_path, capsys, monkeypatch):
    # Measured before, in a cgroup of 6 GB: `--set model.overrides.width=4` of alexnet_owt (7.3 GB of fp32 weights
    # and gradients) was killed in its first step (exit 137, no word), leaving its run directory behind.
    monkeypatch.setattr(memory, "available", lambda: Available(10**6, "available on this machine"))
    out = tmp_path / "run"
    argv = ["train", "--dataset", "fake", "--out", str(out), "--set", "model.overrides.input_size=32", "-b", "1"]
    argv += ["--epochs", "1", "--limit-train-batches", "1", "--limit-val-batches", "1"]  # let through: over soon
    argv += [word for setting in settings for word in ("--set", setting)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    spec = get_spec("alexnet_small", width=0.5, input_size=32, pool_first=True)  # the default recipe's, at 32 px
    weights = per_parameter * spec.parameters(10, 1)  # fp32 values: fake data has 10 classes, stored grey here
    assert f"({held} {weights / 1e6:.1f} MB of it) and 1.0 MB is available" in err, err
    assert err.endswith("use a smaller batch size or model") and not out.exists()


@pytest.fixture
def cramped(monkeypatch):
    """A machine with 50 MB left."""
    monkeypatch.setattr(memory, "available", lambda: Available(50 * 10**6, "available on this machine"))


def test_predict_refuses_a_batch_that_cannot_fit_before_decoding(tmp_path, cramped, capsys, monkeypatch):
    weights = make_weights(tmp_path / "w.safetensors")  # alexnet_small at 32 px: 40 KB an image at the least
    images = []
    for i in range(3):
        images.append(tmp_path / f"{i}.png")
        Image.new("RGB", (40, 40), (10, 20 * i, 30)).save(images[-1])
    predictor = Predictor.from_path(weights)
    per_image = predictor.meta.image_bytes(4)
    decoded = []
    monkeypatch.setattr(predictor, "stored", lambda item, name="": decoded.append(item))
    big = 50 * 10**6 // per_image + 1
    with pytest.raises(MemoryBudgetError, match=f"a batch of {big:,} needs at least"):
        next(predictor.predict_iter(iter(images), batch_size=big))  # an iterator: its length is not known
    assert decoded == []
    # A list no longer than what fits runs whatever the batch size asked: the batch is its length.
    monkeypatch.undo()
    monkeypatch.setattr(memory, "available", lambda: Available(50 * 10**6, "available on this machine"))
    assert len(Predictor.from_path(weights).predict(images, batch_size=10**9)) == 3
    # On the command line: one line, exit 2, nothing printed.
    many = [str(images[0])] * big
    assert main(["predict", "--weights", str(weights), "--precision", "fp32", "-b", str(big), *many]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "available on this machine: use a smaller batch size" in err, err


def test_eval_serve_and_train_refuse_a_batch_that_cannot_fit(tmp_path, capsys, monkeypatch):
    import uvicorn

    def served(*args, **kwargs):  # the service would start (and this test wait for it) had the check let it through
        raise RuntimeError("the service started")

    monkeypatch.setattr(uvicorn, "Config", served)
    monkeypatch.setattr(memory, "available", lambda: Available(500_000, "available on this machine"))
    weights = str(make_weights(tmp_path / "w.safetensors"))  # ~40 KB an image at the least
    data = str(make_folder(tmp_path / "images", classes=[f"label_{i}" for i in range(4)]))  # 24 images a split
    evaluate = ["eval", "--weights", weights, "--dataset", "folder", "--data-dir", data]
    for argv in (
        [*evaluate, "-b", "2000"],  # 24 images: a batch of 24
        [*evaluate, "-b", "4", "--ten-crop"],
        ["serve", "--weights", weights, "--max-batch", "4096", "--port", "0", "--precision", "fp32"],  # no cast
        [
            "train",
            "--dataset",
            "fake",
            "--out",
            str(tmp_path / "run"),
            "--set",
            "model.overrides.input_size=32",
            "-b",
            "900",
        ],
    ):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "needs at least" in err and "Traceback" not in err, (argv, err)
    assert not (tmp_path / "run").exists()  # nothing written
    # What fits runs: eval with a batch of 4 of the same model.
    assert main([*evaluate, "-b", "4"]) == 0


def test_serve_plans_for_its_budgets_at_start(tmp_path, capsys, monkeypatch):
    """A service whose request bodies and decoding, at their budgets, cannot fit with a full batch is refused at start
    (it would be killed at its first busy moment); smaller budgets let it start."""
    import uvicorn

    def served(*args, **kwargs):
        raise RuntimeError("the service started")

    monkeypatch.setattr(uvicorn, "Config", served)
    monkeypatch.setattr(memory, "available", lambda: Available(500 * 10**6, "available on this machine"))
    weights = str(make_weights(tmp_path / "w.safetensors"))
    # fp32 on every CPU: auto would take bf16 where it is fast, and the model's share (0.2-0.4 MB) with it.
    serve = ["serve", "--weights", weights, "--port", "0", "--max-batch", "4", "--precision", "fp32"]
    assert main(serve) == 2  # the defaults: 256 MiB of bodies, 100 megapixels decoding (300 MB at 3 bytes a pixel)
    err = capsys.readouterr().err.strip()
    assert "serving: a batch of 4 needs at least 568.8 MB (request bodies and decoding 568.4 MB of it)" in err, err
    assert err.endswith("use a smaller --max-batch, --body-budget-mb or --decode-budget-mp") and "\n" not in err
    with pytest.raises(RuntimeError, match="the service started"):
        main([*serve, "--body-budget-mb", "64", "--decode-budget-mp", "50"])


def test_a_cast_of_weights_that_cannot_fit_is_refused_before_it_is_made(tmp_path, capsys, monkeypatch):
    """Measured before, in a 2 GB cgroup: `serve` with twenty `--weights` of alexnet_owt was killed without a word
    (a safetensors file's weights are mapped from the file; the cast to bf16 copies them). The cast's copies are set
    against the memory left; fp32 makes none."""
    weights = str(make_weights(tmp_path / "w.safetensors"))
    one = Predictor.from_path(weights, precision="fp32")
    kinds = (torch.nn.Conv2d, torch.nn.Linear)
    values = sum(p.numel() for m in one.model.modules() if isinstance(m, kinds) for p in m.parameters())
    room = 3 * 2 * values - 1  # a byte short of three members' weights in bf16
    monkeypatch.setattr(memory, "available", lambda: Available(room, "available on this machine"))
    with pytest.raises(MemoryBudgetError) as refused:
        Predictor.from_path([weights] * 3, precision="bf16")
    assert str(refused.value).startswith("prediction: the weights of 3 models in bf16 need at least")
    assert str(refused.value).endswith("average fewer models, or run them in fp32 (--precision fp32)")
    Predictor.from_path([weights] * 2, precision="bf16")  # two fit
    Predictor.from_path([weights] * 3, precision="fp32")  # no cast
    import uvicorn

    monkeypatch.setattr(uvicorn, "Config", lambda *a, **k: pytest.fail("the service started"))
    assert main(["serve", *["--weights", weights] * 3, "--precision", "bf16", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the weights of 3 models in bf16 need at least" in err, err


@pytest.mark.parametrize(
    "name, mode", [("alexnet_paper", "towers"), ("alexnet_paper", "hybrid"), ("alexnet_owt", "hybrid")]
)
def test_a_split_networks_floor_counts_each_ranks_share(name, mode):
    """Under --parallel towers or hybrid a rank holds its share of the parameters' state and of the layers'
    outputs, and every fp32 value while the whole network is built before it is split: counting the whole network's
    state on each rank overstated, and would refuse a run that fits."""
    from alexnet.config import Config
    from alexnet.training.floor import training_floor
    from alexnet.training.model_parallel import ShardedAlexNet

    model = create_model(name, num_classes=10)
    total = sum(p.numel() for p in model.parameters())
    for rank in (0, 1):  # the premise: each rank's shard holds at least its share
        assert sum(p.numel() for p in ShardedAlexNet(model, mode, rank, 2).parameters()) >= total // 2
    spec, cfg = get_spec(name), Config()  # SGD with momentum: 12 bytes a trained parameter
    whole_image, whole, held = training_floor(cfg, spec, 10, 3, "bf16")
    half_image, half, _ = training_floor(cfg, spec, 10, 3, "bf16", shards=2)
    assert (whole, half) == (12 * total, 6 * total) and held == "the weights, gradients and optimizer state"
    first = spec.activations(None, 3)[0] * 4  # the fp32 input: every rank's whole
    assert half_image - first == (whole_image - first) // 2
    cfg.model.freeze = "features"  # values only: the whole network, built before it is split
    assert training_floor(cfg, spec, 10, 3, "bf16", shards=2)[1] == 4 * total
