"""Decode + augment throughput per core for JPEG folders: this library against ImageFolder with PIL transforms.

    python benchmarks/decode_throughput.py                       # 300 generated ImageNet-sized JPEGs (500×375)
    python benchmarks/decode_throughput.py --folder /tmp/cifar10-jpg/train --resize 32 --crop 32

Each measurement runs in a fresh process on one thread with no workers, so the figure is per core and neither side
inherits the other's allocator state; the two alternate for ``--rounds`` rounds and the medians are compared (this
machine's speed drifts by ±30% over minutes). The baseline is what a torchvision user writes for the paper's
pipeline: ImageFolder + Resize(256) + CenterCrop(256) + RandomCrop(224) + RandomHorizontalFlip + ToTensor +
Normalize, per sample, in a default process. Ours is what `alexnet train` runs: decode and resize per sample to
uint8, then crops, flips and normalisation on whole batches, with the allocator setting training applies on a CPU.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def make_photos(root: Path, n: int, size=(500, 375)) -> Path:
    rng = np.random.default_rng(0)
    for i in range(n):
        d = root / f"class{i % 4}"
        d.mkdir(parents=True, exist_ok=True)
        coarse = rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)
        img = Image.fromarray(coarse).resize(size, Image.BICUBIC)
        noise = rng.integers(-20, 20, (size[1], size[0], 3))
        Image.fromarray(np.clip(np.asarray(img) + noise, 0, 255).astype(np.uint8)).save(d / f"{i}.jpg", quality=90)
    return root


def baseline_rate(root: str, n: int, resize: int, crop: int, batch: int) -> float:
    from torchvision import datasets, transforms

    from alexnet.data.batch import IMAGENET_MEAN, IMAGENET_STD

    torch.set_num_threads(1)
    tf = transforms.Compose(
        [
            transforms.Resize(resize),
            transforms.CenterCrop(resize),
            transforms.RandomCrop(crop),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
    folder = datasets.ImageFolder(root, transform=tf)

    def run(indices: range) -> None:
        for start in range(indices.start, indices.stop, batch):
            torch.stack([folder[i][0] for i in range(start, min(indices.stop, start + batch))])

    return _timed(run, n, batch)


def alexnet_rate(root: str, n: int, resize: int, crop: int, batch: int) -> float:
    from alexnet.data.batch import IMAGENET_MEAN, IMAGENET_STD, BatchTransform, step_generator
    from alexnet.data.folder import FolderDataset, collate_skip, scan_folder
    from alexnet.device import tune_cpu_allocator

    torch.set_num_threads(1)
    tune_cpu_allocator()  # what `alexnet train` does on a CPU
    samples, _ = scan_folder(Path(root))
    ds = FolderDataset(samples, resize)
    tf = BatchTransform(
        input_size=crop,
        crop=crop,
        mean=torch.tensor(IMAGENET_MEAN).view(3, 1, 1),
        std=torch.tensor(IMAGENET_STD).view(3, 1, 1),
        flip=True,
    )

    def run(indices: range) -> None:
        for start in range(indices.start, indices.stop, batch):
            x, _, _ = collate_skip([ds[i] for i in range(start, min(indices.stop, start + batch))])
            tf.train(x, step_generator(0, 0, start))

    return _timed(run, n, batch)


def _timed(run, n: int, batch: int) -> float:
    """Images per second over ``n`` images after one warm-up batch (which also reads the files into the cache)."""
    run(range(0, batch))
    t = time.perf_counter()
    run(range(batch, batch + n))
    return n / (time.perf_counter() - t)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--folder", help="a class-folder tree of images (default: generated photos)")
    parser.add_argument("--n", type=int, default=300, help="images to measure (after a warm-up batch)")
    parser.add_argument("--resize", type=int, default=256)
    parser.add_argument("--crop", type=int, default=224)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3, help="alternating fresh-process measurements of each")
    args = parser.parse_args()
    ctx = mp.get_context("spawn")  # a fresh interpreter per measurement
    with tempfile.TemporaryDirectory() as tmp, ctx.Pool(1, maxtasksperchild=1) as pool:
        root = args.folder or str(make_photos(Path(tmp), args.n + args.batch))
        job = (root, args.n, args.resize, args.crop, args.batch)
        theirs, ours = [], []
        for r in range(args.rounds):
            theirs.append(pool.apply(baseline_rate, job))
            ours.append(pool.apply(alexnet_rate, job))
            print(f"round {r + 1}: ImageFolder {theirs[-1]:6.1f}  alexnet {ours[-1]:6.1f} img/s per core", flush=True)
    a, b = statistics.median(theirs), statistics.median(ours)
    print(f"ImageFolder + PIL transforms: {a:7.1f} img/s per core (median of {args.rounds})")
    print(f"alexnet folder pipeline:      {b:7.1f} img/s per core (median of {args.rounds})")
    print(f"speedup: {b / a:.2f}x (target 2x)")


if __name__ == "__main__":
    main()
