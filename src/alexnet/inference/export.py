"""Export a trained model to ONNX, TorchScript or a torch.export program, and check the export against eager.

Exports take a dynamic batch size. Height and width are fixed at the model's input size: every variant's
classifier (and torchvision's adaptive 6×6 pooling in ONNX) ties the first fc layer to the feature-map size, so a
dynamic spatial size would either break fc6 or export an adaptive pool many runtimes cannot run.
"""

from __future__ import annotations

import json
import logging
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..artifacts.trained import ModelMeta, TrainedModel
from ..errors import AlexNetError, CorruptCheckpointError
from ..files import (
    ANY_TAG,
    TAG,
    atomic_write,
    check_replaceable,
    check_target,
    process_tag,
    remove_abandoned,
    staging_name,
)
from ..models import standard_modules

log = logging.getLogger(__name__)
FORMATS = ("onnx", "torchscript", "exported-program")
# The file names each format is written under: a loader picks its reader by the suffix (.pt is a checkpoint's, and a
# TorchScript archive there is named and refused).
SUFFIXES = {"onnx": (".onnx",), "torchscript": (".pt", ".ts", ".torchscript"), "exported-program": (".pt2",)}


@dataclass
class ExportResult:
    path: Path
    format: str
    parity: Parity
    input_shape: tuple[int, ...]
    note: str


def check_inputs_for(
    trained: TrainedModel, images: list[str] | None = None, n: int = 8
) -> tuple[torch.Tensor | None, str]:
    """Real preprocessed inputs for the parity check: the given image files, else the first ``n`` validation
    images of the data set the model was trained on when it is on disk, else None (random inputs).

    Returns:
        (B, C, H, W) inputs or None, and a few words saying what they are.
    """
    from ..data.batch import stack_images
    from ..data.config import TENSOR_DATASETS
    from ..data.decode import decode_stored, expand_inputs
    from ..data.stored import stored_split
    from ..errors import DataNotFoundError

    prep = trained.preprocessing
    tf = prep.transform()
    if images:
        files = expand_inputs(images)[:n]
        stored = [decode_stored(f, prep.stored_size, trained.meta.model.in_channels) for f in files]
        return tf.eval(stack_images(stored)), f"{len(files)} given images"
    if prep.dataset in TENSOR_DATASETS:
        try:
            split = stored_split(prep.dataset, None, train=False, size=prep.stored_size, limit=n)
        except DataNotFoundError:
            return None, "random inputs (the training data set is not on disk)"
        return tf.eval(split.images), f"the first {n} {prep.dataset} test images"
    return None, "random inputs (pass --images for real ones)"


@dataclass(frozen=True)
class Parity:
    """How an export's logits compare with eager PyTorch's on the same inputs.

    Attributes:
        max_abs: largest |export − eager| over the logits.
        bound: the allowed ``max_abs``: ``atol + rtol · max |eager logit|``.
        max_prob: largest |softmax difference|.
        top1_agree: the share of inputs whose top-1 class agrees, among those whose top-2 margin exceeds
            ``2 · bound`` (nearer ties may legitimately flip).
    """

    max_abs: float
    bound: float
    max_prob: float
    top1_agree: float

    @property
    def ok(self) -> bool:
        return self.max_abs <= self.bound and self.max_prob <= PROB_TOL and self.top1_agree == 1.0


PROB_TOL = 1e-3  # softmax probabilities: what a user of the export reads


def parity(expected: torch.Tensor, got: torch.Tensor, atol: float = 1e-5, rtol: float = 1e-4) -> Parity:
    """Compare (B, classes) logits scale-aware: CPUs sum in different orders (oneDNN against onnxruntime's
    kernels), so float32 differences grow with the logits' magnitude; a fixed 1e-4 refuses good exports of
    trained models (1.2e-4 seen on an AMD EPYC) while a wrong export differs by orders of magnitude more."""
    got, expected = got.float(), expected.float()
    max_abs = (got - expected).abs().max().item()
    bound = atol + rtol * expected.abs().max().item()
    max_prob = (got.softmax(1) - expected.softmax(1)).abs().max().item()
    top2 = expected.topk(min(2, expected.shape[1]), dim=1).values
    decided = (
        (top2[:, 0] - top2[:, -1]) > 2 * bound if expected.shape[1] > 1 else torch.ones(len(expected), dtype=torch.bool)
    )
    agree = (got.argmax(1) == expected.argmax(1))[decided]
    return Parity(max_abs, bound, max_prob, agree.float().mean().item() if agree.numel() else 1.0)


def export_model(
    trained: TrainedModel,
    fmt: str,
    out: str | Path,
    check_inputs: torch.Tensor | None = None,
    atol: float = 1e-5,
    rtol: float = 1e-4,
) -> ExportResult:
    """Export ``trained`` and verify the result on ``check_inputs`` (see `parity`).

    Args:
        trained: the model with its classes and preprocessing metadata (embedded in the export).
        fmt: ``onnx``, ``torchscript`` or ``exported-program``.
        out: the file to write.
        check_inputs: (B, C, H, W) preprocessed inputs for the parity check; default: random images.
        atol: absolute part of the allowed logit difference.
        rtol: part of the allowed logit difference relative to the largest eager logit.

    Raises:
        AlexNetError: unknown format, ``out`` is the input or not named for the format (`SUFFIXES`), or the export
            disagrees with eager PyTorch (then nothing is written: a previous file at ``out`` is left as it was).
        WriteError: ``out`` is a directory, a device, a FIFO or a run's checkpoint, or cannot be written.
    """
    if fmt not in FORMATS:
        raise AlexNetError(f"unknown export format {fmt!r}; choose one of {list(FORMATS)}")
    model = trained.model.float().eval().cpu()
    size = trained.preprocessing.input_size
    # Seeded: a .pt2 keeps its example as sample inputs, so the same model exports to the same bytes.
    example = torch.randn(2, model.in_channels, size, size, generator=torch.Generator().manual_seed(0))
    x = check_inputs.float() if check_inputs is not None else torch.randn(3, model.in_channels, size, size)
    out = check_target(out)
    if trained.source and out.resolve() == Path(trained.source).resolve():
        raise AlexNetError(f"{out} is the model being exported: write the export to another file")
    if out.suffix not in SUFFIXES[fmt]:
        raise AlexNetError(f"{out}: name the {fmt} file {' or '.join(SUFFIXES[fmt])}")
    check_replaceable(out)
    # Written beside the target under another name and checked there; only a file that passes replaces the target,
    # so a failed check leaves the user's previous export as it was.
    staged = out.with_name(f".{staging_name(out.stem)}.{process_tag()}.staged{out.suffix}")
    # An export killed outright (SIGKILL, the out-of-memory killer) left .m.<tag>.staged.onnx, and atomic_write's
    # ..m.<tag>.staged.onnx.<tag>.<random>.tmp while it was being written: 244 MB for alexnet_owt's ONNX, hidden.
    stem, suffix = re.escape(staging_name(out.stem)), re.escape(out.suffix)
    remove_abandoned(out.parent, rf"\.\.?{stem}\.{TAG}\.staged{suffix}(\.{ANY_TAG}\.\w+\.tmp)?")
    with torch.no_grad():
        expected = model(x)
    batch = torch.export.Dim("batch", min=1, max=4096)
    meta = json.dumps(trained.meta.to_dict())
    try:
        with standard_modules(model):  # tracers see torch's own modules (`standard_modules`)
            if fmt == "onnx":
                got = _export_onnx(model, example, x, staged, batch, meta)
            elif fmt == "torchscript":
                # PyTorch deprecates TorchScript; users who still deploy it asked for it
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", FutureWarning)
                    traced = torch.jit.trace(model, example)
                    atomic_write(staged, lambda f: torch.jit.save(traced, f, _extra_files={"alexnet.json": meta}))
                    got = torch.jit.load(str(staged))(x)
            else:
                program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
                atomic_write(staged, lambda f: torch.export.save(program, f, extra_files={"alexnet.json": meta}))
                got = torch.export.load(str(staged)).module()(x)
        check = parity(expected, got, atol, rtol)
        if not check.ok:
            raise AlexNetError(
                f"{fmt} export differs from eager PyTorch: max |logit diff| {check.max_abs:.2e} (allowed "
                f"{check.bound:.2e} = {atol:g} + {rtol:g}·max|logit|), max |prob diff| {check.max_prob:.2e} (allowed "
                f"{PROB_TOL:g}), top-1 agreement {100 * check.top1_agree:.1f}%; not trusted, {out} left as it was"
            )
        os.replace(staged, out)
    finally:
        staged.unlink(missing_ok=True)
    note = f"dynamic batch; height and width fixed at {size} (the classifier's input depends on them)"
    if fmt == "torchscript":  # loading TorchScript runs the program it holds: nothing here loads it (see load_trained)
        note += "; for LibTorch and TorchScript runtimes: alexnet's own commands load .pt2 and .onnx, not TorchScript"
    return ExportResult(out, fmt, check, tuple(x.shape), note)


def _export_onnx(
    model: nn.Module, example: torch.Tensor, x: torch.Tensor, out: Path, batch: Any, meta: str
) -> torch.Tensor:
    try:
        import onnx
        import onnxruntime as ort
    except ImportError as err:
        raise AlexNetError(f"ONNX export needs the export extra: pip install 'alexnet[export]' ({err})") from None
    program = torch.onnx.export(
        model,
        (example,),
        dynamo=True,
        input_names=["images"],
        output_names=["logits"],
        dynamic_shapes=({0: batch},),
        verbose=False,
    )
    proto = program.model_proto
    entry = proto.metadata_props.add()
    entry.key, entry.value = "alexnet", meta
    atomic_write(out, lambda f: f.write(proto.SerializeToString()))
    onnx.checker.check_model(str(out))
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {"images": x.numpy()})[0])


def load_onnx(path: str | Path) -> tuple[Any, ModelMeta]:
    """An onnxruntime session for an ONNX file this project exported, and its embedded metadata."""
    try:
        import onnxruntime as ort
    except ImportError as err:
        raise AlexNetError(f"ONNX models need onnxruntime: pip install 'alexnet[export]' ({err})") from None
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX file {path} does not exist")
    options = ort.SessionOptions()
    # onnxruntime logs a failed load to stderr itself, a coloured line beside the exception it raises, which says
    # the same (the error line below): only fatal messages from its logger.
    options.log_severity_level = 4
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        tree = json.loads(session.get_modelmeta().custom_metadata_map["alexnet"])
    except KeyError:
        raise CorruptCheckpointError(f"{path} has no alexnet metadata (export it with `alexnet export`)") from None
    except Exception as err:  # onnxruntime raises its own exception types for invalid graphs
        raise CorruptCheckpointError(f"{path} is not a loadable ONNX model ({_onnxruntime_reason(err)})") from None
    meta = ModelMeta.from_dict(tree, str(path))
    _check_graph(session, meta, path)
    return session, meta


def run_onnx(session: Any, x: torch.Tensor) -> torch.Tensor:
    """(B, C, S, S) float inputs through ``session`` → its first output. A graph that fails on them (its own shapes
    wrong where `load_onnx` could not see them) raises `AlexNetError` saying so."""
    try:
        return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.float().contiguous().numpy()})[0])
    except Exception as err:  # onnxruntime's own exception types
        raise AlexNetError(
            f"the ONNX model failed on a batch of shape {tuple(x.shape)}: {_onnxruntime_reason(err)}"
        ) from None


def _check_graph(session: Any, meta: ModelMeta, path: Path) -> None:
    """The graph takes what its metadata says the model takes, and gives a logit for each class: a file whose two
    disagree (edited, or another model's graph with this metadata) is refused on loading, not with onnxruntime's
    traceback at the first batch. Dimensions the graph leaves symbolic (the batch) match any size."""
    size, channels = meta.preprocessing.input_size, meta.model.in_channels
    inputs, outputs = session.get_inputs(), session.get_outputs()
    expected = [None, channels, size, size]

    def agrees(shape: list, want: list) -> bool:
        return len(shape) == len(want) and all(
            w is None or not isinstance(d, int) or d == w for d, w in zip(shape, want)
        )

    if len(inputs) != 1 or inputs[0].type != "tensor(float)" or not agrees(inputs[0].shape, expected):
        found = ", ".join(f"{i.name} {i.type} {i.shape}" for i in inputs) or "nothing"
        raise CorruptCheckpointError(
            f"{path}: its graph takes {found}, where its metadata says one float batch (N, {channels}, {size}, {size})"
        )
    if not outputs or not agrees(outputs[0].shape, [None, meta.model.num_classes]):
        found = outputs[0].shape if outputs else "nothing"
        raise CorruptCheckpointError(
            f"{path}: its graph gives {found}, where its metadata says (N, {meta.model.num_classes}) logits"
        )


def _onnxruntime_reason(err: Exception) -> str:
    """onnxruntime's message without its wrapping: ``[ONNXRuntimeError] : 1 : FAIL : <a C++ signature>
    [ONNXRuntimeError] : 1 : FAIL : env.cc:538 OpenRandomAccessFile <the reason>`` is ``OpenRandomAccessFile <the
    reason>``."""
    text = re.split(r"\[ONNXRuntimeError\] : \d+ : \w+ : ", str(err).strip())[-1]
    return re.sub(r"\S+\.(?:cc|cpp|h):\d+ ", "", text).strip() or type(err).__name__
