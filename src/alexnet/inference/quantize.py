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
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..artifacts.program import Int8Model, load_torchao
from ..artifacts.trained import ModelMeta, TrainedModel
from ..data.stored import stored_split
from ..errors import AlexNetError
from ..files import atomic_write

log = logging.getLogger(__name__)
CALIBRATION_IMAGES = 512  # training images whose activation ranges set the int8 scales
SCHEME = "int8 static: torchao PT2E X86InductorQuantizer (per-channel weights, per-tensor activations)"


def quantize_graph(model: nn.Module, calibration: torch.Tensor, batch: int = 64) -> torch.export.ExportedProgram:
    """The int8 program of ``model`` (fp32, eval mode) for batches of ``batch``, calibrated on ``calibration``
    ((N, C, H, W) preprocessed model inputs; activation ranges are observed over all N)."""
    prepare, convert, Quantizer, default_config = load_torchao()
    model = model.float().eval().cpu()
    example = torch.zeros(batch, *calibration.shape[1:])
    with torch.no_grad():
        graph = torch.export.export(model, (example,)).module()
        quantizer = Quantizer()
        quantizer.set_global(default_config())
        prepared = prepare(graph, quantizer)
        for chunk in calibration.split(batch):
            prepared(chunk)
        converted = convert(prepared)
        return torch.export.export(converted, (example,))


def calibration_inputs(trained: TrainedModel, n: int, data_dir: str | None = None, seed: int = 0) -> torch.Tensor:
    """``n`` images from the training split of the model's data set, preprocessed as evaluation does.

    Raises:
        DataNotFoundError: the data set is not on disk; AlexNetError: the model records no data set.
    """
    prep = trained.preprocessing
    if not prep.dataset:
        raise AlexNetError(f"{trained.source} does not say which data set it was trained on: pass --dataset")
    split = stored_split(prep.dataset, data_dir, train=True, size=prep.stored_size, limit=n, pick="random", seed=seed)
    stored = split.images
    transform = prep.transform()
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
    quantization = {
        "scheme": SCHEME,
        "batch": batch,
        "calibration_images": len(calibration),
        "autotune": autotune,
        **(record or {}),
    }
    meta = replace(trained.meta, provenance={**trained.meta.provenance, "quantization": quantization})
    size = trained.preprocessing.input_size
    model = Int8Model(program.module(), batch, trained.meta.model.in_channels, size, autotune)
    return TrainedModel(model.eval(), meta, None, trained.source), program


def save_int8(program: torch.export.ExportedProgram, meta: ModelMeta, path: Path | str) -> None:
    atomic_write(
        path, lambda f: torch.export.save(program, f, extra_files={"alexnet.json": json.dumps(meta.to_dict())})
    )
