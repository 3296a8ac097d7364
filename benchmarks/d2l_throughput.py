"""Training throughput of the d2l recipe: d2l's own loop against this library's pipeline, side by side.

    python benchmarks/d2l_throughput.py [--batches 20]

d2l's loop (chapter 8.1): torchvision FashionMNIST with per-sample PIL `Resize(224)` + `ToTensor()` in 4 worker
processes, `alexnet_d2l` (the same network) in fp32 NCHW, plain SGD lr 0.01. Ours: the uint8 data set in memory,
the 28 → 224 resize on whole batches, bf16 autocast where the CPU has native bf16, channels_last. Both use the same
images, batch size 128 and model; only the pipeline and numerics differ.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from alexnet.config import DataConfig
from alexnet.data.pipeline import build_data
from alexnet.device import autocast, pick_precision, tune_cpu_allocator
from alexnet.models import create_model


class PilFashion(Dataset):
    """What torchvision.datasets.FashionMNIST does per sample: uint8 → PIL → transform."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels
        self.transform = transforms.Compose([transforms.Resize(224), transforms.ToTensor()])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.transform(Image.fromarray(self.images[i, 0].numpy(), mode="L")), int(self.labels[i])


def _rate(steps, batches: int, batch: int) -> float:
    times = []
    it = iter(steps)
    next(it)  # warm-up: worker start, first allocation
    for _ in range(batches):
        t = time.perf_counter()
        next(it)
        times.append(time.perf_counter() - t)
    return batch / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", type=int, default=15)
    parser.add_argument("--data-dir")
    args = parser.parse_args()
    torch.manual_seed(0)
    device = torch.device("cpu")
    data = build_data(
        DataConfig(
            dataset="fashion-mnist", data_dir=args.data_dir, batch_size=128, flip=False, normalize="mean", mean=[0.0]
        ),
        224,
        device,
    )

    def d2l_steps():
        model = create_model("alexnet_d2l", num_classes=10, in_channels=1)
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        split = data.train.split
        loader = DataLoader(PilFashion(split.images, split.labels), batch_size=128, shuffle=True, num_workers=4)
        for x, y in loader:
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            yield

    def our_steps():
        model = create_model("alexnet_d2l", num_classes=10, in_channels=1).to(memory_format=torch.channels_last)
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        precision = pick_precision("auto", device)
        for step, (images, labels) in enumerate(data.train.batches(0)):
            x = data.train_transform.train(images, torch.Generator().manual_seed(step))
            with autocast(device, precision):
                loss = F.cross_entropy(model(x).float(), labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
            yield

    theirs = _rate(d2l_steps(), args.batches, 128)
    tune_cpu_allocator()  # what `alexnet train` does on a CPU; after the baseline, as it is process-wide
    ours = _rate(our_steps(), args.batches, 128)
    print(f"d2l loop (PIL resize per sample, fp32):        {theirs:7.1f} img/s")
    print(f"alexnet (batched resize, {pick_precision('auto', device)}, channels_last): {ours:7.1f} img/s")
    print(f"speedup: {ours / theirs:.2f}x (target 4x)")


if __name__ == "__main__":
    main()
