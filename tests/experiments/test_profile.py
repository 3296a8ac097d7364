"""The training-step profile: every operator's own time filed under its phase and kind, summing to the step."""

import json
from pathlib import Path

import pytest

from alexnet.experiments.profile import kind_of, profile_step


@pytest.fixture(scope="module")
def small_profile():
    return profile_step("alexnet_small", batch=4, size=32, steps=1, device="cpu")


def test_the_profile_files_each_phase_and_sums_to_the_step(small_profile):
    rows = {(r.phase, r.kind): r for r in small_profile.rows}
    assert {r.phase for r in small_profile.rows} == {"forward", "backward", "optimizer"}
    assert rows[("forward", "convolution")].ms > 0
    assert rows[("backward", "convolution (input and weight gradients)")].ms > 0
    assert rows[("optimizer", "all")].ms > 0
    assert sum(r.ms for r in small_profile.rows) == pytest.approx(small_profile.step_ms, rel=1e-2)
    assert sum(r.share for r in small_profile.rows) == pytest.approx(1.0, abs=1e-2)
    assert (small_profile.input, small_profile.batch) == (32, 4)


def test_operator_names_map_to_kinds():
    assert kind_of("aten::convolution_backward") == "convolution (input and weight gradients)"
    assert kind_of("aten::mkldnn_convolution") == "convolution"
    assert kind_of("aten::addmm") == kind_of("aten::mm") == "fc GEMM"
    assert kind_of("alexnet::lrn_backward") == kind_of("GeneratedBackwardFor_alexnet_lrn_default") == "LRN"
    assert kind_of("aten::_to_copy") == "cast or copy"
    assert kind_of("aten::bernoulli_") == kind_of("aten::uniform_") == "dropout"  # nn.Dropout's mask, ours
    assert kind_of("aten::add_") == "elementwise and other"


def test_the_profile_command(capsys):
    from alexnet.cli import main

    assert main(["bench", "--profile", "convnet_fig1", "-b", "2", "--device", "cpu", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["model"] == "convnet_fig1" and out["rows"]
    assert main(["bench", "--profile", "no_such_model"]) == 2
    assert "unknown model 'no_such_model'" in capsys.readouterr().err


# oneDNN's own lines (v3.12, a 2-core AMD EPYC), with a line of something else and a broken one among them.
ONEDNN_LOG = (Path(__file__).parents[1] / "fixtures" / "onednn_verbose.log").read_text().splitlines()


def test_the_onednn_log_groups_by_primitive_implementation_and_propagation():
    from alexnet.experiments.profile import parse_onednn_log

    isa, rows = parse_onednn_log(ONEDNN_LOG, steps=2)
    assert isa == "Intel AVX-512 with Intel DL Boost and bfloat16 support"
    got = {(r.primitive, r.implementation, r.propagation): (r.calls, r.ms) for r in rows}
    assert got == {
        ("convolution", "jit_bf16:avx512_core_bf16", "backward_weights"): (0.5, 2.0),
        ("convolution", "brg_conv_fwd:avx512_core_bf16", "forward_training"): (1.0, 2.0),  # two calls, 4 ms, 2 steps
        ("matmul", "brg_matmul:avx512_core_bf16", "4x3136:3136x10"): (0.5, 1.0),
        ("reorder", "jit:uni", "bf16 acdb → bf16 AcdB16a2b"): (0.5, 0.25),
    }
    assert [r.ms for r in rows] == sorted((r.ms for r in rows), reverse=True)
    assert sum(r.share for r in rows) == pytest.approx(1.0, abs=1e-3)  # each rounded to 4 places


def test_the_primitive_profile_reads_onednn_and_prints_nothing(capfd, monkeypatch):
    import torch

    from alexnet.experiments.profile import primitive_profile

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # auto means the CPU even where a GPU is
    result = primitive_profile("alexnet_small", batch=4, size=32, steps=1, device="auto")
    props = {(r.primitive, r.propagation) for r in result.rows}
    assert {("convolution", "forward_training"), ("convolution", "backward_weights")} <= props
    assert result.isa and result.step_ms > 0 and all(r.calls > 0 for r in result.rows)
    out, err = capfd.readouterr()
    assert "onednn_verbose" not in out + err  # the log was read, not shown


def test_the_onednn_command(capsys):
    from alexnet.cli import main

    assert main(["bench", "--profile", "alexnet_small", "-b", "4", "--onednn", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["model"] == "alexnet_small" and any(r["primitive"] == "convolution" for r in out["rows"])
    assert main(["bench", "--profile", "alexnet_small", "-b", "4", "--onednn"]) == 0
    header, *rows = capsys.readouterr().out.splitlines()[1:]
    assert header.startswith("primitive") and rows
    assert {len(row) for row in rows} == {len(header)}  # aligned: every column as wide as its longest entry
    assert main(["bench", "--onednn", "--profile", "no_such_model"]) == 2
    assert "unknown model 'no_such_model'" in capsys.readouterr().err
