"""benchmarks/gpu_check.py, the check a user runs where a GPU is: here, that it says so and exits 0 without CUDA,
and that its whole path (interleaved throughput, MFU, the LRN check, the table and the JSON) runs on the CPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "gpu_check.py"


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is here: the check would run")
def test_without_cuda_it_says_so_and_exits_0(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 0 and "no CUDA device" in done.stdout and not (tmp_path / "gpu_check.json").exists()


@pytest.mark.slow
def test_the_whole_path_runs_on_the_cpu(tmp_path):
    out = tmp_path / "check.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--allow-cpu", "--quick", "--json-out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert [(r["case"], r["mode"]) for r in result["cases"]] == [
        ("alexnet_owt eager", "train"),
        ("alexnet_owt eager", "infer"),
        ("alexnet_paper eager", "train"),
        ("alexnet_paper eager", "infer"),
    ]
    assert all(r["img_s_low"] <= r["img_s"] <= r["img_s_high"] and 0 < r["mfu"] <= 1 for r in result["cases"])
    lrn = result["lrn"]
    assert lrn["kernel"] in ("c++", "reference") and lrn["ms_fused"] > 0 and lrn["ms_reference"] > 0
    assert lrn["forward_max_abs"] < 1e-4 and lrn["grad_max_abs"] < 1e-4
    assert "MFU" in done.stdout and "against its formula" in done.stdout
