"""int8 programs on CPUs whose int8 sums saturate (`alexnet.native.int8_saturates`; x86 without VNNI or AMX): their
activations go to 7 bits when compiled (`alexnet.artifacts.program.seven_bit_activations`), so oneDNN's int16 pair
sums cannot overflow."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from alexnet import native
from alexnet.artifacts import program as program_module
from alexnet.artifacts.program import Int8Model, seven_bit_activations
from alexnet.inference.quantize import quantize_graph


class Extremes(nn.Module):
    """A 3×3 convolution of 64 channels and a linear layer whose weights all sit at ±max: with inputs at the top of
    their range, 8-bit activations overflow an int16 pair sum (255 · 127 · 2 > 32767) in every product."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(64, 64, 3, padding=1), nn.Linear(64 * 4 * 4, 16)
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for layer in (self.conv, self.fc):
                layer.weight.copy_(torch.randn(layer.weight.shape, generator=gen).sign())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).flatten(1))


@pytest.fixture(scope="module")
def extremes():
    gen = torch.Generator().manual_seed(1)
    model = Extremes().eval()
    # inputs in [-2, 6]: the first layer's zero point is not 0 (about 64)
    calibration, x = (torch.rand(n, 64, 4, 4, generator=gen) * 8 - 2 for n in (32, 8))
    return model, quantize_graph(model, calibration, batch=8), x


def _ranges(program):
    """Each per-tensor (de)quantize's scale, zero point, quant_min and quant_max, in graph order."""
    qd = torch.ops.quantized_decomposed  # registered by torchao, which quantize_graph imports
    ops = (qd.quantize_per_tensor.default, qd.dequantize_per_tensor.default)
    return [tuple(n.args[1:5]) for n in program.graph.nodes if n.target in ops]


def test_seven_bits_double_each_scale_and_halve_each_zero_point(extremes):
    model, program, x = extremes
    before = _ranges(program)
    assert before and all(r[2:] == (0, 255) for r in before) and before[0][1] > 0
    seven = seven_bit_activations(program)
    assert _ranges(seven) == [(2 * s, round(z / 2), 0, 127) for s, z, _, _ in before]
    assert _ranges(program) == before  # the caller's program (a loaded file's) is left as it was
    with torch.no_grad():  # half the resolution, the same range: still the model
        want, got = model(x), seven.module()(x)
    assert 0 < (got - want).abs().max() < 0.05 * want.abs().max()
    assert seven_bit_activations(seven) is seven  # nothing on 8 bits left


def test_int8_sums_saturate_only_on_x86_without_vnni(monkeypatch):
    for flags, saturates in (({"sse2", "avx2", "fma"}, True), ({"avx512f", "avx512bw"}, True)):
        monkeypatch.setattr(native, "cpu_flags", lambda flags=flags: flags)
        assert native.int8_saturates() is saturates
    for vnni in native.VNNI_FLAGS:
        monkeypatch.setattr(native, "cpu_flags", lambda vnni=vnni: {"avx2", vnni})
        assert not native.int8_saturates()
    monkeypatch.setattr(native, "cpu_flags", set)  # no /proc/cpuinfo flags (macOS, Windows, ARM): torch's cpuinfo
    for caps, saturates in (
        ({"architecture": "x86_64", "avx2": True, "avx512_vnni": False}, True),
        ({"architecture": "x86_64", "avx_vnni": True}, False),
        ({"architecture": "arm64"}, False),
    ):
        monkeypatch.setattr(torch.cpu, "get_capabilities", lambda caps=caps: caps)
        assert native.int8_saturates() is saturates


@pytest.mark.parametrize("saturates", [True, False])
def test_the_compiled_program_takes_seven_bits_exactly_where_sums_saturate(extremes, monkeypatch, saturates):
    compiled = []
    monkeypatch.setattr("alexnet.native.int8_saturates", lambda: saturates)
    monkeypatch.setattr(program_module, "aot_compile", lambda program, autotune=False: compiled.append(program))
    Int8Model(extremes[1], batch=8)
    assert {r[3] for r in _ranges(compiled[0])} == ({127} if saturates else {255})


@pytest.mark.slow
def test_the_compiled_program_computes_its_graph_at_the_extremes(extremes):
    """On this CPU, whatever it is: the int8 program agrees with the quantized graph it compiles. Where sums saturate
    and the activations stayed on 8 bits, the output came out 47% of its largest value off on an AVX2 EPYC."""
    _, program, x = extremes
    graph = seven_bit_activations(program) if native.int8_saturates() else program
    with torch.no_grad():
        got, want = Int8Model(program, batch=8)(x), graph.module()(x)
    # oneDNN requantizes with its own rounding: a quantization step here and there
    assert (got - want).abs().max() < 0.02 * want.abs().max()
