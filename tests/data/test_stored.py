"""stored_split: one way to read a split of either kind as stored images, with the three ways to choose a subset."""

from __future__ import annotations

import pytest
import torch

from alexnet.data.stored import stored_split
from tests.conftest import make_folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("folder"), classes=("cat", "dog", "eel"), per_class=4)


def test_a_folder_split_whole_and_spread(folder):
    whole = stored_split("folder", str(folder), train=True, size=16)
    assert whole.images.shape == (12, 3, 16, 16) and whole.images.dtype == torch.uint8
    assert whole.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4 and whole.classes == ["cat", "dog", "eel"]
    spread = stored_split("folder", str(folder), train=False, size=16, limit=3, pick="spread")
    assert spread.labels.tolist() == [0, 1, 2]  # every class represented
    assert spread.images[1, 1].float().mean() > 150  # dog: green-heavy


def test_random_picks_are_seeded_and_first_is_first(folder):
    a = stored_split("folder", str(folder), train=True, size=16, limit=5, pick="random", seed=3)
    b = stored_split("folder", str(folder), train=True, size=16, limit=5, pick="random", seed=3)
    c = stored_split("folder", str(folder), train=True, size=16, limit=5, pick="random", seed=4)
    assert torch.equal(a.images, b.images) and a.labels.tolist() == b.labels.tolist()
    assert a.labels.tolist() != c.labels.tolist() or not torch.equal(a.images, c.images)
    first = stored_split("folder", str(folder), train=True, size=16, limit=2)
    assert first.labels.tolist() == [0, 0]


def test_a_tensor_data_set_is_cut_the_same_way(fashion_dir):
    split = stored_split("fashion-mnist", fashion_dir, train=False, size=28, limit=7)
    assert split.images.shape == (7, 1, 28, 28) and len(split.labels) == 7
