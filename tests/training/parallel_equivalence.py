"""Run under torchrun by tests/training/test_model_parallel.py: the sharded model against the single-process model."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from alexnet.models import create_model
from alexnet.training.model_parallel import ShardedAlexNet


def equivalence(
    mode: str, name: str = "alexnet_paper", batch: int = 8, steps: int = 3, lr: float = 0.01, **overrides: object
) -> dict[str, float]:
    """Run under torchrun: the sharded model against the single-process model on the same global batch.

    Every rank builds the whole model from one seed and its shard from it; rank 0 also runs the whole model alone.
    Dropout is off (``dropout=0``) so both draw nothing at random. Returns (on every rank) the largest absolute
    differences of the logits, of every parameter's gradient after one step, and of the weights after ``steps``
    SGD steps, with the bytes this rank sent per step and the largest gradient, for scale.
    """
    rank, world = dist.get_rank(), dist.get_world_size()
    # NCCL works on GPU tensors: each rank its current device (CUDA-only branch: one line).
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    torch.manual_seed(0)
    full = create_model(name, num_classes=20, **{"dropout": 0.0, "input_size": 67, **overrides}).to(device)
    size = full.spec.input_size
    sharded = ShardedAlexNet(full, mode, rank, world)
    x = torch.randn(batch * world, full.in_channels, size, size, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 20, (batch * world,), generator=torch.Generator().manual_seed(2))
    x, y = x.to(device), y.to(device)
    mine = slice(rank * batch, (rank + 1) * batch) if mode == "hybrid" else slice(None)
    opt_full = torch.optim.SGD(full.parameters(), lr=lr, momentum=0.9)
    opt_shard = torch.optim.SGD(sharded.parameters(), lr=lr, momentum=0.9)
    result: dict[str, float] = {}
    for step in range(steps):
        logits_full = full(x)
        nn.functional.cross_entropy(logits_full, y).backward()
        logits = sharded(x[mine])
        nn.functional.cross_entropy(logits, y[mine]).backward()
        if step == 0:
            result["logits"] = (logits - logits_full[mine]).abs().max().item()
            result["bytes_per_step"] = float(sum(e.bytes_sent for e in sharded.exchanges()))
            grads = _gather_grads(sharded)
            result["grad"] = max((grads[k] - p.grad).abs().max().item() for k, p in full.named_parameters())
            result["grad_scale"] = max(p.grad.abs().max().item() for p in full.parameters())
        opt_full.step()
        opt_shard.step()
        opt_full.zero_grad()
        opt_shard.zero_grad()
    state = sharded.full_state_dict()
    result["weights"] = max((state[k] - v).abs().max().item() for k, v in full.state_dict().items())
    return result


def _gather_grads(sharded: ShardedAlexNet) -> dict[str, torch.Tensor]:
    """Every parameter's gradient, whole (a collective)."""
    params = dict(sharded.named_parameters())
    out = {}
    for name, (full_name, _) in sharded.plan.sharded.items():
        if name in params:
            g = params[name].grad.contiguous()
            parts = [torch.empty_like(g) for _ in range(sharded.world)]
            dist.all_gather(parts, g)
            out[full_name] = torch.cat(parts, 0)
    for name, full_name in sharded.plan.replicated.items():
        out[full_name] = params[name].grad
    return out
