"""Ahead-of-time compiled inference (`CompiledModel`, `predict --compile`): the compiled model computes what the
eager one does, at any batch size and whatever the caller's grad mode, and leaves the caller's model as it was."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest
import torch

import alexnet
from alexnet.cli import main
from alexnet.inference import compiled as compiled_module
from alexnet.inference.compiled import CompiledModel
from tests.helpers import mixed_images


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_paper_network_compiled_computes_what_eager_does(dtype, monkeypatch):
    # alexnet_paper: the two towers' grouped convolutions and the fused LRN, a custom op the compiler must call.
    torch.manual_seed(0)
    model = alexnet.create_model("alexnet_paper", num_classes=7, width=0.25).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    programs = []
    monkeypatch.setattr(
        compiled_module,
        "aot_compile",
        lambda p, aot=compiled_module.aot_compile, **kw: aot(programs.append(p) or p, **kw),
    )
    compiled = CompiledModel(model, 3, 227, dtype)
    # fp32 is compiled from an example of batch 1 (its fc weights packed for batch 1), bf16 from one of 2; both run
    # at any batch.
    (image,) = [n.meta["val"] for n in programs[0].graph.nodes if n.name == programs[0].graph_signature.user_inputs[0]]
    assert image.shape[0].node.hint == (1 if dtype == torch.float32 else 2)
    for batch in (1, 3):
        x = torch.randn(batch, 3, 227, 227)
        with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=dtype == torch.bfloat16):
            want = model(x).float()
        with torch.enable_grad():  # no guard to fail: the caller's mode changes nothing
            got = compiled(x).float()
        assert got.shape == (batch, 7)
        # bf16 weights against bf16 autocast: both round to 8 bits of mantissa, in different places.
        atol = 0.03 if dtype == torch.bfloat16 else 1e-4
        torch.testing.assert_close(got, want, rtol=0, atol=atol * float(want.abs().max()))
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before) and after["classifier.6.weight"].dtype == torch.float32


def test_predict_compile_gives_the_eager_predictions(weights, tmp_path, capsys, caplog):
    caplog.set_level(logging.INFO, "alexnet.inference.compiled")
    paths = [str(p) for p in mixed_images(tmp_path / "imgs")]
    runs = {}
    for name, extra in (("eager", []), ("compiled", ["--compile"])):
        argv = ["predict", "--weights", str(weights), *paths, "--topk", "3", "--json", "--precision", "fp32"]
        assert main([*argv, *extra]) == 0
        runs[name] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(runs["eager"]) == len(paths) and "compiled AlexNet for torch.float32" in caplog.text
    for a, b in zip(runs["eager"], runs["compiled"]):
        assert [t["label"] for t in a["topk"]] == [t["label"] for t in b["topk"]]
        for ta, tb in zip(a["topk"], b["topk"]):
            assert abs(ta["prob"] - tb["prob"]) < 1e-4


def test_no_cpp_compiler_is_one_line_not_a_traceback(weights, tmp_path):
    # A process of its own: inductor caches which compiler works, so a patched config would outlive this test.
    image = mixed_images(tmp_path / "imgs")[0]
    done = subprocess.run(
        [sys.executable, "-m", "alexnet.cli", "predict", "--weights", str(weights), str(image), "--compile"],
        env={**os.environ, "CXX": "/nonexistent/c++", "ALEXNET_PROGRAM_CACHE": "0"},  # not a package kept before
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2, done.stderr
    err = done.stderr
    assert err.startswith("alexnet predict: error: inductor could not compile") and len(err.splitlines()) == 1, err


def test_only_cpu_fp32_programs_are_exported_from_one_image():
    # The fc weights' packing for batch 1 was measured in fp32 on the CPU; bf16 and GPUs keep an example of 2.
    assert compiled_module._example_batch(torch.float32, "cpu") == 1
    assert compiled_module._example_batch(torch.bfloat16, "cpu") == 2
    assert compiled_module._example_batch(torch.float32, torch.device("cuda", 0)) == 2
