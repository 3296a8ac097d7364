"""Errors the library raises for a user's mistake or a bad input; the CLI prints them as one line."""


def first_line(err: BaseException) -> str:
    """The first line of ``err``'s message, or its type's name when it has none: what a one-line report quotes."""
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


def out_of_memory(err: BaseException) -> bool:
    """An allocation that failed: Python's `MemoryError`, torch's CPU allocator, CUDA's `OutOfMemoryError`."""
    cuda = any(cls.__name__ == "OutOfMemoryError" for cls in type(err).__mro__)
    return cuda or isinstance(err, MemoryError) or "can't allocate memory" in str(err)


class AlexNetError(Exception):
    """Base class: a problem the user can fix, with a message saying how."""


class DataNotFoundError(AlexNetError):
    """A data set is not where it was looked for, or not intact there, and could not be downloaded."""


class UnsafeCheckpointError(AlexNetError):
    """A checkpoint would need arbitrary code to load; it was refused and nothing ran."""


class CorruptCheckpointError(AlexNetError):
    """A checkpoint or weights file is truncated, corrupted, or not one of ours."""


class WriteError(AlexNetError, OSError):
    """A file could not be written (disk full, permissions); the previous version of it is unchanged. Also an
    `OSError`, which is what it wraps."""


class IncompatibleCheckpointError(AlexNetError):
    """A checkpoint belongs to another variant, class count or class list."""


class NonFiniteLossError(AlexNetError):
    """Training produced a NaN or infinite loss."""


class InvalidImageError(AlexNetError):
    """A file could not be decoded as an image (or was refused, like a decompression bomb)."""


class DataWorkerError(AlexNetError):
    """A data-loading worker process died (a decoder crash, the OOM killer); the message names the file(s) it was
    decoding."""


class TrainingInterrupted(AlexNetError):
    """A signal (SIGTERM, SIGINT) stopped training after a step; a checkpoint was saved in the run directory ``out``
    to resume from (``train.resume="auto"``; each command says how it is continued)."""

    def __init__(self, message: str, signum: int, out: str = "") -> None:
        super().__init__(message)
        self.exit_code = 128 + signum  # the shell convention: 143 for SIGTERM
        self.out = out


class NonFiniteWeightsError(AlexNetError):
    """A model's weights hold NaN or infinity (training diverged); they are never saved, resumed or used."""


class NonFiniteOutputError(AlexNetError):
    """A model's weights are finite but its outputs are not (NaN or infinity): training diverged. No prediction or
    accuracy is reported from it."""


class ConfigError(AlexNetError, ValueError):
    """A configuration value or command-line flag is out of range or not one of its choices."""
