"""Side-by-side throughput: torchvision's AlexNet as users run it by default, against this library's defaults.

Everything is measured in one process, interleaved, with warm-up excluded and medians over repeats, because
absolute times on a shared machine drift while ratios hold. MFU is model FLOPs per second (2 per MAC; a training
step counts 3× the forward) over a large GEMM's measured FLOP/s in the same dtype, in the same run.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import record_function

from ..device import autocast, compute_dtype, pick_device, pick_precision, tune_cpu_allocator
from ..models import create_model, matmul_weights_to, model_info
from ..training.bf16_copies import Bf16Copies, applies
from ..training.optim import PaperSGD, can_fuse
from .measure import Stat, cpu_features, interleaved, ratio, utilisation

log = logging.getLogger(__name__)


@dataclass
class Case:
    """One measured configuration."""

    name: str
    model: str
    mode: str  # train or infer
    batch: int
    input: int
    precision: str
    channels_last: bool
    img_s: float = 0.0  # the median over rounds
    img_s_low: float = 0.0  # the slowest and fastest round
    img_s_high: float = 0.0
    gflops_per_img: float = 0.0
    mfu: float = 0.0  # capped at 1
    peak_exceeded: bool = False  # the case ran faster than the measured peak: the peak is what is wrong
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Comparison:
    """The library's defaults against the baseline in one mode (train or infer), measured in the same run.

    Attributes:
        speedup: the median over rounds of ``alexnet_img_s / baseline_img_s`` measured side by side, with the
            lowest and highest round (``speedup_low``, ``speedup_high``).
        mfu: the contender's model FLOP/s over the peak measured in its precision, the median of per-round ratios.
        ceiling_speedup: the speed-up the same FLOPs would give at 100% of that peak (what no code can pass).
    """

    batch: int
    input: int
    baseline_img_s: float
    alexnet_img_s: float
    speedup: float
    mfu: float
    precision: str
    ceiling_speedup: float
    speedup_low: float = 0.0
    speedup_high: float = 0.0


@dataclass
class BenchResult:
    """What `benchmark` measured: the machine, the peaks (GFLOP/s), both comparisons, every case, and on a CPU the
    inference engines (`alexnet.experiments.engines.compare_engines`'s object)."""

    device: str
    threads: int
    torch: str
    peak_gflops: dict[str, float]  # fp32, bf16 (and on a CPU int8, as GOP/s): medians over the rounds
    train: Comparison
    infer: Comparison
    cases: list[Case]
    engines: dict[str, Any] | None = None
    cpu: str = ""  # the CPU's model name
    isa: list[str] = field(default_factory=list)  # instruction sets found that decide bf16/int8 speed (AMX...)
    rounds: int = 0
    # alexnet_paper's FLOP rate over alexnet_owt's, per mode: the median of per-round ratios and its min-max (None
    # with --quick, which runs no paper cases)
    paper_per_flop: dict[str, dict[str, float]] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON object ``alexnet bench --json`` prints."""
        return asdict(self)


def per_flop(a: Case, a_rates: list[float], b: Case, b_rates: list[float]) -> dict[str, float]:
    """How fast ``a`` turns FLOPs over against ``b``, round by round (img/s × FLOPs per image): median, min, max."""
    stat = ratio([r * a.gflops_per_img for r in a_rates], [r * b.gflops_per_img for r in b_rates])
    return {"median": round(stat.median, 3), "low": round(stat.low, 3), "high": round(stat.high, 3)}


# Dense convolutions the peak is also measured on, batch 64, channels last: (in, out, kernel, side) of AlexNet's conv3
# and of the paper's conv2 with its towers joined. On 2 cores of an Intel Xeon with AMX the 5 × 5 one ran bf16 at
# 4.0 TFLOP/s, where the GEMMs and the 3 × 3 one reached 3.1: without it, conv layers of the bench ran above the peak.
PEAK_CONVS = ((256, 384, 3, 13), (96, 256, 5, 27))


def peak_kernels(
    dtype: torch.dtype, device: torch.device, sizes: tuple[int, ...] = (2048, 4096)
) -> dict[str, tuple[Callable[[], None], float]]:
    """The dense kernels a peak is measured on, by name, each as a call and its FLOPs: n×n GEMMs (``sizes``: their
    sides; smaller ones under-read the peak, for smoke runs only) and the convolutions of `PEAK_CONVS`.

    oneDNN's convolutions can outrun ``torch.mm`` on a CPU, so a GEMM alone understates what the hardware does and
    would put MFU over 100%; the peak is the fastest of these kernels.
    """
    kernels: dict[str, tuple[Callable[[], None], float]] = {}
    for n in sizes:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        kernels[f"{n}² GEMM"] = (lambda a=a, b=b: a @ b, 2 * n**3)
    for c_in, c_out, k, side in PEAK_CONVS:
        conv = nn.Conv2d(c_in, c_out, k, padding=k // 2).to(device, dtype).to(memory_format=torch.channels_last)
        x = torch.randn(64, c_in, side, side, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)

        def run(conv: nn.Module = conv, x: torch.Tensor = x) -> None:
            with torch.inference_mode():
                conv(x)

        kernels[f"{k}×{k} conv {c_in}→{c_out}"] = (run, 2 * c_out * c_in * k * k * side * side * 64)
    return kernels


def measure_peak(dtype: torch.dtype, device: torch.device, sizes: tuple[int, ...] = (2048, 4096)) -> float:
    """The best FLOP/s of `peak_kernels`, best of repeats (a peak, not a typical rate). `benchmark` runs the kernels
    in its rounds instead, beside the cases, so that a minute of a busy neighbour cannot lower every MFU's base."""
    repeats = 5  # a short peak measurement under-reads it (oneDNN builds its kernels first)
    kernels = peak_kernels(dtype, device, sizes).values()
    return max(flops * _rate(run, 1, 2, repeats, device, best=True) for run, flops in kernels)


def peaks_per_round(rates: dict[str, list[float]], kernels: dict[str, str]) -> dict[str, list[float]]:
    """Each precision's peak in each round (FLOP/s), from rounds of its kernels' rates (``kernels``: step name →
    precision): the fastest of its kernels in that round."""
    rounds: dict[str, list[list[float]]] = {}
    for name, precision in kernels.items():
        rounds.setdefault(precision, []).append(rates[name])
    return {precision: [max(r) for r in zip(*lists)] for precision, lists in rounds.items()}


def per_round_mfu(flops_per_s: list[float], peaks: list[float]) -> tuple[float, bool]:
    """MFU as the median of per-round ratios, each a case's FLOP/s over the peak measured in the same round (seconds
    apart, under the same neighbours), capped at 1; and whether it exceeded the peak (`measure.utilisation`)."""
    return utilisation(statistics.median(f / p for f, p in zip(flops_per_s, peaks, strict=True)), 1.0)


def _rate(
    step: Callable[[], None], batch: int, warmup: int, repeats: int, device: torch.device, best: bool = False
) -> float:
    """Items per second of ``step``: median (or ``best``) over ``repeats`` after ``warmup`` calls."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return batch / (min(times) if best else statistics.median(times))


def _train_step(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    device: torch.device,
    precision: str,
    fused: bool = False,
    copies: bool = False,
):
    # The baseline steps torch's default SGD (a loop over parameters on the CPU); the library's defaults its fused one,
    # on bf16 copies of the weights where the library trains so (`alexnet.training.bf16_copies`).
    params = list(model.parameters())
    fuse = can_fuse(params) if fused else None
    model.train()
    if copies and applies(device, precision):
        sgd = PaperSGD(params, lr=1e-3, momentum=0.9, fused=fuse)  # torch's SGD at a fixed learning rate
        model = Bf16Copies(model)
        sgd.use_copies(model.copies())
        opt: torch.optim.Optimizer = sgd
    else:
        opt = torch.optim.SGD(params, lr=1e-3, momentum=0.9, fused=fuse)

    # The phase markers cost nothing unless a profiler listens: `alexnet.experiments.profile` files time under them.
    def step() -> None:
        with record_function("phase:forward"), autocast(device, precision):
            loss = F.cross_entropy(model(x).float(), y)
        with record_function("phase:backward"):
            opt.zero_grad(set_to_none=True)
            loss.backward()
        with record_function("phase:optimizer"):
            opt.step()

    return step


def _infer_step(model: nn.Module, x: torch.Tensor, device: torch.device, precision: str, cast_weights: bool):
    model.eval()
    if cast_weights and precision != "fp32":
        # As `Predictor` (predict, serve) runs it: conv and fc weights cast once, not by autocast on every call; batch
        # norm stays fp32 under autocast (casting the whole model measured a path no command runs).
        matmul_weights_to(model, compute_dtype(precision))

    def step() -> None:
        with torch.inference_mode(), autocast(device, precision):
            model(x)

    return step


def fast_settings(device: torch.device) -> dict[str, Any]:
    """What this library uses by default on ``device`` (see the README's performance section)."""
    precision = pick_precision("auto", device)
    return {
        "precision": precision,
        "channels_last": device.type != "mps",
        "cast_weights": precision == "bf16",  # inference: weights cast to bf16 once
        "fused_optimizer": True,  # training: one fused SGD kernel (`alexnet.training.optim.can_fuse`)
        "bf16_copies": True,  # training: bf16 copies of the weights where they apply (`alexnet.training.bf16_copies`)
        "tune_allocator": device.type == "cpu",
    }


def prepare_case(case: Case, device: torch.device) -> Callable[[], None]:
    """The step `benchmark` times for ``case`` (its model built and its input made); sets its FLOPs per image."""
    torch.manual_seed(0)
    if case.name.startswith("torchvision"):
        import torchvision

        model = torchvision.models.alexnet().to(device)
        macs = model_info("alexnet_owt").macs
    else:
        model = create_model(case.model, input_size=case.input).to(device)
        macs = model_info(case.model, input_size=case.input).macs
    fmt = torch.channels_last if case.channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    x = torch.randn(case.batch, 3, case.input, case.input, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, 1000, (case.batch,), device=device)
    case.gflops_per_img = 2 * macs * (3 if case.mode == "train" else 1) / 1e9
    if case.mode == "train":
        fused, copies = (case.settings.get(key, False) for key in ("fused_optimizer", "bf16_copies"))
        return _train_step(model, x, y, device, case.precision, fused, copies)
    if case.settings.get("compile"):
        dtype = compute_dtype(case.precision)
        # Freezing constant-folds and prepacks the weights for oneDNN; for this model only, not the process.
        compiled = torch.compile(model.eval().to(dtype), options={"freezing": True})
        xd = x.to(dtype)

        def step() -> None:
            with torch.inference_mode():
                compiled(xd)

        return step
    return _infer_step(model, x, device, case.precision, case.settings.get("cast_weights", False))


def benchmark(batch: int = 64, quick: bool = False, device: str = "auto") -> BenchResult:
    """Measure baseline and contender training and inference, plus the paper and small variants.

    Every case runs interleaved with the others for several rounds (`alexnet.experiments.measure`): figures are
    medians over rounds with their spread, and speed-ups the median of per-round ratios, so a machine's drift
    between minutes cancels. The process-wide allocator setting is on for all cases, the baselines included (they
    share the process; it favours the baseline if anything).

    Returns:
        The machine, its peaks, both comparisons and every case; on a CPU without ``quick`` the inference engines
        of `alexnet.experiments.engines` too.
    """
    dev = pick_device(device)
    fast = fast_settings(dev)
    warmup, repeats, rounds = (1, 2, 3) if quick else (2, 3, 5)
    base = dict(batch=batch, input=224)
    contender = dict(precision=fast["precision"], channels_last=fast["channels_last"])
    baselines = [
        Case("torchvision alexnet (eager fp32)", "alexnet_owt", "train", precision="fp32", channels_last=False, **base),
        Case("torchvision alexnet (eager fp32)", "alexnet_owt", "infer", precision="fp32", channels_last=False, **base),
    ]
    cases = [
        Case("alexnet_owt (library defaults)", "alexnet_owt", "train", settings=fast, **contender, **base),
        Case("alexnet_owt (library defaults)", "alexnet_owt", "infer", settings=fast, **contender, **base),
    ]
    if not quick:
        cases += [
            Case(
                "alexnet_owt + torch.compile (freezing)",
                "alexnet_owt",
                "infer",
                settings={**fast, "compile": True},
                **contender,
                **base,
            ),
            Case("alexnet_paper (library defaults)", "alexnet_paper", "train", batch, 227, settings=fast, **contender),
            Case("alexnet_paper (library defaults)", "alexnet_paper", "infer", batch, 227, settings=fast, **contender),
            Case("alexnet_small 32px (defaults)", "alexnet_small", "train", 256, 32, settings=fast, **contender),
            Case("alexnet_small 32px (defaults)", "alexnet_small", "infer", 256, 32, settings=fast, **contender),
        ]
    if fast["tune_allocator"]:
        tune_cpu_allocator()
    everything = baselines + cases
    steps = {f"{i} {c.name} {c.mode}": prepare_case(c, dev) for i, c in enumerate(everything)}
    items: dict[str, float] = {key: c.batch for key, c in zip(steps, everything)}
    # The peak kernels run in the same rounds as the cases (their items: FLOPs), so that one busy minute lowers a
    # round of each, not the base of every MFU. Only the precisions the cases run: on a CPU without native bf16
    # (AVX2 only) a 4096² bf16 GEMM is emulated at ~1 GFLOP/s, minutes a call, and no case there runs bf16.
    kernels = {}
    for precision in sorted({"fp32"} | {c.precision for c in cases}):
        for name, (run, flops) in peak_kernels(compute_dtype(precision), dev).items():
            key = f"peak {precision}: {name}"
            steps[key], items[key], kernels[key] = run, flops, precision
    if dev.type == "cpu":
        from .engines import int8_kernels

        for name, (run, ops) in int8_kernels().items():
            key = f"peak int8: {name}"
            steps[key], items[key], kernels[key] = run, ops, "int8"
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    rates = interleaved(steps, items, rounds, repeats, warmup, sync=sync)
    round_peaks = peaks_per_round(rates, kernels)
    peak = {precision: statistics.median(values) for precision, values in round_peaks.items()}
    log.debug("peak kernels, FLOP/s per round: %s", {k: [f"{r:.3g}" for r in rates[k]] for k in kernels})
    per_round = {}
    for key, case in zip(steps, everything):
        stat = Stat.of(rates[key])
        case.img_s, case.img_s_low, case.img_s_high = stat.median, stat.low, stat.high
        kind = "bf16" if case.precision == "bf16" else "fp32"
        flops = [case.gflops_per_img * 1e9 * r for r in rates[key]]
        case.mfu, case.peak_exceeded = per_round_mfu(flops, round_peaks[kind])
        per_round[id(case)] = rates[key]
        log.info(
            "%-40s %-5s %8.1f img/s (%.1f-%.1f)  MFU %5.1f%%",
            case.name,
            case.mode,
            stat.median,
            stat.low,
            stat.high,
            100 * case.mfu,
        )

    def summary(mode: str) -> Comparison:
        b = next(x for x in baselines if x.mode == mode)
        c = next(x for x in cases if x.mode == mode)
        # The most any contender could reach on this machine: the same FLOPs at 100% of its measured peak.
        peaks = round_peaks["bf16" if c.precision == "bf16" else "fp32"]
        ceiling = statistics.median(p / (r * b.gflops_per_img * 1e9) for p, r in zip(peaks, per_round[id(b)]))
        speedup = ratio(per_round[id(c)], per_round[id(b)])
        return Comparison(
            batch,
            224,
            round(b.img_s, 2),
            round(c.img_s, 2),
            round(speedup.median, 3),
            round(c.mfu, 4),
            c.precision,
            round(ceiling, 3),
            round(speedup.low, 3),
            round(speedup.high, 3),
        )

    paper = None
    if not quick:
        owt = {c.mode: c for c in cases if c.model == "alexnet_owt" and not c.settings.get("compile")}
        ours = {c.mode: c for c in cases if c.model == "alexnet_paper"}
        paper = {m: per_flop(ours[m], per_round[id(ours[m])], owt[m], per_round[id(owt[m])]) for m in ours}
    engines = None
    if not quick and dev.type == "cpu":
        from .engines import compare_engines

        engines = compare_engines(batch, peaks=peak, precision=fast["precision"])
    cpu, isa = cpu_features()
    return BenchResult(
        str(dev) if dev.type != "cuda" else torch.cuda.get_device_name(dev),
        torch.get_num_threads(),
        torch.__version__,
        {k: round(v / 1e9, 1) for k, v in peak.items()},
        summary("train"),
        summary("infer"),
        everything,
        engines,
        cpu,
        isa,
        rounds,
        paper,
    )
