"""Peak memory of `alexnet predict` on large photos: 32 PNGs (and 32 JPEGs) of 16 megapixels, batch 32.

    python benchmarks/predict_memory.py [--weights W.safetensors] [--n 32]

Prints the peak RSS of the predict process (ru_maxrss of the child). Without ``--weights`` it makes release
weights of an untrained `alexnet_owt` (256 px stored, 224 px input), the size that matters for memory.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

# The predict process reports its own peak resident set size when it ends: VmHWM, not ru_maxrss, which Linux
# carries across exec from the parent (this script's images would be counted).
CHILD = """import re, sys
from alexnet.cli import main
code = main(sys.argv[1:])
print(re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read()).group(1), file=sys.stderr)
sys.exit(code)"""


def make_weights(path: Path) -> Path:
    import alexnet
    from alexnet.artifacts.checkpoint import save_weights

    model = alexnet.create_model("alexnet_owt", num_classes=1000)
    data = {
        "dataset": "imagenet",
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
        "stored_size": 256,
        "crop": 224,
        "input_size": 224,
    }
    save_weights(model, path, {"model": model.config, "classes": [f"c{i}" for i in range(1000)], "data": data})
    return path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--weights")
    parser.add_argument("--n", type=int, default=32)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp())
    try:
        weights = Path(args.weights) if args.weights else make_weights(tmp / "owt.safetensors")
        rng = np.random.default_rng(0)
        w, h = 4896, 3264  # 16.0 megapixels
        ramp = np.linspace(0, 255, w, dtype=np.float32)[None, :, None] * np.ones((h, 1, 3), np.float32)
        pixels = (ramp + rng.normal(0, 8, (h, w, 3))).clip(0, 255).astype(np.uint8)
        for ext in ("png", "jpg"):
            folder = tmp / ext
            folder.mkdir()
            Image.fromarray(pixels).save(folder / f"0.{ext}")
            for i in range(1, args.n):
                shutil.copy(folder / f"0.{ext}", folder / f"{i}.{ext}")
            began = time.perf_counter()
            done = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    CHILD,
                    "predict",
                    "--checkpoint",
                    str(weights),
                    "-b",
                    "32",
                    "--json",
                    str(folder),
                ],
                capture_output=True,
                text=True,
            )
            assert done.returncode == 0, done.stderr
            peak_mb = int(done.stderr.strip().splitlines()[-1]) / 1024  # kB
            print(
                f"{args.n} {ext.upper()}s of {w}x{h} ({w * h / 1e6:.1f} MP), batch 32: peak RSS {peak_mb:.0f} MB, "
                f"{time.perf_counter() - began:.1f} s"
            )
    finally:
        shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
