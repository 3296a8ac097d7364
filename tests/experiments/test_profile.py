"""The training-step profile: every operator's own time filed under its phase and kind, summing to the step."""

import json

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
    assert kind_of("aten::add_") == "elementwise and other"


def test_the_profile_command(capsys):
    from alexnet.cli import main

    assert main(["bench", "--profile", "convnet_fig1", "-b", "2", "--device", "cpu", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["model"] == "convnet_fig1" and out["rows"]
    assert main(["bench", "--profile", "no_such_model"]) == 2
    assert "unknown model 'no_such_model'" in capsys.readouterr().err
