"""Published weights, the torchvision way: downloaded, verified and loaded as a `TrainedModel`.

The entries (URL, hash, size, licence, preprocessing, categories, reported metrics) are `published`'s catalog,
which this module re-exports. Files download into torch.hub's cache (``$TORCH_HOME/hub/checkpoints``, as
torchvision's do), are checked against the published hash before use and are never resumed: a partial or wrong file
is deleted and reported with the hash it should have had. Offline, the error says where to put the file by hand.
Caffe's model is converted on first use into a safetensors file beside it, which then loads like any weights of ours.

A local path works wherever a registry name does (`resolve`): our ``.safetensors`` and ``.pt`` files, a
``.caffemodel``, or a registry entry's own file (matched by its file name, and hash-checked).
"""

from __future__ import annotations

import http.client
import logging
import os
import re
import urllib.error
from dataclasses import replace
from pathlib import Path

import torch

from ..errors import CorruptCheckpointError, first_line
from ..files import TAG, process_tag, remove_abandoned
from ..names import did_you_mean
from .published import (
    _REGISTRY,
    CacheState,
    Weights,
    WeightsError,
    cache_dir,
    cache_state,
    get_weights,
    is_cached,
    list_weights,
    register,
    verify,
)
from .trained import TrainedModel, check_finite, load_own, load_state

__all__ = [
    "CacheState",
    "Weights",
    "WeightsError",
    "cache_dir",
    "cache_state",
    "download",
    "get_weights",
    "is_cached",
    "list_weights",
    "load_pretrained",
    "register",
    "resolve",
    "verify",
]

log = logging.getLogger(__name__)


def download(weights: Weights, progress: bool = True) -> Path:
    """The verified file of ``weights`` in the cache, downloading it first if it is not there.

    Raises:
        WeightsError: the download failed (offline: where to put the file by hand) or the file's hash is wrong.
    """
    path = weights.cache_path()
    if path.is_file():
        verify(path, weights)
        return path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not os.access(path.parent, os.W_OK):
            raise PermissionError(13, "not writable")
    except OSError as err:
        raise WeightsError(
            f"cannot use the weights cache {path.parent} ({err.strerror or err}): set TORCH_HOME to a writable "
            "directory"
        ) from None
    partial = path.with_name(f".{path.name}.{process_tag()}.download")
    # A download killed outright left .<name>.<tag>.download and torch.hub's <that>.<hex>.partial: 233 MB each.
    remove_abandoned(path.parent, rf"\.{re.escape(path.name)}\.{TAG}\.download(\.[0-9a-f]+\.partial)?")
    log.info("downloading %s from %s to %s", weights.name, weights.url, path)
    try:
        torch.hub.download_url_to_file(weights.url, str(partial), progress=progress)
        verify(partial, weights)
        os.replace(partial, path)
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as err:
        reason = getattr(err, "reason", None) or err
        raise WeightsError(
            f"cannot download {weights.name} from {weights.url} ({reason}); offline, fetch that URL elsewhere and "
            f"put the file at {path} ({weights.digest})"
        ) from None
    except WeightsError as err:
        raise WeightsError(f"the download of {weights.url} was refused: {err}") from None
    finally:
        partial.unlink(missing_ok=True)
    return path


def _load_state_dict_file(path: Path, weights: Weights) -> TrainedModel:
    """A torch.save'd state dict (torchvision's release files), read without running any pickled code."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # a truncated zip, a pickle with code: both refused, named
        raise CorruptCheckpointError(f"{path} is not a loadable state dict: {first_line(err)}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CorruptCheckpointError(f"{path}: not a dict of tensors")
    meta = weights.meta()
    check_finite(state, str(path))
    with torch.device("meta"):
        model = meta.model.build()
    load_state(model, state, str(path), assign=True)
    return TrainedModel(model.eval(), meta, None, str(path))


def _load_file(path: Path, weights: Weights) -> TrainedModel:
    if weights.file_format == "state_dict":
        return _load_state_dict_file(path, weights)
    if weights.file_format == "caffemodel":
        converted = path.with_suffix(".safetensors")
        if not converted.is_file():
            from .caffe import convert_caffe
            from .checkpoint import save_weights

            log.info("converting %s into %s (once)", path, converted)
            trained = convert_caffe(path, provenance={"weights": weights.name, "digest": weights.digest})
            meta = replace(trained.meta, metrics=weights.meta().metrics)
            save_weights(trained.model, converted, meta.to_dict())
        return load_own(converted)
    return load_own(path)


def load_pretrained(weights: Weights | str, progress: bool = True) -> TrainedModel:
    """A registry entry's weights as a `TrainedModel`, downloaded, verified and converted as needed."""
    entry = get_weights(weights) if isinstance(weights, str) else weights
    return _load_file(download(entry, progress), entry)


def resolve(name_or_path: str | Path, progress: bool = True) -> TrainedModel:
    """What ``--weights`` and ``--checkpoint`` take: a registry name, or a file.

    Files: our ``.safetensors`` / ``.pt``, a ``.caffemodel`` (converted in memory), or a registry entry's own file
    kept anywhere (recognised by its name, then hash-checked).
    """
    text = str(name_or_path)
    path = Path(text)
    if not path.exists() and text in _REGISTRY:
        return load_pretrained(text, progress)
    own = [w for w in _REGISTRY.values() if w.file_name == path.name]
    if path.is_file() and own and path.suffix in (".pth", ".caffemodel"):
        verify(path, own[0])
        return _load_file(path, own[0]) if own[0].file_format != "caffemodel" else _converted(path)
    if path.suffix == ".caffemodel":
        return _converted(path)
    if path.suffix == ".pth" and path.is_file():
        raise WeightsError(
            f"{path} is a bare state dict with no metadata: pass a registry name ({sorted(_REGISTRY)}) or "
            "our .safetensors / .pt files"
        )
    if not path.exists() and path.suffix not in (".pt", ".safetensors"):
        hint = did_you_mean(text, _REGISTRY)
        raise WeightsError(f"{text!r} is neither a file nor registered weights; {hint}registered: {sorted(_REGISTRY)}")
    return load_own(path)


def _converted(path: Path) -> TrainedModel:
    from .caffe import convert_caffe

    return convert_caffe(path)
