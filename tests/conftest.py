"""Shared fixtures: a real Fashion-MNIST excerpt, tiny image folders, quiet configs."""

import os
from pathlib import Path

import pytest
import torch
from PIL import Image

from alexnet.config import load_config

FIXTURES = Path(__file__).parent / "fixtures"


def pytest_configure(config):
    """Compiled int8 programs (`alexnet.artifacts.program_cache`) go to one directory of this run, shared by the
    xdist workers and the commands they start (which inherit the variable), not to the user's cache."""
    if "ALEXNET_PROGRAM_CACHE" not in os.environ:
        import tempfile

        config._program_cache = tempfile.mkdtemp(prefix="alexnet-test-programs-")
        os.environ["ALEXNET_PROGRAM_CACHE"] = config._program_cache


def pytest_unconfigure(config):
    made = getattr(config, "_program_cache", None)
    if made:
        import shutil

        shutil.rmtree(made, ignore_errors=True)
        del os.environ["ALEXNET_PROGRAM_CACHE"]


def pytest_collection_modifyitems(config, items):
    """GPU tests run only where CUDA devices are (each says how many it needs with its own skip)."""
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="no CUDA device here")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


def _threads() -> int:
    # Tests run many tiny models; two threads per process keep them from oversubscribing the machine, and under
    # pytest-xdist (`make test` runs two workers) each worker takes its share of the cores.
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1  # not macOS
    return max(1, min(2, cores // workers))


THREADS = _threads()
if THREADS < 2:
    # A test's child processes (the CLI, torchrun's ranks) then compute with as many threads as the test itself:
    # tests compare their results with an in-process run bitwise, and sums split over more threads round otherwise.
    os.environ["OMP_NUM_THREADS"] = str(THREADS)


# Set now, and again around every test: fixtures of a module or session scope (a reference run trained in this
# process, compared bitwise with a child's) are made before a test's own fixtures, so they ran with torch's default
# threads (2) where the children had OMP_NUM_THREADS=1, and failed when they came first in a worker.
torch.set_num_threads(THREADS)


@pytest.fixture(autouse=True)
def _small_threads():
    torch.set_num_threads(THREADS)
    yield
    torch.set_num_threads(THREADS)


@pytest.fixture
def fashion_dir() -> str:
    return str(FIXTURES)


def make_folder(root: Path, classes=("cat", "dog", "eel"), per_class=6, size=20, splits=("train", "val")) -> Path:
    """A class-folder tree of small PNGs whose colour depends on the class (learnable)."""
    g = torch.Generator().manual_seed(0)
    for split in splits:
        for c, name in enumerate(classes):
            d = root / split / name
            d.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                base = torch.tensor([80 * c, 255 - 80 * c, 120]).view(3, 1, 1)
                x = (base + torch.randint(-40, 40, (3, size, size), generator=g)).clamp(0, 255).byte()
                Image.fromarray(x.permute(1, 2, 0).numpy()).save(d / f"{i}.png")
    return root


@pytest.fixture
def image_folder(tmp_path) -> Path:
    return make_folder(tmp_path / "images")


def tiny_config(out: Path, *overrides: str, recipe: str | None = None):
    """A seconds-long CPU config: half-width alexnet_small on fake data, no progress bars."""
    base = [
        'model.name="alexnet_small"',
        "model.overrides.width=0.25",
        'data.dataset="fake"',
        "data.batch_size=32",
        "data.eval_batch_size=64",
        "data.pad=2",
        "data.pca_std=0.1",
        "optim.lr=0.02",
        'optim.schedule="constant"',
        "train.epochs=2",
        "train.progress=false",
        'train.precision="fp32"',
        'train.device="cpu"',  # the tests mean the CPU (bitwise resume): a CUDA runner would pick its GPU
        f'train.out="{out}"',
    ]
    return load_config(recipe, base + list(overrides))


def make_weights(path: Path, name: str = "alexnet_small", num_classes: int = 4, in_channels: int = 3, **overrides):
    """Release weights of a randomly initialised model with realistic metadata."""
    import alexnet
    from alexnet.artifacts.checkpoint import save_weights

    torch.manual_seed(0)
    overrides = {"width": 0.25, **overrides}
    model = alexnet.create_model(name, num_classes=num_classes, in_channels=in_channels, **overrides)
    size = model.spec.input_size
    data = {
        "dataset": "fake",
        "mean": [0.5] * in_channels,
        "std": [0.25] * in_channels,
        "stored_size": size,
        "crop": size,
        "input_size": size,
        "pad": 0,
        "pixel_scale": 1.0,
        "mean_image": False,
        "resize": None,
    }
    classes = [f"label_{i}" for i in range(num_classes)]
    save_weights(model, path, {"model": model.config, "classes": classes, "data": data, "metrics": {}})
    return path


@pytest.fixture
def weights(tmp_path) -> Path:
    return make_weights(tmp_path / "w.safetensors")
