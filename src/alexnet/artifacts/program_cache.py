"""Compiled programs kept between loads.

An int8 ``.pt2`` holds a graph, never compiled code (loading a shared library from a model file would run its code),
so every load compiles it with AOTInductor: 13 s for a small model on 2 cores of an AMD EPYC (Zen 4), half a minute
with autotuning, paid again by every `alexnet predict`; `--compile` (`alexnet.inference.compiled`) pays ~14 s for
`alexnet_owt` at every start of `alexnet serve`. The package that compile makes is this project's own output, so it
is kept under ``$ALEXNET_PROGRAM_CACHE`` (default ``$TORCH_HOME/alexnet/programs``, ``~/.cache/torch/...``; ``0``
turns the cache off), named by the SHA-256 of the program itself (`program_digest`: graph, shapes, weights) and of
all else the compile depends on: autotuning, this CPU's instruction sets (``-march``), torch's version and this
package's source. The directory is made private to the user (0700), as a cache of shared libraries must be, and a
package is only taken from a directory no one else may write; the `KEEP` most recently used packages stay, within
`KEEP_BYTES`.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import re
import shutil
from pathlib import Path

import torch

from .. import native
from ..files import atomic_write

log = logging.getLogger(__name__)

ENV = "ALEXNET_PROGRAM_CACHE"
_KEY_CHARS = 32  # of a SHA-256 in hex: a package's name
_KEY = re.compile(f"[0-9a-f]{{{_KEY_CHARS}}}")
KEEP = 8  # packages
KEEP_BYTES = 2 << 30  # alexnet_owt's bf16 package (`--compile`) is 246 MB, its int8 one ~62 MB


def cache_dir() -> Path | None:
    """Where compiled programs are kept, or None when ``$ALEXNET_PROGRAM_CACHE`` is ``0``."""
    chosen = os.environ.get(ENV)
    if chosen == "0":
        return None
    return Path(chosen) if chosen else Path(torch.hub.get_dir()).parent / "alexnet" / "programs"


@functools.cache
def _code_digest() -> str:
    # The package's source (Python and C++): its custom operators (the fused LRN, the int8 fc rows) are part of what a
    # program runs, and this module's compile settings part of how; an edit or an upgrade compiles anew.
    root = Path(__file__).parents[1]
    digest = hashlib.sha256()
    for source in sorted(p for pattern in ("*.py", "*.cpp", "*.h") for p in root.rglob(pattern)):
        digest.update(source.relative_to(root).as_posix().encode())
        digest.update(source.read_bytes())
    return digest.hexdigest()


def program_digest(program: torch.export.ExportedProgram) -> str:
    """The SHA-256 of what ``program`` computes: its graph's code, its signature and shapes (dynamic ranges too), and
    every weight's bytes; not the nodes' provenance metadata, which carries Python object ids (two quantizations of
    the same model, bit for bit the same weights, were written with different ones)."""
    digest = hashlib.sha256()
    for text in (program.graph_module.code, program.graph_signature, program.range_constraints):
        digest.update(str(text).encode())
    for node in program.graph.nodes:
        if node.op == "placeholder":
            val = node.meta.get("val")
            digest.update(f"{node.name}:{getattr(val, 'shape', None)}:{getattr(val, 'dtype', None)}".encode())
    for name, tensor in sorted({**program.state_dict, **program.constants}.items()):
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}:{tensor.stride()}".encode())
        digest.update(tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy())  # its buffer, not a copy
    return digest.hexdigest()


def key(program: torch.export.ExportedProgram, autotune: bool) -> str | None:
    """The cache's name for ``program`` compiled with ``autotune`` on this CPU, with this torch and this code (the
    same program, however it was made, compiles once); None where its weights cannot be read as bytes."""
    try:
        content = program_digest(program)
    except Exception as err:  # a constant that is not a plain tensor: compiled every time, as before
        log.debug("no cache key for this program: %s", err)
        return None
    parts = [content, autotune, native.cpu_fingerprint(), torch.__version__, _code_digest()]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:_KEY_CHARS]


def _private(path: Path) -> bool:
    """Whether ``path`` is this user's and no one else may write it: a package another user could have put or
    replaced there would run their code here."""
    st = path.stat()
    return st.st_uid == os.getuid() and not st.st_mode & 0o022


def lookup(name: str) -> Path | None:
    """The kept package named ``name``, marked as just used; None when there is none, no cache, or the cache or the
    package is not private to this user."""
    root = cache_dir()
    path = root / f"{name}.pt2" if root else None
    if path is None or not path.is_file():
        return None
    if not (_private(path.parent) and _private(path)):
        log.warning("%s is not private to this user: its compiled programs are not used", path.parent)
        return None
    with contextlib.suppress(OSError):
        os.utime(path)
    return path


def store(name: str, package: Path) -> None:
    """Keep ``package`` as ``name`` (atomically: a reader sees the whole file or none), and drop the least recently
    used beyond `KEEP` packages or `KEEP_BYTES`. A cache that cannot be written costs the next load its compile, never
    this one's model."""
    root = cache_dir()
    if root is None:
        return
    try:
        if not root.exists():
            root.mkdir(parents=True, mode=0o700)
            os.chmod(root, 0o700)  # mkdir's mode passes through the umask: only its user may add libraries
        elif not _private(root):  # a directory of the user's choosing that others may write: left as it is
            log.debug("compiled program not kept: %s is not private to this user", root)
            return
        with open(package, "rb") as src:
            atomic_write(root / f"{name}.pt2", lambda f: shutil.copyfileobj(src, f), mode=0o600)
        # Only the packages this cache named: a user's own programs in a directory they chose stay.
        packages = [p for p in root.glob("*.pt2") if _KEY.fullmatch(p.stem)]
        total = 0
        for rank, kept in enumerate(sorted(packages, key=lambda p: p.stat().st_mtime, reverse=True)):
            total += kept.stat().st_size
            if rank and (rank >= KEEP or total > KEEP_BYTES):  # the newest stays, whatever its size
                kept.unlink(missing_ok=True)
    except Exception as err:  # WriteError, OSError: a read-only or full disk
        log.debug("compiled program not kept in %s: %s", root, err)
