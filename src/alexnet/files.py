"""One guard for every file a command reads: it must be a regular file (not a FIFO, a device or a directory, which
would hang or read forever), no larger than a limit, and only then is it read and parsed."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

from .errors import AlexNetError

MB = 1 << 20


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
        raise InputFileError(
            f"{what} {path} is {info.st_size / MB:.1f} MB, more than the {max_bytes / MB:.0f} MB allowed"
        )
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
            raise InputFileError(
                f"{what} {path} is {info.st_size / MB:.1f} MB, more than the {max_bytes / MB:.0f} MB allowed"
            )
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read(min(max_bytes, info.st_size) + 1)  # no more than it said it held, plus one to see growth
    except OSError as err:
        raise InputFileError(f"cannot read {what} {path}: {err.strerror or err}") from None
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise InputFileError(f"{what} {path} is larger than the {max_bytes / MB:.0f} MB allowed")
    return data


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
