"""Load the ``.pt2`` programs this project writes: `alexnet export --format exported-program` (fp32, dynamic batch)
and `alexnet quantize` (int8, compiled by inductor on load), each with the model's metadata under ``alexnet.json``.

`program_guard.check_program` reads the archive first and refuses anything ``torch.export.load`` would execute.
"""

from __future__ import annotations

import contextlib
import json
import logging
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import AlexNetError, CorruptCheckpointError
from .program_guard import check_program
from .trained import ModelMeta, TrainedModel

log = logging.getLogger(__name__)


def load_torchao() -> tuple[Any, Any, Any, Any]:
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


def _inductor_settings() -> dict[str, Any]:
    """Inductor's settings for int8 programs: weight freezing (which selects oneDNN's int8 kernels), and its autotune
    tables, which it writes straight to stderr, only when debug logging is on (``-v``)."""
    quiet = not log.isEnabledFor(logging.DEBUG)
    settings: dict[str, Any] = {"freezing": True}
    if quiet:
        settings.update(autotune_num_choices_displayed=0, max_autotune_report_choices_stats=False)
    return settings


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
        with torch._inductor.config.patch(**_inductor_settings()), torch.no_grad(), warnings.catch_warnings():
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
            with torch.no_grad(), torch._inductor.config.patch(**_inductor_settings()):
                outs.append(self.compiled(chunk)[:n])
        return torch.cat(outs)


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
        load_torchao()
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
        model: nn.Module = Int8Model(
            program.module(),
            int(quantization["batch"]),
            meta.model.in_channels,
            prep.input_size,
            bool(quantization.get("autotune")),
        )
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
