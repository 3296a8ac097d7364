"""A model compiled ahead of time for inference (`Predictor(compile=True)`, `alexnet serve --compile`): exported with
a dynamic batch, its weights frozen in the precision it will run at, and compiled by AOTInductor. This is what
OpenVINO's ``compile_model`` does to a model; it costs seconds once and halves the batch-1 latency of
`alexnet_owt` in bf16 on the CPU (docs/performance.md).
"""

from __future__ import annotations

import copy
import logging
import time

import torch
from torch import nn

from ..artifacts.program import ExportedModule, aot_compile
from ..models import standard_modules

log = logging.getLogger(__name__)


class CompiledModel(ExportedModule):
    """``model`` compiled for (B, in_channels, size, size) inputs of any batch B, computing in ``dtype``; its
    outputs are in ``dtype`` too."""

    def __init__(
        self, model: nn.Module, in_channels: int, size: int, dtype: torch.dtype, device: torch.device | str = "cpu"
    ) -> None:
        super().__init__()
        self.dtype = dtype
        start = time.perf_counter()
        # A copy when casting: the caller's module keeps its weights and dtype.
        model = model.eval().to(device) if dtype == torch.float32 else copy.deepcopy(model).eval().to(device, dtype)
        # An example of batch 2: torch.export specialises a dimension it sees at size 1.
        example = torch.zeros(2, in_channels, size, size, dtype=dtype, device=device)
        batch = torch.export.Dim("batch", min=1)
        with torch.no_grad(), standard_modules(model):
            program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
        self._run = aot_compile(program)
        log.info("compiled %s for %s in %.1f s", type(model).__name__, dtype, time.perf_counter() - start)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._run([x.to(self.dtype).contiguous()])[0]
