"""Several trained models as one classifier: the softmax averaged over them, as the paper's "five similar CNNs"
(Table 2: 18.2% → 16.4% top-5 error on ILSVRC-2012 against one CNN).

The members must read the same images the same way (classes, preprocessing) and, to be scored on a held-out split,
hold out the same images; checked here, one line naming the first that differs."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from ..artifacts.trained import TrainedModel
from ..errors import ConfigError, IncompatibleCheckpointError


class Ensemble(nn.Module):
    """The log of the members' softmax averaged with equal weights: (B, classes) log-probabilities, so a softmax
    of the output is the average itself and an argmax its prediction."""

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one model")
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # In float: under bf16 autocast the members' logits are bf16 (8 bits of mantissa), too coarse for the
        # log-sum-exp of probabilities near 1. (K, B, classes) → (B, classes).
        logp = torch.stack([m(x).float().log_softmax(1) for m in self.members])
        return logp.logsumexp(0) - math.log(len(self.members))


def check_members(paths: Sequence[Path | str], members: Sequence[TrainedModel], held_out: bool) -> None:
    """Raise unless ``members`` (loaded from ``paths``) can be averaged: the same classes in the same order and the
    same preprocessing, and with ``held_out`` the same held-out images (``data.val_split`` and ``data.val_seed``).

    Raises:
        IncompatibleCheckpointError: two members differ in one of those.
        ConfigError: ``held_out`` for a member without its training config.
    """
    first, path0 = members[0], paths[0]
    for path, member in zip(paths[1:], members[1:]):
        if member.classes != first.classes:
            raise IncompatibleCheckpointError(
                f"{path} has classes {member.meta.labels[:3]}… where {path0} has {first.meta.labels[:3]}…: the "
                "softmax of models with different classes cannot be averaged"
            )
        if member.preprocessing != first.preprocessing:
            raise IncompatibleCheckpointError(
                f"{path} preprocesses images differently from {path0} ({_difference(member, first)}): an ensemble's "
                "members must see the same input"
            )
    if not held_out:
        return
    for path, member in zip(paths, members):
        if member.config is None:
            # a run's weights file (not a published name, whose "beside" would be the working directory)
            file = Path(path)
            beside = [
                str(p) for p in (file.with_name("best.pt"), file.with_name("last.pt")) if file.is_file() and p.is_file()
            ]
            raise ConfigError(
                f"{path} carries no training config: only a run's .pt checkpoint knows its held-out split"
                + (f" (give {' or '.join(beside)})" if beside else "")
            )
    splits = {(m.config.data.val_split, m.config.data.val_seed) for m in members if m.config is not None}
    if len(splits) > 1:
        raise IncompatibleCheckpointError(
            f"the models held out different images (data.val_split, data.val_seed: {sorted(splits)}): no split is "
            "held out by all of them"
        )


def _difference(a: TrainedModel, b: TrainedModel) -> str:
    pa, pb = vars(a.preprocessing), vars(b.preprocessing)
    name = next(k for k in pa if pa[k] != pb[k])
    return f"{name} {pa[name]!r} against {pb[name]!r}"
