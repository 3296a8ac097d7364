"""What to run when a GPU is at hand (under 5 minutes on one): throughput and MFU against the GPU's measured bf16
peak for alexnet_owt and alexnet_paper, training and inference, eager and compiled; LRN against its reference
formula on the device; and with two GPUs, the paper's towers run by NCCL against one device. One table, and the same
as JSON in --json-out.

    python benchmarks/gpu_check.py                    # on a machine without CUDA it says so and exits 0
    python benchmarks/gpu_check.py --allow-cpu --quick   # the same code path on the CPU, tiny (what the tests run)

Every case runs interleaved with the others for several rounds (alexnet.experiments.measure): figures are medians
with their min-max. It needs nothing this project's CPU machine lacks: torch, and the repository for the towers'
harness (tests/training/parallel_equivalence.py).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import torch

from alexnet.device import compute_dtype, pick_precision
from alexnet.experiments.bench import Case, measure_peak, prepare_case
from alexnet.experiments.measure import Stat, interleaved, utilisation
from alexnet.models.layers import LocalResponseNorm

ROOT = Path(__file__).resolve().parents[1]


def throughput(device: torch.device, quick: bool) -> tuple[list[dict], float]:
    """alexnet_owt and alexnet_paper, train and infer, eager and (unless quick) compiled inference."""
    batch, size = (2, 64) if quick else (128, 224)
    precision = pick_precision("auto", device)  # bf16 where it is native (an AVX2-only CPU would emulate it)
    settings = {"precision": precision, "channels_last": True, "cast_weights": precision == "bf16"}
    cases = []
    for model, side in (("alexnet_owt", size), ("alexnet_paper", size + 3)):
        for mode in ("train", "infer"):
            cases.append(Case(f"{model} eager", model, mode, batch, side, precision, True, settings=settings))
        if not quick:
            compiled = {**settings, "compile": True}
            cases.append(Case(f"{model} compiled", model, "infer", batch, side, precision, True, settings=compiled))
    dtype = compute_dtype(precision)
    peak = measure_peak(dtype, device, sizes=(1024,) if quick else (2048, 4096, 8192))
    steps = {f"{i} {c.name} {c.mode}": prepare_case(c, device) for i, c in enumerate(cases)}
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    rounds = 2 if quick else 5
    rates = interleaved(steps, {k: c.batch for k, c in zip(steps, cases)}, rounds, 2, 1, sync=sync)
    rows = []
    for key, case in zip(steps, cases):
        stat = Stat.of(rates[key])
        mfu, over = utilisation(case.gflops_per_img * 1e9 * stat.median, peak)
        rows.append(
            {
                "case": case.name,
                "mode": case.mode,
                "batch": case.batch,
                "precision": case.precision,
                "img_s": round(stat.median, 1),
                "img_s_low": round(stat.low, 1),
                "img_s_high": round(stat.high, 1),
                "mfu": round(mfu, 4),
                "above_peak": over,
            }
        )
    return rows, peak


def lrn_check(device: torch.device, quick: bool) -> dict:
    """LRN on the device (the fused kernel where there is one: Triton on CUDA, C++ on the CPU) against the reference
    formula: forward and gradient differences, and both timed (forward and backward, ms) at conv1's shape."""
    from alexnet.models import fused_lrn

    layer = LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0, groups=2)
    x = torch.randn(8, 96, 27, 27, device=device).contiguous(memory_format=torch.channels_last).requires_grad_()
    y = layer(x)
    y.sum().backward()
    grad, x.grad = x.grad.clone(), None
    reference = layer.reference(x)
    reference.sum().backward()
    fused = fused_lrn.usable(x, layer.size)
    kernel = {"cuda": "triton", "cpu": "c++"}.get(device.type, "none") if fused else "reference"
    result = {
        "kernel": kernel,
        "forward_max_abs": (y - reference).abs().max().item(),
        "grad_max_abs": (grad - x.grad).abs().max().item(),
    }
    # conv1's LRN in alexnet_paper at batch 128, bf16 where native (a smaller batch with --quick)
    dtype = compute_dtype(pick_precision("auto", device))
    shape = (8 if quick else 128, 96, 55, 55)
    big = torch.randn(shape, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
    big.requires_grad_()
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)

    def step(fn):
        def run() -> None:
            fn(big).backward(torch.ones_like(big))
            big.grad = None

        return run

    steps = {"fused": step(layer), "reference": step(layer.reference)}
    rates = interleaved(steps, {"fused": 1, "reference": 1}, 2 if quick else 5, 3, 1, sync=sync)
    result["ms_fused"] = round(1e3 / Stat.of(rates["fused"]).median, 3)
    result["ms_reference"] = round(1e3 / Stat.of(rates["reference"]).median, 3)
    return result


TOWERS = textwrap.dedent("""
    import json, sys, torch, torch.distributed as dist
    sys.path.insert(0, __ROOT__)
    from tests.training.parallel_equivalence import equivalence
    dist.init_process_group("nccl")
    torch.cuda.set_device(dist.get_rank())
    out = {mode: equivalence(mode, "alexnet_paper", batch=4, steps=3, width=0.25) for mode in ("towers", "hybrid")}
    if dist.get_rank() == 0:
        print("RESULT " + json.dumps(out))
    dist.barrier()
    dist.destroy_process_group()
""")


def towers_check() -> dict:
    """The paper's towers and the 2014 hybrid on two GPUs with NCCL, against one device: max differences."""
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp, "towers.py")
        script.write_text(TOWERS.replace("__ROOT__", repr(str(ROOT))))
        launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script)]
        done = subprocess.run(launch, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        return {"error": done.stderr[-2000:]}
    return json.loads(next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))[7:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny batches, no compilation: a smoke run")
    parser.add_argument("--allow-cpu", action="store_true", help="run on the CPU when there is no GPU (tests)")
    parser.add_argument("--json-out", default="gpu_check.json", help="where the JSON goes")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available() and not args.allow_cpu:
        print("no CUDA device here: nothing to check (run this where a GPU is)")
        return 0
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (--allow-cpu)"
    rows, peak = throughput(device, args.quick)
    result = {
        "device": name,
        "torch": torch.__version__,
        "peak_gflops": round(peak / 1e9, 1),
        "cases": rows,
        "lrn": lrn_check(device, args.quick),
    }
    if device.type == "cuda" and torch.cuda.device_count() >= 2:
        result["towers"] = towers_check()
    print(f"{name}, torch {torch.__version__}; measured peak {result['peak_gflops']} GFLOP/s")
    print(f"{'case':<24} {'mode':<6} {'batch':>5} {'prec':>5} {'img/s':>9} {'min-max':>17} {'MFU':>6}")
    for r in rows:
        spread = f"{r['img_s_low']}-{r['img_s_high']}"
        print(
            f"{r['case']:<24} {r['mode']:<6} {r['batch']:>5} {r['precision']:>5} {r['img_s']:>9.1f} {spread:>17} "
            f"{100 * r['mfu']:>5.1f}%{'  (above the measured peak)' if r['above_peak'] else ''}"
        )
    lrn = result["lrn"]
    print(
        f"LRN ({lrn['kernel']}) against its formula: forward {lrn['forward_max_abs']:.2e}, gradient "
        f"{lrn['grad_max_abs']:.2e}; forward and backward {lrn['ms_fused']} ms against {lrn['ms_reference']} ms"
    )
    if "towers" in result:
        print(f"towers and hybrid on two GPUs against one: {json.dumps(result['towers'])[:300]}")
    Path(args.json_out).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.json_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
