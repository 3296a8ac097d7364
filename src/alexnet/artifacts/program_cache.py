"""Compiled int8 programs kept between loads.

An int8 ``.pt2`` holds a graph, never compiled code (loading a shared library from a model file would run its code),
so every load compiles it with AOTInductor: 13 s for a small model on 2 cores of an AMD EPYC (Zen 4), half a minute
with autotuning, paid again by every `alexnet predict`. The package that compile makes is this project's own output,
so it is kept under ``$ALEXNET_PROGRAM_CACHE`` (default ``$TORCH_HOME/alexnet/programs``, ``~/.cache/torch/...``; ``0``
turns the cache off), named by the SHA-256 of the model file and of everything else the compile depends on: the
batch, autotuning, this CPU's instruction sets (the graph rewrites and ``-march`` follow them), torch's version and
the source of the modules that rewrite and load the graph. A model file whose bytes differ, even by its metadata,
compiles anew. The directory is made private to the user (0700), as a cache of shared libraries must be, and a
package is only taken from a directory no one else may write; the `KEEP` most recently used programs stay.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

import torch

from .. import native
from ..files import atomic_write

log = logging.getLogger(__name__)

ENV = "ALEXNET_PROGRAM_CACHE"
KEEP = 8  # programs; alexnet_owt's int8 package is ~62 MB


def cache_dir() -> Path | None:
    """Where compiled programs are kept, or None when ``$ALEXNET_PROGRAM_CACHE`` is ``0``."""
    chosen = os.environ.get(ENV)
    if chosen == "0":
        return None
    return Path(chosen) if chosen else Path(torch.hub.get_dir()).parent / "alexnet" / "programs"


def _code_digest() -> str:
    # The modules whose code decides what a program compiles to: an edit (or an upgrade) compiles anew.
    here = Path(__file__).parent
    sources = [here / name for name in ("program.py", "qlinear_rows.py", "aoti_cpu.py", "csrc/qlinear_rows.cpp")]
    digest = hashlib.sha256()
    for source in sources:
        with contextlib.suppress(OSError):
            digest.update(source.read_bytes())
    return digest.hexdigest()


def key(file: Path, batch: int, autotune: bool) -> str:
    """The cache's name for ``file`` compiled for ``batch`` on this CPU, with this torch and this code."""
    with open(file, "rb") as f:
        content = hashlib.file_digest(f, "sha256").hexdigest()
    parts = [content, batch, autotune, native.cpu_fingerprint(), torch.__version__, _code_digest()]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:32]


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
    used beyond `KEEP`. A cache that cannot be written costs the next load its compile, never this one's model."""
    root = cache_dir()
    if root is None:
        return
    try:
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(root, 0o700)  # a directory made before, or by mkdir under a umask: only its user may add libraries
        with open(package, "rb") as src:
            atomic_write(root / f"{name}.pt2", lambda f: shutil.copyfileobj(src, f), mode=0o600)
        kept = sorted(root.glob("*.pt2"), key=lambda p: p.stat().st_mtime, reverse=True)
        for old in kept[KEEP:]:
            old.unlink(missing_ok=True)
    except Exception as err:  # WriteError, OSError: a read-only or full disk
        log.debug("compiled program not kept in %s: %s", root, err)
