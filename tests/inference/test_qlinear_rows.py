"""The int8 fc kernel for a few rows (`alexnet.artifacts.qlinear_rows`): exact against the formula it implements, put
in place of every int8 linear of a quantized program, and compiled into an int8 program that agrees with the graph
it came from."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from alexnet.artifacts import qlinear_rows
from alexnet.artifacts.program import Int8Model
from alexnet.inference.quantize import quantize_graph

pytestmark = pytest.mark.skipif(qlinear_rows.kernel() is None, reason="no C++ compiler to build the kernel")


def _reference(x, sx, zx, w, sw, bias):
    y = ((x.double() - zx) @ w.double().T) * sx * sw.double()
    return y if bias is None else y + bias.double()


@pytest.mark.parametrize("rows", range(1, qlinear_rows.MAX_ROWS + 1))
@pytest.mark.parametrize("k", [16, 37, 9216])  # whole vectors only, a scalar tail only, AlexNet's fc6
def test_the_kernel_is_the_formula(rows, k):
    gen = torch.Generator().manual_seed(rows * k)
    x = torch.randint(0, 256, (rows, k), dtype=torch.uint8, generator=gen)
    w = torch.randint(-128, 128, (19, k), dtype=torch.int8, generator=gen)
    w[0] = -128  # the extremes: 255 - 0 against -128 in every product of a row
    x[0] = 255
    sw, bias = torch.rand(19, generator=gen) * 0.01, torch.randn(19, generator=gen)
    for b in (bias, None):
        got = qlinear_rows.qlinear_rows(x, 0.02, 0 if b is None else 131, w, sw, b)
        want = _reference(x, 0.02, 0 if b is None else 131, w, sw, b)
        assert got.dtype == torch.float32 and got.shape == (rows, 19)
        torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=1e-6)


def test_bad_shapes_are_refused():
    x, w, sw = torch.zeros(9, 16, dtype=torch.uint8), torch.zeros(4, 16, dtype=torch.int8), torch.ones(4)
    with pytest.raises(RuntimeError, match="1 to 8 rows"):
        qlinear_rows.kernel().forward(x, 1.0, 0, w, sw, None)
    with pytest.raises(RuntimeError, match="int8"):
        qlinear_rows.kernel().forward(x[:1], 1.0, 0, w[:, :8], sw, None)


@pytest.fixture(scope="module")
def fc_program():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 40), nn.ReLU(), nn.Dropout(), nn.Linear(40, 5)).eval()
    return model, quantize_graph(model, torch.randn(32, 3, 4, 4), batch=2)


def test_the_rewrite_puts_every_int8_linear_on_the_kernel_and_changes_nothing_else(fc_program):
    _, program = fc_program
    rewritten = qlinear_rows.rewrite(program)
    ops = [n.target for n in rewritten.graph.nodes if n.op == "call_function"]
    assert ops.count(torch.ops.alexnet.qlinear_rows.default) == 2 and torch.ops.aten.linear.default not in ops
    x = torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(rewritten.module()(x), program.module()(x), rtol=1e-5, atol=1e-6)
    untouched = quantize_graph(fc_program[0], torch.randn(32, 3, 4, 4), batch=qlinear_rows.MAX_ROWS + 1)
    assert qlinear_rows.rewrite(untouched) is untouched  # more rows than the kernel's block


def test_the_kernel_is_wanted_for_a_few_rows_without_vnni(monkeypatch):
    monkeypatch.setenv("ALEXNET_QLINEAR_ROWS", "auto")
    monkeypatch.setattr("alexnet.native.cpu_flags", lambda: {"avx2", "fma"})
    assert qlinear_rows.wanted(1) and qlinear_rows.wanted(qlinear_rows.MAX_ROWS)
    assert not qlinear_rows.wanted(qlinear_rows.MAX_ROWS + 1)
    for vnni in ("avx512_vnni", "avx_vnni", "amx_int8"):  # oneDNN's own int8 kernels are fast there
        monkeypatch.setattr("alexnet.native.cpu_flags", lambda vnni=vnni: {"avx2", vnni})
        assert not qlinear_rows.wanted(1)
    monkeypatch.setenv("ALEXNET_QLINEAR_ROWS", "1")
    assert qlinear_rows.wanted(1)
    monkeypatch.setenv("ALEXNET_QLINEAR_ROWS", "0")
    monkeypatch.setattr("alexnet.native.cpu_flags", lambda: {"avx2"})
    assert not qlinear_rows.wanted(1)


@pytest.mark.slow
def test_a_compiled_int8_program_runs_its_fc_layers_on_the_kernel(fc_program, monkeypatch):
    """AOTInductor compiles the operator into the program (as a call through the dispatcher) and the program agrees
    with the quantized graph; every call goes through the kernel."""
    _, program = fc_program
    monkeypatch.setenv("ALEXNET_QLINEAR_ROWS", "1")
    monkeypatch.setattr("alexnet.native.int8_saturates", lambda: False)  # the graph's own 8 bits: want is that graph
    calls = []
    real = qlinear_rows.kernel()
    monkeypatch.setattr(qlinear_rows, "kernel", lambda: calls.append(1) or real)
    model = Int8Model(program, batch=2)
    calls.clear()
    x = torch.randn(3, 3, 4, 4)  # two batches of 2, the second padded with zeros
    padded = torch.cat([x, torch.zeros(1, 3, 4, 4)])
    with torch.no_grad():
        got = model(x)
        want = torch.cat([program.module()(padded[:2]), program.module()(padded[2:])])[:3]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert len(calls) == 4  # two fc layers, two batches


@pytest.mark.slow
def test_a_graph_the_rewrite_cannot_take_compiles_as_it_was(fc_program, monkeypatch, caplog):
    _, program = fc_program
    monkeypatch.setenv("ALEXNET_QLINEAR_ROWS", "1")

    def fails(program):
        raise RuntimeError("an unforeseen graph\nmore detail")

    monkeypatch.setattr(qlinear_rows, "rewrite", fails)
    model = Int8Model(program, batch=2)
    x = torch.randn(2, 3, 4, 4)
    with torch.no_grad():
        got, want = model(x), program.module()(x)
    # oneDNN requantizes with its own rounding: a quantization step here and there, where the kernel is the graph
    assert got.shape == want.shape and (got - want).abs().max() < 0.2 * want.abs().max()
    assert "int8 fc layers stay on oneDNN (an unforeseen graph)" in caplog.text
