"""Choosing a device: every name a user can give is a device this machine has, or one clear error."""

import pytest
import torch

from alexnet.cli import main
from alexnet.device import pick_device


def test_the_cpu_and_auto():
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device("auto").type in ("cpu", "cuda", "mps")


@pytest.mark.parametrize("name", ["mps", "xpu", "cuda"])
def test_an_accelerator_this_machine_lacks_is_one_line(name, capsys):
    backend = torch.backends.mps if name == "mps" else getattr(torch, name)
    if backend.is_available():
        pytest.skip(f"this machine has {name}")
    with pytest.raises(ValueError, match=f"{name.upper()} is not available on this machine"):
        pick_device(name)
    # Through the CLI: one line, exit 2 (MPS used to reach torch's own RuntimeError, a traceback).
    assert main(["train", "--dataset", "fake", "--device", name]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_a_device_index_beyond_the_machines(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert pick_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(ValueError, match="this machine has 2 cuda device"):
        pick_device("cuda:2")


def test_the_meta_device_computes_nothing():
    with pytest.raises(ValueError, match="holds no data"):
        pick_device("meta")
