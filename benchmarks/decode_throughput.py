"""Decode + augment throughput per core for JPEG folders: this library against ImageFolder with PIL transforms.

    python benchmarks/decode_throughput.py                       # 200 generated ImageNet-sized JPEGs (500×375)
    python benchmarks/decode_throughput.py --folder /tmp/cifar10-jpg/train --resize 32 --crop 32

Both run in one process on one thread with no workers, so the figure is per core. The baseline is what a
torchvision user writes for the paper's pipeline: ImageFolder + Resize(256) + CenterCrop(256) + RandomCrop(224)
+ RandomHorizontalFlip + ToTensor + Normalize, per sample. Ours decodes and resizes per sample to uint8, then crops,
flips and normalises whole batches.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision import datasets, transforms

from alexnet.data.batch import IMAGENET_MEAN, IMAGENET_STD, BatchTransform, step_generator
from alexnet.data.folder import FolderDataset, collate_skip, scan_folder


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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--folder", help="a class-folder tree of images (default: generated photos)")
    parser.add_argument("--n", type=int, default=200, help="images to generate / measure")
    parser.add_argument("--resize", type=int, default=256)
    parser.add_argument("--crop", type=int, default=224)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.folder) if args.folder else make_photos(Path(tmp), args.n)
        baseline_tf = transforms.Compose([
            transforms.Resize(args.resize), transforms.CenterCrop(args.resize), transforms.RandomCrop(args.crop),
            transforms.RandomHorizontalFlip(), transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ])  # fmt: skip
        folder = datasets.ImageFolder(str(root), transform=baseline_tf)
        n = min(args.n, len(folder))
        t = time.perf_counter()
        batch = []
        for i in range(n):
            batch.append(folder[i][0])
            if len(batch) == args.batch:
                torch.stack(batch)
                batch = []
        theirs = n / (time.perf_counter() - t)

        samples, _ = scan_folder(root)
        ours_ds = FolderDataset(samples[:n], args.resize)
        tf = BatchTransform(input_size=args.crop, crop=args.crop, mean=torch.tensor(IMAGENET_MEAN).view(3, 1, 1),
                            std=torch.tensor(IMAGENET_STD).view(3, 1, 1), flip=True)  # fmt: skip
        t = time.perf_counter()
        for start in range(0, n, args.batch):
            x, _, _ = collate_skip([ours_ds[i] for i in range(start, min(n, start + args.batch))])
            tf.train(x, step_generator(0, 0, start))
        ours = n / (time.perf_counter() - t)
    print(f"ImageFolder + PIL transforms: {theirs:7.1f} img/s per core")
    print(f"alexnet folder pipeline:      {ours:7.1f} img/s per core")
    print(f"speedup: {ours / theirs:.2f}x (target 2x)")


if __name__ == "__main__":
    main()
