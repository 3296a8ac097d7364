"""The Triton LRN kernels (the CUDA implementation of ``alexnet::lrn``), run on the CPU by Triton's interpreter
against the reference formula. On a GPU, `benchmarks/gpu_check.py` runs them compiled."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from alexnet.models import fused_lrn, lrn_triton

pytestmark = pytest.mark.skipif(not lrn_triton.available(), reason="Triton is not installed")

CASES = [  # n, convention, beta, groups, channels, channels last
    (5, "paper", 0.75, 2, 12, True),
    (5, "caffe", 0.75, 1, 12, False),
    (3, "paper", 0.6, 2, 12, False),
    (9, "caffe", 0.75, 1, 12, True),
]  # 12 channels (towers of 6): the interpreter's time grows with the programs, one per image and channel

# Triton's interpreter must be on before triton is first imported, so the kernels run in a process of their own.
SCRIPT = textwrap.dedent("""
    import json, sys, torch
    from alexnet.models import lrn_triton
    from alexnet.models.layers import LocalResponseNorm
    out = {}
    for n, convention, beta, groups, channels, last in json.loads(sys.argv[1]):
        torch.manual_seed(5)
        layer = LocalResponseNorm(n, 1e-3, beta, 2.0, convention, groups)
        fmt = torch.channels_last if last else torch.contiguous_format
        # 9 x 29 = 261 pixels: one program's block of 256 and a partial block; two images, so the batch stride counts.
        x = (torch.randn(2, channels, 9, 29) * 20).relu().contiguous(memory_format=fmt).requires_grad_()
        grad = torch.randn(2, channels, 9, 29)
        reference = layer.reference(x)
        reference.backward(grad)
        settings = (n, layer._scale, beta, 2.0, groups)
        y = lrn_triton.forward(x.detach(), *settings)
        gx = lrn_triton.backward(grad, x.detach(), *settings)
        yh = lrn_triton.forward(x.detach().bfloat16(), *settings)
        out[str([n, convention, beta, groups, channels, last])] = {
            "forward": (y - reference).abs().max().item(),
            "gradient": (gx - x.grad).abs().max().item(),
            "bf16": ((yh.float() - reference).abs() / (reference.abs() + 1e-2)).max().item(),
            "bf16_dtype": str(yh.dtype),
            "layout_kept": y.is_contiguous(memory_format=fmt) and gx.is_contiguous(memory_format=fmt),
        }
    print(json.dumps(out))
""")


@pytest.fixture(scope="module")
def interpreted() -> dict:
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(CASES)], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("case", CASES, ids=[f"n{c[0]}-{c[1]}-b{c[2]}-g{c[3]}-last{c[5]}" for c in CASES])
def test_the_triton_kernels_equal_the_reference(interpreted, case):
    """Forward and gradient against the formula: both conventions, a β that is not 0.75, per tower and across towers,
    NCHW and channels last (kept in the output), more pixels than one program's block; bf16 to its precision."""
    got = interpreted[str(list(case))]
    assert got["forward"] < 1e-4 and got["gradient"] < 1e-5, got
    assert got["bf16_dtype"] == "torch.bfloat16" and got["bf16"] < 2e-2, got  # two roundings of 2^-8 each
    assert got["layout_kept"]


def test_the_operator_dispatches_cuda_tensors_to_triton(monkeypatch):
    """``alexnet::lrn`` and its backward have CUDA kernels; ``ALEXNET_FUSED_LRN=0`` turns them off."""
    for op in ("alexnet::lrn", "alexnet::lrn_backward"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(op, "CUDA")
    assert fused_lrn._triton()
    monkeypatch.setenv("ALEXNET_FUSED_LRN", "0")
    assert not fused_lrn._triton()
