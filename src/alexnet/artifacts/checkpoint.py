"""Checkpoints and release weights, written atomically and read without running code.

Training checkpoints are ``torch.save`` dicts of tensors and plain Python values, loaded only with
``weights_only=True``; a file whose pickle asks for anything else is refused (`UnsafeCheckpointError`), never
retried unsafely. Release weights are safetensors with the model's config, classes and preprocessing as JSON
metadata. Every write goes to a temporary file in the same directory, is fsynced, then renamed over the target,
so a crash leaves the old file or the new one, never half of one.

A checkpoint's SHA-256 goes beside it (``last.pt.sha256``, the format of ``sha256sum``; ``sha256sum -c`` checks it)
and is verified before the file is unpickled: ``torch.load`` reads a flipped byte in tensor data without complaint.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file as st_load_file
from safetensors.torch import save as st_save
from torch import nn

from ..errors import (
    CorruptCheckpointError,
    IncompatibleCheckpointError,
    UnsafeCheckpointError,
    first_line,
    out_of_memory,
)
from ..files import InputFileError, atomic_write, check_input, read_text_input
from ..memory import check_need

log = logging.getLogger(__name__)
META_KEY = "alexnet"
LOAD_ADVICE = "free memory, or give this process more"
# alexnet_paper's release weights are 244 MB and a training checkpoint with its momentum ~0.5 GB: far larger files
# are refused before they are read.
MAX_WEIGHTS_BYTES = 8 << 30
MAX_CHECKPOINT_BYTES = 16 << 30
MAX_SIDECAR_BYTES = 64 << 10  # a digest record holds one or two lines of ~70 bytes


def remove_stale_temporaries(directory: Path | str) -> None:
    """Delete ``.*.tmp`` files a killed writer left behind, and settle digest sidecars it left listing two
    digests (the old and the new file's) to the one that matches, so ``sha256sum -c`` passes again."""
    for stale in Path(directory).glob(".*.tmp"):
        with contextlib.suppress(OSError):
            stale.unlink()
    for sidecar in Path(directory).glob("*.sha256"):
        target = sidecar.with_name(sidecar.name[: -len(".sha256")])
        try:
            digests = recorded_digests(target)
        except CorruptCheckpointError:  # not a record: the checkpoint's own load says so
            continue
        if len(digests) > 1 and target.is_file():
            actual = file_digest(target)
            if actual in digests:
                _record_digests(target, [actual])


class _HashingWriter:
    """A write-only file that hashes what passes through it (so saving does not read the file back)."""

    def __init__(self, f: Any) -> None:
        self.f, self.sha = f, hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        return self.f.write(data)

    def flush(self) -> None:
        self.f.flush()


def digest_path(path: Path | str) -> Path:
    """Where a checkpoint's SHA-256 is recorded: ``<name>.sha256`` beside it."""
    path = Path(path)
    return path.with_name(path.name + ".sha256")


def recorded_digests(path: Path | str) -> list[str]:
    """The SHA-256 digests recorded for ``path`` (none when it has no sidecar: written elsewhere or by hand).

    Raises:
        CorruptCheckpointError: the sidecar is not a digest record: not a regular file (a link to /dev/zero was
            read until the machine ran out of memory), larger than any record, or not text.
    """
    sidecar = digest_path(path)
    try:
        lines = read_text_input(sidecar, MAX_SIDECAR_BYTES, "digest record").splitlines()
    except FileNotFoundError:
        return []
    except InputFileError as err:
        raise CorruptCheckpointError(f"{err}: move it away to use {Path(path).name} unchecked") from None
    return [line.split()[0] for line in lines if line.strip()]


def _record_digests(path: Path, digests: list[str]) -> None:
    text = "".join(f"{d}  {path.name}\n" for d in digests)
    atomic_write(digest_path(path), lambda f: f.write(text.encode()))


def save_checkpoint(state: dict[str, Any], path: Path | str) -> None:
    """Atomically ``torch.save`` ``state`` (tensors, numbers, strings, lists, dicts only), recording its SHA-256.

    While the new file replaces the old one the sidecar lists both digests, so a crash at any point leaves a file
    that matches its record.
    """
    path = Path(path)
    try:
        old = recorded_digests(path)[:1] if path.exists() else []
    except CorruptCheckpointError:  # replaced below with the new file's own record
        old = []
    new: list[str] = []

    def write(f: Any) -> None:
        writer = _HashingWriter(f)
        torch.save(state, writer)
        new.append(writer.sha.hexdigest())

    atomic_write(path, write, before_rename=lambda: _record_digests(path, new + old))
    _record_digests(path, new)


def _is_torchscript(path: Path) -> bool:
    """A TorchScript archive: a zip holding the module's code (``*/code/``) beside its constants."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any("/code/" in name or name.endswith("/constants.pkl") for name in archive.namelist())
    except (zipfile.BadZipFile, OSError, ValueError):
        return False


def load_checkpoint(path: Path | str) -> dict[str, Any]:
    """Load a training checkpoint with ``weights_only=True``.

    Raises:
        FileNotFoundError: no such file.
        UnsafeCheckpointError: the pickle references code or classes outside the allow-list; nothing ran.
        CorruptCheckpointError: truncated, changed since it was written (its SHA-256 differs from the record
            beside it), or not a checkpoint.
    """
    path = check_input(path, MAX_CHECKPOINT_BYTES, "checkpoint")
    expected = recorded_digests(path)
    if expected and file_digest(path) not in expected:
        raise CorruptCheckpointError(
            f"{path} does not match the SHA-256 recorded in {digest_path(path)}: it changed after it was written"
        )
    if _is_torchscript(path):
        raise IncompatibleCheckpointError(
            f"{path} is a TorchScript export (for LibTorch and other TorchScript runtimes): alexnet does not load "
            "TorchScript, since loading it runs the program it holds; use the run's .safetensors or .pt, or export "
            "--format exported-program (.pt2) or onnx, which predict, eval and serve load"
        )
    if not zipfile.is_zipfile(path):  # torch.save has written zip archives since torch 1.6
        raise CorruptCheckpointError(f"{path} is truncated or not a checkpoint (not the zip archive torch.save writes)")
    # torch.load reads every tensor into memory (the weights and the optimizer's state): set against what is left,
    # as the out-of-memory killer would end the process without a word (an ensemble's members load one by one).
    check_need("loading", f"{path} needs", archive_tensor_bytes(path), LOAD_ADVICE)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        reason = next((line for line in str(err).splitlines() if "GLOBAL" in line.upper()), None)
        if reason is None:  # the unpickler met bytes that are no pickle at all
            raise CorruptCheckpointError(f"{path} is corrupt or not a checkpoint (not a valid pickle)") from None
        # weights_only's refusal: the file wants globals (code) we did not allow. Never retry unsafely.
        raise UnsafeCheckpointError(
            f"{path} was refused: loading it would import or run code ({reason.strip()}); "
            "only load checkpoints you created, and ship weights as safetensors"
        ) from None
    except Exception as err:  # bytes that are no pickle raise IndexError, TypeError, struct.error, ...
        if out_of_memory(err):  # a whole checkpoint too large for this machine: the CLI says so
            raise
        reason = f"{type(err).__name__}: {first_line(err)}"[:200]
        raise CorruptCheckpointError(f"{path} is truncated or not a checkpoint ({reason})") from None
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise CorruptCheckpointError(f"{path} is not an alexnet checkpoint (no model state and config)")
    return state


def archive_tensor_bytes(path: Path) -> int:
    """The bytes of the tensors a torch archive holds (a checkpoint, a ``.pt2`` program), from its directory without
    reading them: torch.save stores each storage as one entry under ``data/``, uncompressed, and torch.export each
    weight and constant; 0 for an archive that cannot be listed (the loader then says what is wrong with it)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return sum(i.file_size for i in archive.infolist() if "/data/" in i.filename)
    except (zipfile.BadZipFile, OSError, ValueError):
        return 0


def file_digest(path: Path | str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _plain_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """State dict without torch.compile's ``_orig_mod.`` or DDP's ``module.`` prefixes, contiguous, on the CPU."""
    out = {}
    for key, value in model.state_dict().items():
        for prefix in ("_orig_mod.", "module."):
            key = key.replace(prefix, "")
        out[key] = value.detach().cpu().contiguous()
    return out


def save_weights(model: nn.Module | dict[str, torch.Tensor], path: Path | str, meta: dict[str, Any]) -> None:
    """Atomically write release weights (a model's or a state dict's tensors) plus ``meta`` (JSON) under the
    ``alexnet`` key."""
    state = _plain_state(model) if isinstance(model, nn.Module) else {k: v.contiguous() for k, v in model.items()}
    data = st_save(state, metadata={META_KEY: json.dumps(meta)})
    atomic_write(path, lambda f: f.write(data))


def read_weights_meta(path: Path | str) -> dict[str, Any]:
    """The metadata of a safetensors weights file, from its header alone (no tensor is read).

    Raises:
        FileNotFoundError: no such file.
        CorruptCheckpointError: not a safetensors file, or missing our metadata.
    """
    path = check_input(path, MAX_WEIGHTS_BYTES, "weights file")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {})[META_KEY])
    except (SafetensorError, ValueError, KeyError, TypeError, UnicodeDecodeError, OverflowError, RecursionError) as err:
        raise CorruptCheckpointError(f"{path} is not a valid alexnet safetensors file ({err})") from None
    if not isinstance(meta, dict) or "model" not in meta:
        raise CorruptCheckpointError(f"{path} has no alexnet model metadata")
    return meta


def weights_header(path: Path | str) -> dict[str, tuple[tuple[int, ...], str]]:
    """Each tensor's shape and dtype (``F32``, ``I64``...) from a safetensors header, reading no tensor data."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: (tuple(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype()) for k in f.keys()}  # noqa: SIM118
    except (SafetensorError, ValueError, TypeError, OverflowError) as err:
        raise CorruptCheckpointError(f"{path} is not a valid alexnet safetensors file ({err})") from None


def load_weights(path: Path | str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and metadata of a safetensors weights file (memory-mapped while read: one copy of the tensors).

    Raises:
        FileNotFoundError, CorruptCheckpointError: as `read_weights_meta`; also for tensor data that is truncated
            or inconsistent with the header.
    """
    meta = read_weights_meta(path)
    try:
        tensors = st_load_file(str(path))
    except (SafetensorError, ValueError, RuntimeError, OSError) as err:
        raise CorruptCheckpointError(f"{path} is not a valid alexnet safetensors file ({err})") from None
    return tensors, meta
