"""Where a training step's time goes: `torch.profiler` over a few of the library's default steps, each operator's
own time filed under its phase (forward, backward, optimizer) and its kind (convolutions, the fc layers' GEMMs,
casts, LRN, pooling, elementwise...). ``alexnet bench --profile`` prints it; it is the table to compare before and
after a change to the step, or between machines (on a CPU with AMX the matrix work shrinks and the rest does not).

On the CPU, oneDNN computes a convolution's input and weight gradients inside one ``convolution_backward`` call, so
they are one row here; the fc layers' three GEMMs are the forward ``addmm`` and the backward's two ``mm``.
`primitive_profile` (``alexnet bench --profile MODEL --onednn``) looks inside those calls: oneDNN's own log of every
primitive it ran, with the implementation it chose (``brg_conv_fwd:avx512_core_amx`` on a CPU with AMX, ``..._bf16``
without), the propagation (forward, backward data, backward weights) and the layout conversions (reorders) around them.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass

import torch
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
    ("uniform_", "dropout"),  # `alexnet.models.layers.Dropout` draws its mask with torch.rand
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
    step, case = _warm_step(model_name, batch, size, dev)
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
    return StepProfile(model_name, batch, case.input, case.precision, steps, round(step_ms, 3), rows)


def _warm_step(model_name: str, batch: int, size: int | None, dev: torch.device) -> tuple[Callable[[], None], Case]:
    # The training step `alexnet bench` times for the library's defaults (whose phases it marks), after two warm-up
    # steps; random images of ``size`` pixels, the variant's own input size by default.
    fast = fast_settings(dev)
    if fast["tune_allocator"]:
        tune_cpu_allocator()
    size = size or model_info(model_name).input_size
    case = Case("profile", model_name, "train", batch, size, fast["precision"], fast["channels_last"], settings=fast)
    step = prepare_case(case, dev)
    for _ in range(2):
        step()
    return step, case


def _phase(event) -> str | None:
    # The phase marker an operator ran under: the nearest "phase:" ancestor in the profiler's call tree.
    node = event
    while node is not None:
        if node.name.startswith("phase:"):
            return node.name.split(":", 1)[1]
        node = node.cpu_parent
    return None


@dataclass(frozen=True)
class PrimitiveRow:
    primitive: str  # convolution, matmul, reorder...
    implementation: str  # oneDNN's kernel and the instruction set it targets, e.g. brg_conv_fwd:avx512_core_amx
    propagation: str  # forward_training, backward_data, backward_weights; a reorder's layouts; a matmul's shape
    calls: float  # per step
    ms: float  # per step
    share: float  # of oneDNN's time


@dataclass(frozen=True)
class PrimitiveProfile:
    """The oneDNN primitives of a training step, with what it measured."""

    model: str
    batch: int
    input: int
    precision: str
    steps: int
    isa: str  # what oneDNN says it dispatches for, e.g. "Intel AVX-512 with Intel DL Boost and bfloat16 support"
    step_ms: float  # oneDNN's own time per step (fp32 GEMMs go to MKL and are not in it)
    rows: list[PrimitiveRow]

    def to_dict(self) -> dict:
        return asdict(self)


def parse_onednn_log(lines: Iterable[str], steps: int = 1) -> tuple[str, list[PrimitiveRow]]:
    """oneDNN's verbose log (``ONEDNN_VERBOSE=1`` lines) → its ISA line and one row per (primitive, implementation,
    propagation), most time first; reorders are told apart by the layouts they convert, matmuls by their shape."""
    isa, totals = "", {}
    for line in lines:
        fields = line.strip().split(",")
        if fields[0] != "onednn_verbose":
            continue
        named = next((f for f in fields if f.startswith("isa:")), None)
        if named is not None:
            isa = named.removeprefix("isa:")
            continue
        if "exec" not in fields:
            continue
        # v1 lines are "onednn_verbose,v1,primitive,exec,cpu,kind,...", v0 ones "onednn_verbose,exec,cpu,kind,..."
        at = fields.index("exec")
        if len(fields) < at + 7:  # a line cut short
            continue
        kind, impl, prop, descs = fields[at + 2 : at + 6]
        try:
            ms = float(fields[-1])
        except ValueError:
            continue
        if kind == "reorder":
            prop = " → ".join(_layout(d) for d in descs.split()[:2])
        elif kind == "matmul":  # no propagation kind: the shape (M×K:K×N) tells the fc layers' three GEMMs apart
            prop = fields[-2]
        key = (kind, impl, prop)
        calls, total = totals.get(key, (0, 0.0))
        totals[key] = (calls + 1, total + ms)
    whole = sum(total for _, total in totals.values()) or 1.0
    rows = [
        PrimitiveRow(kind, impl, prop, round(calls / steps, 2), round(total / steps, 3), round(total / whole, 4))
        for (kind, impl, prop), (calls, total) in sorted(totals.items(), key=lambda kv: -kv[1][1])
    ]
    return isa, rows


def _layout(desc: str) -> str:
    # "src:bf16::blocked:acdb::f0" → "bf16 acdb" (data type and oneDNN's layout tag; acdb is NHWC, AcdB16a2b blocked)
    parts = desc.split(":")
    return f"{parts[1]} {parts[4]}" if len(parts) > 4 else desc


def primitive_profile(
    model_name: str = "alexnet_owt", batch: int = 64, size: int | None = None, steps: int = 2, device: str = "cpu"
) -> PrimitiveProfile:
    """oneDNN's primitives over ``steps`` training steps of ``model_name`` with the library's defaults (after two
    warm-up steps): which implementation each convolution and matmul ran, how long, and the reorders between them.
    CPU only (oneDNN is the CPU's library; ``auto`` means the CPU here); its log is read from this process's
    standard output while the steps run, and nothing reaches the terminal."""
    dev = pick_device("cpu" if device == "auto" else device)  # auto: the CPU, even where a GPU is
    if dev.type != "cpu":
        raise ValueError(f"the oneDNN profile is of the CPU's library: not on {dev}")
    step, case = _warm_step(model_name, batch, size, dev)
    with tempfile.TemporaryFile("w+") as log_file:
        with _stdout_into(log_file), torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
            for _ in range(steps):
                step()
        log_file.seek(0)
        isa, rows = parse_onednn_log(log_file, steps)
    step_ms = round(sum(r.ms for r in rows), 3)
    return PrimitiveProfile(model_name, batch, case.input, case.precision, steps, isa, step_ms, rows)


@contextlib.contextmanager
def _stdout_into(file) -> Iterator[None]:
    # oneDNN writes its log with C's printf to file descriptor 1: point that at ``file`` while it runs. oneDNN 3.12
    # flushes each line itself; flushing C's buffer before the descriptor goes back keeps a version that does not
    # from leaving the log's tail to reach the terminal afterwards.
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(file.fileno(), 1)
    try:
        yield
    finally:
        ctypes.CDLL(None).fflush(None)
        os.dup2(saved, 1)
        os.close(saved)
