"""What a training checkpoint holds, and how a run resumes from one.

A checkpoint is a dict of tensors and plain values (loadable with ``weights_only=True`` and no extra globals):
the model and optimizer state, the schedule, the scaler, every process's RNG state, the position (epoch, step),
the running totals of a half-finished epoch, the history, and the artifact metadata (model config, classes, data
preprocessing) that `alexnet.artifacts.trained` validates.
"""

from __future__ import annotations

import logging
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..artifacts.checkpoint import load_checkpoint
from ..artifacts.trained import check_finite, meta_from_checkpoint
from ..config import Config
from ..errors import CorruptCheckpointError, IncompatibleCheckpointError, NonFiniteWeightsError
from ..names import display_label

log = logging.getLogger(__name__)
VERSION = 1
# Resuming with another value of these would silently make the run something other than what it claims to be.
PINNED = (
    "data.batch_size",
    "data.dataset",
    "data.val_split",
    "data.val_seed",
    "optim.name",
    "optim.lr",
    "optim.momentum",
    "optim.weight_decay",
    "optim.schedule",
    "train.seed",
)


@dataclass
class EpochTotals:
    """Running sums of the current epoch, saved mid-epoch so a resumed epoch's metrics cover all of it."""

    loss_sum: float = 0.0  # cross-entropy × images
    correct: float = 0.0
    seen: float = 0.0
    data_s: float = 0.0  # seconds waiting for batches
    compute_s: float = 0.0

    def metrics(self) -> dict[str, float]:
        elapsed = self.data_s + self.compute_s
        return {
            "loss": self.loss_sum / max(self.seen, 1),
            "acc1": 100 * self.correct / max(self.seen, 1),
            "img_s": self.seen / elapsed if elapsed else 0.0,
            "data_s": self.data_s,
            "compute_s": self.compute_s,
        }


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        # numpy's state holds an ndarray, which weights_only loading refuses: keep it as a list.
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    random.setstate(state["python"])
    np_state = state["numpy"]
    np.random.set_state((np_state[0], np.array(np_state[1], dtype=np.uint32), *np_state[2:]))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_state(
    *,
    model_state: dict[str, torch.Tensor],
    model_config: dict[str, Any],
    optimizer_states: list[dict[str, Any]],
    schedule: Any,
    scaler: Any,
    rng: dict[str, Any],
    rng_ranks: list[dict[str, Any]],
    epoch: int,
    step: int,
    totals: EpochTotals,
    history: list[dict[str, float]],
    best_acc1: float,
    cfg: Config,
    classes: list[str],
    data_meta: dict[str, Any],
    ema: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The checkpoint dict (see the module docstring). ``optimizer_states`` has one entry, or one per rank when
    each rank holds different parameters (``--parallel towers`` or ``hybrid``)."""
    return {
        "model": model_state,
        "model_config": model_config,
        "optimizer": optimizer_states[0],
        "optimizer_ranks": optimizer_states if len(optimizer_states) > 1 else [],
        "schedule": schedule.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else {},
        "rng": rng,
        "rng_ranks": rng_ranks,
        "epoch": epoch,
        "step": step,
        "epoch_totals": asdict(totals) if step else {},
        "history": history,
        "best_acc1": best_acc1,
        "config": cfg.to_dict(),
        "classes": classes,
        "data_meta": data_meta,
        **({"ema": ema} if ema is not None else {}),
        "version": VERSION,
    }


def latest_valid(out: Path) -> tuple[str | None, dict[str, Any] | None]:
    """``last.pt``, or ``best.pt`` with a warning when ``last.pt`` is corrupt or holds non-finite weights;
    (None, None) in a new run directory.

    Raises:
        CorruptCheckpointError: checkpoints exist but none loads (training does not silently start over).
    """
    candidates = [p for p in (out / "last.pt", out / "best.pt") if p.is_file()]
    errors = []
    for path in candidates:
        try:
            state = load_checkpoint(path)
            check_finite(state["model"], str(path))
        except (CorruptCheckpointError, NonFiniteWeightsError) as err:
            errors.append(str(err))
            log.warning("%s; trying the previous checkpoint", err)
            continue
        return str(path), state
    if errors:
        raise CorruptCheckpointError("no checkpoint in " + str(out) + " loads: " + "; ".join(errors))
    return None, None


def check_resume(
    state: dict[str, Any], model: torch.nn.Module, classes: list[str], cfg: Config, source: str, processes: int = 1
) -> None:
    """Refuse to resume ``state`` into a different model, class list or (unless allowed) recipe or number of
    ``processes`` (torchrun's world).

    Raises:
        IncompatibleCheckpointError: naming the first difference.
        NonFiniteWeightsError: the checkpoint's weights hold NaN or infinity.
    """
    meta = meta_from_checkpoint(state, source)  # validates the model config, classes and preprocessing
    saved, ours = meta.model.to_dict(), model.config
    for key in ("variant", "num_classes", "in_channels", "overrides"):
        if saved.get(key) != ours[key]:
            raise IncompatibleCheckpointError(
                f"{source} has {key}={saved.get(key)!r} but this run builds {key}={ours[key]!r}"
            )
    if list(meta.classes) != classes:
        first = next((i for i, (a, b) in enumerate(zip(meta.classes, classes)) if a != b), min(len(classes), 4))
        raise IncompatibleCheckpointError(
            f"{source} was trained on {len(meta.classes)} classes; this data set has {len(classes)} "
            f"(first difference at label {first}: {display_label(str(list(meta.classes[first : first + 1])))} "
            f"against {display_label(str(classes[first : first + 1]))})"
        )
    check_finite(state["model"], source)
    _check_processes(state, cfg, source, processes)
    if cfg.train.allow_changes:
        return
    saved_cfg = state.get("config", {})
    for dotted in PINNED:
        section, key = dotted.split(".")
        before, now = saved_cfg.get(section, {}).get(key), getattr(getattr(cfg, section), key)
        if before != now:
            raise IncompatibleCheckpointError(
                f"{source} was trained with {dotted}={before!r}; this run says {now!r}. Resuming would no longer be "
                "the run it claims to be: keep the value, start a new --out, or pass --allow-changes"
            )


def _check_processes(state: dict[str, Any], cfg: Config, source: str, processes: int) -> None:
    """The number of processes a run was trained by is part of the run: each reads every N-th image of an epoch's
    order with its own random state, and the global batch is N per-process batches. Another number is refused
    unless allowed (`--allow-changes`), and then only at an epoch's end."""
    saved = len(state.get("rng_ranks") or []) or 1
    if saved == processes:
        return
    counts = f"{source} was trained by {saved} process{'es' * (saved > 1)}; this run has {processes}"
    if not cfg.train.allow_changes:
        raise IncompatibleCheckpointError(
            f"{counts}: the global batch and each process's images would change, so resuming would no longer be the "
            f"run it claims to be: resume it with {saved} process{'es' * (saved > 1)}, start a new --out, or pass "
            "--allow-changes"
        )
    if state.get("step"):
        raise IncompatibleCheckpointError(
            f"{counts}, and it stopped inside an epoch whose images are split among {saved}: finish that epoch with "
            f"{saved}, or resume from a checkpoint taken at an epoch's end"
        )


def match_layouts(optimizer: torch.optim.Optimizer) -> None:
    """Put each optimizer state tensor in its parameter's memory layout. A checkpoint from a channels-last run resumed
    with ``model.channels_last=false`` (or the reverse) brings momentum in the other layout, and torch's fused SGD and
    AdamW pair values by their place in memory: they would step each weight with another weight's momentum."""
    for p, st in optimizer.state.items():
        for key, value in st.items():
            if isinstance(value, torch.Tensor) and value.shape == p.shape and value.stride() != p.stride():
                st[key] = torch.empty_like(p, dtype=value.dtype).copy_(value)


def restore(
    state: dict[str, Any],
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    schedule: Any,
    scaler: Any,
    strategy: Any,
    rank: int | None,
) -> EpochTotals:
    """Load ``state`` into the run's objects and RNGs (``rank``'s under torchrun, else the single process's);
    ``strategy`` (`alexnet.training.strategy.Strategy`) takes a sharded model's slices.

    Returns:
        the running totals of the epoch the checkpoint was taken in (empty at an epoch boundary).
    """
    strategy.load_model_state(model, state["model"], "checkpoint")
    per_rank = state.get("optimizer_ranks") or []
    if strategy.sharded and len(per_rank) != strategy.dist.world:
        raise IncompatibleCheckpointError(
            f"the checkpoint holds optimizer states for {len(per_rank) or 1} model shard(s), not {strategy.dist.world}:"
            " resume --parallel towers/hybrid runs with the same mode and process count"
        )
    optimizer.load_state_dict(per_rank[rank] if strategy.sharded and rank is not None else state["optimizer"])
    match_layouts(optimizer)
    schedule.load_state_dict(state["schedule"])
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    saved = state.get("rng_ranks") or []
    if rank is not None and rank >= len(saved):  # more processes than trained it (allowed, `check_resume`)
        seed_everything(int(state["config"]["train"]["seed"]) + rank + 1000 * int(state["epoch"]))
    else:
        set_rng_state(saved[rank] if rank is not None else state["rng"])
    return EpochTotals(**state.get("epoch_totals") or {})
