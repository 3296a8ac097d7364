"""torch.hub, as its users call it: ``torch.hub.load(repo_dir, name, source="local")`` gives the same model as
``create_model``, for every registered variant, weights included (a registry entry the test adds)."""

from pathlib import Path

import pytest
import torch

import alexnet

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", alexnet.list_models())
def test_every_variant_loads_through_torch_hub_as_create_model_builds_it(name):
    torch.manual_seed(0)
    hub = torch.hub.load(str(REPO), name, source="local", num_classes=7, width=0.25)
    torch.manual_seed(0)
    ours = alexnet.create_model(name, num_classes=7, width=0.25)
    assert hub.config == ours.config
    for (k, a), (_, b) in zip(hub.state_dict().items(), ours.state_dict().items()):
        assert torch.equal(a, b), k


def test_weights_load_through_torch_hub(tmp_path, monkeypatch):
    import hashlib

    from alexnet.artifacts import weights as W

    model = alexnet.create_model("alexnet_owt", num_classes=3, width=0.25, input_size=64)
    path = tmp_path / "owt-hub.pth"
    torch.save(model.state_dict(), path)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "home"))
    entry = W.register(
        W.Weights(
            name="alexnet_owt.HUB_TEST",
            url=path.as_uri(),
            file_name="owt-hub.pth",
            digest="sha256:" + hashlib.sha256(path.read_bytes()).hexdigest(),
            size_mb=1.0,
            file_format="state_dict",
            num_classes=3,
            overrides={"width": 0.25, "input_size": 64},
            preprocessing={"stored_size": 72, "crop": 64, "input_size": 64, "mean": [0.5] * 3, "std": [0.25] * 3},
            categories=lambda: ["a", "b", "c"],
        )
    )
    try:
        hub = torch.hub.load(str(REPO), "alexnet_owt", source="local", weights="HUB_TEST")
        assert not hub.training and hub.meta.classes == ("a", "b", "c")
        for k, v in model.state_dict().items():
            assert torch.equal(hub.state_dict()[k], v), k
    finally:
        W._REGISTRY.pop(entry.name, None)
