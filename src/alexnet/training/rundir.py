"""One process owns a run directory: an OS lock that dies with the process, and no silent reuse of a finished run.

Two ``train`` processes on one ``--out`` would interleave ``metrics.csv`` and checkpoints, and one's clean-up of
stale temporaries could delete the other's file being written; a new run into a directory that holds one would
replace its checkpoints. `claim` refuses both with one line before anything is loaded or written. A run that fails
before it writes anything (a mistyped ``--data-dir``) leaves no empty directory behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from ..errors import AlexNetError
from ..files import MB, RUN_RECORDS, RUN_REPORT, RUN_RESULTS, read_json_input

LOCK = ".lock"


class RunDirectoryError(AlexNetError):
    """The run directory is owned by another process, or holds a run this one would overwrite."""


class RunLock:
    """An exclusive ``flock`` on ``DIR/.lock`` (with the owner's pid in it, for the message), released by `release`
    or when the process ends, however it ends."""

    def __init__(self, out: Path) -> None:
        self.out = out
        # The directories this lock makes (``out`` and any missing parents, innermost first): `release` removes those
        # still empty, so a run that failed before writing leaves no trace (``runs/<time>-<model>-<data>/.lock``).
        self.created = [d for d in (out, *out.parents) if not d.exists()]
        out.mkdir(parents=True, exist_ok=True)
        self.made_lock = not (out / LOCK).exists()
        self.fd = os.open(out / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.read(self.fd, 32).decode(errors="replace").strip() or "another process"
            os.close(self.fd)
            raise RunDirectoryError(
                f"{out} is being written by process {owner}: wait for it, or choose another --out"
            ) from None
        os.ftruncate(self.fd, 0)
        os.write(self.fd, str(os.getpid()).encode())

    def release(self, refused: bool = False) -> None:
        """Unlock. With ``refused`` (the claim was refused: nothing written) the lock file goes too where this made
        it, so a user's directory keeps nothing of the attempt; directories this made go when they hold nothing else."""
        with contextlib.suppress(OSError):
            if refused and self.made_lock:
                (self.out / LOCK).unlink()  # while still held: no other process can have claimed it
            if self.created and [p.name for p in self.out.iterdir()] == [LOCK]:
                (self.out / LOCK).unlink()  # while still held: no other process can have claimed it
                for directory in self.created:
                    directory.rmdir()  # innermost first; one that holds something else stops it (OSError)
        with contextlib.suppress(OSError):
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)


def claim(out: Path, resuming: bool) -> RunLock:
    """Lock ``out`` for this process; unless ``resuming``, refuse a directory that already holds a run; and refuse
    one that holds files a run would write over (a project's own ``config.json`` or ``report.md``, with ``--out .``)
    unless they are a run's own, left by one that stopped before its first checkpoint.

    Raises:
        RunDirectoryError: another live process holds it, it holds a run and this is not a resume, or it holds
            files a run would replace.
    """
    lock = RunLock(out)
    found = [name for name in RUN_RESULTS if (out / name).exists()]
    if found and not resuming:
        lock.release(refused=True)
        raise RunDirectoryError(
            f"{out} already holds a run ({found[0]}): continue it with --resume auto, or choose a new --out"
        )
    others = [] if found else _would_replace(out)
    if others:
        lock.release(refused=True)
        raise RunDirectoryError(
            f"{out} holds {others[0]}, which a run writes: choose a new --out (a run's own directory is best)"
        )
    return lock


def _would_replace(out: Path) -> list[str]:
    """The files in ``out`` a new run would write over, but for a run's own config.json and held_out.json (a run
    that stopped before its first checkpoint: starting again there is what the user means)."""
    names = [name for name in (*RUN_REPORT, *RUN_RECORDS) if (out / name).exists()]
    names += sorted(p.name for pattern in ("epoch-*.pt", "best-epoch*.pt") for p in out.glob(pattern))
    if set(names) <= {"config.json", "held_out.json"} and _is_run_config(out / "config.json"):
        return []
    return names


def _is_run_config(path: Path) -> bool:
    """Whether ``path`` is a run's config.json, or there is none (nothing of the user's to keep)."""
    if not path.exists():
        return True
    try:
        config = read_json_input(path, MB, "run config")
    except (AlexNetError, OSError):  # a FIFO, too large, not JSON: not a run's
        return False
    return isinstance(config, dict) and {"model", "data", "optim", "train"} <= config.keys()
