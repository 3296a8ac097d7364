"""A model compiled ahead of time for inference (`Predictor(compile=True)`, `alexnet serve --compile`): exported with
a dynamic batch, its weights frozen in the precision it will run at, and compiled by AOTInductor. This is what
OpenVINO's ``compile_model`` does to a model; it costs seconds once and halves the batch-1 latency of
`alexnet_owt` in bf16 on the CPU (docs/performance.md).
"""

from __future__ import annotations

import contextlib
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
        example = torch.zeros(_example_batch(dtype, device), in_channels, size, size, dtype=dtype, device=device)
        batch = torch.export.Dim("batch", min=1)
        # A size-1 example's batch stays dynamic only with sizes "backed size-oblivious".
        single = len(example) == 1
        oblivious = _size_oblivious_config().patch(backed_size_oblivious=True) if single else contextlib.nullcontext()
        with torch.no_grad(), standard_modules(model), oblivious:
            program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
        self._run = aot_compile(program, cache=True)  # a restart of `serve --compile` takes the kept package
        log.info("compiled %s for %s in %.1f s", type(model).__name__, dtype, time.perf_counter() - start)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._run([x.to(self.dtype).contiguous()])[0]


def _example_batch(dtype: torch.dtype, device: torch.device | str) -> int:
    # Inductor packs the frozen fc weights for oneDNN in the layout best for the batch of the export's example. In
    # fp32, packed for batch 2, fc6 at batch 1 took 6-7 ms against 4 packed for 1 (2 cores of an AMD EPYC, Zen 2);
    # from an example of 1, alexnet_owt's batch-1 call ran 1.13× as fast (1.10-1.29: 20.0-21.5 → 16.7-18.2 ms),
    # batch 8 1.02×, batch 64 0.99× (three rounds of one process each way). bf16 keeps batch 2, the example its
    # compiled latency was measured with on AMX, as do GPUs (unmeasured) and fp32 where torch cannot keep a size-1
    # batch dynamic.
    cpu = torch.device(device).type == "cpu"
    return 1 if cpu and dtype == torch.float32 and _size_oblivious_config() is not None else 2


def _size_oblivious_config() -> object | None:
    # torch.export specialises a dimension it sees at size 1 unless sizes are "backed size-oblivious" (a private
    # setting of torch.fx; without it, fp32 too is exported from an example of 2).
    with contextlib.suppress(ImportError):
        import torch.fx.experimental._config as fx_config

        if hasattr(fx_config, "backed_size_oblivious"):
            return fx_config
    return None
