import torch

from alexnet.data.config import DataConfig
from alexnet.data.sources import fake_split
from alexnet.data.stats import dataset_stats


def test_stats_match_a_direct_computation():
    stats = dataset_stats(DataConfig(dataset="fake", batch_size=100), input_size=32)
    x = fake_split(train=True).images.double() / 255
    pixels = x.permute(1, 0, 2, 3).reshape(3, -1)
    assert torch.allclose(torch.tensor(stats["mean"], dtype=torch.float64), pixels.mean(1), atol=1e-5)
    assert torch.allclose(torch.tensor(stats["std"], dtype=torch.float64), pixels.std(1), atol=1e-4)
    cov = torch.cov(pixels)
    vec = torch.tensor(stats["pca_eigvec"], dtype=torch.float64)
    val = torch.tensor(stats["pca_eigval"], dtype=torch.float64)
    assert torch.allclose(cov @ vec, vec * val, atol=1e-4)  # columns are eigenvectors
    assert val[0] >= val[1] >= val[2] > 0


def test_large_images_are_measured_in_small_batches_and_chunks_to_the_same_figures(monkeypatch):
    """A batch of 256 images at 1,024 px was 6.4 GB in float64 (at 2,048 px on 36 images the command peaked at
    4.9 GB, 1.7 now): batches hold at most `BATCH_BYTES` of stored images and pixels turn float64 `CHUNK` at a
    time, which changes no figure; ``limit_batches`` still counts batches of the configured size."""
    from alexnet.data import stats as module

    batches = []
    real = module.build_data

    def build_data(cfg, *args):
        batches.append(cfg.batch_size)
        return real(cfg, *args)

    monkeypatch.setattr(module, "build_data", build_data)
    whole = dataset_stats(DataConfig(dataset="fake", batch_size=100), input_size=32)
    monkeypatch.setattr(module, "BATCH_BYTES", 7 * 3 * 256 * 256)  # 7 images of the folders' 256 px
    monkeypatch.setattr(module, "CHUNK", 1000)
    small = dataset_stats(DataConfig(dataset="fake", batch_size=100), input_size=32)
    assert batches == [100, 7] and small["images"] == whole["images"]
    for key in ("mean", "std", "pca_eigval"):
        assert torch.allclose(torch.tensor(small[key]), torch.tensor(whole[key]), atol=2e-6), key
    limited = dataset_stats(DataConfig(dataset="fake", batch_size=100), input_size=32, limit_batches=2)
    assert limited["images"] == 200
    # A resize given for a tensor data set, which stores its images at their own size, does not shrink the batch.
    dataset_stats(DataConfig(dataset="fake", batch_size=100, resize=8192), input_size=32, limit_batches=1)
    assert batches[-1] == 7
