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


# /proc/cpuinfo's flags as four CPU kinds report them (the bf16-relevant part).
ICE_LAKE = {"avx2", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_vbmi2"}  # AVX-512, no bf16 products
ZEN4 = ICE_LAKE | {"avx512_bf16"}
SAPPHIRE_RAPIDS = ZEN4 | {"amx_tile", "amx_bf16", "amx_int8"}
ZEN3 = {"avx2", "fma"}


@pytest.mark.parametrize(
    "flags, fast",
    [(ICE_LAKE, False), (ZEN4, True), (SAPPHIRE_RAPIDS, True), (ZEN3, False)],
    ids=["ice-lake", "zen4", "sapphire-rapids", "zen3"],
)
def test_auto_is_bf16_only_where_the_cpu_multiplies_bf16(monkeypatch, flags, fast):
    # oneDNN says bf16 is supported on any AVX-512 CPU, where without AVX512-BF16 or AMX it runs 5× slower than fp32
    # (an Ice Lake-class Xeon: a 4096² matmul at 61 GFLOP/s against 319): auto must pick fp32 there.
    from alexnet import device, native

    monkeypatch.setattr(native, "cpu_flags", lambda: flags)
    monkeypatch.setattr(native, "x86", lambda: True)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: "avx512f" in flags, raising=False)
    assert device.cpu_has_fast_bf16() is fast
    assert device.pick_precision("auto", torch.device("cpu")) == ("bf16" if fast else "fp32")


def test_bf16_products_off_linux_read_torchs_cpuinfo_and_other_architectures_ask_onednn(monkeypatch):
    from alexnet import device, native

    monkeypatch.setattr(native, "cpu_flags", set)  # macOS, Windows: no /proc/cpuinfo flags
    for flag, has in (("avx512_bf16", True), ("amx_bf16", True), ("avx512_vnni", False)):
        monkeypatch.setattr(torch.cpu, "get_capabilities", lambda flag=flag: {"architecture": "x86_64", flag: True})
        assert native.bf16_products() is has
    monkeypatch.setattr(native, "x86", lambda: False)  # an Arm CPU: oneDNN knows its BF16 extension
    for supported in (True, False):
        monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda s=supported: s, raising=False)
        assert device.cpu_has_fast_bf16() is supported
