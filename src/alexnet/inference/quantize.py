"""Post-training static int8 quantization through PyTorch's own path: torch.export, torchao's PT2E with the X86
inductor quantizer (int8 weights per channel, int8 activations per tensor, calibrated on training images), then
inductor with weight freezing, which lowers the quantized convolutions and matmuls to oneDNN's int8 (VNNI) kernels.

The int8 artifact is a torch.export program (``.pt2``) holding the quantized graph, with the model's metadata and
its calibration record under ``alexnet.json``: `load_int8` (through `load_trained`) compiles it on load, so
predict, eval and serve use it like any weights. The graph is exported for a fixed batch, which inductor
specialises to; `Int8Model` pads the last, partial batch.
"""

from __future__ import annotations

import contextlib
import json
import logging
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import AlexNetError, CorruptCheckpointError
from ..files import atomic_write
from .artifact import ModelMeta, TrainedModel
from .program_guard import check_program

log = logging.getLogger(__name__)
CALIBRATION_IMAGES = 512  # training images whose activation ranges set the int8 scales
SCHEME = "int8 static: torchao PT2E X86InductorQuantizer (per-channel weights, per-tensor activations)"


def _torchao() -> tuple[Any, Any, Any, Any]:
    # torchao's import registers an Enum with torch's pytree, which logs a deprecation warning on every program load:
    # torchao's business, not the user's (shown with -v).
    pytree = logging.getLogger("torch.utils._pytree")
    level = pytree.level
    if not log.isEnabledFor(logging.DEBUG):
        pytree.setLevel(logging.ERROR)
    try:
        return _import_torchao()
    finally:
        pytree.setLevel(level)


def _import_torchao() -> tuple[Any, Any, Any, Any]:
    try:
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
        from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
            X86InductorQuantizer,
            get_default_x86_inductor_quantization_config,
        )
    except ImportError as err:
        raise AlexNetError(f"int8 needs torchao: pip install 'alexnet[int8]' ({err})") from None
    return prepare_pt2e, convert_pt2e, X86InductorQuantizer, get_default_x86_inductor_quantization_config


class _ExportedModule(nn.Module):
    """A module around an exported graph: exported in eval mode, the graph has no train mode to switch (an exported
    module refuses ``.train()`` and ``.eval()``), so only the flag changes."""

    def train(self, mode: bool = True) -> _ExportedModule:
        self.training = mode
        return self


class Int8Model(_ExportedModule):
    """A quantized graph compiled by inductor for batches of exactly ``batch`` (B, C, H, W) inputs; other batch
    sizes are cut into such chunks, the last one zero-padded."""

    def __init__(self, graph: nn.Module, batch: int, in_channels: int, size: int, autotune: bool = False) -> None:
        super().__init__()
        self.batch, self.in_channels, self.size = batch, in_channels, size
        with torch._inductor.config.patch(freezing=True), torch.no_grad(), warnings.catch_warnings():
            # freezing: the weights become constants, which lets inductor pick oneDNN's int8 kernels. Inductor's
            # own lowering warns about a tensor copy it makes (torch/_inductor/mkldnn_lowerings.py): not ours.
            warnings.filterwarnings("ignore", "To copy construct from a tensor", UserWarning)
            # autotune: inductor times its GEMM templates against oneDNN's while compiling. alexnet_owt at batch 1
            # went 4.45 → 2.96 ms per image (the fc layers' int8 matmuls), batch 64 568 → 590 img/s, for ~15 s of
            # compile time (small models: ~8 s more than without).
            self.compiled = torch.compile(graph, mode="max-autotune-no-cudagraphs" if autotune else None)
            self.compiled(torch.zeros(batch, in_channels, size, size))  # compile now, with the patch active

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float().contiguous()
        outs = []
        for chunk in x.split(self.batch):
            n = len(chunk)
            if n < self.batch:
                chunk = torch.cat([chunk, chunk.new_zeros(self.batch - n, *chunk.shape[1:])])
            # The same inductor config as at compile time: a call outside the patch would recompile without freezing
            # (and without the int8 kernels: 5× slower).
            with torch.no_grad(), torch._inductor.config.patch(freezing=True):
                outs.append(self.compiled(chunk)[:n])
        return torch.cat(outs)


def quantize_graph(model: nn.Module, calibration: torch.Tensor, batch: int = 64) -> torch.export.ExportedProgram:
    """The int8 program of ``model`` (fp32, eval mode) for batches of ``batch``, calibrated on ``calibration``
    ((N, C, H, W) preprocessed model inputs; activation ranges are observed over all N)."""
    prepare, convert, Quantizer, default_config = _torchao()
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
    from ..data.decode import decode_stored
    from ..data.folder import find_splits, scan_folder
    from ..data.sources import TENSOR_DATASETS, data_root, load_tensor_split

    prep = trained.preprocessing
    if not prep.dataset:
        raise AlexNetError(f"{trained.source} does not say which data set it was trained on: pass --dataset")
    generator = torch.Generator().manual_seed(seed)
    if prep.dataset in TENSOR_DATASETS:
        split = load_tensor_split(prep.dataset, data_dir, train=True, download=False)
        pick = torch.randperm(len(split.labels), generator=generator)[:n]
        stored = split.images[pick]
    else:
        samples, _ = scan_folder(find_splits(data_root(data_dir))[0])
        pick = torch.randperm(len(samples), generator=generator)[:n].tolist()
        channels = trained.meta.model.in_channels
        stored = torch.stack([decode_stored(samples[i][0], prep.stored_size, channels) for i in pick])
    transform = prep.transform()
    return torch.cat([transform.eval(chunk) for chunk in stored.split(256)]).contiguous()


def quantize(trained: TrainedModel, calibration: torch.Tensor, batch: int = 64, record: dict[str, Any] | None = None,
             autotune: bool = False) -> tuple[TrainedModel, torch.export.ExportedProgram]:  # fmt: skip
    """``trained`` as an int8 `TrainedModel` (compiled, CPU) and its program, to save with `save_int8`; ``autotune``
    is recorded, and loading the program compiles it the same way."""
    program = quantize_graph(trained.model, calibration, batch)
    quantization = {"scheme": SCHEME, "batch": batch, "calibration_images": len(calibration), "autotune": autotune,
                    **(record or {})}  # fmt: skip
    meta = replace(trained.meta, provenance={**trained.meta.provenance, "quantization": quantization})
    size = trained.preprocessing.input_size
    model = Int8Model(program.module(), batch, trained.meta.model.in_channels, size, autotune)
    return TrainedModel(model.eval(), meta, None, trained.source), program


def save_int8(program: torch.export.ExportedProgram, meta: ModelMeta, path: Path | str) -> None:
    atomic_write(
        path, lambda f: torch.export.save(program, f, extra_files={"alexnet.json": json.dumps(meta.to_dict())})
    )


def load_program(path: Path | str) -> TrainedModel:
    """A ``.pt2`` this project wrote: `alexnet export --format exported-program` (fp32, dynamic batch) or
    `alexnet quantize` (int8, compiled on load)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    check_program(path)  # before torch reads it: torch.export.load unpickles and evaluates parts of an archive
    extra = {"alexnet.json": ""}
    # torchao registers the quantized_decomposed ops an int8 program is made of, before deserialising; an fp32
    # program needs none, and an int8 one without torchao fails below, naming the ops.
    with contextlib.suppress(AlexNetError):
        _torchao()
    try:
        program = torch.export.load(str(path), extra_files=extra)
    except Exception as err:  # a zip that is not a program, a newer serialization format...
        raise CorruptCheckpointError(f"{path} is not a loadable torch.export program ({err})") from None
    if not extra["alexnet.json"]:
        raise CorruptCheckpointError(f"{path} has no alexnet metadata (write it with alexnet export or quantize)")
    meta = ModelMeta.from_dict(json.loads(extra["alexnet.json"]), str(path))
    quantization = meta.provenance.get("quantization")
    if quantization:
        prep = meta.preprocessing
        model: nn.Module = Int8Model(program.module(), int(quantization["batch"]), meta.model.in_channels,
                                     prep.input_size, bool(quantization.get("autotune")))  # fmt: skip
        return TrainedModel(model.eval(), meta, None, str(path))
    return TrainedModel(ProgramModel(program.module(), meta.model.in_channels), meta, None, str(path))


class ProgramModel(_ExportedModule):
    """An fp32 exported program as a module."""

    def __init__(self, graph: nn.Module, in_channels: int) -> None:
        super().__init__()
        self.graph, self.in_channels = graph, in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.graph(x.contiguous())


def is_int8(trained: TrainedModel) -> bool:
    return bool(trained.meta.provenance.get("quantization"))
