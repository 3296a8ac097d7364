"""The one decoding path: colour modes, EXIF rotation, 16-bit, and a corpus of bad files (generated here)."""

import io
import struct

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from alexnet.data.decode import decode_image
from alexnet.errors import InvalidImageError
from tests.helpers import bad_files, bomb_png, encode, gradient


@pytest.mark.parametrize("name", sorted(bad_files()))
def test_bad_files_raise_invalid_image(name, tmp_path):
    path = tmp_path / name
    path.write_bytes(bad_files()[name])
    with pytest.raises(InvalidImageError) as err:
        decode_image(path)
    assert str(path) in str(err.value)
    assert " at 0x" not in str(err.value)  # no buffer's address in a line a user reads


def test_bomb_is_rejected_before_allocation():
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(InvalidImageError, match="decompression bomb|exceeds"):
        decode_image(bomb_png(), "bomb.png")
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100_000  # KiB: under 100 MB


def _modes():
    rgb = gradient()
    rgba = rgb.copy()
    rgba.putalpha(Image.linear_gradient("L").resize(rgb.size))
    palette = rgb.convert("P", palette=Image.ADAPTIVE, colors=16)
    palette_t = palette.copy()
    palette_t.info["transparency"] = 0
    return {
        "L.png": (rgb.convert("L"), "PNG"),
        "LA.png": (rgb.convert("LA"), "PNG"),
        "RGBA.png": (rgba, "PNG"),
        "P.png": (palette, "PNG"),
        "P_transparent.png": (palette_t, "PNG"),
        "CMYK.jpg": (rgb.convert("CMYK"), "JPEG"),
        "1bit.bmp": (rgb.convert("1"), "BMP"),
        "rgb.webp": (rgb, "WEBP"),
        "rgb.bmp": (rgb, "BMP"),
        "rgb.gif": (palette, "GIF"),
        "tiny.png": (rgb.resize((1, 1)), "PNG"),
    }


@pytest.mark.parametrize("name", sorted(_modes()))
def test_colour_modes_decode_to_rgb_uint8(name, tmp_path):
    img, fmt = _modes()[name]
    path = tmp_path / name
    img.save(path, fmt)
    x = decode_image(path)
    assert x.dtype == torch.uint8 and x.shape == (3, img.height, img.width)
    expected = np.asarray(Image.open(path).convert("RGBA" if "A" in name or "transparent" in name else "RGB"))
    if expected.shape[-1] == 4:  # alpha composited on white
        alpha = expected[..., 3:4] / 255.0
        expected = np.round(expected[..., :3] * alpha + 255 * (1 - alpha))
    assert np.abs(x.permute(1, 2, 0).numpy().astype(float) - expected).max() <= 1


def test_alpha_is_composited_on_white(tmp_path):
    Image.new("RGBA", (4, 4), (0, 0, 0, 0)).save(tmp_path / "clear.png")
    assert torch.all(decode_image(tmp_path / "clear.png") == 255)


def test_exif_orientation_matches_exif_transpose(tmp_path):
    img = gradient(40, 30)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    path = tmp_path / "rotated.jpg"
    img.save(path, "JPEG", exif=exif, quality=95)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))
    got = decode_image(path).permute(1, 2, 0).numpy()
    assert got.shape == expected.shape == (40, 30, 3)
    assert np.array_equal(got, expected)


def test_16_bit_png_keeps_its_levels(tmp_path):
    ramp = (np.linspace(0, 65535, 256 * 4).reshape(4, 256)).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    x = decode_image(tmp_path / "deep.png")
    assert len(torch.unique(x[0])) >= 200 and x.max() == 255 and x.min() == 0


def test_animated_gif_gives_first_frame(tmp_path):
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    x = decode_image(tmp_path / "anim.gif")
    assert x[0].float().mean() > 200 and x[2].float().mean() < 50


def _jpegs() -> dict[str, bytes]:
    img = gradient(53, 37)
    return {
        "420": encode(img, "JPEG", quality=90),
        "422": encode(img, "JPEG", quality=90, subsampling=1),
        "444": encode(img, "JPEG", quality=90, subsampling=0),
        "progressive": encode(img, "JPEG", quality=90, progressive=True),
        "gray": encode(img.convert("L"), "JPEG", quality=90),
    }


@pytest.mark.parametrize("name", sorted(_jpegs()))
def test_plain_jpegs_take_the_fast_path_with_pillows_pixels(name, monkeypatch):
    import alexnet.data.decode as decode

    calls = []
    real = decode.simplejpeg.decode_jpeg
    monkeypatch.setattr(decode.simplejpeg, "decode_jpeg", lambda *a, **k: calls.append(1) or real(*a, **k))
    data = _jpegs()[name]
    got = decode_image(data).permute(1, 2, 0).numpy()
    assert calls == [1]
    # Same libjpeg-turbo, same settings: identical here. Two wheels may bundle different libjpeg builds, whose
    # integer IDCTs may differ by a level (ITU-T T.83 allows that), so allow 1 and require agreement on average.
    want = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int)
    assert np.abs(got.astype(int) - want).max() <= 1 and np.abs(got.astype(int) - want).mean() < 0.05


def test_exif_and_cmyk_jpegs_go_through_pillow(monkeypatch):
    import alexnet.data.decode as decode

    monkeypatch.setattr(decode.simplejpeg, "decode_jpeg", lambda *a, **k: pytest.fail("fast path taken"))
    exif = Image.Exif()
    exif[0x0112] = 1
    assert decode_image(encode(gradient(), "JPEG", exif=exif)).shape == (3, 30, 40)
    assert decode_image(encode(gradient().convert("CMYK"), "JPEG")).shape == (3, 30, 40)


def test_jpeg_bomb_is_rejected_from_its_header():
    data = bytearray(encode(gradient(16, 16), "JPEG"))
    sof = data.index(b"\xff\xc0")  # SOF0: marker, length (2), precision (1), height (2), width (2)
    data[sof + 5 : sof + 9] = struct.pack(">HH", 60000, 60000)
    with pytest.raises(InvalidImageError, match="exceeds"):
        decode_image(bytes(data), "bomb.jpg")


def test_mutated_files_decode_or_raise_invalid_image():
    """T15: byte flips and truncations of small seed files give a uint8 image or `InvalidImageError`, nothing
    else, each in well under 2 s. JPEG mutants keep their end marker, so they reach the libjpeg-turbo fast path."""
    import time

    img = gradient(24, 16)
    seeds = {
        "jpeg": encode(img, "JPEG", quality=90),
        "progressive": encode(img, "JPEG", quality=90, progressive=True),
        "gray": encode(img.convert("L"), "JPEG"),
        "png": encode(img, "PNG"),
        "gif": encode(img.convert("P"), "GIF"),
        "webp": encode(img, "WEBP"),
    }
    rng = np.random.default_rng(0)
    outcomes = {"decoded": 0, "invalid": 0}
    for name, seed in seeds.items():
        for _ in range(150):
            data = bytearray(seed)
            if rng.random() < 0.2:
                data = data[: rng.integers(1, len(data))]
            for pos in rng.integers(0, len(data) - 2, rng.integers(1, 8)):
                data[pos] = rng.integers(0, 256)
            if name in ("jpeg", "progressive", "gray"):
                data[-2:] = b"\xff\xd9"
            start = time.perf_counter()
            try:
                x = decode_image(bytes(data), name)
                assert x.dtype == torch.uint8 and x.ndim == 3 and x.shape[0] == 3
                outcomes["decoded"] += 1
            except InvalidImageError:
                outcomes["invalid"] += 1
            assert time.perf_counter() - start < 2.0
    assert outcomes["decoded"] > 0 and outcomes["invalid"] > 0


def test_a_strip_is_resized_by_its_middle_and_other_images_as_torchvision_does(monkeypatch):
    """A 1 × 30,000 px PNG (90 KB) became a 256 × 7,680,000 image before its central square was cut (10 GB at the
    peak, by way of `predict` or the service). Beyond `MAX_ASPECT` only the middle is resized: never more than
    MAX_ASPECT · size² pixels, its square within a few levels of the whole strip's (a sub-pixel shift). Up to
    MAX_ASPECT (panoramas) the image is resized whole: bit for bit torchvision's resize and central crop."""
    from torchvision.transforms.v2 import functional as TF

    from alexnet.data import decode

    def reference(image, size):
        return TF.center_crop(TF.resize(image, [size], antialias=True), [size])

    generator = torch.Generator().manual_seed(0)
    for h, w in [(64, 257), (100, 6400), (3000, 47), (31, 31)]:  # aspects up to 64: as they were
        image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=generator)
        assert torch.equal(decode.to_stored(image, 32), reference(image, 32)), (h, w)
    sizes = []
    real = TF.resize

    def resize(image, *args, **kwargs):
        sizes.append(tuple(image.shape[-2:]))
        return real(image, *args, **kwargs)

    for h, w in [(8, 4001), (3001, 5), (3, 5000)]:
        x = torch.linspace(0, 6.28 * 3, w)[None, :] + torch.linspace(0, 1, h)[:, None]  # smooth content
        image = (127.5 + 127.5 * torch.sin(x)).round().to(torch.uint8).expand(3, h, w).contiguous()
        want = reference(image, 32).int()
        sizes.clear()
        with monkeypatch.context() as patch:
            patch.setattr(TF, "resize", resize)
            got = decode.to_stored(image, 32).int()
        short = min(h, w)
        assert sizes == [(h, decode.MAX_ASPECT * short) if w > h else (decode.MAX_ASPECT * short, w)]  # the middle
        assert got.shape == (3, 32, 32) and (got - want).abs().max() <= 8, (h, w)
    strip = torch.full((3, 1, 30000), 200, dtype=torch.uint8)  # 90 KB as a PNG
    sizes.clear()
    with monkeypatch.context() as patch:
        patch.setattr(TF, "resize", resize)
        assert torch.equal(decode.to_stored(strip, 256), torch.full((3, 256, 256), 200, dtype=torch.uint8))
    assert sizes == [(1, decode.MAX_ASPECT)]  # 1 × 64 resized, not 1 × 30,000 (to 256 × 7,680,000)


def test_a_glob_matches_what_globs_match_and_follows_no_link_to_a_folder(tmp_path, monkeypatch):
    """`predict 'photos/**/*.jpg'` on a folder holding a link to its parent (`up -> ..`, as an unpacked archive may)
    walked photos/up/up/up/... without end (glob.glob follows links while expanding `**`; measured: killed by
    `timeout 60`). Without links, the files matched are glob.glob's, hidden names included only where asked."""
    import glob
    import os
    from pathlib import Path

    from alexnet.data.decode import expand_inputs

    monkeypatch.chdir(tmp_path)
    for name in ["a/x.png", "a/b/y.png", "a/b/c/z.jpg", "a/.hid/h.png", "a/.h.png", "top.png", "a/[x].png"]:
        Path(name).parent.mkdir(parents=True, exist_ok=True)
        Path(name).write_bytes(b"")
    patterns = [
        "*.png",
        "a/*.png",
        "**/*.png",
        "a/**/*.png",
        "a/**",
        "./a/*.png",
        "a/b/?/*.jpg",
        "a/[xy].png",
        "a/.*.png",
        "a/.hid/*",
        "a/**/.*",
        f"{tmp_path}/a/**/*.png",
        "a/*/*.png",
    ]
    for pattern in patterns:
        expected = sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
        assert sorted(p for p in expand_inputs([pattern]) if os.path.isfile(p)) == expected, pattern
    os.symlink("..", "a/b/up")  # one link: glob.glob's walk ends at the kernel's 40 links a path (a second hangs)
    assert sorted(expand_inputs(["a/**/*.png"])) == ["a/[x].png", "a/b/y.png", "a/x.png"]
