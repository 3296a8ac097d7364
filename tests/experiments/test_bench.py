"""The benchmark's output shape (not its speed: speed targets belong in the benchmark's printed figures)."""

from pathlib import Path

import pytest
import torch

from alexnet.device import pick_precision
from alexnet.experiments.bench import benchmark


def stub_peaks(monkeypatch, fp32=200e9, bf16=400e9, int8=800e9):
    """Peak kernels at known rates (FLOP/s), which a clock the bench's rounds read advances by 1 s a call without
    sleeping (a real sleep overshoots under the suite's load). Returns the calls per precision and the dtypes asked."""
    import functools
    import time

    import alexnet.experiments.bench as bench
    import alexnet.experiments.engines as engines
    from alexnet.experiments import measure

    extra = [0.0]  # seconds the kernels add to the real clock
    calls = {"fp32": 0, "bf16": 0, "int8": 0}
    asked = []

    def kernel(precision, rate):
        def run():
            calls[precision] += 1
            extra[0] += 1.0

        return {"k": (run, rate)}  # rate FLOP a call, 1 s a call

    def peak_kernels(dtype, device):
        asked.append(dtype)
        return kernel("fp32", fp32) if dtype == torch.float32 else kernel("bf16", bf16)

    monkeypatch.setattr(bench, "peak_kernels", peak_kernels)
    monkeypatch.setattr(engines, "int8_kernels", lambda: kernel("int8", int8))
    clock = functools.partial(measure.interleaved, clock=lambda: time.perf_counter() + extra[0])
    monkeypatch.setattr(bench, "interleaved", clock)
    return calls, asked


def test_quick_benchmark_reports_every_field(monkeypatch):
    calls, asked = stub_peaks(monkeypatch)
    result = benchmark(batch=2, quick=True, device="cpu").to_dict()
    # bf16's peak only where the defaults run bf16 (native bf16): emulated, it would take minutes and mean nothing
    native = result["train"]["precision"] == "bf16"
    assert result["peak_gflops"] == {"fp32": 200.0, "int8": 800.0, **({"bf16": 400.0} if native else {})}
    assert set(asked) == ({torch.float32, torch.bfloat16} if native else {torch.float32})
    # The peak kernels run in the cases' rounds: one warm-up call, then 3 rounds of 2 (--quick)
    assert calls == {"fp32": 7, "bf16": 7 if native else 0, "int8": 7}
    assert set(result) == {
        "device",
        "threads",
        "torch",
        "peak_gflops",
        "train",
        "infer",
        "cases",
        "engines",
        "cpu",
        "isa",
        "rounds",
        "paper_per_flop",
    }
    assert result["rounds"] == 3 and result["cpu"] and result["paper_per_flop"] is None  # --quick: no paper cases
    assert result["engines"] is None  # --quick: no engine comparison
    for mode in ("train", "infer"):
        r = result[mode]
        assert r["baseline_img_s"] > 0 and r["alexnet_img_s"] > 0 and 0 < r["mfu"] <= 1
        assert r["speedup_low"] <= r["speedup"] <= r["speedup_high"]  # the median of per-round ratios
        baseline = next(c for c in result["cases"] if c["mode"] == mode)
        peak = 400e9 if r["precision"] == "bf16" else 200e9
        # ceiling = peak / the baseline's FLOP/s: what the contender would reach at 100% of the peak
        assert r["ceiling_speedup"] == pytest.approx(
            peak / (baseline["gflops_per_img"] * 1e9 * baseline["img_s"]), rel=1e-2
        )
    for case in result["cases"]:
        assert case["img_s_low"] <= case["img_s"] <= case["img_s_high"]
    assert len(result["cases"]) == 4


def test_the_peak_and_mfu_are_taken_round_by_round_beside_the_cases():
    """A busy neighbour in rounds 1 and 2 (4× and 2× slower) slows the cases and the peak kernels of those rounds
    alike: each round's peak is its fastest kernel per precision, and a case's MFU, its FLOP rate over its own round's
    peak, comes out the same in every round, where the median rate over the best round's peak would read half."""
    from alexnet.experiments import measure
    from alexnet.experiments.bench import peaks_per_round, per_round_mfu

    now, calls = [0.0], [0]

    def step(seconds):
        def run():
            load = (4.0, 2.0, 1.0)[calls[0] // 4]  # four steps a round, one call each
            calls[0] += 1
            now[0] += seconds * load

        return run

    steps = {"case": step(1.0), "gemm": step(2.0), "conv": step(1.0), "int8 gemm": step(1.0)}
    # FLOP a call: the case 1.5 T (1.5 TFLOP/s undisturbed), the kernels 2, 3 and 8 TFLOP/s undisturbed
    flops = {"case": 1.5e12, "gemm": 4e12, "conv": 3e12, "int8 gemm": 8e12}
    rates = measure.interleaved(steps, flops, rounds=3, repeats=1, warmup=0, clock=lambda: now[0])
    assert rates["conv"] == pytest.approx([0.75e12, 1.5e12, 3e12])
    peaks = peaks_per_round(rates, {"gemm": "bf16", "conv": "bf16", "int8 gemm": "int8"})
    assert peaks == {"bf16": pytest.approx([0.75e12, 1.5e12, 3e12]), "int8": pytest.approx([2e12, 4e12, 8e12])}
    assert per_round_mfu(rates["case"], peaks["bf16"]) == (pytest.approx(0.5), False)
    assert per_round_mfu([4e12, 1e12, 1e12], [2e12, 2e12, 2e12]) == (0.5, False)  # the median round's
    assert per_round_mfu([4e12, 3e12, 1e12], [2e12, 2e12, 2e12]) == (1.0, True)  # over the peak: capped, flagged


def test_the_peak_is_the_fastest_kernel_counting_each_ones_flops(monkeypatch):
    """Every kernel at one call a second: the peak is then the largest call's FLOPs, the paper's conv2 with its
    towers joined over a batch of 64 (a GEMM of side 8 is 1 kFLOP), each rate scaled by its own FLOPs."""
    import alexnet.experiments.bench as bench

    steps = []
    monkeypatch.setattr(bench, "_rate", lambda step, batch, *a, **k: steps.append(step) or batch)
    peak = bench.measure_peak(torch.float32, torch.device("cpu"), sizes=(8,))
    assert len(steps) == 1 + len(bench.PEAK_CONVS)
    assert peak == max(2 * 8**3, *(2 * o * i * k * k * s * s * 64 for i, o, k, s in bench.PEAK_CONVS))
    assert peak == 2 * 256 * 96 * 25 * 27 * 27 * 64


def test_the_engine_table_runs_ours_and_openvino_in_the_librarys_default_precision(monkeypatch):
    import alexnet.experiments.engines as engines

    for native, expected in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr("alexnet.device.cpu_has_fast_bf16", lambda native=native: native)
        seen = []
        monkeypatch.setattr(
            engines, "_engines", lambda model, size, tmp, precision, seen=seen: seen.append(precision) or {}
        )
        engines.compare_engines(batch=1, size=32, rounds=1, latency_calls=1, peaks={"int8": 1e12})
        assert seen == [expected]
        assert engines.pairs(expected)[1] == (
            f"alexnet_owt {expected} (compiled, serve --compile)",
            f"OpenVINO {expected}",
        )


def test_the_int8_peak_skips_a_route_that_runs_on_a_reference_path(monkeypatch):
    """Without VNNI torch._int_mm runs at ~1 GOP/s (minutes at 4096²): a 512² probe keeps it out of the large runs,
    and the peak is the fast route's."""
    import time

    import alexnet.experiments.engines as engines

    calls = []

    def gemms(n):
        # fast: 20 ms a call at any size (this VM's sleep is coarse below that); slow: 200 ms at the 512² probe, and
        # instant at the large sizes, where it would win the peak if it were run there
        def route(name, seconds):
            return lambda: calls.append((name, n)) or time.sleep(seconds)

        return {"slow": route("slow", 0.2 if n == 512 else 0.0), "fast": route("fast", 0.02)}

    monkeypatch.setattr(engines, "_int8_gemms", gemms)
    peak = engines.int8_peak(repeats=2)
    assert {n for name, n in calls if name == "slow"} == {512}  # probed, then left out
    assert {n for name, n in calls if name == "fast"} == {512, 2048, 4096}
    assert 0.3 * 2 * 4096**3 / 0.02 < peak <= 2 * 4096**3 / 0.02  # the fast route's best, at 4096


def test_per_flop_compares_flop_rates_round_by_round():
    from alexnet.experiments.bench import Case, per_flop

    paper = Case("p", "alexnet_paper", "train", 64, 227, "bf16", True)
    owt = Case("o", "alexnet_owt", "train", 64, 224, "bf16", True)
    paper.gflops_per_img, owt.gflops_per_img = 3.0, 2.0
    # Round by round: (10·3)/(20·2) = 0.75, (12·3)/(20·2) = 0.9, (9·3)/(10·2) = 1.35; the median is not the ratio of
    # the medians (10·3 / 20·2 = 0.75).
    assert per_flop(paper, [10, 12, 9], owt, [20, 20, 10]) == {"median": 0.9, "low": 0.75, "high": 1.35}


@pytest.fixture
def clock(monkeypatch):
    """A virtual clock for the engine comparison: fake engines advance it instead of sleeping. Under the suite's
    parallel load a real 1-8 ms sleep overshoots by a varying amount, which once put a 2x ratio at 1.38."""
    import functools

    import alexnet.experiments.engines as engines
    from alexnet.experiments import measure

    now = [0.0]  # seconds
    monkeypatch.setattr(engines, "interleaved", functools.partial(measure.interleaved, clock=lambda: now[0]))
    return now


def test_engine_rows_report_rates_latency_mfu_spreads_and_pairs(monkeypatch, clock):
    import alexnet.experiments.engines as engines

    def runner(per_image):
        def call(x):
            clock[0] += per_image * len(x)

        return lambda x: lambda: call(x)

    # ours at 1 ms an image, the peer at 2 ms: twice the throughput, half the latency, round by round
    ours, peer = engines.INT8_PAIR

    def broken(x):
        raise RuntimeError("Constraints violated (batch)!\nmore lines")

    fake = {ours: runner(0.001), peer: runner(0.002), "absent": "skipped: no", "broken": broken}
    monkeypatch.setattr(engines, "_engines", lambda model, size, tmp, precision: fake)
    result = engines.compare_engines(batch=4, size=32, rounds=3, latency_calls=3, peaks={"int8": 1e12})
    fast, slow, absent, failed = result["rows"]  # in the engines' order
    assert absent == {"engine": "absent", "note": "skipped: no"}
    # an engine that cannot be built: its reason in one line, and the others still measured
    assert failed == {"engine": "broken", "note": "failed: RuntimeError: Constraints violated (batch)!"}
    assert (fast["batch4_img_s"], fast["batch1_ms"], slow["batch4_img_s"], slow["batch1_ms"]) == (1000, 1, 500, 2)
    assert fast["img_s_low"] <= fast["batch4_img_s"] <= fast["img_s_high"]
    assert fast["ms_low"] <= fast["batch1_ms"] <= fast["ms_high"]
    macs = engines.model_info("alexnet_owt").macs
    assert abs(slow["mfu"] - 2 * macs * slow["batch4_img_s"] / 1e12) < 1e-3 and slow["peak"] == "int8"
    assert not slow["peak_exceeded"]
    # 1.4 GOP an image at 1000 img/s is over the 1 TOP/s peak given: capped, and the peak named as wrong
    assert fast["mfu"] == 1.0 and fast["peak_exceeded"]
    (pair,) = result["versus"]  # the bf16 pair is absent: no ratio for it
    assert (pair["ours"], pair["peer"], result["rounds"]) == (ours, peer, 3)
    assert pair["throughput"] == [2, 2, 2] and pair["latency"] == [0.5, 0.5, 0.5]


def test_an_engine_that_builds_but_fails_when_run_costs_only_its_row(monkeypatch):
    import time

    import alexnet.experiments.engines as engines

    def runs(x):
        return lambda: time.sleep(0.001 * len(x))

    def crashes_when_run(x):
        def call():
            raise ValueError()  # no message: the row names its kind once

        return call

    ours, peer = engines.INT8_PAIR
    fake = {ours: runs, "crashes": crashes_when_run, peer: runs}
    monkeypatch.setattr(engines, "_engines", lambda model, size, tmp, precision: fake)
    result = engines.compare_engines(batch=2, size=32, rounds=2, latency_calls=2, peaks={"int8": 1e12})
    first, crashed, last = result["rows"]
    assert crashed == {"engine": "crashes", "note": "failed: ValueError"}
    assert first["batch2_img_s"] > 0 and last["batch2_img_s"] > 0 and len(result["versus"]) == 1


def test_engine_pairs_are_measured_head_to_head(monkeypatch, clock):
    """A third engine whose threads linger (here: the next 6 calls of any other engine cost 3 ms more) must not enter
    a pair's ratio: among all engines both of the pair pay it (1+3 against 2+3 ms: 0.8×), alone they do not (0.5×)."""
    import alexnet.experiments.engines as engines

    lingering = [0]  # calls of other engines still slowed by the third's threads

    def runner(per_image):
        def call(x):
            clock[0] += per_image * len(x) + (0.003 if lingering[0] > 0 else 0.0)
            lingering[0] -= 1

        return lambda x: lambda: call(x)

    def third(x):
        def call():
            lingering[0] = 6  # a round of the other two: 3 calls each

        return call

    ours, peer = engines.INT8_PAIR
    fake = {ours: runner(0.001), peer: runner(0.002), "third": third}
    monkeypatch.setattr(engines, "_engines", lambda model, size, tmp, precision: fake)
    result = engines.compare_engines(batch=1, size=32, rounds=5, latency_calls=3, peaks={"int8": 1e12})
    fast, slow, _ = result["rows"]
    assert fast["batch1_ms"] > 3.5 and slow["batch1_ms"] > 4.5  # among all the engines, both paid for the third
    (pair,) = result["versus"]
    # medians: the third's last call still slows the head-to-head's first round (0.5×)
    assert pair["latency"][0] == 0.5 and pair["throughput"][0] == 2.0


def test_the_bench_command_prints_the_table_and_the_json(monkeypatch, capsys):
    import json

    from alexnet.cli import main

    stub_peaks(monkeypatch)
    assert main(["bench", "--quick", "-b", "2", "--device", "cpu"]) == 0
    table = capsys.readouterr().out
    native = pick_precision("auto", torch.device("cpu")) == "bf16"
    bf16 = "bf16 400.0 GFLOP/s" if native else "bf16 not native here (not run)"
    assert f"peak fp32 200.0 GFLOP/s, {bf16}, int8 800.0 GOP/s" in table and "torchvision alexnet" in table
    assert table.count("img/s =") == 2  # the train and infer comparisons
    assert main(["bench", "--quick", "-b", "2", "--device", "cpu", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["train"]["batch"] == 2 and len(result["cases"]) == 4


@pytest.mark.slow
def test_the_int8_peers_quantize_and_agree_with_fp32(tmp_path):
    """OpenVINO int8 (NNCF) and onnxruntime int8 (static QDQ) of torchvision's AlexNet, calibrated on the same
    inputs as ours: they run at the engine table's batch shapes and keep fp32's top-1 on most inputs (OpenVINO's
    fp32 engine on all but rounding's)."""
    import torchvision

    import alexnet.experiments.engines as engines

    size = 64  # the smallest input torchvision's AlexNet takes, for speed
    torch.manual_seed(0)
    model = torchvision.models.alexnet().eval()
    x = engines.calibration_batch(size, 8)
    with torch.no_grad():
        expected = model(x).argmax(1)
    onnx_path = tmp_path / "fp32.onnx"
    batch = torch.export.Dim("batch", min=1, max=64)
    torch.onnx.export(model, (x[:2],), dynamo=True, input_names=["x"], dynamic_shapes=({0: batch},)).save(
        str(onnx_path)
    )
    peers = {
        "onnxruntime": engines.onnxruntime_int8(onnx_path, tmp_path / "int8.onnx", size, 2),
        "openvino": engines.openvino_int8(model, size, 2),
        "openvino fp32": engines.openvino_float(model, "fp32", 2),  # the float peer where bf16 is not native
    }
    for name, make in peers.items():
        if isinstance(make, str):
            pytest.skip(make)
        out = make(x)()
        logits = out[0] if isinstance(out, list) else next(iter(out.values()))
        agree = (torch.as_tensor(logits).argmax(1) == expected).float().mean().item()
        assert logits.shape == (8, 1000) and agree >= (0.9 if "fp32" in name else 0.5), (name, agree)
    import onnx

    ops = {node.op_type for node in onnx.load(str(tmp_path / "int8.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # static QDQ: int8 where onnxruntime fuses them


def test_our_int8_calibrates_on_the_peers_images_in_whole_batches():
    from alexnet.experiments.engines import calibration_batch, whole_batches

    images = calibration_batch(8, 32)
    for batch in (1, 4, 64, 5):
        filled = whole_batches(images, batch)
        assert len(filled) % batch == 0 and len(filled) >= 32
        assert torch.equal(filled[:32], images)  # the same images, in order, first


def test_the_compiled_case_freezes_its_model_not_the_process():
    """Inductor's freezing is the compiled case's own option: a process that benchmarks, then compiles something of
    its own, compiles it with its own settings."""
    import torch._inductor.config as inductor_config

    from alexnet.experiments.bench import Case, prepare_case

    before = inductor_config.freezing
    case = Case("compiled", "alexnet_small", "infer", 2, 32, "fp32", True, settings={"compile": True})
    prepare_case(case, torch.device("cpu"))
    assert inductor_config.freezing == before


def test_the_peers_advice_is_heard_only_when_verbose(capsys):
    """onnxruntime's quantizer warns on the root logger and OpenVINO's converter through torch.jit's FutureWarning;
    inside the engines' builds both stay off the terminal unless alexnet logs at DEBUG (the CLI's -v)."""
    import logging
    import warnings

    from alexnet.experiments.engines import _others_quiet

    root, ours = logging.getLogger(), logging.getLogger("alexnet")
    handler = logging.StreamHandler()  # what the CLI's basicConfig installs: the terminal
    root.addHandler(handler)
    level = ours.level
    try:
        for verbose in (False, True):
            ours.setLevel(logging.DEBUG if verbose else logging.INFO)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                with _others_quiet():
                    logging.warning("Please consider to run pre-processing before quantization")
                    warnings.warn("torch.jit.trace is deprecated", FutureWarning, stacklevel=1)
            err = capsys.readouterr().err
            assert ("pre-processing" in err) == verbose and (len(caught) == 1) == verbose, (verbose, err, caught)
    finally:
        root.removeHandler(handler)
        ours.setLevel(level)


def _signal_stack() -> tuple[int | None, int, int]:
    import ctypes

    from alexnet.experiments.engines import _StackT

    stack = _StackT()
    assert ctypes.CDLL(None).sigaltstack(None, ctypes.byref(stack)) == 0
    return stack.ss_sp, stack.ss_flags, stack.ss_size


def _is_mapped(address: int) -> bool:
    with open("/proc/self/maps") as maps:
        spans = (line.split()[0].split("-") for line in maps)
        return any(int(lo, 16) <= address < int(hi, 16) for lo, hi in spans)


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads /proc/self/maps (Linux)")
def test_openvino_engines_dropped_in_any_order_leave_the_thread_a_live_signal_stack():
    """OpenVINO's CPU plugin swaps the thread's alternate signal stack for one of its own and swaps it back only if its
    own is still current: two engines dropped in the order they were made left the thread on an unmapped stack, and the
    next signal handled in Python (here a SIGCHLD, in CI's pytest worker) killed the process."""
    pytest.importorskip("nncf")
    import gc
    import os
    import signal

    from torch import nn

    import alexnet.experiments.engines as engines

    before = _signal_stack()
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).eval()
    x = torch.randn(2, 3, 8, 8)
    first = engines.openvino_int8(model, 8, 1)  # nncf calibrates on a Core of its own, then ours compiles
    run_first = first(x)
    second = engines.openvino_float(model, "fp32", 1)
    run_second = second(x)
    run_first(), run_second()
    del first, run_first  # the first made goes first
    gc.collect()
    del second, run_second
    gc.collect()
    assert _signal_stack() == before
    assert before[0] is None or _is_mapped(before[0])
    handled = []
    previous = signal.signal(signal.SIGUSR1, lambda *_: handled.append(True))
    try:
        os.kill(os.getpid(), signal.SIGUSR1)  # its frame goes on that stack
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert handled


def test_the_inference_cases_run_the_model_as_predictor_does(monkeypatch):
    """The img/s table's "library defaults" inference case runs what `alexnet predict` and `alexnet serve` run: conv
    and fc weights cast to bf16 once, batch norm in fp32 under autocast (not the whole model cast), with the same
    output as a `Predictor`'s model."""
    from alexnet.device import autocast
    from alexnet.experiments import bench as bench_module
    from alexnet.experiments.bench import Case
    from alexnet.models import create_model, matmul_weights_to

    ran = {}
    real = bench_module._infer_step

    def spy(model, x, device, precision, cast_weights):
        ran["model"] = model
        return real(model, x, device, precision, cast_weights)

    monkeypatch.setattr(bench_module, "_infer_step", spy)
    case = Case("ours", "alexnet_small", "infer", 2, 32, "bf16", True, settings={"cast_weights": True})
    step = bench_module.prepare_case(case, torch.device("cpu"))
    step()
    model = ran["model"]
    dtypes = {type(m).__name__: m.weight.dtype for m in model.modules() if getattr(m, "weight", None) is not None}
    assert dtypes["BatchNorm2d"] == torch.float32 and dtypes["Linear"] == torch.bfloat16
    assert all(m.weight.dtype == torch.bfloat16 for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    torch.manual_seed(0)
    reference = create_model("alexnet_small", input_size=32).eval()
    x = torch.randn(2, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    matmul_weights_to(reference.to(memory_format=torch.channels_last), torch.bfloat16)
    with torch.inference_mode(), autocast(torch.device("cpu"), "bf16"):
        assert torch.equal(model(x), reference(x))
