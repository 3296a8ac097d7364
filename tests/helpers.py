"""What many tests need: images of every kind, written to disk or as bytes; the signals a child process starts
with. Fixtures stay in conftest.py."""

from __future__ import annotations

import io
import json
import signal
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image


def gradient(w=40, h=30):
    """An RGB test image whose red rises left to right and green top to bottom."""
    x = np.zeros((h, w, 3), dtype=np.uint8)
    x[..., 0] = np.linspace(0, 255, w)[None, :]
    x[..., 1] = np.linspace(0, 255, h)[:, None]
    x[..., 2] = 90
    return Image.fromarray(x, "RGB")


def encode(img, fmt, **kw):
    """``img`` as the bytes of a ``fmt`` file."""
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(width=30000, height=30000) -> bytes:
    """A valid PNG header claiming width×height pixels, with almost no data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 16)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def bad_files() -> dict[str, bytes]:
    jpeg = encode(gradient(64, 64), "JPEG", quality=90)
    png = bytearray(encode(gradient(), "PNG"))
    ihdr_crc = 8 + 4 + 4 + 13  # the IHDR chunk's CRC follows its 13 data bytes
    png[ihdr_crc] ^= 0xFF
    return {
        "empty.jpg": b"",
        "text.jpg": b"this is a text file, not an image\n" * 3,
        "truncated.jpg": jpeg[: len(jpeg) // 2],
        "bad_crc.png": bytes(png),
        "bomb.png": bomb_png(),
        "garbage.png": b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4,
    }


def mixed_images(root):
    """Four noise images of awkward sizes (tiny, large, square), as PNG and JPEG."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i, size in enumerate([(40, 30), (5, 7), (1500, 900), (32, 32)]):
        arr = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
        path = root / f"img{i}.{'jpg' if i % 2 else 'png'}"
        Image.fromarray(arr).save(path)
        paths.append(path)
    return paths


def noise_images(folder: Path, n: int, seed: int = 0, tint: int | None = None) -> list[Path]:
    """Noise images; with ``tint`` (a channel), that channel is bright: a class a network can learn."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        p = folder / f"img{i}.png"
        pixels = rng.integers(0, 128, (80, 96, 3), dtype=np.uint8)
        if tint is not None:
            pixels[..., tint] += 128
        Image.fromarray(pixels).save(p)
        paths.append(p)
    return paths


def noise_png(path: Path | None = None, seed: int = 0, size: tuple[int, int] = (90, 120)) -> bytes:
    """A (height, width) ``size`` PNG of seeded noise, as bytes (also written to ``path`` if given)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    if path is not None:
        path.write_bytes(buf.getvalue())
    return buf.getvalue()


def solid_photo(path: Path, colour: tuple[int, int, int] = (10, 200, 30), size: int = 40) -> Path:
    """A one-colour RGB image at ``path`` (its format from the suffix)."""
    Image.new("RGB", (size, size), colour).save(path)
    return path


def train_command(recipe: str, *args: str, batch: int = 32) -> list[str]:
    """``-m alexnet.cli train`` (for ``python`` or ``torchrun``) on fake data, on the CPU in fp32, without progress
    bars, at a quarter of the width and a constant learning rate, then ``args``."""
    return [
        "-m",
        "alexnet.cli",
        "train",
        "--recipe",
        recipe,
        "--dataset",
        "fake",
        "--device",
        "cpu",
        "--precision",
        "fp32",
        "--no-progress",
        "-b",
        str(batch),
        "--set",
        "model.overrides.width=0.25",
        "--set",
        'optim.schedule="constant"',
        *args,
    ]


def strict_json(text: str):
    """``json.loads`` refusing NaN and ±Infinity, as JavaScript's JSON.parse and jq do."""

    def refuse(name):
        raise ValueError(f"{name} is not JSON")

    return json.loads(text, parse_constant=refuse)


def child_signals(ignoring: tuple[int, ...] = ()) -> Callable[[], None]:
    """For ``subprocess.Popen(preexec_fn=...)``: the child starts with SIGINT, SIGTERM and SIGHUP at their defaults,
    those in ``ignoring`` ignored, whatever the test run's own are. A suite started as a background job (``make test
    &``, a CI runner's) ignores SIGINT; its children inherited that, and the commands, which leave an ignored signal
    ignored, ran on through the tests' Ctrl-C."""

    def setup() -> None:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN if signum in ignoring else signal.SIG_DFL)

    return setup
