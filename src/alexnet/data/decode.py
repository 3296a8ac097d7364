"""One decoding path for every image the project reads (training folders, prediction): files in, uint8 RGB out.

Semantics: EXIF orientation is applied; grayscale, palette and CMYK become RGB; alpha is composited on white;
16-bit images are scaled to 8 bits; animated images give their first frame. Anything that is not a decodable
image, or whose header claims more than `MAX_PIXELS`, raises `InvalidImageError` before pixels are allocated.
"""

from __future__ import annotations

import io
import os
import re
import stat
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import simplejpeg
import torch
from PIL import Image, ImageFile, ImageOps

from ..errors import AlexNetError, InvalidImageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")
FORMATS = ("JPEG", "PNG", "BMP", "WEBP", "GIF", "TIFF")  # JPEG also opens MPO (multi-picture) files
MAX_ASPECT = 64  # longer side / shorter side beyond which `to_stored` resizes only the middle (no photo is so long)
MAX_PIXELS = 89_478_485  # Pillow's own bomb threshold: about 0.25 GiB of RGB at 8 bits
ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, not a grey bottom half


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def pil_to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit grayscale: scale to 8 bits instead of clipping at 255 (PIL's convert("L") clips).
        a = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if img.mode.startswith("I;16") or a.max() > 255 else 255.0
        img = Image.fromarray(np.clip(a / peak * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("RGB")


def _check_size(width: int, height: int, name: str) -> None:
    if width * height > MAX_PIXELS:
        raise InvalidImageError(
            f"{name}: {width}×{height} pixels exceeds the limit of {MAX_PIXELS:,} (possible decompression bomb)"
        )


def read_image_file(path: Path | str, max_bytes: int | None = None) -> bytes:
    """The bytes of a regular file, refusing pipes, devices, sockets and directories (a FIFO would block the
    reader forever) and files over ``max_bytes`` before reading them.

    Raises:
        InvalidImageError: unreadable, not a regular file, or too large.
    """
    name = str(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # opening a FIFO must not wait for a writer
    except OSError as err:
        raise InvalidImageError(f"{name}: cannot read ({err.strerror or err})") from err
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise InvalidImageError(f"{name}: not a regular file (a directory, pipe, device or socket)")
        if max_bytes is not None and info.st_size > max_bytes:
            raise InvalidImageError(f"{name}: {info.st_size:,} bytes exceeds the file-size limit of {max_bytes:,}")
        with os.fdopen(os.dup(fd), "rb") as f:
            return f.read()
    except OSError as err:
        raise InvalidImageError(f"{name}: cannot read ({err.strerror or err})") from err
    finally:
        os.close(fd)


def _decode_jpeg_fast(data: bytes, name: str, min_size: int = 0) -> torch.Tensor | None:
    """libjpeg-turbo through simplejpeg for complete YCbCr/grayscale JPEGs without EXIF; None hands the file to
    Pillow, which handles everything else (EXIF orientation, CMYK/YCCK, truncated files, other formats).

    Pillow decodes JPEGs with the same libjpeg-turbo and default settings, so the pixels are identical (tested);
    skipping Pillow's Python header parser is what makes this faster: 2× for CIFAR's 32×32 files, 1.2× for
    ImageNet-sized ones. Raises `InvalidImageError` for bombs, from the header, before decoding. ``min_size``
    lets libjpeg scale by 1/2, 1/4 or 1/8 in the DCT while both sides stay at least that long.
    """
    if not data.startswith(b"\xff\xd8") or not data.rstrip(b"\0").endswith(b"\xff\xd9") or b"Exif\0\0" in data:
        return None  # not a JPEG, no end marker (truncated), or EXIF (perhaps an orientation): Pillow's path
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError:
        return None
    if colorspace not in ("YCbCr", "Gray"):
        return None  # CMYK, YCCK (Adobe's inverted conventions) and RGB-coded JPEGs: Pillow knows them
    _check_size(width, height, name)
    try:
        array = simplejpeg.decode_jpeg(data, colorspace="RGB", min_height=min_size, min_width=min_size)  # (H, W, 3)
    except ValueError:
        return None  # recoverable libjpeg warnings (strict mode): Pillow decides
    return torch.from_numpy(array).permute(2, 0, 1)


def decode_image(
    data: bytes | Path | str, name: str = "<bytes>", min_size: int = 0, max_bytes: int | None = None
) -> torch.Tensor:
    """Decode an image file to a (3, H, W) uint8 RGB tensor (in (H, W, 3) memory, which resizing keeps).

    Args:
        data: a path or the file's bytes.
        name: shown in errors when ``data`` is bytes.
        min_size: the caller resizes afterwards and needs both sides at least this long (px): JPEGs are then
            decoded at 1/2, 1/4 or 1/8 scale where that still holds, which bounds memory and time for large photos.
        max_bytes: refuse files larger than this before reading them (bytes given: larger than this).

    Raises:
        InvalidImageError: empty, not an image, truncated, corrupt, or larger than `MAX_PIXELS`.
    """
    if not isinstance(data, bytes):
        name = str(data)
        data = read_image_file(data, max_bytes)
    elif max_bytes is not None and len(data) > max_bytes:  # bytes already read (a request, standard input)
        raise InvalidImageError(f"{name}: larger than the file-size limit of {max_bytes:,} bytes")
    if not data:
        raise InvalidImageError(f"{name}: empty file")
    fast = _decode_jpeg_fast(data, name, min_size)
    if fast is not None:
        return fast
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=FORMATS)
            _check_size(img.width, img.height, name)  # the header alone gives the size: before any pixel
            if min_size and img.format == "JPEG":
                img.draft(img.mode, (min_size, min_size))  # DCT scaling, both sides kept >= min_size
            img.load()
            img = ImageOps.exif_transpose(img)
            rgb = pil_to_rgb(img)
    except InvalidImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise InvalidImageError(f"{name}: decompression bomb ({err})") from err
    except Exception as err:  # Pillow raises OSError, SyntaxError, ValueError, struct.error... for bad files
        # Pillow names the buffer it read ("<_io.BytesIO object at 0x7f...>"): the file's name is already in front.
        reason = re.sub(r"\s*<_io\.BytesIO object at 0x[0-9a-f]+>", "", f"{type(err).__name__}: {err}")
        raise InvalidImageError(f"{name}: not a decodable image ({reason})") from err
    array = np.asarray(rgb, dtype=np.uint8)  # (H, W, 3)
    return torch.from_numpy(array.copy()).permute(2, 0, 1)  # (H, W, C) memory, as libjpeg-turbo's output


def to_stored(image: torch.Tensor, size: int, channels: int = 3) -> torch.Tensor:
    """(3, H, W) uint8 RGB → (channels, size, size) uint8: shorter side to ``size``, central square (§2)."""
    from torchvision.transforms.v2 import functional as TF  # here: importing torchvision costs ~1 s

    height, width = image.shape[-2:]
    short, long = min(height, width), max(height, width)
    if long > MAX_ASPECT * short:
        # Only the central square is kept: resizing the whole of a 1 × 30,000 px strip to a shorter side of 256
        # made a 256 × 7,680,000 image (10 GB at the peak, from a 90 KB PNG: a request to the service could ask
        # it). Its central part, MAX_ASPECT times as long as wide, holds that square and the resize filter's reach
        # around it; the square then differs from the whole strip's by where the resize's rounding puts its
        # pixels (a fraction of one). Images up to MAX_ASPECT are resized whole, as torchvision does.
        keep = MAX_ASPECT * short
        image = TF.center_crop(image, [height, keep] if width > height else [keep, width])
    image = TF.resize(image, [size], antialias=True)
    image = TF.center_crop(image, [size])
    if channels == 1:
        image = TF.rgb_to_grayscale(image)  # ITU-R 601-2 luma, as PIL's convert("L")
    return image


def decode_stored(
    data: bytes | Path | str, size: int, channels: int = 3, max_bytes: int | None = None, name: str = "<bytes>"
) -> torch.Tensor:
    """Decode and bring to the stored square: what training folders, prediction and serving all do to a file.

    JPEGs decode at a reduced DCT scale while both sides stay at least twice ``size`` (then the antialiased
    resize finishes the job), so a 16-megapixel photo never exists at full size in memory for a 256 px model.
    """
    return to_stored(decode_image(data, name, 2 * size, max_bytes), size, channels)


def expand_inputs(inputs: Iterable[str]) -> list[str]:
    """Files, directories (walked recursively for images) and glob patterns, in the order given.

    A missing file stays in the list (it is reported per path); a URL too (reported as not read).

    Raises:
        AlexNetError: an empty argument, or a directory or pattern that matches no image.
    """
    files: list[str] = []
    for item in inputs:
        if not item.strip():
            raise AlexNetError("an input is empty ('' would mean the current directory): name files, folders or globs")
        path = Path(item)
        try:
            is_dir, exists = path.is_dir(), path.exists()
        except OSError:  # a name the system refuses (over 255 bytes): reported for its path, as a missing file is
            is_dir, exists = False, True
        if is_dir:
            found = sorted(str(p) for p in path.rglob("*") if p.is_file() and is_image_file(p))
            if not found:
                raise AlexNetError(
                    f"directory {item} holds no image files ({', '.join(e[1:] for e in IMAGE_EXTENSIONS)})"
                )
            files += found
        elif not exists and not is_url(item) and any(c in item for c in "*?["):
            found = sorted(_glob(item))
            if not found:
                raise AlexNetError(f"pattern {item!r} matches no file")
            files += found
        else:
            files.append(item)
    return files


def _glob(pattern: str) -> list[str]:
    """What ``glob.glob(pattern, recursive=True)`` matches, without following a symbolic link to a directory while
    expanding ``**``: glob.glob does, so a folder holding a link to its parent (``up -> ..``, as an unpacked archive
    may) made ``predict 'photos/**/*.jpg'`` walk ``photos/up/up/up/...`` without end. pathlib's ``**`` follows none
    (bash's ``globstar`` neither). Names starting with a dot match only a pattern part that starts with one, as
    with glob.glob."""
    magic = next(i for i, c in enumerate(pattern) if c in "*?[")
    cut = pattern.rfind(os.sep, 0, magic) + 1  # the literal directory before the first wildcard, its "/" kept
    base, rest = pattern[:cut], pattern[cut:]
    dotted = any(part.startswith(".") for part in Path(rest).parts)
    if rest == "**" or rest.endswith(os.sep + "**"):  # "a/**": glob.glob lists what is below, pathlib dirs alone
        rest += os.sep + "*"
    found = []
    for path in Path(base or ".").glob(rest):
        relative = path.relative_to(base or ".")
        if dotted or not any(part.startswith(".") for part in relative.parts):
            found.append(base + str(relative))
    return found


def is_url(item: str) -> bool:
    """Whether ``item`` names a remote file (which the project does not fetch for prediction)."""
    return item.split("://", 1)[0].lower() in ("http", "https", "ftp", "s3", "gs") and "://" in item
