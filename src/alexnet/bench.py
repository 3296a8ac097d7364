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

from .device import autocast, pick_device, pick_precision
from .models import create_model, model_info

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
    img_s: float = 0.0
    gflops_per_img: float = 0.0
    mfu: float = 0.0
    settings: dict[str, Any] = field(default_factory=dict)


def measure_peak(dtype: torch.dtype, device: torch.device, n: int = 4096, repeats: int = 5) -> float:
    """FLOP/s of an n×n GEMM (median of ``repeats`` after one warm-up)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    times = []
    for i in range(repeats + 1):
        t = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(times)


def _time(step: Callable[[], None], batch: int, warmup: int, repeats: int, device: torch.device) -> float:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return batch / statistics.median(times)


def _train_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device, precision: str):
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    model.train()

    def step() -> None:
        with autocast(device, precision):
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def _infer_step(model: nn.Module, x: torch.Tensor, device: torch.device, precision: str, cast_weights: bool):
    model.eval()
    if cast_weights and precision == "bf16":
        # Inference needs no fp32 master weights: casting once removes autocast's per-call weight conversions.
        model = model.to(torch.bfloat16)
        x = x.to(torch.bfloat16)
        precision = "fp32"

    def step() -> None:
        with torch.inference_mode(), autocast(device, precision):
            model(x)

    return step


def fast_settings(device: torch.device) -> dict[str, Any]:
    """What this library uses by default on ``device`` (see the README's performance section)."""
    precision = pick_precision("auto", device)
    return {"precision": precision, "channels_last": device.type != "mps", "cast_weights": precision == "bf16"}


def run_case(case: Case, device: torch.device, warmup: int, repeats: int, peak: dict[str, float]) -> Case:
    torch.manual_seed(0)
    if case.name.startswith("torchvision"):
        import torchvision

        model = torchvision.models.alexnet().to(device)
        macs = model_info("alexnet_owt").macs
    else:
        model = create_model(case.model, **case.settings.get("overrides", {})).to(device)
        macs = model_info(case.model, input_size=case.input, **case.settings.get("overrides", {})).macs
    fmt = torch.channels_last if case.channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    x = torch.randn(case.batch, 3, case.input, case.input, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, 1000, (case.batch,), device=device)
    if case.mode == "train":
        step = _train_step(model, x, y, device, case.precision)
    else:
        step = _infer_step(model, x, device, case.precision, case.settings.get("cast_weights", False))
    case.img_s = _time(step, case.batch, warmup, repeats, device)
    flops = 2 * macs * (3 if case.mode == "train" else 1)
    case.gflops_per_img = flops / 1e9
    case.mfu = flops * case.img_s / peak["bf16" if case.precision == "bf16" else "fp32"]
    return case


def benchmark(batch: int = 64, quick: bool = False, device: str = "auto") -> dict[str, Any]:
    """Measure baseline and contender training and inference, plus the paper and small variants.

    Returns:
        The JSON object described in the README (device, threads, peak_gflops, train, infer, cases).
    """
    dev = pick_device(device)
    fast = fast_settings(dev)
    warmup, repeats = (1, 3) if quick else (2, 7)
    peak = {"fp32": measure_peak(torch.float32, dev, 2048 if quick else 4096),
            "bf16": measure_peak(torch.bfloat16, dev, 2048 if quick else 4096)}  # fmt: skip
    base = dict(batch=batch, input=224)
    contender = dict(precision=fast["precision"], channels_last=fast["channels_last"])
    cases = [
        Case("torchvision alexnet (eager fp32)", "alexnet_owt", "train", precision="fp32", channels_last=False, **base),
        Case("alexnet_owt (library defaults)", "alexnet_owt", "train", settings=fast, **contender, **base),
        Case("torchvision alexnet (eager fp32)", "alexnet_owt", "infer", precision="fp32", channels_last=False, **base),
        Case("alexnet_owt (library defaults)", "alexnet_owt", "infer", settings=fast, **contender, **base),
    ]
    if not quick:
        cases += [
            Case("alexnet_paper (library defaults)", "alexnet_paper", "train", batch, 227, settings=fast, **contender),
            Case("alexnet_paper (library defaults)", "alexnet_paper", "infer", batch, 227, settings=fast, **contender),
            Case(
                "alexnet_small 32px (library defaults)", "alexnet_small", "train", 256, 32, settings=fast, **contender
            ),
            Case(
                "alexnet_small 32px (library defaults)", "alexnet_small", "infer", 256, 32, settings=fast, **contender
            ),
        ]
    for case in cases:
        run_case(case, dev, warmup, repeats, peak)
        log.info("%-40s %-5s %8.1f img/s  MFU %5.1f%%", case.name, case.mode, case.img_s, 100 * case.mfu)

    def summary(mode: str) -> dict[str, Any]:
        b, c = [x for x in cases[:4] if x.mode == mode]
        return {"batch": batch, "input": 224, "baseline_img_s": round(b.img_s, 2), "alexnet_img_s": round(c.img_s, 2),
                "speedup": round(c.img_s / b.img_s, 3), "mfu": round(c.mfu, 4), "precision": c.precision}  # fmt: skip

    return {
        "device": str(dev) if dev.type != "cuda" else torch.cuda.get_device_name(dev),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "peak_gflops": {k: round(v / 1e9, 1) for k, v in peak.items()},
        "train": summary("train"),
        "infer": summary("infer"),
        "cases": [asdict(c) for c in cases],
    }
