"""bf16 copies of the weights: the kernel rounds as torch's fused SGD, training on copies equals autocast's training bit
for bit (steps, fit, resume), a copy follows its weight, and the copies apply only where that arithmetic holds."""

import logging

import pytest
import torch
import torch.nn.functional as F

from alexnet.artifacts.checkpoint import load_checkpoint
from alexnet.config import OptimConfig
from alexnet.models import create_model
from alexnet.training import bf16_copies
from alexnet.training.bf16_copies import Bf16Copies, applies
from alexnet.training.fit import fit
from alexnet.training.optim import build_optimizer
from tests.conftest import tiny_config
from tests.training.test_fit import _assert_same_state

CPU = torch.device("cpu")


@pytest.fixture
def kernel():
    if bf16_copies.kernel() is None:
        pytest.skip("the bf16-copy SGD kernel cannot be built here (no C++ compiler or ninja)")
    return bf16_copies.kernel()


@pytest.mark.parametrize(
    ("decay", "momentum", "nesterov", "first"),
    [(5e-4, 0.9, True, False), (5e-4, 0.9, False, False), (0.0, 0.9, False, True), (5e-4, 0.9, True, True),
     (5e-4, 0.0, False, False)],
)  # fmt: skip
def test_the_kernel_steps_as_torch_fused_sgd_bit_for_bit(kernel, decay, momentum, nesterov, first):
    """Weights and momentum equal torch's fused SGD's on the same (bf16) gradients; the copy is the new weight rounded
    to bf16 as ``Tensor.bfloat16`` rounds it; sizes of 16k values (the only ones it is given), over two threads."""
    torch.set_num_threads(2)
    torch.manual_seed(0)
    for n in (16, 48, 70_000):
        w, buf = torch.randn(n), torch.randn(n)
        grad = torch.randn(n).bfloat16()
        ours_w, ours_buf, copy = w.clone(), buf.clone(), torch.empty(n, dtype=torch.bfloat16)
        buffers = [ours_buf] if momentum else []
        kernel.step([ours_w], [grad], buffers, [copy], [first], 0.05, momentum, decay, nesterov)
        torch._fused_sgd_(
            [w], [grad.float()], [buf] if momentum else [], weight_decay=decay, momentum=momentum, lr=0.05,
            dampening=0.0, nesterov=nesterov, maximize=False, is_first_step=first,
        )  # fmt: skip
        assert torch.equal(ours_w, w), n
        assert not momentum or torch.equal(ours_buf, buf), n
        assert torch.equal(copy, w.bfloat16()), n


def _train(copies: bool, steps: int = 4) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    # alexnet_small (batch norm, dropout, two decay groups) for a few SGD steps under bf16 autocast, the learning rate
    # changing every step (PaperSGD rescales its buffers then).
    torch.manual_seed(0)
    model = create_model("alexnet_small", num_classes=10, width=0.25).to(memory_format=torch.channels_last)
    cfg = OptimConfig(name="sgd", lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    optimizer = build_optimizer(model, cfg)
    run = model
    if copies:
        run = Bf16Copies(model)
        optimizer.use_copies(run.copies())
    x = torch.randn(16, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (16,))
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = 0.05 * (step + 1)
        with torch.autocast("cpu", torch.bfloat16):
            loss = F.cross_entropy(run(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return model, optimizer


def test_training_on_copies_equals_autocast_bit_for_bit(kernel):
    cast, cast_opt = _train(copies=False)
    copied, copied_opt = _train(copies=True)
    for (name, a), b in zip(cast.state_dict().items(), copied.state_dict().values()):
        assert torch.equal(a, b), name
    a, b = cast_opt.state_dict()["state"], copied_opt.state_dict()["state"]
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key]["momentum_buffer"], b[key]["momentum_buffer"]), key
    assert all(p.dtype == torch.float32 for p in copied.parameters())  # the model's own weights stay fp32


def test_a_copy_follows_its_weight_changed_in_place(kernel):
    """A weight loaded or edited in place (version moved on) is copied again before the next forward."""
    torch.manual_seed(0)
    model = create_model("alexnet_small", num_classes=10, width=0.25).eval()
    wrapped = Bf16Copies(model)
    x = torch.randn(2, 3, 32, 32)
    other = create_model("alexnet_small", num_classes=10, width=0.25).state_dict()

    def same() -> bool:  # one autocast region each: autocast caches its casts of a weight until the region ends
        with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
            return torch.equal(wrapped(x), model(x))

    model.load_state_dict(other)
    assert same()
    with torch.no_grad():
        model.features[0].weight.mul_(2)
    assert same()


def test_copies_apply_only_where_the_arithmetic_is_autocasts(kernel):
    assert applies(CPU, "bf16")
    assert not applies(CPU, "fp32")
    assert not applies(torch.device("cuda"), "bf16")
    assert not applies(CPU, "bf16", accumulate=2)  # the copies' gradients would add up in bf16
    assert not applies(CPU, "bf16", clip=1.0)
    assert not applies(CPU, "bf16", compile=True)
    assert not applies(CPU, "bf16", distributed=True)


def test_a_bf16_run_trains_and_resumes_on_copies_as_autocast_does(tmp_path, kernel, caplog):
    """fit: the same checkpoint with and without copies, and a run resumed on copies (its copies made from the
    restored weights) equals the straight run."""
    bf16 = ('train.precision="bf16"', "optim.momentum=0.9", "optim.weight_decay=5e-4", "train.limit_train_batches=6")
    with caplog.at_level(logging.INFO, logger="alexnet"):
        fit(tiny_config(tmp_path / "copies", *bf16))
    assert "bf16 copies" in caplog.text
    fit(tiny_config(tmp_path / "cast", *bf16, "train.bf16_copies=false"))
    straight = load_checkpoint(tmp_path / "copies" / "last.pt")
    _assert_same_state(load_checkpoint(tmp_path / "cast" / "last.pt"), straight)
    fit(tiny_config(tmp_path / "resumed", *bf16, "train.epochs=1"))
    fit(tiny_config(tmp_path / "resumed", *bf16, 'train.resume="auto"'))
    _assert_same_state(straight, load_checkpoint(tmp_path / "resumed" / "last.pt"))
