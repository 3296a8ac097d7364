"""The int8 program's fully connected layers at batch 1 to 8 on CPUs without VNNI, through ``csrc/qlinear_rows.cpp``.

There oneDNN runs a u8 × s8 matmul through its general GEMM, which at one row of input reads the weights at a fifth
of the memory's rate: on a 2-core AVX2 AMD EPYC, `alexnet_owt`'s three fc layers took 10.2 ms of the int8 program's
~16 at batch 1 (fc6 6.5 ms for 37.7 MB of weights), the kernel here 1.3 ms for fc6. With VNNI (AVX-512 or AVX-VNNI)
or AMX oneDNN's own kernels are fast and stay.

`rewrite` replaces each ``linear(dequantize(x), dequantize_per_channel(w), b)`` of a quantized program with the
operator ``alexnet::qlinear_rows``, which takes the uint8 activations and int8 weights as they are; the saved
program keeps the standard graph, and the rewrite happens when it is compiled, for the CPU it runs on.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

from .. import native

log = logging.getLogger(__name__)
_SOURCE = Path(__file__).parent / "csrc" / "qlinear_rows.cpp"
MAX_ROWS = 8  # the kernel's register block: one accumulator per row


def kernel() -> Any | None:
    """The compiled extension, built on first call; None where it cannot be built."""
    return native.load("alexnet_qlinear_rows", _SOURCE, instead="oneDNN's int8 matmul")


def wanted(batch: int) -> bool:
    """Whether a program for batches of ``batch`` should take the kernel here: a few rows, an x86 CPU with AVX2 and
    without VNNI or AMX (``ALEXNET_QLINEAR_ROWS=0`` turns it off, ``=1`` on wherever it builds)."""
    setting = os.environ.get("ALEXNET_QLINEAR_ROWS", "auto")
    if setting == "0" or batch > MAX_ROWS:
        return False
    flags = native.cpu_flags()
    if setting != "1" and ("avx2" not in flags or flags & native.VNNI_FLAGS):
        return False
    return kernel() is not None


@torch.library.custom_op("alexnet::qlinear_rows", mutates_args=(), device_types="cpu")
def qlinear_rows(
    x: torch.Tensor,
    x_scale: float,
    x_zero_point: int,
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    bias: torch.Tensor | None,
) -> torch.Tensor:
    """sx · sw[n] · Σ_k (x[m, k] − zx) · w[n, k] + b[n]: (M, K) uint8 and (N, K) int8 in, (M, N) float out."""
    return kernel().forward(x, x_scale, x_zero_point, weight, weight_scale.float(), bias)


@qlinear_rows.register_fake
def _(
    x: torch.Tensor,
    x_scale: float,
    x_zero_point: int,
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    bias: torch.Tensor | None,
) -> torch.Tensor:
    return x.new_empty((x.shape[0], weight.shape[0]), dtype=torch.float32)


def _constant(gm: torch.fx.GraphModule, node: Any) -> torch.Tensor | None:
    return getattr(gm, node.target, None) if isinstance(node, torch.fx.Node) and node.op == "get_attr" else None


def _rows(node: Any) -> int:
    value = node.meta.get("val") if isinstance(node, torch.fx.Node) else None
    return int(value.shape[0]) if value is not None and value.dim() == 2 else MAX_ROWS + 1


def rewrite(program: torch.export.ExportedProgram) -> torch.export.ExportedProgram:
    """``program`` (a quantized program for a fixed batch) with its int8 fc layers on ``alexnet::qlinear_rows``;
    unchanged where it has none the operator takes (weights with a zero point, a batch over `MAX_ROWS`)."""
    qd = torch.ops.quantized_decomposed
    gm = program.module()
    changed = 0
    for node in list(gm.graph.nodes):
        if node.target is not torch.ops.aten.linear.default:
            continue
        x, w, bias = (*node.args, None)[:3]
        if not (
            getattr(x, "target", None) is qd.dequantize_per_tensor.default
            and getattr(w, "target", None) is qd.dequantize_per_channel.default
            and x.args[5] == torch.uint8
            and _rows(x.args[0]) <= MAX_ROWS
        ):
            continue
        weight, scales, zeros = (_constant(gm, a) for a in w.args[:3])
        if weight is None or scales is None or zeros is None or w.args[3] != 0 or bool(zeros.any()):
            continue
        with gm.graph.inserting_before(node):
            fused = gm.graph.call_function(
                torch.ops.alexnet.qlinear_rows.default, (x.args[0], x.args[1], x.args[2], w.args[0], w.args[1], bias)
            )
        fused.meta = dict(node.meta)
        node.replace_all_uses_with(fused)
        gm.graph.erase_node(node)
        changed += 1
    if not changed:
        return program
    gm.graph.eliminate_dead_code()
    gm.recompile()
    log.debug("%d int8 fc layers on alexnet::qlinear_rows", changed)
    inputs = [n for n in program.graph.nodes if n.op == "placeholder"]
    with torch.no_grad():  # as the program was exported (`alexnet.inference.quantize.quantize_graph`)
        return torch.export.export(gm, (torch.zeros(inputs[-1].meta["val"].shape),))
