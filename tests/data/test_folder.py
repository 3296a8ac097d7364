"""Image folders: class order, validation labels, bad layouts, and the bad-file skip policy."""

import dataclasses
import os

import pytest
import torch

from alexnet.data.batch import stack_images
from alexnet.data.config import DataConfig
from alexnet.data.folder import FolderLoader, scan_folder
from alexnet.data.pipeline import build_data
from alexnet.errors import AlexNetError, DataNotFoundError
from tests.conftest import make_folder


def test_val_uses_training_class_order_even_with_a_missing_class(tmp_path):
    make_folder(tmp_path, classes=("ant", "bee", "cow"), per_class=2, splits=("train",))
    make_folder(tmp_path, classes=("bee", "cow"), per_class=2, splits=("val",))  # no "ant" in val
    (tmp_path / "train" / ".hidden").mkdir()
    (tmp_path / "train" / "ant" / "notes.txt").write_text("not an image")
    train, classes = scan_folder(tmp_path / "train")
    val, _ = scan_folder(tmp_path / "val", classes)
    assert classes == ["ant", "bee", "cow"]
    assert len(train) == 6
    assert {p.parent.name: y for p, y in val} == {"bee": 1, "cow": 2}  # not shifted to 0, 1


def test_folder_errors(tmp_path):
    make_folder(tmp_path, classes=("a", "b"), per_class=1, splits=("train", "val"))
    (tmp_path / "val" / "zebra").mkdir()
    (tmp_path / "val" / "zebra" / "0.png").write_bytes((tmp_path / "val" / "a" / "0.png").read_bytes())
    with pytest.raises(DataNotFoundError, match="classes the training split lacks"):
        scan_folder(tmp_path / "val", ["a", "b"])
    (tmp_path / "train" / "empty").mkdir()
    with pytest.raises(DataNotFoundError, match="has no images"):
        scan_folder(tmp_path / "train")
    with pytest.raises(DataNotFoundError, match="no class folders"):
        scan_folder(tmp_path / "train" / "a")
    with pytest.raises(DataNotFoundError, match="needs train/ and val/"):
        build_data(DataConfig(dataset="folder", data_dir=str(tmp_path / "nowhere")), 32, torch.device("cpu"))


def test_a_class_folder_whose_name_is_not_utf8_is_named_and_refused(tmp_path):
    """A class name is a label in checkpoints (JSON), reports and the service's answers: a folder name whose bytes
    are not UTF-8 (b"b\\xffd") is refused by name, with the byte shown, before any image is read (it crashed the
    report's plot with a traceback)."""
    make_folder(tmp_path, classes=("a", "b"), per_class=1, splits=("train",))
    os.rename(tmp_path / "train" / "b", os.fsencode(tmp_path / "train") + b"/b\xffd")
    with pytest.raises(DataNotFoundError, match=r"class folder .*/train/b\\xffd: its name is not UTF-8; rename it"):
        scan_folder(tmp_path / "train")
    image = os.fsencode(tmp_path / "train" / "a") + b"/\xfe.png"  # an image file's name may be anything
    os.rename(next((tmp_path / "train" / "a").iterdir()), image)
    os.rename(os.fsencode(tmp_path / "train") + b"/b\xffd", tmp_path / "train" / "b")
    samples, classes = scan_folder(tmp_path / "train")
    assert classes == ["a", "b"] and os.fsencode(samples[0][0]) == image


def test_bad_files_are_skipped_and_counted_then_stop_the_run(tmp_path, caplog):
    make_folder(tmp_path, per_class=10)
    (tmp_path / "train" / "cat" / "broken.jpg").write_bytes(b"this is not a jpeg")
    cfg = DataConfig(
        dataset="folder", data_dir=str(tmp_path), batch_size=31, workers=0, max_bad_fraction=0.05, in_memory_gb=0
    )
    data = build_data(cfg, 16, torch.device("cpu"))
    seen = sum(len(y) for _, y in data.train.batches(0))
    assert seen == 30 and data.train.bad == 1  # 31 files in one batch of 31, one of them bad
    assert "broken.jpg" in caplog.text
    (tmp_path / "train" / "dog" / "empty.png").write_bytes(b"")
    (tmp_path / "train" / "eel" / "text.png").write_bytes(b"hello")
    cfg.max_bad_fraction = 0.001
    data = build_data(cfg, 16, torch.device("cpu"))
    with pytest.raises(AlexNetError, match="failed to decode"):
        list(data.train.batches(0))


def test_imagenet_layout_uses_devkit_names(tmp_path):
    make_folder(tmp_path, classes=("n01440764", "n02012849", "n02013706"), per_class=2)
    wnid_to_names = {"n01440764": ("tench", "Tinca tinca"), "n02012849": ("crane",), "n02013706": ("crane",)}
    torch.save((wnid_to_names, []), tmp_path / "meta.bin")  # what torchvision's parse_devkit_archive writes
    data = build_data(DataConfig(dataset="imagenet", data_dir=str(tmp_path), workers=0), 16, torch.device("cpu"))
    assert data.classes == ["tench", "crane (n02012849)", "crane (n02013706)"]


def test_a_meta_bin_that_is_not_torchvisions_is_one_line(tmp_path):
    from alexnet.data.folder import imagenet_class_names

    wnids = ["n01440764"]
    (tmp_path / "meta.bin").write_text("root:x:0:0:root:/root:/bin/bash\n")  # the unpickler raises IndexError
    with pytest.raises(AlexNetError, match="not torchvision's ImageNet meta.bin"):
        imagenet_class_names(tmp_path, wnids)
    (tmp_path / "meta.bin").unlink()
    os.mkfifo(tmp_path / "meta.bin")  # the input guard's own message, not "not torchvision's"
    with pytest.raises(AlexNetError, match="not a regular file"):
        imagenet_class_names(tmp_path, wnids)


@pytest.mark.parametrize("hwc_memory", [True, False])
def test_stack_images_equals_torch_stack_in_channels_last_memory(hwc_memory):
    images = [torch.randint(0, 256, (3, 5, 7), dtype=torch.uint8) for _ in range(4)]
    if hwc_memory:  # what the decoders give
        images = [x.permute(1, 2, 0).contiguous().permute(2, 0, 1) for x in images]
    out = stack_images(images)
    assert torch.equal(out, torch.stack(images))
    assert out.is_contiguous(memory_format=torch.channels_last)


def test_small_folders_are_decoded_once_into_memory_skipping_bad_files(tmp_path, caplog):
    caplog.set_level("INFO")
    make_folder(tmp_path, per_class=10)
    cfg = DataConfig(dataset="folder", data_dir=str(tmp_path), batch_size=8, workers=0, max_bad_fraction=0.05)
    data = build_data(cfg, 16, torch.device("cpu"))
    assert data.train.split.images.shape == (30, 3, 16, 16) and len(data.val.split.labels) == 30
    assert "into memory" in caplog.text
    streamed = build_data(dataclasses.replace(cfg, in_memory_gb=0), 16, torch.device("cpu"))
    for (a, ya), (b, yb) in zip(data.train.batches(1), streamed.train.batches(1), strict=True):
        assert torch.equal(a, b) and torch.equal(ya, yb)  # the same images in the same order as streaming
    # Alternating flips are the in-memory loader's; the batch transform then flips no more. Streamed, they are refused.
    alternating = build_data(dataclasses.replace(cfg, alternate_flips=True), 16, torch.device("cpu"))
    assert alternating.train.alternate_flips and not alternating.train_transform.flip and data.train_transform.flip
    with pytest.raises(AlexNetError, match="in memory"):
        build_data(dataclasses.replace(cfg, in_memory_gb=0, alternate_flips=True), 16, torch.device("cpu"))
    assert "into memory" in caplog.text
    # A folder under data.in_memory_gb but over half the memory left (a container's limit) is streamed, said once;
    # it was kept in memory, and the run killed without a word.
    import alexnet.memory as memory

    caplog.clear()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(memory, "available", lambda: memory.Available(90_000, "available on this machine"))
        cramped = build_data(cfg, 16, torch.device("cpu"))  # 60 images of 768 bytes: 46 KB, over 45
        assert isinstance(cramped.train, FolderLoader) and "read from disk each epoch" in caplog.text
        with pytest.raises(AlexNetError, match="more than half the memory left"):
            build_data(dataclasses.replace(cfg, alternate_flips=True), 16, torch.device("cpu"))
        patch.setattr(memory, "available", lambda: memory.Available(93_000, "available on this machine"))
        assert not isinstance(build_data(cfg, 16, torch.device("cpu")).train, FolderLoader)
    (tmp_path / "train" / "cat" / "broken.jpg").write_bytes(b"this is not a jpeg")
    assert len(build_data(cfg, 16, torch.device("cpu")).train.split.labels) == 30
    assert "broken.jpg" in caplog.text
    (tmp_path / "train" / "dog" / "empty.png").write_bytes(b"")
    with pytest.raises(AlexNetError, match="failed to decode"):
        build_data(dataclasses.replace(cfg, max_bad_fraction=0.001), 16, torch.device("cpu"))


@pytest.mark.parametrize(
    "template",
    ["DataLoader worker (pid {}) is killed by signal: Killed.", "DataLoader worker (pid(s) {}) exited unexpectedly"],
)
def test_a_dead_worker_is_named_by_its_file(template):
    from types import SimpleNamespace

    from alexnet.data.folder import DecodeTracker, reporting_worker_crashes
    from alexnet.errors import DataWorkerError

    tracker = DecodeTracker(2)
    tracker.start(0, "/data/fine.jpg")
    tracker.start(1, "/data/poison.jpg")
    tracker.pids[0], tracker.pids[1] = 1111, 2222  # two live workers, as two processes would record themselves
    loader = SimpleNamespace(tracker=tracker)
    with (
        pytest.raises(DataWorkerError, match=r"while decoding /data/poison\.jpg; remove") as err,
        reporting_worker_crashes(loader),
    ):
        raise RuntimeError(template.format(2222))
    assert "fine.jpg" not in str(err.value)
    with pytest.raises(ValueError), reporting_worker_crashes(loader):
        raise ValueError("other errors pass through")


def test_check_present_names_a_missing_data_set_without_loading_it(tmp_path, monkeypatch):
    from alexnet.data import sources
    from alexnet.data.pipeline import check_present

    check_present(DataConfig(dataset="fake"))
    check_present(DataConfig(dataset="folder", data_dir=str(make_folder(tmp_path / "imgs"))))
    with pytest.raises(DataNotFoundError, match="needs train/ and val/"):
        check_present(DataConfig(dataset="folder", data_dir=str(tmp_path / "nowhere")))
    monkeypatch.setattr(sources, "DEBIAN_FASHION_MNIST", tmp_path / "no-debian-package")
    with pytest.raises(DataNotFoundError, match="fashion-mnist not found"):
        check_present(DataConfig(dataset="fashion-mnist", data_dir=str(tmp_path / "nowhere"), download=False))
    with pytest.raises(ValueError, match="unknown data set"):
        check_present(DataConfig(dataset="nope"))


def test_class_names_in_another_unicode_normalisation_are_said_to_be(tmp_path):
    """A training split written on macOS (folder names decomposed, NFD) beside a val split written elsewhere (NFC)
    was refused as 'has classes the training split lacks: ['café']', a name that prints as one the training
    split has."""
    import unicodedata

    from PIL import Image

    from alexnet.data.folder import scan_folder
    from alexnet.errors import DataNotFoundError

    for split, form in (("train", "NFD"), ("val", "NFC")):
        for name in ("café", "plain"):
            folder = tmp_path / split / unicodedata.normalize(form, name)
            folder.mkdir(parents=True)
            Image.new("RGB", (8, 8)).save(folder / "0.png")
    _, classes = scan_folder(tmp_path / "train")
    assert unicodedata.normalize("NFD", "café") in classes
    with pytest.raises(DataNotFoundError, match="another Unicode normalisation") as err:
        scan_folder(tmp_path / "val", classes)
    assert "plain" not in str(err.value)
