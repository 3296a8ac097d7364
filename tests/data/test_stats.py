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
