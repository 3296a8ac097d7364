"""Caffe's bvlc_alexnet → alexnet_paper, proven without Caffe: a synthetic .caffemodel written here byte by byte
(an independent protobuf wire encoder, so a wrong field number in the converter cannot cancel out), converted, and
compared with a NumPy forward pass of Caffe's definition (BGR input, mean subtraction, Caffe's LRN across all
channels with α/n and k = 1, group = 2 convolutions, ceil-mode max pooling)."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import torch
from numpy.lib.stride_tricks import sliding_window_view

from alexnet.artifacts.caffe import convert_caffe, read_caffemodel
from alexnet.artifacts.loader import load_trained
from alexnet.errors import CorruptCheckpointError

# A slim bvlc_alexnet (1/6 of the widths): (name, out, in/group, kernel, stride, pad, group, lrn, pool).
CONVS = [
    ("conv1", 16, 3, 11, 4, 0, 1, True, True),
    ("conv2", 48, 8, 5, 1, 2, 2, True, True),
    ("conv3", 64, 48, 3, 1, 1, 1, False, False),
    ("conv4", 64, 32, 3, 1, 1, 2, False, False),
    ("conv5", 48, 32, 3, 1, 1, 2, False, True),
]
FCS = [("fc6", 680, 48 * 6 * 6), ("fc7", 680, 680), ("fc8", 7, 680)]
MEAN_BGR = (104.0, 117.0, 123.0)


# --- protobuf wire format, written by hand (proto2: varints, length-delimited, packed floats) ---
def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:  # wire type 2: length-delimited
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _int_field(number: int, value: int) -> bytes:  # wire type 0: varint
    return _varint(number << 3) + _varint(value)


def _blob(array: np.ndarray, legacy: bool) -> bytes:
    data = _field(5, struct.pack(f"<{array.size}f", *array.astype(np.float32).ravel()))
    if legacy:  # old files: num/channels/height/width = 1..4, inner products as (1, 1, out, in)
        dims = [1] * (4 - array.ndim) + list(array.shape)
        return b"".join(_int_field(i + 1, d) for i, d in enumerate(dims)) + data
    shape = _field(1, b"".join(_varint(d) for d in array.shape))  # BlobShape.dim, packed int64
    return _field(7, shape) + data


def _caffemodel(params: dict[str, list[np.ndarray]], v1: bool) -> bytes:
    layers = []
    for name, blobs in params.items():
        if v1:  # V1LayerParameter: name = 4, type = 5 (enum), blobs = 6; NetParameter.layers = 2
            kind = 4 if name.startswith("conv") else 14
            body = _field(4, name.encode()) + _int_field(5, kind) + b"".join(_field(6, _blob(b, True)) for b in blobs)
            layers.append(_field(2, body))
        else:  # LayerParameter: name = 1, type = 2 (string), blobs = 7; NetParameter.layer = 100
            kind = b"Convolution" if name.startswith("conv") else b"InnerProduct"
            body = _field(1, name.encode()) + _field(2, kind) + b"".join(_field(7, _blob(b, False)) for b in blobs)
            layers.append(_field(100, body))
    relu = _field(1, b"relu1") + _field(2, b"ReLU")  # a layer without blobs, skipped
    return _field(1, b"AlexNet") + (b"" if v1 else _field(100, relu)) + b"".join(layers)


def _random_params(seed: int = 0) -> dict[str, list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    params = {}
    for name, out, cin, k, *_ in CONVS:
        fan_in = cin * k * k
        params[name] = [rng.normal(0, (2 / fan_in) ** 0.5, (out, cin, k, k)), rng.normal(0, 0.1, out)]
    for name, out, fan_in in FCS:
        params[name] = [rng.normal(0, (2 / fan_in) ** 0.5, (out, fan_in)), rng.normal(0, 0.1, out)]
    return {k: [a.astype(np.float32) for a in v] for k, v in params.items()}


# --- Caffe's forward pass in NumPy (float64), from deploy.prototxt's definition ---
def _conv(x: np.ndarray, w: np.ndarray, b: np.ndarray, stride: int, pad: int, group: int) -> np.ndarray:
    x = np.pad(x, ((0, 0), (pad, pad), (pad, pad)))
    k = w.shape[-1]
    win = sliding_window_view(x, (k, k), axis=(1, 2))[:, ::stride, ::stride]  # (C, H', W', k, k)
    cin, cout = x.shape[0] // group, w.shape[0] // group
    outs = [
        np.einsum("chwij,ocij->ohw", win[g * cin : (g + 1) * cin], w[g * cout : (g + 1) * cout]) for g in range(group)
    ]
    return np.concatenate(outs) + b[:, None, None]


def _lrn_caffe(x: np.ndarray, n: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0) -> np.ndarray:
    sq = np.pad(x**2, ((n // 2, n // 2), (0, 0), (0, 0)))
    window = sum(sq[i : i + x.shape[0]] for i in range(n))  # across all channels, both towers
    return x / (k + alpha / n * window) ** beta


def _maxpool_ceil(x: np.ndarray, k: int = 3, s: int = 2) -> np.ndarray:
    h = -(-(x.shape[1] - k) // s) + 1  # Caffe rounds up
    x = np.pad(x, ((0, 0), (0, k), (0, k)), constant_values=-np.inf)
    win = sliding_window_view(x, (k, k), axis=(1, 2))[:, ::s, ::s][:, :h, :h]
    return win.max(axis=(-1, -2))


def caffe_forward(params: dict[str, list[np.ndarray]], rgb: np.ndarray) -> np.ndarray:
    """(227, 227, 3) uint8 RGB → fc8 outputs, as Caffe computes them for bvlc_alexnet."""
    x = rgb[..., ::-1].astype(np.float64).transpose(2, 0, 1) - np.array(MEAN_BGR)[:, None, None]  # BGR, CHW
    for name, _, _, _, stride, pad, group, lrn, pool in CONVS:
        w, b = (a.astype(np.float64) for a in params[name])
        x = np.maximum(_conv(x, w, b, stride, pad, group), 0)
        x = _lrn_caffe(x) if lrn else x
        x = _maxpool_ceil(x) if pool else x
    x = x.reshape(-1)
    for i, (name, *_) in enumerate(FCS):
        w, b = (a.astype(np.float64) for a in params[name])
        x = w @ x + b
        x = np.maximum(x, 0) if i < len(FCS) - 1 else x
    return x


@pytest.mark.parametrize("v1", [False, True], ids=["layer", "v1-layers"])
def test_converted_caffemodel_matches_numpy_caffe(tmp_path, v1):
    params = _random_params()
    path = tmp_path / "slim_alexnet.caffemodel"
    path.write_bytes(_caffemodel(params, v1))
    assert set(read_caffemodel(path)) == {n for n, *_ in CONVS} | {n for n, *_ in FCS}

    classes = [f"c{i}" for i in range(7)]
    trained = convert_caffe(path, classes=classes, mean_bgr=MEAN_BGR)
    assert trained.meta.model.overrides["lrn_across_towers"] is True
    assert trained.classes == classes

    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)  # stored 256 px, centre crop 227
    expected = caffe_forward(params, image[14:241, 14:241])
    batch = torch.from_numpy(image).permute(2, 0, 1).unsqueeze(0).contiguous()
    with torch.no_grad():
        got = trained.model(trained.preprocessing.transform().eval(batch)).double().numpy()[0]
    scale = np.abs(expected).max()
    assert scale > 1  # trained-scale logits, not a vanishing output that would match anything
    np.testing.assert_allclose(got, expected, atol=1e-4 * scale, rtol=0)
    assert got.argmax() == expected.argmax()


def test_conversion_needs_bvlc_layers_and_detects_mixups(tmp_path):
    params = _random_params()
    # Caffe reads BGR: swapping the converter's channel reversal off must show. Check it by the NumPy reference
    # with an RGB-unaware input: a grey image is colour-blind, a red one is not.
    path = tmp_path / "m.caffemodel"
    path.write_bytes(_caffemodel(params, v1=False))
    trained = convert_caffe(path, classes=[f"c{i}" for i in range(7)])
    red = np.zeros((227, 227, 3), np.uint8)
    red[..., 0] = 255
    want = caffe_forward(params, red)
    wrong = caffe_forward(params, red[..., ::-1])  # what a model that forgot BGR would compute
    prep = trained.preprocessing
    assert (prep.stored_size, prep.crop, prep.input_size, prep.pixel_scale) == (256, 227, 227, 255.0)
    batch = torch.from_numpy(np.ascontiguousarray(red)).permute(2, 0, 1).unsqueeze(0).contiguous()
    with torch.no_grad():
        got = trained.model(prep.transform().eval(batch)).double().numpy()[0]
    assert np.abs(got - want).max() < np.abs(got - wrong).max() / 10

    del params["fc7"]
    path.write_bytes(_caffemodel(params, v1=False))
    with pytest.raises(CorruptCheckpointError, match="fc7"):
        convert_caffe(path)
    path.write_bytes(b"\x08\x96\x01 this is not a protobuf \xff\xff\xff")
    with pytest.raises(CorruptCheckpointError):
        read_caffemodel(path)


def test_a_caffemodel_path_loads_like_any_weights(tmp_path):
    params = _random_params()
    path = tmp_path / "slim.caffemodel"
    path.write_bytes(_caffemodel(params, v1=True))
    trained = load_trained(path)  # what predict / eval / export / --weights do with a path
    assert trained.meta.model.variant == "alexnet_paper"
    assert trained.classes == [f"class_{i}" for i in range(7)]


def test_the_default_output_replaces_only_an_earlier_conversion(tmp_path, capsys):
    """`convert-caffe m.caffemodel` writes m.safetensors, a name the user did not give: a file of theirs there is
    refused before the work, an earlier conversion of the same model is written again, and `--out` names any."""
    from alexnet.cli import main

    path, default = tmp_path / "m.caffemodel", tmp_path / "m.safetensors"
    path.write_bytes(_caffemodel(_random_params(), v1=False))
    default.write_bytes(b"the user's own weights")
    assert main(["convert-caffe", str(path)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "is not a conversion of" in err
    assert default.read_bytes() == b"the user's own weights"
    other = tmp_path / "other.caffemodel"  # a conversion of another model is not this one's either
    other.write_bytes(path.read_bytes())
    assert main(["convert-caffe", str(other), "--out", str(default)]) == 0
    assert main(["convert-caffe", str(path)]) == 2
    default.unlink()
    for _ in range(2):  # the second replaces the first's own output
        assert main(["convert-caffe", str(path)]) == 0
        assert load_trained(default).meta.provenance["converted_from"] == "m.caffemodel"
    # Nor is the input itself written over, named as --out or found as the default (a file named .safetensors).
    before = path.read_bytes()
    assert main(["convert-caffe", str(path), "--out", str(path)]) == 2
    assert "is the Caffe model being converted" in capsys.readouterr().err and path.read_bytes() == before
