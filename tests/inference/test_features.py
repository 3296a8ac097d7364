"""`write_features`: an array written as it is computed, whatever the number of files.

Before, every batch's rows were gathered and concatenated before `np.save`: the fc7 features of ImageNet's 1.28 M
training images (21 GB) asked twice that of memory, and the out-of-memory killer ended the command without a word.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from PIL import Image

import alexnet.inference.features as features
from alexnet.artifacts.loader import load_trained
from alexnet.inference.features import NoFeaturesError, features_of_files, write_features

from ..conftest import make_weights


def test_the_array_is_the_features_of_the_files_that_could_be_read(tmp_path):
    trained = load_trained(make_weights(tmp_path / "w.safetensors"))
    files = []
    for i in range(7):
        files.append(str(tmp_path / f"{i}.png"))
        Image.new("RGB", (40, 40), (30 * i, 100, 50)).save(files[-1])
    files[2:2] = [str(tmp_path / "missing.png")]
    (tmp_path / "text.png").write_text("not an image")
    files.append(str(tmp_path / "text.png"))
    whole, done, errors = features_of_files(trained, files, batch=3)
    # The header is written for as many rows as files (9, and rows as wide as 10^12), then for the 7 read: np.load,
    # memory-mapped or not, reads the rows the files gave, in their order.
    written = write_features(trained, files, tmp_path / "f.npy", batch=3)
    assert written.shape == whole.shape == (7, whole.shape[1]) and written.done == done and written.errors == errors
    assert len(errors) == 2 and "missing.png" in errors[0]
    np.testing.assert_array_equal(np.load(tmp_path / "f.npy"), whole)
    np.testing.assert_array_equal(np.load(tmp_path / "f.npy", mmap_mode="r"), whole)
    assert ((tmp_path / "f.npy").stat().st_size - len(whole.tobytes())) % 64 == 0  # the header keeps its alignment


def test_memory_holds_one_batch_whatever_the_number_of_rows(tmp_path, monkeypatch):
    def batches(trained, files, layer, batch, errors):  # 64 batches of 64 rows of 4096: 64 MB in all
        for i in range(64):
            yield np.full((64, 4096), i, np.float32), [f"{i}.{j}" for j in range(64)]

    monkeypatch.setattr(features, "_feature_batches", batches)
    tracemalloc.start()
    try:
        written = write_features(None, ["x"] * 4096, tmp_path / "f.npy")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert written.shape == (4096, 4096)
    assert peak < 8 * 2**20, f"{peak / 2**20:.0f} MiB held at once for 64 MiB of rows"  # a batch is 1 MiB
    array = np.load(tmp_path / "f.npy", mmap_mode="r")
    assert array.shape == (4096, 4096) and array[-1, 0] == 63 and array[64, 0] == 1


def test_no_readable_file_writes_nothing(tmp_path):
    trained = load_trained(make_weights(tmp_path / "w.safetensors"))
    out = tmp_path / "f.npy"
    out.write_bytes(b"an earlier result")
    with pytest.raises(NoFeaturesError, match="no image could be read") as refused:
        write_features(trained, [str(tmp_path / "missing.png")], out)
    assert out.read_bytes() == b"an earlier result" and "missing.png" in refused.value.errors[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.npy", "w.safetensors"]  # no temporary left


def test_a_header_written_into_more_room_than_it_needs_reads_back(tmp_path):
    """The room kept for the header is the most rows' and widest rows' (NumPy's own header holds 21 digits on the
    first axis, so the room is the same 128 bytes here): where it is more, spaces fill it and the length says so."""
    rows = np.arange(6, dtype="<f4").reshape(2, 3)
    for room in (128, 192, 256):
        header = features._npy_header((2, 3), room)
        assert len(header) == room
        (tmp_path / "a.npy").write_bytes(header + rows.tobytes())
        np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), rows)
