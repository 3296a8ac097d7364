"""Image-folder data sets (ImageNet, a folder of JPEGs): scanning, per-sample decoding in workers, loading.

Workers only decode and resize (no randomness), so any number of workers yields the same batches; the random
crops, flips and colour noise run afterwards on whole batches (`alexnet.data.batch`).
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import logging
import multiprocessing
import os
import re
import signal
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from ..errors import AlexNetError, DataNotFoundError, DataWorkerError, InvalidImageError
from ..files import MB, read_input
from .batch import epoch_order, shard_size, stack_images
from .decode import decode_stored, is_image_file
from .sources import TensorSplit

log = logging.getLogger(__name__)


def list_classes(split_dir: Path) -> list[str]:
    """The sorted class-folder names of a split (one directory listing; no files are read).

    Raises:
        DataNotFoundError: missing directory or no class folders.
    """
    if not split_dir.is_dir():
        raise DataNotFoundError(f"{split_dir} is not a directory")
    found = sorted(d.name for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith("."))
    for name in found:
        try:
            name.encode()
        except UnicodeEncodeError:  # bytes the file system gave that are not UTF-8 (os.listdir's surrogates)
            shown = os.fsencode(split_dir / name).decode(errors="backslashreplace")  # the byte as \xff
            raise DataNotFoundError(
                f"class folder {shown}: its name is not UTF-8; rename it (class names are labels in checkpoints, "
                "reports and the service's answers)"
            ) from None
    if not found:
        raise DataNotFoundError(
            f"{split_dir} has no class folders; expected {split_dir}/<class>/<image> "
            "(an ImageNet val folder must be sorted into class folders first)"
        )
    return found


def _revisits(folder: Path, visited: set[Path]) -> bool:
    """``folder`` was read already, or holds a folder that was (a link to the split, or to the data root)."""
    return any(v == folder or v.is_relative_to(folder) for v in visited)


def _image_files(folder: Path, root: Path, visited: set[Path]) -> list[Path]:
    """The image files under ``folder``, sorted, following no symbolic link that leaves ``root`` or leads to a folder
    already visited (a class folder linked to its parent would otherwise repeat every image under a new label).

    Raises:
        DataNotFoundError: ``folder`` itself is such a link.
    """
    real = folder.resolve()
    if _revisits(real, visited) or not real.is_relative_to(root):
        where = "revisits a folder already read" if real.is_relative_to(root) else f"leaves the data root {root}"
        raise DataNotFoundError(f"class folder {folder} is a symbolic link to {real}, which {where}: refused")
    files = []
    for current, dirs, names in os.walk(real, followlinks=True):
        here = Path(current).resolve()
        if _revisits(here, visited) or not here.is_relative_to(root):
            dirs[:] = []  # a link out of the root or back to a folder seen: not followed
            continue
        visited.add(here)
        for name in names:
            path = Path(current) / name
            if is_image_file(path) and path.resolve().is_relative_to(root) and path.is_file():
                files.append(folder / Path(current).relative_to(real) / name)  # the path as the user laid it out
    return sorted(files)


def scan_folder(split_dir: Path, classes: list[str] | None = None) -> tuple[list[tuple[Path, int]], list[str]]:
    """(path, label) samples of a class-folder tree, and the class list.

    Args:
        split_dir: a directory with one subdirectory per class.
        classes: the training split's classes; a validation split must use them so labels keep their meaning.

    Raises:
        DataNotFoundError: missing directory, no class folders, an empty class, or a class training lacks.
    """
    found = list_classes(split_dir)
    if classes is None:
        classes = found
    unknown = sorted(set(found) - set(classes))
    if unknown:
        # The same letters in another Unicode normalisation (macOS writes names decomposed, NFD; most tools
        # composed, NFC) look identical when printed: say so, or the message shows a name the training split has.
        composed = {unicodedata.normalize("NFC", c) for c in classes}
        twins = [u for u in unknown if unicodedata.normalize("NFC", u) in composed]
        if twins:
            raise DataNotFoundError(
                f"{split_dir} names classes {twins[:5]} as the training split does but in another Unicode "
                "normalisation (one split written on macOS, NFD, the other elsewhere, NFC): rename one split's "
                "folders to the other's form (convmv -f utf8 -t utf8 --nfc -r --notest does it)"
            )
        raise DataNotFoundError(f"{split_dir} has classes the training split lacks: {unknown[:5]}")
    index = {c: i for i, c in enumerate(classes)}
    samples = []
    root = split_dir.resolve().parent  # the data root, holding train/ and val/ or test/
    visited = {split_dir.resolve()}  # a class linked to its split (or to another class) would count images twice
    for name in found:
        files = _image_files(split_dir / name, root, visited)
        if not files:
            raise DataNotFoundError(f"class folder {split_dir / name} has no images")
        samples += [(p, index[name]) for p in files]
    return samples, classes


def find_splits(root: Path) -> tuple[Path, Path]:
    """``root/train`` and the first of ``root/val``, ``root/test``."""
    train = root / "train"
    for name in ("val", "test"):
        if (root / name).is_dir() and train.is_dir():
            return train, root / name
    raise DataNotFoundError(f"{root.resolve()} needs train/ and val/ (or test/) class folders")


def prepare_imagenet(root: Path) -> None:
    """Use torchvision's ImageNet tools where the official archives are present: parse the devkit into
    ``meta.bin`` and sort a flat ``val/`` (or the val archive) into class folders, as ``valprep.sh`` does."""
    from torchvision.datasets import imagenet

    if not (root / "meta.bin").is_file() and (root / imagenet.ARCHIVE_META["devkit"][0]).is_file():
        log.info("parsing the ImageNet devkit in %s", root)
        imagenet.parse_devkit_archive(str(root))
    val = root / "val"
    flat = val.is_dir() and not any(d.is_dir() for d in val.iterdir())
    if (flat or not val.exists()) and (root / imagenet.ARCHIVE_META["val"][0]).is_file():
        if flat:
            raise DataNotFoundError(
                f"{val} is flat; move it away so the val archive can be extracted into class folders"
            )
        log.info("extracting the ImageNet val archive into class folders")
        imagenet.parse_val_archive(str(root))


def imagenet_class_names(root: Path, wnids: list[str]) -> list[str]:
    """Human-readable names for WordNet ids (``n01440764`` → ``tench``) from torchvision's ``meta.bin``, when present.

    A name shared by two ids (there are two "crane"s) keeps its id: ``crane (n02012849)``.
    """
    meta = root / "meta.bin"
    if not meta.exists():
        return wnids
    try:
        data = io.BytesIO(read_input(meta, 16 * MB, "ImageNet meta.bin"))  # torchvision's is 2.5 MB
        wnid_to_names = torch.load(data, weights_only=True)[0]
        names = [str(wnid_to_names.get(w, (w,))[0]) for w in wnids]
    except AlexNetError:  # the input guard's own line: a FIFO, a directory, too large
        raise
    except Exception as err:  # bytes that are no pickle can raise nearly anything from the unpickler
        raise DataNotFoundError(
            f"{meta} is not torchvision's ImageNet meta.bin ({type(err).__name__}): delete it"
        ) from None
    return [f"{n} ({w})" if names.count(n) > 1 else n for n, w in zip(names, wnids)]


class DecodeTracker:
    """Which file each worker process is decoding, in shared memory, so a worker that dies (a decoder crash, the
    OOM killer) can be reported by the file it died on. One slot per worker: its pid and the path, cleared after."""

    SLOT = 4096  # bytes of path per worker

    def __init__(self, workers: int) -> None:
        self.pids = multiprocessing.RawArray(ctypes.c_int64, max(workers, 1))
        self.paths = multiprocessing.RawArray(ctypes.c_char, self.SLOT * max(workers, 1))

    def start(self, worker: int, path: str) -> None:
        data = os.fsencode(path)[: self.SLOT - 1]
        self.paths[worker * self.SLOT : worker * self.SLOT + len(data) + 1] = data + b"\0"
        self.pids[worker] = os.getpid()

    def done(self, worker: int) -> None:
        self.pids[worker] = 0

    def active(self, pids: set[int] | None = None) -> list[str]:
        """Paths being decoded now (by the given worker pids, if any of them is tracked)."""
        slots = [i for i, pid in enumerate(self.pids) if pid]
        if pids and any(self.pids[i] in pids for i in slots):
            slots = [i for i in slots if self.pids[i] in pids]
        raw = bytes(self.paths)
        return [os.fsdecode(raw[i * self.SLOT : (i + 1) * self.SLOT].split(b"\0", 1)[0]) for i in slots]


@contextlib.contextmanager
def reporting_worker_crashes(*loaders: object) -> Iterator[None]:
    """Turn PyTorch's "DataLoader worker (pid N) exited unexpectedly / is killed by signal" RuntimeError into a
    `DataWorkerError` naming the file that worker was decoding.

    Around the whole loop, not just the loader: PyTorch's SIGCHLD handler raises that error wherever the main
    thread happens to be (often in the model's forward), so only an outer frame sees every case.
    """
    try:
        yield
    except RuntimeError as err:
        message = str(err)
        if "DataLoader worker" not in message:
            raise
        # "(pid 123)" when the SIGCHLD handler saw it, "(pid(s) 123, 456)" when the loader's watchdog did
        match = re.search(r"\(pid(?:\(s\))? ([\d, ]+)\)", message)
        pids = {int(p) for p in re.findall(r"\d+", match.group(1))} if match else set()
        trackers = [t for t in (getattr(loader, "tracker", None) for loader in loaders) if t is not None]
        files = [f for t in trackers for f in t.active(pids)]
        where = f"while decoding {', '.join(files)}" if files else "(no file was being decoded)"
        raise DataWorkerError(f"{message.rstrip('. ')} {where}; remove or re-encode it, or check memory") from err


def _ignore_sigint(_worker: int) -> None:
    """Ctrl-C reaches the whole process group: workers leave it to the main process, which saves and stops."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class FolderDataset(Dataset):
    """Decodes one file to a uint8 (3, S, S) tensor: shorter side resized to S, then the central S×S (§2).

    A file that fails to decode gives ``None`` (counted and skipped by `collate_skip`). With a ``tracker``, each
    worker records the file it is decoding (see `DecodeTracker`).
    """

    def __init__(self, samples: list[tuple[Path, int]], size: int) -> None:
        self.samples, self.size = samples, size
        self.tracker: DecodeTracker | None = None

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int] | tuple[None, str]:
        path, label = self.samples[i]
        worker = torch.utils.data.get_worker_info()
        if self.tracker is not None and worker is not None:
            self.tracker.start(worker.id, str(path))
        try:
            img = decode_stored(path, self.size)
        except InvalidImageError as err:
            return None, str(err)
        finally:
            if self.tracker is not None and worker is not None:
                self.tracker.done(worker.id)
        return img, label


def collate_skip(batch: list) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    good = [(x, y) for x, y in batch if x is not None]
    errors = [y for x, y in batch if x is None]
    if not good:
        return torch.empty(0, 3, 1, 1, dtype=torch.uint8), torch.empty(0, dtype=torch.int64), errors
    return stack_images([x for x, _ in good]), torch.tensor([y for _, y in good]), errors


@dataclass
class FolderLoader:
    """Epoch-seeded batches of a folder data set, decoded by ``workers`` processes.

    ``batches(epoch, start)`` skips the first ``start`` batches, which is how a run resumes mid-epoch.
    """

    dataset: FolderDataset
    batch_size: int
    shuffle: bool
    seed: int = 0
    workers: int = 2
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    max_bad_fraction: float = 0.01
    drop_last: bool = False
    rank: int = 0
    world: int = 1
    bad: int = 0
    seen: int = 0

    @property
    def tracker(self) -> DecodeTracker | None:
        return self.dataset.tracker

    def __len__(self) -> int:
        n = shard_size(len(self.dataset), self.rank, self.world, self.drop_last)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    @property
    def largest_batch(self) -> int:
        """The most images one batch holds."""
        return min(self.batch_size, shard_size(len(self.dataset), self.rank, self.world, self.drop_last))

    def batches(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.dataset)
        order = epoch_order(n, epoch, self.shuffle, self.seed, self.rank, self.world, self.drop_last).tolist()
        chunks = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)][: len(self)]
        if self.workers:
            self.dataset.tracker = DecodeTracker(self.workers)  # before the workers fork, which inherit it
        loader = DataLoader(
            self.dataset,
            batch_sampler=chunks[start:],
            num_workers=self.workers,
            collate_fn=collate_skip,
            pin_memory=self.device.type == "cuda",
            # Workers draw nothing at random; a private generator keeps the loader from consuming the global RNG
            # (model init, dropout), so streaming a folder and holding it in memory train identically.
            generator=torch.Generator().manual_seed(0),
            worker_init_fn=_ignore_sigint,
        )
        for x, y, errors in loader:
            self.seen += len(y) + len(errors)
            for message in errors:
                self.bad += 1
                log.warning("skipped %s", message)
            if self.bad > self.max_bad_fraction * max(self.seen, 100):
                raise AlexNetError(
                    f"{self.bad} of {self.seen} images failed to decode (limit {self.max_bad_fraction:.1%}); "
                    "check the data set"
                )
            if len(y):
                yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)


def decode_split(
    samples: list[tuple[Path, int]], classes: list[str], size: int, workers: int, max_bad_fraction: float
) -> TensorSplit:
    """Decode a whole folder split once into memory: (N, 3, size, size) uint8 in channels-last memory.

    Files that fail to decode are skipped and counted, with the same limit as training (`FolderLoader`).
    """
    loader = FolderLoader(FolderDataset(samples, size), 256, False, workers=workers, max_bad_fraction=max_bad_fraction)
    images = torch.empty(len(samples), size, size, 3, dtype=torch.uint8).permute(0, 3, 1, 2)
    labels = torch.empty(len(samples), dtype=torch.int64)
    n = 0
    with reporting_worker_crashes(loader):
        for x, y in loader.batches(0):
            images[n : n + len(y)], labels[n : n + len(y)] = x, y
            n += len(y)
    return TensorSplit(images[:n], labels[:n], classes)
