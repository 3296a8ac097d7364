"""int8 programs on CPUs whose int8 sums saturate (`alexnet.native.int8_saturates`; x86 without VNNI or AMX): their
weights go to 7 bits when compiled (`alexnet.artifacts.program.seven_bit_weights`), so oneDNN's int16 pair sums
cannot overflow and the compiled program computes its graph."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from alexnet import native
from alexnet.artifacts import program as program_module
from alexnet.artifacts import qlinear_rows
from alexnet.artifacts.program import Int8Model, seven_bit_weights
from alexnet.inference.quantize import quantize_graph


class Extremes(nn.Module):
    """A 3×3 convolution of 64 channels and a linear layer whose weights all sit at ±max: with inputs at the top of
    their range, 8-bit weights overflow an int16 pair sum (255 · 127 · 2 > 32767) in every product."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(64, 64, 3, padding=1), nn.Linear(64 * 4 * 4, 16)
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for layer in (self.conv, self.fc):
                layer.weight.copy_(torch.randn(layer.weight.shape, generator=gen).sign())
            self.fc.weight[:, :5] *= 0.3  # a few weights between the extremes, which halving rounds

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).flatten(1))


@pytest.fixture(scope="module")
def extremes():
    gen = torch.Generator().manual_seed(1)
    model = Extremes().eval()
    calibration, x = (torch.rand(n, 64, 4, 4, generator=gen) * 8 - 2 for n in (32, 8))
    return model, quantize_graph(model, calibration, batch=8), x


def _weights(program):
    """Each int8 weight with its scales and its quant_min and quant_max, in graph order."""
    qd = torch.ops.quantized_decomposed  # registered by torchao, which quantize_graph imports
    tensors = {**program.state_dict, **program.constants}
    names = program.graph_signature.inputs_to_buffers
    return [
        (tensors[names[n.args[0].name]].clone(), tensors[names[n.args[1].name]].clone(), n.args[4], n.args[5])
        for n in program.graph.nodes
        if n.target is qd.dequantize_per_channel.default
    ]


def test_seven_bits_halve_each_weight_and_double_its_scale(extremes):
    model, program, x = extremes
    before = _weights(program)
    assert len(before) == 2 and all(r[2:] == (-128, 127) and r[0].abs().max() == 127 for r in before)
    seven = seven_bit_weights(program)
    for (w8, s8, *_), (w7, s7, low, high) in zip(before, _weights(seven), strict=True):
        assert (low, high) == (-64, 64) and w7.dtype == torch.int8
        assert torch.equal(w7, torch.round(w8.float() / 2).to(torch.int8)) and torch.equal(s7, 2 * s8)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(_weights(program), before))  # the caller's program as it was
    with torch.no_grad():  # half the resolution of the weights: still the model
        want, got = model(x), seven.module()(x)
    assert 0 < (got - want).abs().max() < 0.05 * want.abs().max()
    assert seven_bit_weights(seven) is seven  # nothing on 8 bits left


def test_a_narrow_range_halves_too(extremes):
    """Weights quantized on -127..127 (symmetric narrow range, as other quantizers write them) overflow as well."""
    narrow = copy.deepcopy(extremes[1])
    qd = torch.ops.quantized_decomposed
    for node in narrow.graph.nodes:
        if node.target is qd.dequantize_per_channel.default:
            node.args = (*node.args[:4], -127, 127, torch.int8)
    assert [r[2:] for r in _weights(seven_bit_weights(narrow))] == [(-64, 64)] * 2


def test_int8_sums_saturate_only_on_x86_without_vnni(monkeypatch):
    for flags in ({"sse2", "avx2", "fma"}, {"avx512f", "avx512bw"}):
        monkeypatch.setattr(native, "cpu_flags", lambda flags=flags: flags)
        assert native.int8_saturates()
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
    monkeypatch.setattr(
        program_module, "aot_compile", lambda program, autotune=False, cache=False: compiled.append(program)
    )
    Int8Model(extremes[1], batch=8)
    assert {r[3] for r in _weights(compiled[0])} == ({64} if saturates else {127})


@pytest.mark.skipif(qlinear_rows.kernel() is None, reason="no C++ compiler to build the int8 fc kernel")
def test_fc_layers_on_the_int8_kernel_keep_their_eight_bits(extremes, monkeypatch):
    """The kernel's sums are exact at 8 bits (`alexnet.artifacts.qlinear_rows`): only the convolution, left to
    oneDNN, goes to 7."""
    compiled = []
    monkeypatch.setattr("alexnet.native.int8_saturates", lambda: True)
    monkeypatch.setenv("ALEXNET_QLINEAR_ROWS", "1")
    monkeypatch.setattr(
        program_module, "aot_compile", lambda program, autotune=False, cache=False: compiled.append(program)
    )
    Int8Model(extremes[1], batch=8)
    (program,) = compiled
    assert [r[2:] for r in _weights(program)] == [(-64, 64)]  # the convolution's
    tensors = {**program.state_dict, **program.constants}
    names = {**program.graph_signature.inputs_to_buffers, **program.graph_signature.inputs_to_lifted_tensor_constants}
    (fc,) = [n for n in program.graph.nodes if n.target is torch.ops.alexnet.qlinear_rows.default]
    weight = tensors[names[fc.args[3].name]]
    assert weight.dtype == torch.int8 and weight.abs().max() == 127  # as quantized: not halved


def test_a_graph_the_halving_cannot_take_compiles_as_it_was_and_says_so(extremes, monkeypatch, caplog):
    compiled = []
    monkeypatch.setattr("alexnet.native.int8_saturates", lambda: True)
    monkeypatch.setenv("ALEXNET_QLINEAR_ROWS", "0")  # the program reaches the compiler as it came
    monkeypatch.setattr(
        program_module, "aot_compile", lambda program, autotune=False, cache=False: compiled.append(program)
    )

    def fails(program):
        raise ValueError("conv: int8 weights with a zero point\nmore detail")

    monkeypatch.setattr(program_module, "seven_bit_weights", fails)
    Int8Model(extremes[1], batch=8)
    assert compiled == [extremes[1]]
    assert "int8 weights stay on 8 bits, where this CPU's int8 sums can overflow (conv: int8 weights" in caplog.text


@pytest.mark.slow
def test_the_compiled_program_computes_its_graph_at_the_extremes(extremes):
    """On this CPU, whatever it is: the int8 program agrees with the quantized graph it compiles. Where sums saturate
    and the weights stayed on 8 bits, the output came out 47% of its largest value off on an AVX2 EPYC."""
    _, program, x = extremes
    graph = qlinear_rows.rewrite(program) if qlinear_rows.wanted(8) else program  # the fc layer kept at 8 bits
    graph = seven_bit_weights(graph) if native.int8_saturates() else graph
    with torch.no_grad():
        got, want = Int8Model(program, batch=8)(x), graph.module()(x)
    # oneDNN requantizes with its own rounding: a quantization step here and there
    assert (got - want).abs().max() < 0.02 * want.abs().max()


def test_halving_rounds_every_int8_value_as_float_division_does():
    """`seven_bit_weights` halves in int8 (through float, `alexnet_owt`'s fc6 took 151 MB a step): the same values,
    halves to even, for all 256 and for a strided view."""
    from alexnet.artifacts.program import _halved

    every = torch.arange(-128, 128, dtype=torch.int8)
    strided = torch.randint(-128, 128, (300, 77), dtype=torch.int8).t()
    for w in (every, strided):
        got = _halved(w)
        assert got.dtype == torch.int8 and torch.equal(got, torch.round(w.float() / 2).to(torch.int8))
    assert (_halved(every).min().item(), _halved(every).max().item()) == (-64, 64)
