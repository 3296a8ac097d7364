"""The step loop: gradient accumulation equals one large batch, skips DDP's all-reduce inside, and lr scaling."""

import contextlib

import pytest
import torch
from torch import nn

import alexnet
from alexnet.config import OptimConfig
from alexnet.data.batch import BatchTransform
from alexnet.evaluation import StepSettings, evaluate
from alexnet.training.distributed import DistInfo
from alexnet.training.engine import train_one_epoch
from alexnet.training.optim import Schedule
from alexnet.training.strategy import Strategy


class FixedLoader:
    """The same batches every epoch, already decided (no shuffling)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch: int) -> None:
        self.images, self.labels, self.batch = images, labels, batch

    def __len__(self) -> int:
        return len(self.labels) // self.batch

    def batches(self, epoch: int, start: int = 0):
        for i in range(start, len(self)):
            yield self.images[i * self.batch : (i + 1) * self.batch], self.labels[i * self.batch : (i + 1) * self.batch]


class CountingNoSync(nn.Module):
    """A model with DDP's ``no_sync``, counting the batches run inside it."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.inside = model, 0

    def forward(self, x):
        return self.model(x)

    @contextlib.contextmanager
    def no_sync(self):
        self.inside += 1
        yield


def _step(batch: int, accumulate: int, wrap=lambda m: m):
    torch.manual_seed(0)
    model = alexnet.create_model("alexnet_small", num_classes=10, width=0.25, norm="none", dropout=0.0)
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (16,), generator=g)
    cfg = OptimConfig(lr=0.05, momentum=0.0, weight_decay=0.0, schedule="constant")
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr)
    transform = BatchTransform(input_size=32, crop=32, mean=torch.full((3, 1, 1), 0.5), flip=False)
    settings = StepSettings(torch.device("cpu"), "fp32", 0, 10, progress=False, accumulate=accumulate)
    loader = FixedLoader(images, labels, batch)
    wrapped = wrap(model)
    train_one_epoch(wrapped, loader, transform, optimizer, Schedule(optimizer, cfg, 1, len(loader)), settings, 0)
    return model, wrapped


def test_accumulating_two_half_batches_equals_one_batch():
    whole, _ = _step(16, 1)
    halves, counted = _step(8, 2, CountingNoSync)
    for (name, a), b in zip(whole.state_dict().items(), halves.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name
    assert counted.inside == 1  # the first half ran without DDP's all-reduce, the second synchronised
    single, _ = _step(8, 1)  # and it is not the same as two separate steps
    assert not torch.allclose(single.classifier[-1].weight, halves.classifier[-1].weight, atol=1e-6)


@pytest.mark.parametrize(("world", "mode", "expected"), [(1, "data", 0.02), (8, "data", 0.16), (2, "towers", 0.02)])
def test_linear_scaling_rule(world, mode, expected):
    cfg = OptimConfig(lr=0.01, lr_reference_batch=128)
    strategy = Strategy(mode, DistInfo(0, world))
    # 64 per process × 4 accumulated = 256 per process; towers see the same images on every rank
    assert strategy.scaled_lr(cfg, 256).lr == pytest.approx(expected)
    assert strategy.scaled_lr(OptimConfig(lr=0.01), 256).lr == 0.01  # off unless asked


def test_flip_tta_scores_the_mean_softmax_of_each_image_and_its_mirror():
    torch.manual_seed(0)
    model = alexnet.create_model("alexnet_small", num_classes=10, width=0.25).eval()
    g = torch.Generator().manual_seed(2)
    images = torch.randint(0, 256, (12, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (12,), generator=g)
    transform = BatchTransform(input_size=32, crop=32, mean=torch.full((3, 1, 1), 0.5), flip=False)
    settings = StepSettings(torch.device("cpu"), "fp32", 0, 10, progress=False)
    result = evaluate(model, FixedLoader(images, labels, 5), transform, settings, flip=True)  # 5 + 5, 2 left over
    x = transform.eval(images[:10])
    with torch.no_grad():
        probs = (model(x).softmax(1) + model(x.flip(3)).softmax(1)) / 2  # by hand, per image
    assert result.images == 10
    assert result.loss == pytest.approx(torch.nn.functional.nll_loss(probs.log(), labels[:10]).item(), rel=1e-5)
    assert result.acc1 == pytest.approx(100 * (probs.argmax(1) == labels[:10]).float().mean().item())
    plain = evaluate(model, FixedLoader(images, labels, 5), transform, settings)
    assert plain.loss != pytest.approx(result.loss, rel=1e-5)  # the mirror changed the scores
