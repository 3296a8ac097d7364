"""The benchmark's output shape (not its speed: speed targets belong in the benchmark's printed figures)."""

import torch

from alexnet.experiments.bench import benchmark


def test_quick_benchmark_reports_every_field(monkeypatch):
    import alexnet.experiments.bench as bench

    # The GEMM peak is measured for seconds in the real command; a stub keeps the test about the report's shape.
    monkeypatch.setattr(bench, "measure_peak", lambda dtype, device: 200e9 if dtype == torch.float32 else 400e9)
    result = benchmark(batch=2, quick=True, device="cpu")
    assert result["peak_gflops"] == {"fp32": 200.0, "bf16": 400.0}
    assert set(result) == {"device", "threads", "torch", "peak_gflops", "train", "infer", "cases"}
    for mode in ("train", "infer"):
        r = result[mode]
        assert r["baseline_img_s"] > 0 and r["alexnet_img_s"] > 0 and 0 < r["mfu"] < 1.5
        assert abs(r["speedup"] - r["alexnet_img_s"] / r["baseline_img_s"]) < 1e-2
        # ceiling = peak / baseline FLOP/s = speedup / MFU (MFU = contender FLOP/s / peak)
        assert abs(r["ceiling_speedup"] - r["speedup"] / r["mfu"]) < 0.02 * r["ceiling_speedup"]
    assert len(result["cases"]) == 4 and result["peak_gflops"]["fp32"] > 0
