"""The paper's two-GPU split (``towers``) and Krizhevsky's 2014 hybrid (``hybrid``) over ``torch.distributed``.

``towers`` (§3.2, cuda-convnet2's ``layers-imagenet-2gpu-model.cfg``): rank k holds tower k, half of every layer's
output units: conv1, conv2, conv4, conv5 (the ``groups=2`` convolutions see only their own tower's maps) and half
of conv3, fc6, fc7 and fc8. Every rank sees the whole batch. The towers exchange activations exactly where the
paper's GPUs talk: at conv3's input, fc6's input (pool5), fc7's input and fc8's input, and fc8's two halves of the
logits are gathered for the loss.

``hybrid`` ("One weird trick", arXiv:1404.5997): the convolutional trunk is data-parallel (each of K workers runs a
replica on its own slice of the batch; its gradients are averaged), and the fully connected layers are
model-parallel: the workers' conv features are all-gathered along the batch, each worker owns 1/K of fc6, fc7 and
fc8's units, and each keeps its own images' logits. Convolutions are most of the FLOPs and few parameters; the fc
layers are the reverse, so each part is split the way that moves fewer bytes.

Both are exact: a sharded parameter's gradient equals the single-process model's (the ranks' contributions arrive
through the autograd-aware all-gather and are scaled by 1/K because each rank's loss is one of K identical or
averaged terms), and a replicated parameter's gradient is averaged, as DistributedDataParallel does.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.autograd import Function

from ..errors import AlexNetError
from ..models.layers import LocalResponseNorm, Stack

log = logging.getLogger(__name__)
MODES = ("data", "towers", "hybrid")


class _Gather(Function):
    """All-gather along ``dim``; backward gives each rank the sum over ranks of the gradient of its own part (an
    all-reduce of the whole gradient, which every backend has, then this rank's slice)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, dim: int, group: object) -> torch.Tensor:  # type: ignore[override]
        ctx.dim, ctx.group, ctx.size = dim, group, x.shape[dim]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, x.contiguous(), group=group)
        return torch.cat(parts, dim)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:  # type: ignore[override]
        grad = grad.contiguous()
        dist.all_reduce(grad, group=ctx.group)
        rank = dist.get_rank(ctx.group)
        return grad.narrow(ctx.dim, rank * ctx.size, ctx.size).contiguous(), None, None


class Exchange(nn.Module):
    """Where the ranks talk: gathers every rank's part along ``dim`` and counts the bytes this rank sends.

    Per step, forward sends this rank's part to each of the K−1 others; backward returns as much (the gradient
    of the other ranks' parts). ``bytes_sent`` accumulates both.
    """

    def __init__(self, name: str, dim: int, world: int, group: object = None) -> None:
        super().__init__()
        self.name, self.dim, self.world, self.group = name, dim, world, group
        self.bytes_sent = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        part = x.numel() * x.element_size() * (self.world - 1)
        self.bytes_sent += part * (2 if torch.is_grad_enabled() and x.requires_grad else 1)
        return _Gather.apply(x, self.dim, self.group)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, dim={self.dim}"


class _Local(nn.Module):
    """This rank's rows of a (K·b, C) tensor: its own images (hybrid)."""

    def __init__(self, rank: int, world: int) -> None:
        super().__init__()
        self.rank, self.world = rank, world

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0] // self.world
        return x[self.rank * b : (self.rank + 1) * b]


def _rows(n: int, rank: int, world: int, what: str) -> slice:
    if n % world:
        raise AlexNetError(f"{what} has {n} units, which {world} ranks cannot split evenly")
    part = n // world
    return slice(rank * part, (rank + 1) * part)


def _shard_conv(conv: nn.Conv2d, rank: int, world: int, name: str) -> nn.Conv2d:
    """This rank's output channels of ``conv``; a grouped conv (groups = world) keeps only its own group's input."""
    rows = _rows(conv.out_channels, rank, world, name)
    in_channels = conv.in_channels // world if conv.groups == world else conv.in_channels
    if conv.groups not in (1, world):
        raise AlexNetError(f"{name} has groups={conv.groups}; the towers split needs 1 or {world}")
    out = nn.Conv2d(
        in_channels,
        rows.stop - rows.start,
        conv.kernel_size,
        conv.stride,
        conv.padding,  # type: ignore[arg-type]
        bias=conv.bias is not None,
    )
    out.weight = nn.Parameter(conv.weight.detach()[rows].clone())
    if conv.bias is not None:
        out.bias = nn.Parameter(conv.bias.detach()[rows].clone())
    return out


def _shard_linear(linear: nn.Linear, rank: int, world: int, name: str) -> nn.Linear:
    rows = _rows(linear.out_features, rank, world, name)
    out = nn.Linear(linear.in_features, rows.stop - rows.start, bias=linear.bias is not None)
    out.weight = nn.Parameter(linear.weight.detach()[rows].clone())
    if linear.bias is not None:
        out.bias = nn.Parameter(linear.bias.detach()[rows].clone())
    return out


def _shard_norm(norm: nn.BatchNorm1d | nn.BatchNorm2d, rank: int, world: int) -> nn.Module:
    rows = _rows(norm.num_features, rank, world, "batch norm")
    out = type(norm)(rows.stop - rows.start, norm.eps, norm.momentum)
    with torch.no_grad():
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(out, name).copy_(getattr(norm, name)[rows])
    return out


@dataclass
class _Plan:
    """Which parameters of the sharded model are slices (``sharded``) and where they come from in the full one."""

    sharded: dict[str, tuple[str, slice]]  # sharded name -> (full name, rows)
    replicated: dict[str, str]  # sharded name -> full name


class ShardedAlexNet(nn.Module):
    """One rank's part of an `AlexNet` under ``towers`` or ``hybrid`` (see the module docstring).

    Args:
        full: the whole network (every rank builds it from the same seed, so the slices match one model).
        mode: ``towers`` or ``hybrid``.
        rank: this rank in ``group``.
        world: the number of ranks (towers: the spec's tower count, 2 for the paper).
        group: the process group (default: the world).
    """

    def __init__(self, full: nn.Module, mode: str, rank: int, world: int, group: object = None) -> None:
        super().__init__()
        if mode not in ("towers", "hybrid"):
            raise AlexNetError(f"unknown parallel mode {mode!r}; choose one of {list(MODES)}")
        spec = full.spec
        if mode == "towers" and spec.groups != world:
            raise AlexNetError(
                f"parallel mode 'towers' puts one tower on each rank: {full.config.get('variant')} has "
                f"groups={spec.groups} towers but {world} ranks were started (alexnet_paper: 2 ranks)"
            )
        if mode == "towers" and spec.adaptive_pool:
            raise AlexNetError(
                "parallel mode 'towers' needs a fixed-size trunk (no adaptive pooling): use alexnet_paper"
            )
        self.mode, self.rank, self.world = mode, rank, world
        self.config, self.spec = dict(full.config), spec
        self.num_classes, self.in_channels = full.num_classes, full.in_channels
        plan = _Plan({}, {})
        split = False  # whether the current activation holds only this rank's channels
        layers: list[nn.Module] = []
        names = dict(full.named_modules())
        if mode == "hybrid":
            trunk = copy.deepcopy(full.features)
            for name, _ in trunk.named_parameters():
                plan.replicated[f"features.0.{name}"] = f"features.{name}"
            layers = [
                trunk,
                copy.deepcopy(full.avgpool),
                nn.Flatten(1),
                Exchange("conv features (batch)", 0, world, group),
            ]
        else:
            for i, module in enumerate(full.features):
                full_name = f"features.{i}"
                if isinstance(module, nn.Conv2d):
                    if module.groups == 1 and split:
                        layers.append(Exchange(f"input of {full_name}", 1, world, group))
                    sharded = _shard_conv(module, rank, world, full_name)
                    split = True
                elif isinstance(module, nn.BatchNorm2d):
                    sharded = _shard_norm(module, rank, world)
                elif isinstance(module, LocalResponseNorm):
                    if module.groups != world:
                        raise AlexNetError(
                            "parallel mode 'towers' needs the paper's per-tower LRN (groups=2), not Caffe's"
                        )
                    sharded = LocalResponseNorm(module.size, module.alpha, module.beta, module.k, module.convention, 1)
                else:
                    sharded = copy.deepcopy(module)  # activations, pooling: per channel
                self._record(plan, f"features.{len(layers)}", full_name, sharded, rank, world, names[full_name])
                layers.append(sharded)
            layers += [copy.deepcopy(full.avgpool), Exchange("pool5 (input of fc6)", 1, world, group), nn.Flatten(1)]
        self.features = Stack(*layers)  # as the whole model, the same fused batch norm → ReLU on the CPU
        head: list[nn.Module] = []
        split = False
        for i, module in enumerate(full.classifier):
            full_name = f"classifier.{i}"
            if isinstance(module, nn.Linear):
                if split:
                    head.append(Exchange(f"input of {full_name}", 1, world, group))
                sharded = _shard_linear(module, rank, world, full_name)
                split = True
            elif isinstance(module, nn.BatchNorm1d):  # per feature, and the features are this rank's rows
                sharded = _shard_norm(module, rank, world)
            else:
                sharded = copy.deepcopy(module)
            self._record(plan, f"classifier.{len(head)}", full_name, sharded, rank, world, names[full_name])
            head.append(sharded)
        head.append(Exchange("logits", 1, world, group))
        if mode == "hybrid":
            head.append(_Local(rank, world))
        self.classifier = Stack(*head)
        self.plan = plan
        self._hooks()

    @staticmethod
    def _record(
        plan: _Plan, name: str, full_name: str, sharded: nn.Module, rank: int, world: int, original: nn.Module
    ) -> None:
        for p_name, _ in sharded.named_parameters(recurse=False):
            full_param = getattr(original, p_name)
            rows = _rows(full_param.shape[0], rank, world, full_name)
            plan.sharded[f"{name}.{p_name}"] = (f"{full_name}.{p_name}", rows)
        for b_name, _ in sharded.named_buffers(recurse=False):
            if b_name != "num_batches_tracked":
                plan.sharded[f"{name}.{b_name}"] = (
                    f"{full_name}.{b_name}",
                    _rows(getattr(original, b_name).shape[0], rank, world, full_name),
                )

    def _hooks(self) -> None:
        """Sharded gradients ÷ K (each rank's loss is one of K terms); replicated ones averaged across ranks."""
        params = dict(self.named_parameters())
        for name in self.plan.sharded:
            if name in params:
                params[name].register_hook(lambda g: g / self.world)
        for name in self.plan.replicated:
            params[name].register_post_accumulate_grad_hook(self._average)

    def _average(self, p: torch.Tensor) -> None:
        dist.all_reduce(p.grad)
        p.grad.div_(self.world)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """towers: (B, C, H, W) → (B, classes), every rank the same batch; hybrid: this rank's (b, C, H, W) → its
        (b, classes), where fc6-fc8 saw every rank's b images."""
        return self.classifier(self.features(x))

    def exchanges(self) -> list[Exchange]:
        return [m for m in self.modules() if isinstance(m, Exchange)]

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """The whole model's state, gathered from every rank's slices (a collective: call it on every rank)."""
        own = self.state_dict()
        out: dict[str, torch.Tensor] = {}
        for name, (full_name, _) in self.plan.sharded.items():
            value = own[name].detach().contiguous()
            parts = [torch.empty_like(value) for _ in range(self.world)]
            dist.all_gather(parts, value)
            out[full_name] = torch.cat(parts, 0)
        for name, full_name in self.plan.replicated.items():
            out[full_name] = own[name].detach().clone()
        for name, value in own.items():  # BatchNorm's batch counters: the same on every rank
            if name.endswith("num_batches_tracked"):
                out[self._full_name(name)] = value.clone()
        return out

    def _full_name(self, name: str) -> str:
        prefix, _, leaf = name.rpartition(".")
        for sharded, (full_name, _) in self.plan.sharded.items():
            if sharded.rpartition(".")[0] == prefix:
                return full_name.rpartition(".")[0] + "." + leaf
        return self.plan.replicated.get(name, name)

    def load_full_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Take this rank's slices of a whole model's state."""
        own = {}
        for name, (full_name, rows) in self.plan.sharded.items():
            own[name] = state[full_name][rows]
        for name, full_name in self.plan.replicated.items():
            own[name] = state[full_name]
        for name in self.state_dict():
            if name.endswith("num_batches_tracked"):
                own[name] = state[self._full_name(name)]
        self.load_state_dict(own)


@dataclass(frozen=True)
class PlanRow:
    """What one parallel mode costs each worker per training step (fp32: 4 bytes a number).

    Attributes:
        mode: ``data``, ``towers`` or ``hybrid``.
        bytes_per_step: bytes a worker sends per step (gradient all-reduce as a ring, activation exchanges forward
            and backward).
        bytes_per_image: ``bytes_per_step`` over the global batch.
        param_bytes: the parameters a worker holds.
        note: how the number is made up.
    """

    mode: str
    bytes_per_step: int
    bytes_per_image: float
    param_bytes: int
    note: str


def parallel_plan(name: str, workers: int, batch: int, num_classes: int = 1000, **overrides: object) -> list[PlanRow]:
    """The communication and memory of data parallelism, the paper's towers and the 2014 hybrid, from the spec.

    ``batch`` is the global batch (each data-parallel worker takes ``batch / workers``). Towers are listed only
    when ``workers`` equals the variant's tower count.
    """
    from ..models import create_model, get_spec

    if workers < 2 or batch < workers or batch % workers:
        raise AlexNetError(f"need at least 2 workers and a global batch divisible by them (got {workers}, {batch})")
    spec = get_spec(name, **overrides)
    with torch.device("meta"):
        model = create_model(name, num_classes=num_classes, **overrides)
    conv_params = sum(p.numel() for p in model.features.parameters())
    fc_params = sum(p.numel() for p in model.classifier.parameters())
    total = conv_params + fc_params
    k, b, f = workers, batch // workers, 4
    ring = 2 * (k - 1) / k  # a ring all-reduce sends this many times the buffer per worker
    rows = [
        PlanRow(
            "data", int(ring * total * f), ring * total * f / batch, total * f, f"all-reduce of {total:,} gradients"
        )
    ]
    c, h, w = spec.feature_shape()
    fc_widths = [*spec.hidden(), num_classes]
    # The fc layers' activations each worker contributes: the conv features (hybrid: its own b images; towers:
    # its half of the channels of all B) and its 1/K share of every fc layer's units.
    hybrid_floats = b * c * h * w + sum(batch * u // k for u in fc_widths)
    hybrid = int(2 * (k - 1) * hybrid_floats * f + ring * conv_params * f)
    note = f"conv: all-reduce of {conv_params:,} gradients; fc: features gathered, 1/{k} of the units each"
    rows.append(PlanRow("hybrid", hybrid, hybrid / batch, (conv_params + fc_params // k) * f, note))
    if spec.groups == k:
        exchanged = [_conv_input(spec, i) for i, conv in enumerate(spec.convs) if i and not conv.tower]
        tower_floats = sum(batch * n // k for n in [*exchanged, c * h * w, *fc_widths])
        towers = 2 * (k - 1) * tower_floats * f
        rows.append(
            PlanRow(
                "towers",
                towers,
                towers / batch,
                total // k * f,
                f"every layer split in {k}; activations exchanged at {len(exchanged)} conv input(s), "
                "fc6, fc7, fc8 and the logits",
            )
        )
    return rows


def _conv_input(spec: object, index: int) -> int:
    """Numbers per image entering conv ``index`` (channels × side²) at the spec's input size."""
    from ..models.specs import POOLS

    side = spec.input_size
    k_pool, s_pool = POOLS[spec.pool]
    channels = spec.channels()
    for i, conv in enumerate(spec.convs[:index]):
        side = (side + 2 * conv.pad - conv.kernel) // conv.stride + 1
        if conv.pool:
            side = (side + 2 * spec.pool_pad - k_pool) // s_pool + 1
        out = channels[i]
    return out * side * side
