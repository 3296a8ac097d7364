"""Device and precision choice. The caller picks the device; the library only moves what it is given."""

from __future__ import annotations

import contextlib
import logging

import torch

from . import native
from .errors import ConfigError
from .names import PRECISIONS

log = logging.getLogger(__name__)


def pick_device(name: str = "auto") -> torch.device:
    """``auto``: CUDA if present, else Apple MPS, else the CPU; otherwise the named device.

    Raises:
        ValueError: a named accelerator is not available.
    """
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ConfigError(f"device {name!r} is not a device: use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cpu":
        return device
    if device.type == "meta":  # tensors without data: nothing would be computed
        raise ConfigError(f"device {name!r} holds no data: use auto, cpu, cuda, cuda:N or mps")
    # torch.cuda, torch.xpu...; MPS's availability is torch.backends.mps's
    backend = torch.backends.mps if device.type == "mps" else getattr(torch, device.type, None)
    if not (backend is not None and hasattr(backend, "is_available") and backend.is_available()):
        kind = device.type.upper()
        raise ValueError(f"device {name!r}: {kind} is not available on this machine; use cpu or auto")
    count = backend.device_count() if hasattr(backend, "device_count") else 1
    if device.index is not None and device.index >= count:
        raise ValueError(f"device {name!r}: this machine has {count} {device.type} device(s), numbered from 0")
    return device


def cpu_has_fast_bf16() -> bool:
    """True where the CPU multiplies bf16 in hardware, which makes bf16 2-5× faster than fp32: AVX512-BF16 or AMX on
    x86, oneDNN's own answer elsewhere (Arm's BF16). oneDNN runs bf16 on any AVX-512 CPU, but without those it widens
    each value to fp32 first, 5× slower than fp32 itself (`alexnet.native.bf16_products`)."""
    try:
        supported = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False
    return supported and (native.bf16_products() or not native.x86())


def pick_precision(name: str, device: torch.device) -> str:
    """``auto`` becomes bf16 on a CPU with native bf16 or a CUDA GPU that supports it, else fp32."""
    if name not in PRECISIONS:
        raise ValueError(f"unknown precision {name!r}; choose one of {list(PRECISIONS)}")
    if name != "auto":
        if name == "fp16" and device.type == "cpu":
            raise ValueError("fp16 autocast is for GPUs; use bf16 or fp32 on the CPU")
        if name == "bf16" and device.type == "cpu" and not cpu_has_fast_bf16():
            # Without AVX512-BF16 or AMX, oneDNN emulates bf16 (an AVX2 machine: ~1 GFLOP/s against fp32's ~80; an
            # AVX-512 Xeon without them: 61 against 319 for a 4096² matmul).
            log.warning("bf16 on this CPU is emulated (no AVX512-BF16 or AMX): many times slower than fp32 here")
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu":
        return "bf16" if cpu_has_fast_bf16() else "fp32"
    return "fp32"


def compute_dtype(precision: str) -> torch.dtype:
    """The dtype a resolved precision (``fp32``, ``bf16``, ``fp16``) computes in."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Mixed precision for the forward pass (weights and optimizer stay fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=compute_dtype(precision))


_ALLOCATOR_TUNED = False


def release_free_memory() -> bool:
    """Give the pages glibc holds free in its arenas back to the OS (``malloc_trim(0)``): after a large decode in a
    thread pool, each thread's arena otherwise keeps its share of the freed image for the life of the process
    (seen: an idle service holding +660 MB after uploads of 81-megapixel PNGs). Linux/glibc only; a no-op elsewhere.
    """
    try:
        import ctypes
        import platform

        if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
            return False
        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):
        return False


def tune_cpu_allocator() -> bool:
    """Keep freed large blocks in glibc's heap instead of returning them to the OS.

    A bf16 training step allocates fresh casts of every weight (fc6 alone: 75 MB) and every gradient; with glibc's
    default 128 KiB-ish mmap threshold each of those is a new mapping whose pages fault in on first touch, which
    measured 4× slower than the conversion itself and cost AlexNet ~25% of its step time on a 2-core CPU. Raising the
    mmap threshold (1 GiB) and the trim threshold (2 GiB) makes the allocator reuse that memory, as the
    jemalloc/tcmalloc preload that Intel recommends for PyTorch on CPU does. Inference pays the same way for its
    activations (alexnet_paper's forward at batch 64: 157 → 118 ms), so `Predictor` and `evaluate_checkpoint` call
    this too on a CPU. Process-wide; Linux/glibc only.

    Returns:
        True if the setting was applied (now or earlier in this process).
    """
    global _ALLOCATOR_TUNED
    if _ALLOCATOR_TUNED:
        return True
    try:
        import ctypes
        import platform

        if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
            return False
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
        ok = libc.mallopt(m_mmap_threshold, 1 << 30) == 1 and libc.mallopt(m_trim_threshold, 1 << 31) == 1
    except (OSError, AttributeError):
        return False
    _ALLOCATOR_TUNED = ok
    if ok:
        log.debug("glibc malloc: mmap threshold 1 GiB, trim threshold 2 GiB")
    return ok
