"""Where a training step's time goes: `torch.profiler` over a few of the library's default steps, each operator's
own time filed under its phase (forward, backward, optimizer) and its kind (convolutions, the fc layers' GEMMs,
casts, LRN, pooling, elementwise...). ``alexnet bench --profile`` prints it; it is the table to compare before and
after a change to the step, or between machines (on a CPU with AMX the matrix work shrinks and the rest does not).

On the CPU, oneDNN computes a convolution's input and weight gradients inside one ``convolution_backward`` call, so
they are one row here; the fc layers' three GEMMs are the forward ``addmm`` and the backward's two ``mm``.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

from torch.profiler import ProfilerActivity, profile

from ..device import pick_device, tune_cpu_allocator
from ..models import model_info
from .bench import Case, fast_settings, prepare_case

log = logging.getLogger(__name__)

PHASES = ("forward", "backward", "optimizer")
# Operator name fragments → kind, first match wins.
KINDS = (
    ("convolution_backward", "convolution (input and weight gradients)"),
    ("convolution", "convolution"),
    ("addmm", "fc GEMM"),
    ("aten::mm", "fc GEMM"),
    ("alexnet::lrn", "LRN"),
    ("alexnet_lrn", "LRN"),  # the custom operator's autograd node, where its forward kernel's time lands
    ("pool", "pooling"),
    ("copy_", "cast or copy"),
    ("_to_copy", "cast or copy"),
    ("threshold", "ReLU"),
    ("clamp", "ReLU"),
    ("relu", "ReLU"),
    ("bernoulli", "dropout"),
    ("batch_norm", "batch norm"),
    ("cross_entropy", "loss"),
    ("log_softmax", "loss"),
    ("nll_loss", "loss"),
)


@dataclass(frozen=True)
class ProfileRow:
    phase: str
    kind: str
    ms: float  # per step
    share: float  # of the step's profiled time


@dataclass(frozen=True)
class StepProfile:
    """A training step's time by phase and kind, with what it measured."""

    model: str
    batch: int
    input: int
    precision: str
    steps: int
    step_ms: float  # the profiled operators' own time per step
    rows: list[ProfileRow]

    def to_dict(self) -> dict:
        return asdict(self)


def kind_of(name: str) -> str:
    """The kind an operator's name files it under (``elementwise and other`` when nothing matches)."""
    return next((kind for fragment, kind in KINDS if fragment in name), "elementwise and other")


def profile_step(
    model_name: str = "alexnet_owt", batch: int = 64, size: int | None = None, steps: int = 3, device: str = "auto"
) -> StepProfile:
    """Profile ``steps`` training steps of ``model_name`` with the library's defaults (after two warm-up steps), on
    random images of ``size`` pixels (the variant's own input size by default).

    Returns:
        One row per (phase, kind) with its time per step, largest first within each phase.
    """
    dev = pick_device(device)
    size = size or model_info(model_name).input_size
    fast = fast_settings(dev)
    if fast["tune_allocator"]:
        tune_cpu_allocator()
    # The step `alexnet bench` times for the library's defaults, whose phases it marks.
    case = Case("profile", model_name, "train", batch, size, fast["precision"], fast["channels_last"], settings=fast)
    step = prepare_case(case, dev)
    for _ in range(2):
        step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
    totals: dict[tuple[str, str], float] = {}
    for event in prof.events():
        phase = _phase(event)
        if phase is None or event.name.startswith("phase:"):
            continue
        own = event.self_device_time_total if dev.type == "cuda" else event.self_cpu_time_total
        if own > 0:
            key = (phase, "all" if phase == "optimizer" else kind_of(event.name))
            totals[key] = totals.get(key, 0.0) + own / 1000 / steps  # µs over all steps → ms per step
    step_ms = sum(totals.values())
    rows = [
        ProfileRow(phase, kind, round(ms, 3), round(ms / step_ms, 4) if step_ms else 0.0)
        for (phase, kind), ms in sorted(totals.items(), key=lambda kv: (PHASES.index(kv[0][0]), -kv[1]))
    ]
    return StepProfile(model_name, batch, size, fast["precision"], steps, round(step_ms, 3), rows)


def _phase(event) -> str | None:
    # The phase marker an operator ran under: the nearest "phase:" ancestor in the profiler's call tree.
    node = event
    while node is not None:
        if node.name.startswith("phase:"):
            return node.name.split(":", 1)[1]
        node = node.cpu_parent
    return None
