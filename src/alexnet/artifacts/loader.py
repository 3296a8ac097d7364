"""`load_trained`: the one door every command and API call loads a trained model through, whatever the file."""

from __future__ import annotations

import logging
from pathlib import Path

from ..errors import AlexNetError
from .program import load_program
from .trained import TrainedModel, load_own
from .weights import resolve

# What `load_trained` reads, in the order a directory's other model files are named.
_MODEL_SUFFIXES = (".safetensors", ".pt", ".pt2", ".pth")
log = logging.getLogger(__name__)


def model_file(path: Path | str, *, checkpoint: bool = False) -> Path:
    """``path`` itself, or for a directory (a run's, the ``--out`` of ``alexnet train``) the model in it: its
    ``best.safetensors`` (the best epoch's weights), else its ``last.pt``. With ``checkpoint`` (the caller needs
    the run's training config, as an evaluation of its held-out images does), the best epoch's ``best.pt`` (the same
    weights with the config) comes first instead.

    The caller says which file it took (`say_model_file`) once its checks have passed: a refusal is the one line.

    Raises:
        AlexNetError: a directory with neither: the model files it does hold are named, if any.
    """
    path = Path(path)
    if not path.is_dir():
        return path
    for name in ("best.pt" if checkpoint else "best.safetensors", "last.pt"):
        if (path / name).is_file():
            return path / name
    found = sorted(
        (p.name for p in path.iterdir() if p.suffix in _MODEL_SUFFIXES and p.is_file()),
        key=lambda name: (_MODEL_SUFFIXES.index(Path(name).suffix), name),
    )
    if not found:
        raise AlexNetError(f"{path} is a directory with no model file (a run's holds best.safetensors or last.pt)")
    files = ", ".join(str(path / name) for name in found[:3]) + (", ..." if len(found) > 3 else "")
    raise AlexNetError(f"{path} has neither best.safetensors nor last.pt: give one of its model files ({files})")


def say_model_file(given: Path | str, taken: Path | str) -> None:
    """Log the file `model_file` took for a run directory (nothing for a file given as itself)."""
    if Path(given) != Path(taken):
        log.info("%s: the model in it, %s", given, Path(taken).name)


def load_trained(path: Path | str) -> TrainedModel:
    """Rebuild a trained model from release weights (``.safetensors``), a training checkpoint (``.pt``), a program
    export or quantize wrote (``.pt2``), published weights (a registry name such as ``alexnet_owt.IMAGENET1K_V1``,
    or its file: see `alexnet.artifacts.weights`) or a run directory (its model: `model_file`).

    The metadata is validated before the network is built, and the weights must be finite. No format runs code from
    the file: checkpoints are unpickled with ``weights_only=True``, programs are checked before torch reads them.

    Raises:
        AlexNetError: an ONNX file (`Predictor.from_path` runs those); a directory without a run's model.
        FileNotFoundError: no such file, and no published weights of that name.
        CorruptCheckpointError: unreadable, or metadata that fails validation (`InvalidMetadataError`).
        UnsafeCheckpointError: a checkpoint or program that would run code when loaded.
        IncompatibleCheckpointError: tensors that do not fit the network the metadata describes.
        NonFiniteWeightsError: NaN or infinite weights.
        WeightsError: published weights that cannot be downloaded or fail their hash check.
    """
    given, path = path, model_file(path)
    if path.suffix == ".onnx":  # read as a checkpoint it would be "not the zip archive torch.save writes"
        raise AlexNetError(
            f"{path} is an ONNX model: `alexnet predict` (or onnxruntime) runs it; this takes the .safetensors or "
            ".pt it was exported from"
        )
    if path.suffix == ".pt2":  # a torch.export program we wrote: exported fp32, or quantized int8
        trained = load_program(path)
    elif path.suffix in (".pth", ".caffemodel") or not (path.exists() or path.suffix in (".pt", ".safetensors")):
        trained = resolve(path)  # published weights: a registry name, torchvision's or Caffe's files
    else:
        trained = load_own(path)
    say_model_file(given, path)  # a run directory's: once its model has loaded (callers that check more say it later)
    return trained


def load_network(path: Path | str, purpose: str) -> TrainedModel:
    """`load_trained` for work that needs the network's layers (``purpose``: "to export", "to quantize"...): a
    program (``.pt2``, exported or int8) runs, but holds a graph, not the layers, and is refused before it loads (an
    int8 one would compile first).

    Raises:
        AlexNetError: ``path`` is a program; and what `load_trained` raises.
    """
    if Path(path).suffix == ".pt2":  # the only name a program loads under (`load_trained`)
        raise AlexNetError(
            f"{path} is a program (alexnet export or quantize wrote it): it predicts, but has no layers {purpose}; "
            "give the .safetensors or .pt it was made from"
        )
    return load_trained(path)
