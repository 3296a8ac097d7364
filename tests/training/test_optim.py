import pytest
import torch

from alexnet.config import OptimConfig
from alexnet.models import create_model
from alexnet.training import optim
from alexnet.training.optim import PaperSGD, Schedule, build_optimizer, can_fuse


def test_paper_sgd_follows_the_paper_rule_across_lr_drops():
    """v ← 0.9v − 0.0005·ε·w − ε·g;  w ← w + v (§5), written out, against PaperSGD with ε dropping ÷10 twice."""
    torch.manual_seed(0)
    w0 = torch.randn(5, dtype=torch.float64)
    target = torch.randn(5, dtype=torch.float64)
    p = torch.nn.Parameter(w0.clone())
    opt = PaperSGD([p], lr=0.1, momentum=0.9, weight_decay=5e-4)
    w, v = w0.clone(), torch.zeros(5, dtype=torch.float64)
    plain = torch.nn.Parameter(w0.clone())
    torch_sgd = torch.optim.SGD([plain], lr=0.1, momentum=0.9, weight_decay=5e-4)
    for step in range(30):
        lr = 0.1 * 0.1 ** (step // 10)
        opt.param_groups[0]["lr"] = lr
        torch_sgd.param_groups[0]["lr"] = lr
        for param, o in ((p, opt), (plain, torch_sgd)):
            o.zero_grad()
            ((param - target) ** 2).sum().backward()
            o.step()
        g = 2 * (w - target)
        v = 0.9 * v - 5e-4 * lr * w - lr * g
        w = w + v
    assert torch.allclose(p.detach(), w, rtol=1e-12, atol=1e-14)
    assert not torch.allclose(plain.detach(), w, rtol=1e-6)  # torch's form really differs after a drop


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_the_optimizer_is_fused_on_the_cpu_and_steps_as_the_loop_does(name, monkeypatch):
    """build_optimizer takes torch's fused kernel where it runs, and its steps (the paper's SGD across a rate drop,
    AdamW) equal the per-parameter loop's."""
    torch.manual_seed(0)
    models = [create_model("alexnet_small", num_classes=10, input_size=32, width=0.25) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    cfg = OptimConfig(name=name, lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    fused = build_optimizer(models[0], cfg)
    assert fused.defaults["fused"] and all(group["fused"] for group in fused.param_groups)
    monkeypatch.setattr(optim, "can_fuse", lambda params: None)
    loop = build_optimizer(models[1], cfg)
    assert not loop.defaults["fused"]
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    # AdamW for one step only: its per-element normalisation turns the reordering's 1e-7 differences in the weights
    # into large ones in later steps wherever a gradient is near zero (a bias of a silent channel).
    for step in range(4 if name == "sgd" else 1):
        for model, opt in zip(models, (fused, loop)):
            for group in opt.param_groups:
                group["lr"] = 0.05 * (0.1 if step >= 2 else 1.0)
            opt.zero_grad()
            torch.manual_seed(step)  # the same dropout masks on both sides
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    # SGD's fused kernel does the loop's arithmetic in the loop's order; AdamW's reorders it (differences ~1e-6).
    tol = 1e-7 if name == "sgd" else 1e-5
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)
    assert can_fuse([torch.zeros(2, dtype=torch.int64)]) is None and can_fuse([]) is None


def test_plateau_schedule_drops_three_times_at_most():
    model = torch.nn.Linear(2, 2)
    opt = PaperSGD(model.parameters(), lr=0.01)
    sched = Schedule(
        opt, OptimConfig(schedule="plateau", plateau_patience=1, max_drops=3), epochs=20, steps_per_epoch=1
    )
    lrs = []
    for epoch, err in enumerate([50, 40, 41, 39, 39, 39, 39, 39, 39, 39]):
        lrs.append(sched.set(epoch, 0))
        sched.end_epoch(err)
    assert lrs[:3] == [0.01, 0.01, 0.01]
    assert abs(lrs[3] - 1e-3) < 1e-12  # 41 did not improve on 40: one drop
    assert abs(min(lrs) - 1e-5) < 1e-15  # three drops in all, never a fourth
    restored = Schedule(opt, OptimConfig(schedule="plateau"), 20, 1)
    restored.load_state_dict(sched.state_dict())
    assert restored.lr_at(10, 0) == sched.lr_at(10, 0)


def test_onecycle_and_cosine_shapes():
    opt = PaperSGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
    one = Schedule(opt, OptimConfig(lr=0.1, schedule="onecycle"), epochs=4, steps_per_epoch=10)
    lrs = [one.lr_at(e, s) for e in range(4) for s in range(10)]
    assert max(lrs) == 0.1 and lrs[0] == 0 and lrs[-1] < 0.01
    cos = Schedule(opt, OptimConfig(lr=0.1, schedule="cosine"), epochs=4, steps_per_epoch=10)
    assert cos.lr_at(0, 0) == 0.1 and cos.lr_at(3, 9) < 0.001
