"""What a training process holds at the least, set against the memory left before its model is built: a batch or
model that cannot fit is refused in one line (`alexnet.memory`), where the out-of-memory killer would end the run
without a word. A floor, never an estimate of the peak: it must not refuse a run that fits."""

from __future__ import annotations

from .. import memory
from ..config import Config
from ..data.pipeline import Data
from ..device import compute_dtype
from ..memory import check_batch
from ..models import ArchSpec
from . import distributed
from .strategy import Strategy


def check_training_memory(cfg: Config, spec: ArchSpec, data: Data, precision: str, strategy: Strategy) -> None:
    """Refuse a run whose batch, with the parameters' state, cannot fit in the memory left. Under torchrun the
    processes of one machine share it, each reads it once all have loaded their data (none has built its model yet),
    and all refuse when one lacks room (one refusing alone would leave the others waiting for it).

    Raises:
        MemoryBudgetError: naming the batch, its need and what bounds it; in the other processes, that one did.
    """
    info = strategy.dist
    shards = info.world if strategy.sharded else 1
    per_image, weights, held = training_floor(cfg, spec, len(data.classes), data.in_channels, precision, shards)
    advice = "use a smaller batch size or model" + " (or fewer processes a machine)" * (info.local_world > 1)
    batch = data.train.largest_batch
    distributed.barrier(info)
    room = memory.available()
    need = (batch * per_image + weights) * info.local_world
    short = 0 if room is None else max(need - room.bytes, 0)
    if distributed.least(-short, info) == 0:
        return
    # Each machine judged by its own room (machines may differ in memory and in processes): this one's account, or
    # word of another's.
    check_batch("training", batch, per_image, room, weights, held, advice, processes=info.local_world)
    raise memory.MemoryBudgetError(
        f"training: another process of this run has too little memory for its batch (its own error says how much): "
        f"{advice}"
    )


def training_floor(
    cfg: Config, spec: ArchSpec, classes: int, in_channels: int, precision: str, shards: int = 1
) -> tuple[int, int, str]:
    """(bytes an image, bytes besides, what those are) that a training process holds at the least, so that a batch
    or model that cannot fit is refused (`check_batch`); it must not overstate.

    An image: its fp32 input, and every later layer's output, kept for the backward pass, in the dtype it computes
    in. Measured on 2 cores of an AMD EPYC (Zen 4), bf16, peak RSS from one batch size to another: alexnet_owt 2.6 MB
    an image where this says 1.8, alexnet_cifar (cifar10-fast) 401 KB where it says 299. Besides: what each parameter
    holds (`parameter_bytes`). A rank of a network split ``shards`` ways (towers, hybrid) holds at least its share
    of the layers' outputs and of the parameters' state, and every fp32 value while the whole network is built
    before it is split."""
    counts = spec.activations(None, in_channels)
    per_image = counts[0] * 4 + sum(counts[1:]) * compute_dtype(precision).itemsize // shards
    per_parameter, held = parameter_bytes(cfg)
    parameters = spec.parameters(classes, in_channels)
    return per_image, max(4 * parameters, per_parameter * parameters // shards), held


def parameter_bytes(cfg: Config) -> tuple[int, str]:
    """Bytes each parameter holds while training, and what they are: its fp32 value and gradient (on bf16 copies, a
    bf16 copy and its bf16 gradient in the gradient's place: as many bytes), the optimizer's fp32 state (SGD's
    momentum, AdamW's two moments) and the moving average's copy. With layers frozen (`model.freeze`), theirs hold
    no gradient nor state, and the spec does not say how many they have: only the values are counted."""
    ema = 4 if cfg.train.ema_decay is not None else 0
    if cfg.model.freeze is not None:
        return 4 + ema, "the weights" + " and moving average" * bool(ema)
    state = 8 if cfg.optim.name == "adamw" else 4 if cfg.optim.momentum else 0
    held = ["the weights", "gradients"] + ["optimizer state"] * bool(state) + ["moving average"] * bool(ema)
    return 8 + state + ema, ", ".join(held[:-1]) + " and " + held[-1]
