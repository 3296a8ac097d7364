"""Post-training static int8 quantization through PyTorch's own path: torch.export, torchao's PT2E with the X86
inductor quantizer (int8 weights per channel, int8 activations per tensor, calibrated on training images), then
inductor with weight freezing, which lowers the quantized convolutions and matmuls to oneDNN's int8 (VNNI) kernels.

The int8 artifact is a torch.export program (``.pt2``) holding the quantized graph, with the model's metadata and
its calibration record under ``alexnet.json``: `load_int8` (through `load_trained`) compiles it on load, so
predict, eval and serve use it like any weights. The graph is exported for a fixed batch, which inductor
specialises to; `Int8Model` pads the last, partial batch.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..artifacts.loader import load_network
from ..artifacts.program import Int8Model, load_program, load_torchao
from ..artifacts.trained import ModelMeta, TrainedModel
from ..data.stored import stored_split
from ..errors import AlexNetError
from ..files import atomic_write, check_replaceable
from ..memory import check_batch
from ..models import standard_modules

log = logging.getLogger(__name__)
CALIBRATION_IMAGES = 512  # training images whose activation ranges set the int8 scales
# An int8 program runs whole batches of the size it was compiled for and keeps an example batch in its file:
# `--batch 100000` wrote 946 MB for a 4-class 32 px model, and at 224 px would have asked 60 GB for the example.
MAX_BATCH = 1024
SCHEME = "int8 static: torchao PT2E X86InductorQuantizer (per-channel weights, per-tensor activations)"


# Activation ranges settle within a few hundred images (NNCF's default subset is 300); every calibration image is
# held preprocessed at once (602 KB in fp32 at 224 px): `--calibration 1000000` of ImageNet weights would decode for
# hours and then ask 600 GB.
MAX_CALIBRATION = 10_000


def _check_batch(batch: int, calibration: int = CALIBRATION_IMAGES) -> None:
    if not 1 <= batch <= MAX_BATCH:
        raise AlexNetError(
            f"batch {batch} is out of range: an int8 program is compiled for one batch, from 1 to {MAX_BATCH} (each "
            "call runs a whole one, and the file keeps an example of it)"
        )
    if not 1 <= calibration <= MAX_CALIBRATION:
        raise AlexNetError(
            f"calibration on {calibration:,} images is out of range: from 1 to {MAX_CALIBRATION:,} (each is held "
            "preprocessed at once; the int8 scales settle within a few hundred)"
        )


def quantize_graph(model: nn.Module, calibration: torch.Tensor, batch: int = 64) -> torch.export.ExportedProgram:
    """The int8 program of ``model`` (fp32, eval mode) for batches of ``batch``, calibrated on ``calibration``
    ((N, C, H, W) preprocessed model inputs; activation ranges are observed over all N)."""
    _check_batch(batch)
    prepare, convert, Quantizer, default_config = load_torchao()
    model = model.float().eval().cpu()
    example = torch.zeros(batch, *calibration.shape[1:])
    with torch.no_grad(), standard_modules(model):
        # Observed with a dynamic batch: calibration images need not come in whole batches (45 images at batch 32,
        # or fewer than one batch); the program itself is exported for exactly ``batch`` below.
        # The example has at least 2 images: export fixes a dynamic dimension whose example is 1.
        dynamic = ({0: torch.export.Dim("batch", min=1)},)
        observed = torch.zeros(max(batch, 2), *calibration.shape[1:])
        graph = torch.export.export(model, (observed,), dynamic_shapes=dynamic).module()
        quantizer = Quantizer()
        quantizer.set_global(default_config())
        prepared = prepare(graph, quantizer)
        for chunk in calibration.split(batch):
            prepared(chunk)
        converted = _without_unused(convert(prepared))
        return torch.export.export(converted, (example,))


def _without_unused(graph: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """``graph`` without the parameters and buffers no node reads: converting folds each weight into an int8 constant
    and leaves the fp32 original behind, which export would save beside it (`alexnet_owt`'s program at batch 8: 290 MB,
    228 MB of them unread fp32 weights)."""
    read = {node.target for node in graph.graph.nodes if node.op == "get_attr"}
    for name, _ in [*graph.named_parameters(), *graph.named_buffers()]:
        if name not in read:
            owner, _, attr = name.rpartition(".")
            delattr(graph.get_submodule(owner), attr)
    return graph


def calibration_inputs(trained: TrainedModel, n: int, data_dir: str | None = None, seed: int = 0) -> torch.Tensor:
    """``n`` images from the training split of the model's data set, preprocessed as evaluation does.

    Raises:
        DataNotFoundError: the data set is not on disk; AlexNetError: the model records no data set.
    """
    prep = trained.preprocessing
    if not prep.dataset:
        raise AlexNetError(f"{trained.source} does not say which data set it was trained on: pass --dataset")
    data_dir = data_dir or trained.data_dir
    split = stored_split(prep.dataset, data_dir, train=True, size=prep.stored_size, limit=n, pick="random", seed=seed)
    stored = split.images
    transform = prep.transform()
    # All of them at once in fp32: a container's limit is said, not met by the out-of-memory killer.
    fp32 = trained.meta.model.in_channels * prep.input_size**2 * 4
    check_batch("calibration", len(stored), fp32, advice="calibrate on fewer images")
    return torch.cat([transform.eval(chunk) for chunk in stored.split(256)]).contiguous()


def quantize(
    trained: TrainedModel,
    calibration: torch.Tensor,
    batch: int = 64,
    record: dict[str, Any] | None = None,
    autotune: bool = False,
) -> tuple[TrainedModel, torch.export.ExportedProgram]:
    """``trained`` as an int8 `TrainedModel` (compiled, CPU) and its program, to save with `save_int8`; ``autotune``
    is recorded, and loading the program compiles it the same way."""
    program = quantize_graph(trained.model, calibration, batch)
    meta = _int8_meta(trained.meta, batch, len(calibration), autotune, record)
    model = Int8Model(program, batch, autotune, cache=True)  # `eval --precision int8` again: the kept package
    return TrainedModel(model.eval(), meta, None, trained.source), program


def _int8_meta(meta: ModelMeta, batch: int, images: int, autotune: bool, record: dict[str, Any] | None) -> ModelMeta:
    quantization = {
        "scheme": SCHEME,
        "batch": batch,
        "calibration_images": images,
        "autotune": autotune,
        **(record or {}),
    }
    return replace(meta, provenance={**meta.provenance, "quantization": quantization})


def save_int8(program: torch.export.ExportedProgram, meta: ModelMeta, path: Path | str) -> None:
    """``program`` and ``meta`` as a ``.pt2``, the same bytes for the same model and calibration: the nodes'
    provenance (``from_node``, which names the passes' graphs by their Python object ids) is left out, and taken
    from ``program`` itself (debugging metadata; what it computes is untouched)."""
    for node in program.graph.nodes:
        node.meta.pop("from_node", None)
    # The example batch the file keeps (AOTInductor compiles from it: `aot_compile` makes it whole again) is zeros:
    # kept as one zero expanded, a few bytes where a batch of 64 at 224 px takes 38.5 MB.
    args, kwargs = program.example_inputs or ((), {})
    if args:
        program.example_inputs = (tuple(torch.zeros((), dtype=a.dtype).expand(a.shape) for a in args), kwargs)
    try:
        atomic_write(
            path, lambda f: torch.export.save(program, f, extra_files={"alexnet.json": json.dumps(meta.to_dict())})
        )
    finally:
        if args:
            program.example_inputs = (args, kwargs)


@dataclass(frozen=True)
class QuantizeResult:
    """What `quantize_file` wrote and how well the int8 program agrees with the fp32 model.

    Attributes:
        calibration_images, checked_images: training images calibrated on, and other training images compared.
        agreement: the share of ``checked_images`` whose top-1 class int8 and fp32 agree (never the test split,
            which is for ``alexnet eval``).
    """

    path: Path
    dataset: str
    batch: int
    calibration_images: int
    checked_images: int
    agreement: float
    seconds: float


def quantize_file(
    source: Path | str,
    out: Path | str,
    *,
    calibration: int = CALIBRATION_IMAGES,
    batch: int = 64,
    data_dir: str | None = None,
    seed: int = 0,
    autotune: bool = True,
) -> QuantizeResult:
    """Quantize a trained model (any file or name `load_trained` takes but a program) into the int8 program ``out``
    (``.pt2``).

    Raises:
        AlexNetError: ``out`` is not a ``.pt2`` path or is the model itself; WriteError: ``out`` cannot be written
            (checked before the work); DataNotFoundError: the training data set is not on disk.
    """
    out = Path(out)
    _check_batch(batch, calibration)  # before the model loads
    if out.suffix != ".pt2":
        raise AlexNetError(f"{out}: the int8 program is a torch.export file, name it .pt2")
    check_replaceable(out)  # before the work: a directory, a device or a run's results where the file goes
    if Path(source).exists() and out.resolve() == Path(source).resolve():
        raise AlexNetError(f"{out} is the model being quantized: write the program to another file")
    trained = load_network(source, "to quantize")
    began = time.perf_counter()
    inputs = calibration_inputs(trained, calibration, data_dir, seed)
    record = {"calibration_split": "train", "calibration_seed": seed, "dataset": trained.preprocessing.dataset}
    program = quantize_graph(trained.model, inputs, batch)
    save_int8(program, _int8_meta(trained.meta, batch, len(inputs), autotune, record), out)
    # Checked as every later load runs it, compiled from the file just written (and kept: see `program_cache`).
    int8 = load_program(out)
    check = calibration_inputs(trained, min(256, calibration), data_dir, seed + 1)
    with torch.no_grad():
        agree = (int8.model(check).argmax(1) == trained.model.float()(check).argmax(1)).float().mean().item()
    return QuantizeResult(
        out, trained.preprocessing.dataset, batch, len(inputs), len(check), agree, time.perf_counter() - began
    )
