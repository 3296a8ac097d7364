"""Every file the project reads or writes passes here.

Reading: one guard for every file a command reads: it must be a regular file (not a FIFO, a device or a directory,
which would hang or read forever), no larger than a limit, and only then is it read and parsed.

Writing: every write goes to a temporary file in the same directory, is fsynced, then renamed over the target, so a
crash leaves the old file or the new one, never half of one. New files get the user's umask, as ``open`` gives.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import math
import os
import re
import shutil
import socket
import stat
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from .errors import AlexNetError, WriteError

log = logging.getLogger(__name__)

MB = 1 << 20
DISK_FULL_BYTES = 64 * MB  # a failed write with less than this free is put down to the disk
NAME_MAX = 255  # bytes in a file name: Linux's file systems, macOS's APFS, Windows' NTFS (in UTF-16 units)
# How a writer names itself in the files it stages (`process_tag`): its process id and its machine's host name, so
# that a directory shared between machines (an HPC cluster's home over NFS, a volume two containers mount) never has
# one machine judge another's files by process ids that mean nothing there.
TAG = r"(?P<pid>\d+)@(?P<host>[A-Za-z0-9-]+)"
ANY_TAG = r"\d+@[A-Za-z0-9-]+"


class InputFileError(AlexNetError):
    """A file a command was given cannot be read as what it should be; the message says why."""


def check_input(path: Path | str, max_bytes: int, what: str = "file") -> Path:
    """``path`` if it is a regular file of at most ``max_bytes``.

    Raises:
        FileNotFoundError: it does not exist.
        InputFileError: a directory, FIFO, device or socket, or too large.
    """
    path = Path(path)
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} {path} does not exist") from None
    except OSError as err:
        raise InputFileError(f"cannot read {what} {path}: {err.strerror or err}") from None
    if not stat.S_ISREG(info.st_mode):
        kind = "a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file (a FIFO, device or socket)"
        raise InputFileError(f"{what} {path} is {kind}")
    if info.st_size > max_bytes:
        raise InputFileError(f"{what} {path} is {_size(info.st_size)}, more than the {_size(max_bytes)} allowed")
    return path


def read_input(path: Path | str, max_bytes: int, what: str = "file") -> bytes:
    """The bytes of ``path``, checked as `check_input` does but on the opened file itself: opened without blocking
    (a FIFO must not wait for a writer) and inspected with ``fstat``, so a file swapped for a FIFO or device between
    a check and the read cannot hang it; read no further than the limit, should the file grow.

    Raises:
        FileNotFoundError, InputFileError: as `check_input`.
    """
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} {path} does not exist") from None
    except OSError as err:
        raise InputFileError(f"cannot read {what} {path}: {err.strerror or err}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = "a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file (a FIFO, device or socket)"
            raise InputFileError(f"{what} {path} is {kind}")
        if info.st_size > max_bytes:
            raise InputFileError(f"{what} {path} is {_size(info.st_size)}, more than the {_size(max_bytes)} allowed")
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read(min(max_bytes, info.st_size) + 1)  # no more than it said it held, plus one to see growth
    except OSError as err:
        raise InputFileError(f"cannot read {what} {path}: {err.strerror or err}") from None
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise InputFileError(f"{what} {path} is larger than the {_size(max_bytes)} allowed")
    return data


def _size(n: int) -> str:
    """A byte count as people read it: ``190.7 MB``, ``64 KB`` (a limit under 1 MB said as 0 MB said nothing)."""
    return f"{n / MB:.1f} MB" if n >= MB else f"{n / 1024:.0f} KB"


def read_text_input(path: Path | str, max_bytes: int, what: str = "file") -> str:
    try:
        return read_input(path, max_bytes, what).decode()
    except UnicodeDecodeError:
        raise InputFileError(f"{what} {path} is not UTF-8 text") from None


def read_json_input(path: Path | str, max_bytes: int, what: str = "file") -> Any:
    """Parsed JSON of ``path``; too deep a nesting is a parse error like any other."""
    text = read_text_input(path, max_bytes, what)
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as err:
        raise InputFileError(f"{what} {path} is not valid JSON ({type(err).__name__})") from None


def check_target(path: Path | str) -> Path:
    """Refuse to write ``path`` when something other than a regular file is there (renaming over a FIFO, a device or
    a directory would replace it: as root, ``/dev/null`` itself), or when what should hold it is not a directory.

    Raises:
        WriteError: naming what is there.
    """
    path = Path(path)
    if len(os.fsencode(path.name)) > NAME_MAX:  # the file system's limit: every check below would raise it
        raise WriteError(f"could not write {path}: its name is longer than {NAME_MAX} bytes; choose a shorter one")
    if path.is_symlink() and not path.exists():
        raise WriteError(f"could not write {path}: it is a dangling symbolic link")
    # The nearest ancestor that exists must be a directory (else making the parents fails with "File exists").
    ancestor = next((p for p in path.absolute().parents if p.exists()), None)
    if ancestor is not None and not ancestor.is_dir():
        raise WriteError(f"could not write {path}: {ancestor} is not a directory")
    if path.exists() and not path.is_file():
        kind = "a directory" if path.is_dir() else "not a regular file (a device, FIFO or socket)"
        raise WriteError(f"could not write {path}: it exists and is {kind}; choose another path")
    return path


# What makes a directory a run: its checkpoints, weights and metrics, which nothing but that run may replace.
RUN_RESULTS = ("last.pt", "best.pt", "best.safetensors", "metrics.csv")
# A run's report and the figures it embeds (`alexnet report` writes them again from the run's own files).
RUN_REPORT = ("report.md", "curves.png", "conv1_filters.png", "confusion.png")
# Everything else a run writes at its top level (besides epoch-N.pt and best-epochN.pt, and their digests).
RUN_RECORDS = ("config.json", "held_out.json", "ema.safetensors")


def check_replaceable(path: Path | str) -> Path:
    """`check_target`, and refuse to replace a training checkpoint (its SHA-256 recorded beside it as ``NAME.sha256``)
    or one of a run directory's results or report figures: an export, features, a conversion or an evaluation of
    other images written there would lose them.

    Raises:
        WriteError: naming what is there.
    """
    path = check_target(path)
    if not path.exists():
        return path
    if path.with_name(path.name + ".sha256").exists():
        raise WriteError(f"could not write {path}: it is a checkpoint with its digest beside it; choose another file")
    if path.name in RUN_RESULTS + RUN_REPORT and (path.parent / "metrics.csv").is_file():
        raise WriteError(f"could not write {path}: it is one of the run {path.parent}'s results; write elsewhere")
    return path


def check_outputs(directory: Path | str, names: Iterable[str], ours: bool, flag: str) -> None:
    """Before a command's work, refuse a ``directory`` that holds one of the files it will write at the end
    (``report.md``, ``results.json``, ``fig1.png``) unless ``ours``: the caller found its own earlier output there (a
    reproduction's records, a figure's JSON), so the file is the command's to write again. A user's ``report.md``
    in ``--records .`` is not lost after hours of training. ``flag`` is the option that chose ``directory``. Where
    ``directory`` is not a directory, or such a name is a directory, FIFO or device, `check_target` says so now,
    not when the file is written.

    Raises:
        WriteError: naming the first such file.
    """
    directory = Path(directory)
    names = list(names)
    for name in names:
        check_target(directory / name)
    found = [] if ours else [name for name in names if (directory / name).exists()]
    if found:
        raise WriteError(
            f"{directory} holds {found[0]}, which this command writes when it finishes and did not write before: "
            f"move it, or choose another {flag}"
        )


RECORD_BYTES = 64 * MB  # the JSON records commands write: a run's history, its held-out indices (ImageNet's ~10 MB)


def read_record(path: Path | str) -> Any:
    """The JSON at ``path`` (at most `RECORD_BYTES`), or None where there is none or it is not JSON: how a command
    recognises a record it wrote earlier."""
    try:
        return read_json_input(path, RECORD_BYTES, "record")
    except (AlexNetError, OSError):  # missing, a FIFO, too large, not JSON: not a record
        return None


def is_record(path: Path | str, keys: Iterable[str]) -> bool:
    """Whether ``path`` is a JSON object with every one of ``keys``: a record a command wrote (`read_record`)."""
    record = read_record(path)
    return isinstance(record, dict) and set(keys) <= record.keys()


def atomic_write(
    path: Path | str,
    write: Callable[[Any], None],
    before_rename: Callable[[], None] | None = None,
    mode: int | None = None,
) -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, fsync it, and rename it over ``path``: every file
    the project writes goes through here, so a failure of any kind (a full disk, which ``torch.save`` reports as a
    RuntimeError; permissions; a writer's own error) leaves the previous file as it was and surfaces as one
    `WriteError`.

    ``before_rename`` runs once the new content is durable and before it replaces the old. The file gets ``mode``,
    by default what the user's umask gives a new file (as ``open`` would).
    """
    path = check_target(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # A writer killed outright (SIGKILL, the out-of-memory killer) left .<name>.<tag>.<random>.tmp: the size of
        # what it was writing (a checkpoint, a quantized model, a features array), hidden, for good.
        name = staging_name(path.name)
        remove_abandoned(path.parent, rf"\.{re.escape(name)}\.{TAG}\.\w+\.tmp")
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.{process_tag()}.", suffix=".tmp", dir=path.parent)
        os.fchmod(fd, mode if mode is not None else 0o666 & ~_umask())  # mkstemp makes 0600: use the user's umask
    except OSError as err:
        raise WriteError(f"could not write {path}: {err.strerror or err}") from err
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if before_rename is not None:
            before_rename()
        os.replace(tmp, path)
    except BaseException as err:
        free = free_bytes(path.parent)  # before the temporary goes: deleting it frees what it filled
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(err, WriteError) or not isinstance(err, Exception):  # Ctrl-C and exits pass as they are
            raise
        if isinstance(err, OSError) and err.strerror:
            reason = err.strerror
        elif free is not None and free < DISK_FULL_BYTES:
            # torch.save reports a full disk as "[enforce fail at inline_container.cc] unexpected pos ..."
            reason = f"no space left on its disk ({free / MB:.1f} MB free)"
        else:
            reason = (str(err).splitlines() or [type(err).__name__])[0]
        raise WriteError(f"could not write {path}: {reason}; any previous {path.name} is unchanged") from err
    with contextlib.suppress(OSError):  # make the rename itself durable (not possible on every platform)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def staging_name(name: str) -> str:
    """``name`` as it appears in the names of the files staged beside it: itself, or for a long name (a file name
    holds at most `NAME_MAX` bytes, and a staged name adds the process tag) its first 64 bytes and a digest of all."""
    encoded = os.fsencode(name)
    if len(encoded) <= 120:
        return name
    head = encoded[:64].decode("utf-8", "ignore")  # whole characters only
    return f"{head}~{hashlib.sha256(encoded).hexdigest()[:16]}"


def process_tag() -> str:
    """This process's name in the files it stages beside a target (`TAG`): ``<pid>@<host>``."""
    return f"{os.getpid()}@{_host()}"


def _host() -> str:
    # Only the characters TAG allows: a host name may hold dots (a FQDN) and, rarely, anything else.
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:63] or "host"


def remove_abandoned(directory: Path, pattern: str) -> list[Path]:
    """Remove, and return, the files in ``directory`` whose whole name matches ``pattern`` (a regular expression
    holding `TAG` once) where the process the tag names ran on this machine and is gone: what a writer killed
    outright (SIGKILL, the kernel's out-of-memory killer) left, its cleanup never run. A live process's files,
    another machine's (whose processes cannot be seen from here) and names without a tag are kept."""
    mine = re.compile(pattern)
    host = _host()
    removed = []
    with contextlib.suppress(OSError):  # a directory we may not list: nothing to tidy
        for path in directory.iterdir():
            match = mine.fullmatch(path.name)
            if match and match["host"] == host and not _running(int(match["pid"])):
                with contextlib.suppress(OSError):
                    path.unlink()
                    removed.append(path)
    if removed:
        log.info("removed %d file(s) an interrupted process left in %s", len(removed), directory)
    return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):  # another user's process (alive), or no process id at all
        return True
    return True


def free_bytes(directory: Path) -> int | None:
    """Bytes a new file in ``directory`` may still take (what ``df`` shows as available), or None if unknown."""
    try:
        return shutil.disk_usage(directory).free
    except OSError:
        return None


def json_text(tree: Any, indent: int | None = None) -> str:
    """``tree`` as JSON that any parser reads: a float that is not finite (a diverged loss, an effect not measured)
    becomes null, where ``json.dumps`` would write NaN or Infinity, which strict parsers (JavaScript's, jq) refuse."""

    def finite(v: Any) -> Any:
        if isinstance(v, float):
            return v if math.isfinite(v) else None
        if isinstance(v, dict):
            return {k: finite(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [finite(x) for x in v]
        return v

    return json.dumps(finite(tree), indent=indent, allow_nan=False)


def write_bytes(path: Path | str, data: bytes) -> Path:
    """``data`` into ``path`` through `atomic_write`."""
    atomic_write(path, lambda f: f.write(data))
    return Path(path)


def write_text(path: Path | str, text: str) -> Path:
    return write_bytes(path, text.encode())


def save_figure(fig: Any, path: Path | str, **kwargs: Any) -> Path:
    """A matplotlib figure as a PNG through `atomic_write` (never a half-written image in place of the last one)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", **kwargs)
    return write_bytes(path, buffer.getvalue())


def _umask() -> int:
    """The process's umask, read without changing it (``os.umask`` can only be read by setting it, which would race
    with other threads creating files)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    return 0o022
