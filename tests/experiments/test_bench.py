"""The benchmark's output shape (not its speed: speed targets belong in the benchmark's printed figures)."""

import torch

from alexnet.experiments.bench import benchmark


def test_quick_benchmark_reports_every_field(monkeypatch):
    import alexnet.experiments.bench as bench

    # The GEMM peak is measured for seconds in the real command; a stub keeps the test about the report's shape.
    monkeypatch.setattr(bench, "measure_peak", lambda dtype, device: 200e9 if dtype == torch.float32 else 400e9)
    result = benchmark(batch=2, quick=True, device="cpu").to_dict()
    assert result["peak_gflops"] == {"fp32": 200.0, "bf16": 400.0}
    assert set(result) == {"device", "threads", "torch", "peak_gflops", "train", "infer", "cases", "engines"}
    assert result["engines"] is None  # --quick: no engine comparison
    for mode in ("train", "infer"):
        r = result[mode]
        assert r["baseline_img_s"] > 0 and r["alexnet_img_s"] > 0 and 0 < r["mfu"] < 1.5
        assert abs(r["speedup"] - r["alexnet_img_s"] / r["baseline_img_s"]) < 1e-2
        # ceiling = peak / baseline FLOP/s = speedup / MFU (MFU = contender FLOP/s / peak)
        assert abs(r["ceiling_speedup"] - r["speedup"] / r["mfu"]) < 0.02 * r["ceiling_speedup"]
    assert len(result["cases"]) == 4 and result["peak_gflops"]["fp32"] > 0


def test_engine_rows_report_rates_latency_mfu_and_skips(monkeypatch):
    import time

    import alexnet.experiments.engines as engines

    def runner(x):
        return lambda: time.sleep(0.001 * len(x))  # 1 ms per image: 1,000 img/s, 1 ms at batch 1

    monkeypatch.setattr(engines, "_engines", lambda model, size, tmp: {"fast int8": runner, "absent": "skipped: no"})
    result = engines.compare_engines(batch=4, size=32, repeats=3, latency_calls=5, peaks={"int8": 1e12})
    fast, absent = result["rows"]
    assert absent == {"engine": "absent", "note": "skipped: no"}
    assert 500 < fast["batch4_img_s"] <= 1000 and 1 <= fast["batch1_ms"] < 3
    macs = engines.model_info("alexnet_owt").macs
    assert abs(fast["mfu"] - 2 * macs * fast["batch4_img_s"] / 1e12) < 1e-3 and fast["peak"] == "int8"


def test_the_bench_command_prints_the_table_and_the_json(monkeypatch, capsys):
    import json

    import alexnet.experiments.bench as bench
    from alexnet.cli import main

    monkeypatch.setattr(bench, "measure_peak", lambda dtype, device: 200e9 if dtype == torch.float32 else 400e9)
    assert main(["bench", "--quick", "-b", "2", "--device", "cpu"]) == 0
    table = capsys.readouterr().out
    assert "GEMM peak fp32 200.0 GFLOP/s, bf16 400.0 GFLOP/s" in table and "torchvision alexnet" in table
    assert table.count("img/s =") == 2  # the train and infer comparisons
    assert main(["bench", "--quick", "-b", "2", "--device", "cpu", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["train"]["batch"] == 2 and len(result["cases"]) == 4
