"""C++ kernels compiled on first use by torch's C++ extension builder (a C++ compiler and ninja needed): the fused LRN
(`alexnet.models.fused_lrn`), ReLU → max-pool (`alexnet.models.fused_pool`) and batch norm → ReLU
(`alexnet.models.fused_bn`), conv1's space-to-depth blocks (`alexnet.models.fused_stem`), the bf16-copy SGD step
(`alexnet.training.bf16_copies`) and the int8 fc rows (`alexnet.artifacts.qlinear_rows`). Each is built for the CPU it
runs on (``-march=native``) and cached under ``$TORCH_EXTENSIONS_DIR`` (default ``~/.cache/torch_extensions``), named
after this CPU's instruction sets and the hash of what it compiles: its source, the headers beside it, its flags and
torch's version. A finished build is marked, and any checkout or environment whose source hashes the same loads it
without asking the builder again (the builder writes the source's path and torch's include paths into its build file
and rebuilds when they change: a second clone or venv compiled every kernel anew, ~2 min on 2 cores). Two processes
starting together (torchrun's ranks) build once. A build removes the builds it replaces (`prune_replaced`). `prepare`
builds several side by side, one compiler each, before a first step would ask for them one after the other."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import logging
import os
import platform
import re
import shutil
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .logs import level_set

log = logging.getLogger(__name__)
_lock = threading.Lock()  # guards _locks
_locks: dict[str, threading.Lock] = {}  # one a kernel: two kernels may build at once, one kernel builds once
_loaded: dict[str, Any] = {}  # name → the extension, or None once building it failed


_CPUINFO = Path("/proc/cpuinfo")


def _cpuinfo_line(key: str, cpuinfo: Path = _CPUINFO) -> str:
    """The value of the first ``key`` line of ``cpuinfo`` (the first core's), "" where there is none."""
    try:
        with open(cpuinfo) as f:
            line = next((line for line in f if line.startswith(key)), "")
    except OSError:
        return ""
    return line.partition(":")[2].strip()


def cpu_flags(cpuinfo: Path = _CPUINFO) -> set[str]:
    """This CPU's instruction-set flags (``/proc/cpuinfo``: ``avx2``, ``avx512_vnni``...; empty elsewhere)."""
    return set(_cpuinfo_line("flags", cpuinfo).split())


VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})  # u8 × s8 products summed straight into int32


def int8_saturates() -> bool:
    """Whether oneDNN's u8 × s8 products can saturate on this CPU: an x86 CPU without VNNI or AMX, where they are
    added in pairs into int16 (``vpmaddubsw``), so 255 · 127 · 2 overflows and one side must keep to 7 bits
    (`alexnet.artifacts.program.seven_bit_weights`)."""
    flags = cpu_flags()
    if flags:  # Linux on x86: /proc/cpuinfo's flags
        return not flags & VNNI_FLAGS
    import torch  # elsewhere, torch's own cpuinfo (the same flag names)

    capabilities = torch.cpu.get_capabilities()
    return capabilities.get("architecture") in {"x86_64", "x86"} and not any(
        capabilities.get(flag) for flag in VNNI_FLAGS
    )


BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})  # bf16 products in hardware: vdpbf16ps, AMX's bf16 tiles


def bf16_products() -> bool:
    """Whether this x86 CPU multiplies bf16 in hardware (AVX512-BF16 or AMX). Without them oneDNN still runs bf16 on
    any AVX-512 CPU, widening each value to fp32 first: an Ice Lake-class Xeon ran a 4096² bf16 matmul at 61 GFLOP/s
    against fp32's 319, and a convolution at 69 against 348. False on other architectures (ask oneDNN there)."""
    flags = cpu_flags()
    if flags:  # Linux on x86: /proc/cpuinfo's flags
        return bool(flags & BF16_FLAGS)
    import torch  # elsewhere, torch's own cpuinfo (the same flag names)

    capabilities = torch.cpu.get_capabilities()
    return any(capabilities.get(flag) for flag in BF16_FLAGS)


def x86() -> bool:
    """Whether this is an x86 CPU."""
    return platform.machine().lower() in {"x86_64", "amd64", "i386", "i686"}


def cpu_model(cpuinfo: Path = _CPUINFO) -> str:
    """This CPU's model name (``/proc/cpuinfo``; "" elsewhere)."""
    return _cpuinfo_line("model name", cpuinfo)


def cpu_vendor(cpuinfo: Path = _CPUINFO) -> str:
    """This CPU's vendor (``/proc/cpuinfo``'s vendor_id: ``GenuineIntel``, ``AuthenticAMD``; "" elsewhere)."""
    return _cpuinfo_line("vendor_id", cpuinfo)


def cpu_fingerprint() -> str:
    """A short hash of this CPU's instruction-set flags (``/proc/cpuinfo``; empty elsewhere)."""
    return hashlib.sha256(_cpuinfo_line("flags").encode()).hexdigest()[:12]


def source_tag(source: Path, flags: tuple[str, ...] = ()) -> str:
    """A short hash of what a build compiles: the source, the headers beside it (the shared helpers it may include:
    changing one rebuilds every kernel), and the flags."""
    headers = [h.read_text() for h in sorted(source.parent.glob("*.h"))]
    return hashlib.sha256(" ".join([source.read_text(), *headers, *flags]).encode()).hexdigest()[:10]


BUILT = "alexnet-built"  # in a build directory: its library is whole (written after it loaded)


def build(name: str, source: Path, flags: tuple[str, ...] = ()) -> Any:
    """The extension compiled from ``source`` (a module with the functions it binds), named ``name``.

    Raises:
        Exception: whatever the builder raises where it cannot build (no compiler, no ninja, a read-only cache).
    """
    # -fopenmp: ATen's parallel_for is a header template; compiled without OpenMP it runs on one thread (measured:
    # the fused LRN then trained slower than the reference formula). -fno-math-errno: with errno, sqrt branches to
    # libm per element and the loops stay scalar (conv1's LRN at batch 128: 86 ms forward instead of 45).
    # The builder's "No CUDA runtime is found" warning is no news on a CPU build.
    with level_set("torch.utils.cpp_extension", logging.ERROR):
        import torch
        from filelock import FileLock  # torch's own dependency
        from torch.utils import cpp_extension  # its import logs that warning

        tag = source_tag(source, (*flags, torch.__version__, str(torch.version.git_version)))
        full = f"{name}_{cpu_fingerprint()}_{tag}"
        # The builder's own directory for the name: $TORCH_EXTENSIONS_DIR or its per-Python, per-accelerator folder.
        directory = Path(cpp_extension._get_build_directory(full, False))
        # Our lock, not the builder's (held only while it builds): a process that waited for another's build
        # finds it marked and loads it, where the builder would rebuild it for its own paths.
        lock = FileLock(directory / "alexnet.lock")
        try:
            lock.acquire()
        except OSError:  # a cache to read, not write: a container image with its kernels built in, mounted read-only
            module = _load_marked(directory, full)
            if module is None:
                raise
            log.debug("%s kernel loaded from a read-only cache", name)
            return module
        try:
            module = _load_marked(directory, full) or _build_and_mark(full, source, flags, directory)
        finally:
            lock.release()
    log.debug("%s kernel loaded", name)
    try:
        prune_replaced(directory, f"{name}_{cpu_fingerprint()}_")
    except OSError as err:  # a cache we may read but not clean: the kernel works all the same
        log.debug("earlier %s builds left in place: %s", name, err)
    return module


def _build_and_mark(name: str, source: Path, flags: tuple[str, ...], directory: Path) -> Any:
    """torch's builder on ``source`` in ``directory``, then the mark that its library is whole."""
    from torch.utils import cpp_extension

    # `load`, not `load_inline`: the latter puts torch/extension.h (every ATen op, the C++ frontend) before the
    # source, which then takes 57 s to compile on one core of an AMD EPYC (Zen 3) instead of 24 with the headers
    # each source names.
    module = cpp_extension.load(
        name,
        [str(source)],
        extra_cflags=["-O3", "-march=native", "-fopenmp", "-fno-math-errno", *flags],
        extra_ldflags=["-fopenmp"],
        build_directory=str(directory),
        verbose=False,
    )
    marker = directory / f"{BUILT}.tmp{os.getpid()}"
    marker.write_text(f"{source}\n")  # which source built it, for whoever reads the cache
    marker.replace(directory / BUILT)
    return module


def _load_marked(directory: Path, name: str) -> Any | None:
    """The module of a finished build in ``directory`` (marked `BUILT`), or None: unmarked, or a library that does
    not load (a cache copied from elsewhere, a damaged file), which the builder then builds again."""
    library = directory / f"{name}.so"
    if not (directory / BUILT).is_file() or not library.is_file():
        return None
    try:
        spec = importlib.util.spec_from_file_location(name, library)
        module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        spec.loader.exec_module(module)  # type: ignore[union-attr]
    except (ImportError, OSError) as err:
        log.debug("%s does not load (%s): building it again", library, err)
        with contextlib.suppress(OSError):  # a read-only cache: the build then fails as it would have
            (directory / BUILT).unlink(missing_ok=True)
            library.unlink(missing_ok=True)  # else the builder, finding it newer than its source, would keep it
        return None
    return module


_COMPILED = re.compile(r"^build \S+: compile (.+)$", re.MULTILINE)


def prune_replaced(build_dir: Path, prefix: str) -> list[Path]:
    """Remove the builds beside ``build_dir`` (named ``prefix``…) that it replaces, and return them: those whose
    build file is this one's but for the name, so differ only in the source's text (an edit, or an upgrade
    installed at the same path), and those whose source is gone (a deleted checkout). Each source edit or upgrade
    otherwise left another build of ~1 MB a kernel in the cache, for good. Builds for another checkout, torch or set of
    flags stay: switching back to them would rebuild."""
    mine = (build_dir / "build.ninja").read_text()
    removed = []
    for other in build_dir.parent.glob(f"{prefix}*"):
        # Only finished builds: another process may be compiling into a directory whose build file it wrote first
        # (an older source, started before an edit); its library is linked last.
        if other == build_dir or not (other / f"{other.name}.so").is_file():
            continue
        try:
            theirs = (other / "build.ninja").read_text()
        except OSError:  # not ours
            continue
        sources = _COMPILED.findall(theirs)
        if theirs.replace(other.name, build_dir.name) == mine or (sources and not all(map(os.path.exists, sources))):
            shutil.rmtree(other, ignore_errors=True)
            removed.append(other)
    if removed:
        log.debug("removed %d replaced build(s) of %s", len(removed), prefix)
    return removed


def enabled(switch: str) -> bool:
    """False where the environment variable ``switch`` is "0" (read per call: the tests turn kernels off and on)."""
    return os.environ.get(switch, "1") != "0"


def tracing() -> bool:
    """Whether a tracer or compiler is at work (TorchScript, ``torch.compile``, ``torch.export``): the programs they
    write see torch's own operators, so they depend on no kernel of this library."""
    import torch  # imported already by whoever asks; here, so that this module's import needs no torch

    return (
        torch.jit.is_tracing()
        or torch.jit.is_scripting()
        or torch.compiler.is_compiling()
        or torch.compiler.is_exporting()
    )


def compile_constant(fn: Any) -> Any:
    """Mark ``fn`` (no arguments) as a constant to ``torch.compile``: it is called once while a graph is traced and
    its answer kept, rather than traced into or breaking the graph. In eager mode it runs on every call."""
    # torch.compiler.assume_constant_result's whole effect (torch/_dynamo/decorators.py) without its import of
    # torch._dynamo, which is 0.9 s of `import alexnet`'s 2.0 s on every process, compiling or not. Should torch
    # rename the mark, tests/models/test_lrn.py's fullgraph compile fails on the graph break.
    fn._dynamo_marked_constant = True
    return fn


def load(
    name: str, source: Path, flags: tuple[str, ...] = (), *, instead: str, switch: str | None = None
) -> Any | None:
    """`build`, once per process (threads asking for the same kernel wait for the first); None where it cannot be
    built, with one warning that ``instead`` runs, and where the environment variable ``switch`` turns it off
    (``switch=0``)."""
    if switch is not None and not enabled(switch):
        return None
    if name not in _loaded:
        with _lock:
            lock = _locks.setdefault(name, threading.Lock())
        with lock:
            if name not in _loaded:
                try:
                    _loaded[name] = build(name, source, flags)
                except Exception as err:  # no compiler, no ninja, a read-only cache
                    log.warning("%s kernel unavailable, %s runs instead (%s)", name, instead, str(err)[:200])
                    _loaded[name] = None
    return _loaded[name]


def prepare(kernels: Iterable[Callable[[], Any]]) -> None:
    """Build, or load from the cache, each of ``kernels`` (a module's ``kernel`` function) side by side, a thread
    each up to one a core, before the first step asks for them one at a time: the builder runs one compiler a
    kernel, 13-15 s each on 2 cores of an AMD EPYC (Zen 2), so a first run waits for the slowest rather than their
    sum (the demo's two: 26.1 → 13.2 s). A kernel that cannot be built warns and is left out, as on first use."""
    todo = list(dict.fromkeys(kernels))
    if len(todo) < 2:
        for kernel in todo:
            kernel()
        return
    # One quieting of the builder's logger for every thread: `build`'s own, entered by two threads at once, can
    # restore the level the other one set, and leave it set.
    threads = min(len(todo), os.cpu_count() or 1)
    with level_set("torch.utils.cpp_extension", logging.ERROR), ThreadPoolExecutor(threads) as pool:
        for done in [pool.submit(kernel) for kernel in todo]:
            done.result()
