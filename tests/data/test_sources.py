"""The tensor data sets' files: MNIST-format IDX files read whole or refused by name (a download that stopped, a
full disk, a damaged or renamed file), never a traceback."""

from __future__ import annotations

import gzip
import logging
import shutil
from pathlib import Path

import pytest

from alexnet.cli import main
from alexnet.data.sources import load_tensor_split
from alexnet.errors import DataNotFoundError

FIXTURE = Path(__file__).parent.parent / "fixtures" / "fashion-mnist"
IMAGES = "train-images-idx3-ubyte.gz"


@pytest.fixture
def copy(tmp_path) -> Path:
    for path in FIXTURE.glob("*.gz"):
        shutil.copy(path, tmp_path / path.name)
    return tmp_path


def _damage(path: Path, how: str) -> None:
    data = gzip.decompress(path.read_bytes())
    if how == "cut short":  # a download or a copy that stopped
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif how == "not gzip":
        path.write_bytes(b"<html>503 Service Unavailable</html>")
    elif how == "one byte flipped":  # in the compressed stream: zlib's or gzip's CRC check tells
        packed = bytearray(gzip.compress(data))
        packed[len(packed) // 2] ^= 0xFF
        path.write_bytes(bytes(packed))
    elif how == "data cut short":  # whole gzip, shorter content than the header declares
        path.write_bytes(gzip.compress(data[: len(data) // 2]))
    elif how == "more than declared":
        path.write_bytes(gzip.compress(data + b"\0" * 100))
    elif how == "a header declaring 10^18 bytes":
        path.write_bytes(gzip.compress(b"\0\0\x08\x03" + (10**6).to_bytes(4, "big") * 3))
    elif how == "not IDX":
        path.write_bytes(gzip.compress(b"PK\x03\x04 a zip, say"))
    elif how == "the test split's images":
        shutil.copy(FIXTURE / "t10k-images-idx3-ubyte.gz", path)
    elif how == "the labels":
        shutil.copy(FIXTURE / "train-labels-idx1-ubyte.gz", path)


def test_the_fixture_reads_whole(copy):
    split = load_tensor_split("fashion-mnist", str(copy), train=True, download=False)
    assert tuple(split.images.shape) == (2000, 1, 28, 28) and tuple(split.labels.shape) == (2000,)


@pytest.mark.parametrize(
    "how, says",
    [
        ("cut short", "Compressed file ended before the end-of-stream marker"),
        ("not gzip", "Not a gzipped file"),
        ("one byte flipped", "cannot be read"),
        ("data cut short", "holds 783,992 of the 1,568,000 bytes its header declares [2000, 28, 28]"),
        ("more than declared", "holds more than 1,568,000 bytes"),
        ("a header declaring 10^18 bytes", "declares [1000000, 1000000, 1000000] bytes"),
        ("not IDX", "is not an MNIST-format IDX file"),
        ("the test split's images", "holds 500 images of (28, 28) and"),
        ("the labels", "holds 2,000 images of ()"),
    ],
)
def test_a_damaged_file_is_named_with_the_way_out(copy, how, says):
    """A truncated .gz (a killed download) ended training in gzip's EOFError traceback; a file of the wrong shape in
    numpy's reshape error, or, two data sets mixed, in a split of 500 images and 2,000 labels."""
    _damage(copy / IMAGES, how)
    with pytest.raises(DataNotFoundError) as err:
        load_tensor_split("fashion-mnist", str(copy), train=True, download=False)
    assert says in str(err.value) and str(copy / IMAGES) in str(err.value), str(err.value)


def test_through_the_cli_it_is_one_line(copy, tmp_path, capsys):
    _damage(copy / IMAGES, "cut short")
    out = tmp_path / "run"
    argv = ["train", "--dataset", "fashion-mnist", "--data-dir", str(copy), "--out", str(out), "--epochs", "1"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "delete it to download it again" in err and not out.exists(), err


def test_a_data_dir_given_with_the_fake_data_set_is_said_to_be_unread(tmp_path, caplog):
    """`--dataset fake --data-dir DIR` trains on generated images and never looks at DIR: said once (a warning, shown
    at the default level), not refused, as a dry run of a real command line with its data swapped is fine."""
    from alexnet.data.sources import load_tensor_split

    with caplog.at_level(logging.WARNING, logger="alexnet"):
        for train in (True, False):
            load_tensor_split("fake", str(tmp_path), train=train)
        load_tensor_split("fake", None, train=True)
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert said == [f"the fake data set is generated and reads no files: {tmp_path} is not read"]


def test_a_data_dir_without_fashion_mnist_says_it_reads_the_system_copy(tmp_path, monkeypatch, caplog):
    """Fashion-MNIST is read from Debian's package where the data directory holds none: said at INFO, as a
    mistyped --data-dir trained on the system's copy without a word."""
    from alexnet.data import sources

    fixture = Path(__file__).parents[1] / "fixtures" / "fashion-mnist"
    monkeypatch.setattr(sources, "DEBIAN_FASHION_MNIST", fixture)
    with caplog.at_level(logging.INFO, logger="alexnet"):
        split = sources.load_tensor_split("fashion-mnist", str(tmp_path / "typo"), train=False, download=False)
    assert len(split.labels) > 0
    assert f"reading Debian's copy in {fixture} (none under {(tmp_path / 'typo').resolve()})" in caplog.text
    caplog.clear()
    shutil.copytree(fixture, tmp_path / "mine" / "FashionMNIST" / "raw")
    with caplog.at_level(logging.INFO, logger="alexnet"):
        sources.load_tensor_split("fashion-mnist", str(tmp_path / "mine"), train=False, download=False)
    assert "Debian" not in caplog.text


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_a_failed_download_is_one_line_and_leaves_no_folders(name, tmp_path, monkeypatch):
    """torchvision's download error lists each mirror it tried on a line of its own; the refusal is one line
    (the CLI would escape the newlines into ``\\x0a``). torchvision makes the data's folders before it downloads:
    offline, a mistyped --data-dir was left behind as a tree of empty folders; a folder that was there stays."""
    import torchvision

    typo = tmp_path / "dat" / "a"

    def offline(root, train, download=False):
        if not download:  # CIFAR's first look, without downloading: nothing there
            raise RuntimeError("Dataset not found or corrupted.")
        (Path(root, "MNIST", "raw") if name == "mnist" else Path(root)).mkdir(parents=True, exist_ok=True)  # as theirs
        raise RuntimeError("Error downloading x.gz:\nTried https://a/, got:\n<urlopen error>\nTried http://b/, got:\n")

    monkeypatch.setattr(torchvision.datasets, "MNIST" if name == "mnist" else "CIFAR10", offline)
    with pytest.raises(DataNotFoundError) as err:
        load_tensor_split(name, str(typo), train=True, download=True)
    assert list(tmp_path.iterdir()) == []  # dat/ and all below it made by the attempt: gone
    (tmp_path / "mine").mkdir()
    with pytest.raises(DataNotFoundError):
        load_tensor_split(name, str(tmp_path / "mine"), train=True, download=True)
    assert (tmp_path / "mine").is_dir()
    message = str(err.value)
    assert "\n" not in message and "(download failed: Error downloading x.gz: Tried https://a/, got: <url" in message
