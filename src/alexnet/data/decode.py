"""One decoding path for every image the project reads (training folders, prediction): files in, uint8 RGB out.

Semantics: EXIF orientation is applied; grayscale, palette and CMYK become RGB; alpha is composited on white;
16-bit images are scaled to 8 bits; animated images give their first frame. Anything that is not a decodable
image, or whose header claims more than `MAX_PIXELS`, raises `InvalidImageError` before pixels are allocated.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps

from ..errors import InvalidImageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")
FORMATS = ("JPEG", "PNG", "BMP", "WEBP", "GIF", "TIFF")  # JPEG also opens MPO (multi-picture) files
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


def _decode_jpeg_fast(data: bytes, img: Image.Image) -> torch.Tensor | None:
    """libjpeg-turbo through torchvision.io for complete baseline RGB/grayscale JPEGs (about 1.2× faster than
    Pillow's decode and without its copies); None hands the file to Pillow, which handles everything else."""
    if img.format != "JPEG" or img.mode not in ("RGB", "L") or not data.rstrip(b"\0").endswith(b"\xff\xd9"):
        return None  # other formats, CMYK/YCCK, and files without an end marker (truncated) go through Pillow
    with warnings.catch_warnings():  # torchvision 0.29 deprecates its decoders in favour of TorchCodec
        warnings.simplefilter("ignore", DeprecationWarning)
        from torchvision.io import ImageReadMode, decode_jpeg

        try:
            x = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB,
                            apply_exif_orientation=True)  # fmt: skip
        except RuntimeError:
            return None
    return x if x.ndim == 3 and x.shape[0] == 3 else None


def decode_image(data: bytes | Path | str, name: str = "<bytes>") -> torch.Tensor:
    """Decode an image file to a (3, H, W) uint8 RGB tensor.

    Args:
        data: a path or the file's bytes.
        name: shown in errors when ``data`` is bytes.

    Raises:
        InvalidImageError: empty, not an image, truncated, corrupt, or larger than `MAX_PIXELS`.
    """
    if not isinstance(data, bytes):
        name = str(data)
        try:
            data = Path(data).read_bytes()
        except OSError as err:
            raise InvalidImageError(f"{name}: cannot read ({err.strerror or err})") from err
    if not data:
        raise InvalidImageError(f"{name}: empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=FORMATS)
            # The header alone gives the size: refuse bombs before any pixel is decoded.
            if img.width * img.height > MAX_PIXELS:
                raise InvalidImageError(
                    f"{name}: {img.width}×{img.height} pixels exceeds the limit of {MAX_PIXELS:,} "
                    "(possible decompression bomb)"
                )
            fast = _decode_jpeg_fast(data, img)
            if fast is not None:
                return fast
            img.seek(0)
            img.load()
            img = ImageOps.exif_transpose(img)
            rgb = pil_to_rgb(img)
    except InvalidImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise InvalidImageError(f"{name}: decompression bomb ({err})") from err
    except Exception as err:  # Pillow raises OSError, SyntaxError, ValueError, struct.error... for bad files
        raise InvalidImageError(f"{name}: not a decodable image ({type(err).__name__}: {err})") from err
    array = np.asarray(rgb, dtype=np.uint8)  # (H, W, 3)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()
