"""An AOTInductor package run on the CPU with its weights in 64-byte-aligned memory.

AOTInductor's runtime copies a program's constants (its weights, packed for oneDNN when frozen) into one block it
takes from ``malloc`` (``RAII_cpuMalloc`` in torch/csrc/inductor/aoti_runtime/model_base.h) and lays them out at
64-byte offsets from the block's start. glibc aligns such a block to 16 bytes, so whether the weights sit on 64-byte
boundaries is chance. On an Intel Xeon with AMX, `alexnet_owt` int8 at batch 64 ran at 1,190-1,320 img/s with its
weights 16 bytes off and at 1,870-2,110 with the same program's weights realigned (same oneDNN primitives and
layouts; conv2-conv5 2.4x slower: AMX loads 64-byte rows, each then split over two cache lines). Of 31 builds timed
before this module, 17 had been slow, and without a raised mmap threshold (`alexnet.device.tune_cpu_allocator`) all
were, ``mmap``'s blocks starting 16 bytes into a page.

So the package's shared library is loaded through its container runner, whose constants can be replaced by pointer:
each large misaligned one is cloned (torch's CPU allocator aligns to 64 bytes) and swapped in, and the pages it
occupied in the old block are returned to the OS, so memory does not double.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import logging
import os
import platform
import zipfile
from pathlib import Path

import torch

log = logging.getLogger(__name__)

_ALIGN = 64  # bytes: a cache line, and the row of an AMX tile load
_MADV_DONTNEED = 4  # <sys/mman.h> on Linux


class CpuProgram:
    """A compiled program's runner: a list of input tensors to a list of outputs. It holds the aligned copies of
    the weights its runner points into."""

    def __init__(self, runner: torch._C._aoti.AOTIModelContainerRunnerCpu, copies: dict[str, torch.Tensor]) -> None:
        self._runner, self._copies = runner, copies

    def __call__(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        return self._runner.run(inputs)


def load_cpu(package: Path, workdir: Path) -> CpuProgram:
    """The program in ``package`` (a ``.pt2`` AOTInductor has just written, or `program_cache` kept; never a user's
    file: loading a shared library runs its code), its shared library unpacked into ``workdir``."""
    with zipfile.ZipFile(package) as archive:
        # The library, and the JSON beside it from which its proxy executor calls ops that have no C++ shim.
        archive.extractall(workdir)
        libraries = [n for n in archive.namelist() if "/data/aotinductor/" in n and n.endswith(".so")]
    if len(libraries) != 1:
        raise ValueError(f"expected one shared library in {package.name}, found {libraries}")
    runner = torch._C._aoti.AOTIModelContainerRunnerCpu(str(workdir / libraries[0]), 1)
    return CpuProgram(runner, realign(runner))


def _extent(t: torch.Tensor) -> tuple[int, int]:
    # Frozen weights packed for oneDNN are opaque tensors with no storage of their own.
    if t.layout == torch._mkldnn:
        return torch.ops.mkldnn.data_ptr(t), torch.ops.mkldnn._nbytes(t)
    # The bytes its elements span from its first (a storage may hold more than the tensor).
    span = 1 + sum((n - 1) * stride for n, stride in zip(t.shape, t.stride())) if t.numel() else 0
    return t.data_ptr(), span * t.element_size()


def realign(runner: torch._C._aoti.AOTIModelContainerRunnerCpu, min_bytes: int = 4096) -> dict[str, torch.Tensor]:
    """Swap each of ``runner``'s constants of ``min_bytes`` or more that does not start on a 64-byte boundary for an
    aligned copy; the copies, which the caller must keep alive (the runner holds their pointers only)."""
    by_fqn = runner.extract_constants_map(False)
    names = runner.get_constant_names_to_original_fqns()  # the runner's name -> the name extract gives it
    shared = collections.Counter(names.values())
    copies, vacated = {}, []
    for name, fqn in names.items():
        # Constants that share an original name (each layer's activation scale and zero point) cannot be told
        # apart through that name; they are a few bytes each.
        if shared[fqn] != 1 or fqn not in by_fqn:
            continue
        ptr, nbytes = _extent(by_fqn[fqn])
        if nbytes >= min_bytes and ptr % _ALIGN:
            copies[name] = by_fqn[fqn].clone()
            vacated.append((ptr, nbytes))
    if copies:
        runner.update_constant_buffer(copies, False, False, True)  # the active set, by pointer (user-managed)
        released = _release(vacated)
        log.debug("moved %d constants to aligned memory; %d MB of the old block released", len(copies), released >> 20)
    return copies


def _release(extents: list[tuple[int, int]]) -> int:
    """Return to the OS the whole pages inside each (address, bytes) extent, which nothing reads any more; the block
    around them stays allocated, its edges untouched. Linux only (elsewhere the old copies stay resident)."""
    if platform.system() != "Linux":
        return 0
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        page, released = os.sysconf("SC_PAGE_SIZE"), 0
        for ptr, nbytes in extents:
            lo, hi = -(-ptr // page) * page, (ptr + nbytes) // page * page
            if hi > lo and libc.madvise(ctypes.c_void_p(lo), ctypes.c_size_t(hi - lo), _MADV_DONTNEED) == 0:
                released += hi - lo
        return released
    return 0
