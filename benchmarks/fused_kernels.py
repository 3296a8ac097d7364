"""What the library's fused CPU kernels (ReLU → max-pool, LRN, batch norm → ReLU) buy on this CPU: each variant's
training step and batch forward with the kernels on against the layers apart, in one process. Or, with
``--switches``, another of the library's CPU paths: ``ALEXNET_ONEDNN_FC`` (the fc layers through oneDNN on AMD CPUs),
``ALEXNET_AMX_FC`` (bf16 fc layers with their operands reordered on a CPU with AMX).

    python benchmarks/fused_kernels.py                       # alexnet_owt, alexnet_paper, alexnet_cifar, fp32
    python benchmarks/fused_kernels.py --models alexnet_owt --dtype bfloat16 --rounds 6
    python benchmarks/fused_kernels.py --switches ALEXNET_ONEDNN_FC --models alexnet_owt --batch 1 --repeats 20

The paths are switched by their environment variables (``ALEXNET_FUSED_POOL``, ``ALEXNET_FUSED_LRN``,
``ALEXNET_FUSED_BN``, ``ALEXNET_ONEDNN_FC``, ``ALEXNET_AMX_FC``, read per call), so both sides share the model, the
weights and the allocator's state. They run interleaved, as `alexnet bench` runs its cases
(`alexnet.experiments.measure`), and the ratio reported is the median of the per-round ratios with its min-max: this
shared machine's speed drifts by ±30% over minutes, a ratio within a round does not. A ratio above 1 is the switched
path's gain. Channels last and glibc's allocator keeping freed blocks (`alexnet.device.tune_cpu_allocator`), as the
library trains and infers on the CPU.
"""

from __future__ import annotations

import argparse
import os

import torch

from alexnet import native
from alexnet.device import tune_cpu_allocator
from alexnet.experiments.measure import Stat, interleaved, ratio
from alexnet.models import create_model, model_info

SWITCHES = ("ALEXNET_FUSED_POOL", "ALEXNET_FUSED_LRN", "ALEXNET_FUSED_BN")
BATCH = {32: 256, 224: 64, 227: 64}  # the library's usual batch at each input size


def switch(on: bool, switches: tuple[str, ...] = SWITCHES) -> None:
    for name in switches:
        os.environ[name] = "1" if on else "0"


def measure(
    name: str, dtype: torch.dtype, rounds: int, repeats: int, switches: tuple[str, ...] = SWITCHES, batch: int = 0
) -> None:
    px = model_info(name).input_size
    batch, classes = batch or BATCH.get(px, 64), 10 if px <= 32 else 1000
    torch.manual_seed(0)
    model = create_model(name, num_classes=classes).to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, px, px).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, classes, (batch,))
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def train() -> None:
        model.train()
        opt.zero_grad()
        with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()

    def infer() -> None:
        model.eval()
        with torch.inference_mode(), torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            model(x)

    for mode, step in [("train", train)] * (batch > 1) + [("infer", infer)]:  # batch 1: serving, not training
        sides = {
            "fused": lambda step=step: (switch(True, switches), step()),
            "apart": lambda step=step: (switch(False, switches), step()),
        }
        rates = interleaved(sides, dict.fromkeys(sides, batch), rounds=rounds, repeats=repeats)
        fused, apart, gain = Stat.of(rates["fused"]), Stat.of(rates["apart"]), ratio(rates["fused"], rates["apart"])
        print(
            f"{name:14} {mode}  on {batch / fused.median * 1e3:7.1f} ms  off {batch / apart.median * 1e3:7.1f} ms"
            f"  gain {gain.median:.2f}x ({gain.low:.2f}-{gain.high:.2f})",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["alexnet_owt", "alexnet_paper", "alexnet_cifar"])
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2, help="steps timed per side per round")
    parser.add_argument("--switches", nargs="+", default=list(SWITCHES), help="the environment variables switched")
    parser.add_argument("--batch", type=int, default=0, help="the batch (default: 64, 256 at 32 px; 1: inference only)")
    args = parser.parse_args()
    # As the library's training, inference and bench run: without it each large fresh tensor faults its pages in,
    # which on the Xeon with AMX cost more than fc6's product itself (and hid what the fc path changes).
    tune_cpu_allocator()
    cpu = native.cpu_model() or "this CPU"
    print(
        f"{cpu}, {torch.get_num_threads()} threads, {args.dtype}, torch {torch.__version__}; {' '.join(args.switches)}"
    )
    for name in args.models:
        measure(name, getattr(torch, args.dtype), args.rounds, args.repeats, tuple(args.switches), args.batch)


if __name__ == "__main__":
    main()
