"""CPU inference engines side by side, in one run: torchvision's AlexNet in eager fp32, onnxruntime fp32 and int8
(static QDQ), OpenVINO in the library's default precision (bf16 where the CPU has it natively, else fp32) and int8
(NNCF) (when those optional packages are installed; skipped with a note otherwise), this library's defaults, the same
compiled ahead of time, and its int8 program, every int8 engine calibrated on the same inputs; at batch 64
(images/s) and batch 1 (median latency), with MFU against the matching measured peak (int8: `int8_peak`, the
faster of oneDNN's quantized linear and ``torch._int_mm``)."""

from __future__ import annotations

import contextlib
import copy
import ctypes
import functools
import io
import logging
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from ..device import compute_dtype, pick_precision
from ..errors import first_line
from ..logs import level_set
from ..models import create_model, model_info
from .measure import Stat, interleaved, ratio, utilisation

log = logging.getLogger(__name__)


def _int8_gemms(n: int) -> dict[str, Callable[[], Any]]:
    """n×n int8 GEMMs by the two routes int8 takes here: oneDNN's quantized linear (what an int8 program's fc layers
    run; u8 × s8 with VNNI, AMX or AVX2's byte multiply-adds) and ``torch._int_mm`` (s8 × s8 → s32)."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randint(-128, 127, (n, n), dtype=torch.int8, generator=gen)
    b = torch.randint(-128, 127, (n, n), dtype=torch.int8, generator=gen)
    out: dict[str, Callable[[], Any]] = {"torch._int_mm": lambda: torch._int_mm(a, b)}
    try:
        onednn = torch.ops.onednn
        packed = onednn.qlinear_prepack(b, [n, n])
        x = (a.to(torch.int16) + 128).to(torch.uint8)
        scales, zeros = torch.full((n,), 0.01), torch.zeros(n, dtype=torch.int64)
        out["oneDNN qlinear"] = lambda: onednn.qlinear_pointwise(
            x, 0.02, 128, packed, scales, zeros, None, 0.1, 0, None, "none", [], ""
        )
    except (AttributeError, RuntimeError):  # a build without oneDNN (an Arm Mac): torch._int_mm alone
        pass
    return out


def _best_rate(run: Callable[[], Any], ops: float, repeats: int) -> float:
    run()  # oneDNN builds its kernel on the first call
    best = 0.0
    for _ in range(repeats):
        began = time.perf_counter()
        run()
        best = max(best, ops / (time.perf_counter() - began))
    return best


def int8_kernels() -> dict[str, tuple[Callable[[], Any], float]]:
    """The int8 GEMMs a peak is measured on, by name, each as a call and its operations (2 per MAC): n×n at n = 2048
    and 4096 by each route of `_int8_gemms` that is not on a reference path.

    Each route is probed at n = 512 first and only those within 4× of the fastest run large: on a CPU without VNNI
    (AVX2 only) ``torch._int_mm`` takes a reference path at ~1 GOP/s, minutes for one 4096² product, while oneDNN's
    quantized linear runs at about twice fp32's rate there.
    """
    probe = {name: _best_rate(run, 2 * 512**3, 2) for name, run in _int8_gemms(512).items()}
    fast = [name for name, rate in probe.items() if rate >= max(probe.values()) / 4]
    log.debug("int8 GEMM routes at 512: %s; measured large: %s", probe, fast)
    kernels = {}
    for n in (2048, 4096):
        runs = _int8_gemms(n)
        kernels.update({f"{n}² {name}": (runs[name], 2 * n**3) for name in fast})
    return kernels


def int8_peak(repeats: int = 5) -> float:
    """int8 multiply-accumulates as FLOP/s: the best of `int8_kernels`, best of ``repeats``."""
    return max(_best_rate(run, ops, repeats) for run, ops in int8_kernels().values())


def _torch_runner(model: torch.nn.Module, x: torch.Tensor) -> Callable[[], Any]:
    def run() -> Any:
        with torch.inference_mode():
            return model(x)

    return run


def calibration_batch(size: int, n: int = 32) -> torch.Tensor:
    """The inputs every int8 engine here calibrates on: the same ``n`` seeded random images (the speed of int8
    arithmetic does not depend on the scales chosen; accuracy is `alexnet quantize`'s business, on real images)."""
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0))


@contextlib.contextmanager
def _others_quiet() -> Iterator[None]:
    # Other libraries' advice reaches the terminal only with -v (the CLI then shows alexnet's DEBUG lines):
    # onnxruntime's quantizer logs "consider pre-processing" on the root logger, and OpenVINO's converter traces with
    # torch.jit, which warns that it is deprecated.
    if log.isEnabledFor(logging.DEBUG):
        yield
        return
    with level_set(None, logging.ERROR), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        yield


class _StackT(ctypes.Structure):  # <signal.h> stack_t
    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]


@contextlib.contextmanager
def signal_stack_kept() -> Iterator[None]:
    """Run the block, then give the calling thread back the alternate signal stack it had before.

    OpenVINO's CPU plugin (one per ``ov.Core``) maps a signal stack of its own for the thread that creates it and, when
    destroyed, puts back the one it found, but only if its own is still current. Two plugins destroyed in the order
    they were made (nncf's calibration engine, then ours) leave the thread pointing at the first one's stack, already
    unmapped: the next signal whose handler runs on that stack (Python installs its handlers so, SIGINT's and the
    DataLoader's SIGCHLD among them) kills the process with SIGSEGV, or, once the address is reused, writes its frame
    into the heap. Put back after each plugin is made, every plugin finds the thread's own stack and never makes its
    own stack current after this block. Linux and macOS (``sigaltstack``); elsewhere the block just runs.
    """
    try:
        sigaltstack = ctypes.CDLL(None, use_errno=True).sigaltstack
    except (OSError, AttributeError):  # Windows: no sigaltstack, and OpenVINO maps none
        yield
        return
    saved = _StackT()
    if sigaltstack(None, ctypes.byref(saved)) != 0:
        yield
        return
    try:
        yield
    finally:
        if sigaltstack(ctypes.byref(saved), None) != 0:
            log.debug("could not restore the signal stack: errno %d", ctypes.get_errno())


def whole_batches(images: torch.Tensor, batch: int) -> torch.Tensor:
    """``images`` repeated in order until they fill whole batches of ``batch`` (at least all of them once)."""
    total = -(-len(images) // batch) * batch
    return images.repeat(-(-total // len(images)), 1, 1, 1)[:total]


def openvino_float(model: torch.nn.Module, precision: str, threads: int) -> Callable[[torch.Tensor], Callable] | str:
    """OpenVINO running the converted model at ``precision`` (``bf16`` or ``fp32``: its inference precision hint)."""
    try:
        import openvino as ov
    except ImportError:
        return "skipped: openvino is not installed (pip install openvino)"
    core = ov.Core()
    built: dict[tuple, Any] = {}  # compiled once per input shape

    def make(x: torch.Tensor) -> Callable[[], Any]:
        key = tuple(x.shape)
        if key not in built:
            with _others_quiet():
                ov_model = ov.convert_model(model, example_input=x)
            config = {
                "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
                "INFERENCE_NUM_THREADS": threads,
                "PERFORMANCE_HINT": "LATENCY",
            }
            with signal_stack_kept():  # the first compile creates the Core's CPU plugin
                built[key] = core.compile_model(ov_model, "CPU", config)
        request, xn = built[key].create_infer_request(), x.numpy()
        return lambda: request.infer({0: xn})

    return make


def openvino_int8(model: torch.nn.Module, size: int, threads: int) -> Callable[[torch.Tensor], Callable] | str:
    """OpenVINO's int8: NNCF post-training quantization of the converted model, calibrated on `calibration_batch`."""
    try:
        import nncf
        import openvino as ov
    except ImportError:
        return "skipped: nncf is not installed (pip install nncf)"
    core = ov.Core()
    compiled: dict[tuple, Any] = {}

    def make(x: torch.Tensor) -> Callable[[], Any]:
        key = tuple(x.shape)
        if key not in compiled:
            with _others_quiet():
                ov_model = ov.convert_model(model, example_input=x)
            samples = [c[None].numpy() for c in calibration_batch(size)]
            # nncf runs its calibration on a Core of its own. Its INFO lines go to a stdout handler of its own, and
            # its progress bars to stdout: neither belongs in --json, so both stay quiet, with -v too.
            with level_set("nncf", logging.ERROR), signal_stack_kept(), contextlib.redirect_stdout(io.StringIO()):
                quantized = nncf.quantize(ov_model, nncf.Dataset(samples), subset_size=len(samples))
            config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
            with signal_stack_kept():
                compiled[key] = core.compile_model(quantized, "CPU", config)
        request, xn = compiled[key].create_infer_request(), x.numpy()
        return lambda: request.infer({0: xn})

    return make


def onnxruntime_int8(fp32_path: Path, int8_path: Path, size: int, threads: int) -> Callable[[torch.Tensor], Callable]:
    """onnxruntime's int8: static QDQ quantization (per-channel int8 weights, int8 activations) of the fp32 export,
    calibrated on `calibration_batch`."""
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.samples = iter([{"x": c[None].numpy()} for c in calibration_batch(size)])

        def get_next(self) -> dict | None:
            return next(self.samples, None)

    with _others_quiet():
        quantize_static(
            str(fp32_path),
            str(int8_path),
            Reader(),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
        )
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(int8_path), options, providers=["CPUExecutionProvider"])

    def make(x: torch.Tensor) -> Callable[[], Any]:
        xn = x.numpy()
        return lambda: session.run(None, {"x": xn})

    return make


def _engines(
    model: torch.nn.Module, size: int, tmp: Path, precision: str
) -> dict[str, Callable[[torch.Tensor], Callable] | str]:
    """Name → a function making a runner for an input batch, or the reason the engine is skipped. ``precision``:
    the library's inference default here (bf16 with native bf16, else fp32), which OpenVINO is asked for too."""
    threads = torch.get_num_threads()
    out: dict[str, Any] = {}
    import torchvision

    torch.manual_seed(0)
    tv = torchvision.models.alexnet().eval()
    out["torchvision eager fp32"] = lambda x: _torch_runner(tv, x)
    onnx_path = tmp / "alexnet.onnx"
    try:
        import onnxruntime as ort

        batch = torch.export.Dim("batch", min=1, max=1024)
        program = torch.onnx.export(
            tv,
            (torch.randn(2, 3, size, size),),
            dynamo=True,
            input_names=["x"],
            dynamic_shapes=({0: batch},),
            verbose=False,
        )
        program.save(str(onnx_path))
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])

        def onnxruntime(x: torch.Tensor) -> Callable[[], Any]:
            xn = x.numpy()
            return lambda: session.run(None, {"x": xn})

        out["onnxruntime fp32"] = onnxruntime
        out["onnxruntime int8 (static QDQ)"] = onnxruntime_int8(onnx_path, tmp / "alexnet-int8.onnx", size, threads)
    except ImportError:
        out["onnxruntime fp32"] = "skipped: onnxruntime is not installed (pip install 'alexnet[export]')"
    out[f"OpenVINO {precision}"] = openvino_float(tv, precision, threads)
    out["OpenVINO int8 (NNCF)"] = openvino_int8(tv, size, threads)

    # The library's inference defaults as `alexnet predict` and `alexnet serve` run them: a `Predictor` (its layout,
    # casts and softmax), on a copy (the int8 path below quantizes the fp32 original).
    from ..artifacts.weights import get_weights
    from ..inference.predictor import Predictor

    dtype = compute_dtype(precision)
    meta = get_weights("alexnet_owt.IMAGENET1K_V1").meta()  # the model's classes and preprocessing; no download
    ours = Predictor(copy.deepcopy(model), meta, "cpu", precision)
    out[f"alexnet_owt {precision} (library defaults)"] = lambda x: functools.partial(ours.probabilities, x)
    # What `alexnet serve --compile` runs: the same model compiled ahead of time (one program, any batch), as
    # OpenVINO compiles its model before it runs.
    from ..inference.compiled import CompiledModel

    aot: list[CompiledModel] = []  # compiled once, for the first batch size asked, and run at every one

    def ahead_of_time(x: torch.Tensor) -> Callable[[], Any]:
        if not aot:
            aot.append(CompiledModel(model, 3, size, dtype))
        return _torch_runner(aot[0], x)

    out[f"alexnet_owt {precision} (compiled, serve --compile)"] = ahead_of_time
    try:
        from ..artifacts.program import Int8Model
        from ..inference.quantize import quantize_graph

        fp32 = model.float()

        def int8(x: torch.Tensor) -> Callable[[], Any]:
            # The program is exported for batches of len(x): the peers' calibration images, in whole batches.
            program = quantize_graph(fp32, whole_batches(calibration_batch(size), len(x)), batch=len(x))
            return _torch_runner(Int8Model(program, len(x), autotune=True), x)

        out["alexnet_owt int8 (alexnet quantize)"] = int8
    except ImportError:
        out["alexnet_owt int8 (alexnet quantize)"] = "skipped: torchao is not installed (pip install 'alexnet[int8]')"
    return out


# Ours and the peer it must not trail (the speed issue's goals: int8 against int8, and the default precision's
# batch-1 latency: bf16 where it is native, else fp32).
INT8_PAIR = ("alexnet_owt int8 (alexnet quantize)", "OpenVINO int8 (NNCF)")


def pairs(precision: str) -> tuple[tuple[str, str], ...]:
    """The engine pairs compared head to head when the library's default precision is ``precision``."""
    return INT8_PAIR, (f"alexnet_owt {precision} (compiled, serve --compile)", f"OpenVINO {precision}")


def compare_engines(
    batch: int = 64,
    size: int = 224,
    rounds: int = 5,
    latency_calls: int = 30,
    peaks: dict[str, float] | None = None,
    precision: str | None = None,
) -> dict[str, Any]:
    """The rows of the engine comparison (see the module's docstring), the int8 peak, and each of `pairs` as
    per-round ratios.

    Every engine runs interleaved with the others for ``rounds`` rounds (`alexnet.experiments.measure.interleaved`):
    at batch ``batch`` three calls a round, at batch 1 ``latency_calls`` calls a round, each round's figure the
    median of its calls. Rows give the median over rounds with the slowest and fastest round. ``versus`` gives, per
    pair, our throughput over the peer's and our batch-1 latency over the peer's, round by round (a goal is met
    when the whole spread clears it), measured again with the two alone: among all the engines a third runtime's
    threads (OpenVINO's, onnxruntime's) can still hold a core when the next engine starts. ``precision``: ours and
    OpenVINO's non-int8 rows; by default the library's (`alexnet.device.pick_precision`).
    """
    precision = precision or pick_precision("auto", torch.device("cpu"))
    peaks = dict(peaks or {})
    if "int8" not in peaks:  # not setdefault: its argument, seconds of GEMMs, would run even when given
        peaks["int8"] = int8_peak()
    macs = model_info("alexnet_owt").macs
    torch.manual_seed(0)
    model = create_model("alexnet_owt")
    rows: dict[str, dict[str, Any]] = {}  # in the engines' order, skipped or failed ones with their note
    with tempfile.TemporaryDirectory() as tmp:
        runners = {}
        for name, make in _engines(model, size, Path(tmp), precision).items():
            if isinstance(make, str):
                rows[name] = {"engine": name, "note": make}
                continue
            try:
                both = (make(torch.randn(batch, 3, size, size)), make(torch.randn(1, 3, size, size)))
                for run in both:
                    run()  # once here: an engine that builds but fails when run is caught here too
            except Exception as e:  # one engine that cannot be built or run costs its row, not the others' figures
                log.debug("engine %s failed", name, exc_info=True)
                kind, reason = type(e).__name__, first_line(e)  # the reason is the kind when there is no message
                rows[name] = {"engine": name, "note": f"failed: {kind}" + (f": {reason}" if reason != kind else "")}
                continue
            runners[name], rows[name] = both, {}

        def measure(names: list[str]) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
            """img/s at ``batch`` and batch-1 ms, per round, of ``names`` interleaved."""
            rates = interleaved({n: runners[n][0] for n in names}, dict.fromkeys(names, batch), rounds, 3, 1)
            single = interleaved({n: runners[n][1] for n in names}, dict.fromkeys(names, 1), rounds, latency_calls, 3)
            return rates, {n: [1000 / r for r in per_round] for n, per_round in single.items()}

        rates, ms = measure(list(runners))
        head_to_head = {pair: measure(list(pair)) for pair in pairs(precision) if all(n in runners for n in pair)}
    for name in runners:
        img_s, latency = Stat.of(rates[name]), Stat.of(ms[name])
        kind = "int8" if "int8" in name else "bf16" if "bf16" in name else "fp32"
        mfu, exceeded = utilisation(2 * macs * img_s.median, peaks[kind]) if kind in peaks else (None, False)
        rows[name].update(
            {
                "engine": name,
                f"batch{batch}_img_s": round(img_s.median, 1),
                "img_s_low": round(img_s.low, 1),
                "img_s_high": round(img_s.high, 1),
                "batch1_ms": round(latency.median, 2),
                "ms_low": round(latency.low, 2),
                "ms_high": round(latency.high, 2),
                "peak": kind,
                "mfu": round(mfu, 4) if mfu else None,
                "peak_exceeded": exceeded,  # capped at 1: the peak kernel under-read this machine
            }
        )
        log.info("%-46s %8.1f img/s  batch 1 %6.2f ms", name, img_s.median, latency.median)
    versus = []
    for (ours, peer), (pair_rates, pair_ms) in head_to_head.items():
        speed, latency = ratio(pair_rates[ours], pair_rates[peer]), ratio(pair_ms[ours], pair_ms[peer])
        versus.append(
            {
                "ours": ours,
                "peer": peer,
                "throughput": [round(speed.median, 3), round(speed.low, 3), round(speed.high, 3)],
                "latency": [round(latency.median, 3), round(latency.low, 3), round(latency.high, 3)],
            }
        )
    return {
        "batch": batch,
        "input": size,
        "int8_peak_gops": round(peaks["int8"] / 1e9, 1),
        "rounds": rounds,
        "rows": list(rows.values()),
        "versus": versus,
    }
