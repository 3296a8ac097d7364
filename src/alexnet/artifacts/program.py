"""Load the ``.pt2`` programs this project writes: `alexnet export --format exported-program` (fp32, dynamic batch)
and `alexnet quantize` (int8, compiled by inductor on load), each with the model's metadata under ``alexnet.json``.

`program_guard.check_program` reads the archive first and refuses anything ``torch.export.load`` would execute.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import native
from ..errors import AlexNetError, CorruptCheckpointError, first_line
from ..logs import level_set
from ..memory import check_need
from . import aoti_cpu, program_cache, qlinear_rows
from .checkpoint import LOAD_ADVICE, archive_tensor_bytes
from .program_guard import check_program
from .trained import ModelMeta, TrainedModel

log = logging.getLogger(__name__)


def load_torchao() -> tuple[Any, Any, Any, Any]:
    # torchao's import registers an Enum with torch's pytree, which logs a deprecation warning on every program load:
    # torchao's business, not the user's (shown with -v).
    verbose = log.isEnabledFor(logging.DEBUG)
    with contextlib.nullcontext() if verbose else level_set("torch.utils._pytree", logging.ERROR):
        return _import_torchao()


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


class ExportedModule(nn.Module):
    """A module around an exported graph: exported in eval mode, the graph has no train mode to switch (an exported
    module refuses ``.train()`` and ``.eval()``), so only the flag changes."""

    def train(self, mode: bool = True) -> ExportedModule:
        self.training = mode
        return self


def aot_compile(
    program: torch.export.ExportedProgram, autotune: bool = False, cache: bool = False
) -> Callable[[list], list]:
    """``program`` compiled ahead of time by AOTInductor with its weights frozen: its loader's call, a list of input
    tensors to a list of outputs. With ``cache``, on the CPU, the package this compile makes is kept
    (`program_cache`), and the next compile of the same program takes it instead.

    Compiled here, from the program, never loaded from a model file: a compiled package is a shared library, and
    loading one runs its code; the cache holds only packages compiled here. AOTInductor rather than `torch.compile`:
    no guards, so a caller's `torch.inference_mode` or grad mode cannot recompile the graph without these settings,
    and no config to re-enter each call (0.10 ms of a 2 ms batch-1 int8 call on an AMD EPYC).
    """
    # freezing: the weights become constants, which lets inductor pack them for oneDNN: its int8 kernels, and fc
    # weights in oneDNN's blocked layout (alexnet_owt bf16 at batch 1: 6.9 → 3.3 ms, eager spending most of it in
    # its fc layers' plain-layout GEMVs); it only takes under no_grad (pytorch/ao#4566). autotune: inductor times
    # its GEMM templates against oneDNN's while compiling: alexnet_owt int8 at batch 1 went 4.45 → 2.96 ms per
    # image (the fc layers), for ~15 s of compile time.
    settings = {**_inductor_settings(), "max_autotune": autotune}
    # An int8 program's file keeps its example batch as one zero expanded (`save_int8`). AOTInductor compiles from
    # the graph's own shapes and strides (torch 2.14: the same outputs, bit for bit, either way); the examples are
    # made whole all the same, so that no compile step (autotuning runs candidates on inputs) meets stride-0 tensors.
    if program.example_inputs is not None:
        args, kwargs = program.example_inputs
        program.example_inputs = (tuple(a.contiguous() if isinstance(a, torch.Tensor) else a for a in args), kwargs)
    with tempfile.TemporaryDirectory(prefix="alexnet-aot-") as tmp, torch.no_grad(), warnings.catch_warnings():
        # Inductor's own lowering warns about a tensor copy it makes (torch/_inductor/mkldnn_lowerings.py).
        warnings.filterwarnings("ignore", "To copy construct from a tensor", UserWarning)
        cpu = _device(program).type == "cpu"
        cache_key = program_cache.key(program, autotune) if cache and cpu else None
        kept = program_cache.lookup(cache_key) if cache_key else None
        if kept is not None:
            check_compile_memory(program, kept=True)
            try:
                return aoti_cpu.load_cpu(kept, Path(tmp))
            except Exception as err:  # a damaged file (the zip's checksums), a torch that cannot run it: compile
                log.debug("the kept program %s does not load (%s): compiling", kept, first_line(err))
        if cpu:
            check_compile_memory(
                program, kept=False, keeps=cache_key is not None and program_cache.cache_dir() is not None
            )
        try:
            package = torch._inductor.aoti_compile_and_package(
                program, package_path=str(Path(tmp) / "program.pt2"), inductor_configs=settings
            )
        except Exception as err:  # most often no working C++ compiler: inductor builds a shared library
            raise AlexNetError(
                f"inductor could not compile the program (it needs a C++ compiler): {first_line(err)}"
            ) from err
        if cpu:
            try:
                run = aoti_cpu.load_cpu(Path(package), Path(tmp))  # its weights 64-byte aligned (see aoti_cpu)
            except Exception as err:  # a torch whose runner API moved costs speed, never the model
                log.warning("the compiled program's weights stay where AOTInductor put them (%s)", first_line(err))
            else:
                if cache_key:
                    program_cache.store(cache_key, Path(package))
                return run
        # The loader's own call: the package's wrapper re-parses its input and output specs on every call (0.03-0.06
        # ms of a 1.6 ms batch-1 call), and these programs take one tensor and return one.
        return torch._inductor.aoti_load_package(package).loader.boxed_run


# What a compile takes beyond what is in use when it starts, at the least (bytes: fixed, and a weight of the program,
# by the dtype most of its weights are in): inductor's lowering and code, the C++ compiler, copies of the frozen
# weights. Measured as the memory left at this check in the largest memory cgroup a load was killed (or thrashed) in
# and the smallest it ran in, torch 2.14.1 and g++ 12, on 2 cores of an AMD EPYC (Zen 3, AVX2) and of an Intel Xeon
# with AMX; each floor lies under every need measured. int8, 250 MB + 6 B a weight (593 MB for alexnet_owt's 57 M):
# alexnet_owt needed 658-708 MB (Xeon) and more than 670 (Zen 3), alexnet_small (4 M weights) 299-349 and more than
# 329. fp32, 250 MB + 10 B a weight: alexnet_owt 990-1,090 and more than 972, alexnet_small more than 372 (Zen 3).
# Others (bf16), 200 MB + 1.4 B a weight: alexnet_owt ran with 391 MB left on the Zen 3 (it needed 417-619 on the
# Xeon). Loading a kept package (`program_cache`), 40 MB + 1 B a weight: alexnet_owt's int8 one needed 115-138 MB,
# its fp32 one 373-572 (Zen 3).
COMPILE_FLOORS = {torch.int8: (250_000_000, 6), torch.float32: (250_000_000, 10)}
COMPILE_FLOOR = (200_000_000, 1.4)
KEPT_FIXED, KEPT_PER_WEIGHT = 40_000_000, 1


def compile_floor(program: torch.export.ExportedProgram) -> tuple[int, int]:
    """The number of weights in ``program`` and the bytes its compile needs at the least (see `COMPILE_FLOORS`)."""
    counts: dict[torch.dtype, int] = {}
    for t in (*program.state_dict.values(), *program.constants.values()):
        if isinstance(t, torch.Tensor):
            counts[t.dtype] = counts.get(t.dtype, 0) + t.numel()
    weights = sum(counts.values())
    fixed, per_weight = COMPILE_FLOORS.get(max(counts, key=counts.__getitem__, default=None), COMPILE_FLOOR)
    return weights, int(fixed + per_weight * weights)


def check_compile_memory(program: torch.export.ExportedProgram, kept: bool, keeps: bool = False) -> None:
    """Refuse a compile of ``program`` (or, ``kept``, the load of its kept package) where the memory left cannot hold
    what it takes: the out-of-memory killer would end the process without a word (`alexnet predict` of an int8
    `alexnet_owt` in an 800 MB memory cgroup). ``keeps``: the compile's package will be kept, which the advice says.

    Raises:
        alexnet.memory.MemoryBudgetError
    """
    weights, compiling = compile_floor(program)
    advice = "free memory or raise the limit"
    if kept:
        what, need = "loading", int(KEPT_FIXED + KEPT_PER_WEIGHT * weights)
        needing = f"the compiled program kept for this one ({weights / 1e6:.1f} M weights) needs"
    else:
        what, need = "compiling", compiling
        needing = f"a program of {weights / 1e6:.1f} M weights needs, while inductor compiles it,"
        advice += " (once compiled it is kept, and later loads need less)" if keeps else ""
    check_need(what, needing, need, advice)


def _device(program: torch.export.ExportedProgram) -> torch.device:
    """The device of the program's first tensor input."""
    for node in program.graph.nodes:
        if node.op == "placeholder" and isinstance(node.meta.get("val"), torch.Tensor):
            return node.meta["val"].device
    return torch.device("cpu")


def seven_bit_weights(program: torch.export.ExportedProgram) -> torch.export.ExportedProgram:
    """``program`` with its int8 weights on 7 bits (-64..64: each halved, rounded to even, its channel's scale doubled)
    where they take 8; unchanged where none does.

    For CPUs where `alexnet.native.int8_saturates`: there oneDNN adds u8 × s8 products in pairs into int16, and
    255 · 127 · 2 overflows it; 255 · 64 · 2 does not. A convolution and a linear layer with every weight at ±max came
    out 69 off in 337 of their graph's output on an AVX2 EPYC, and the demo's Fashion-MNIST model 0.008 on average;
    with 7-bit weights 0.000 and 0.0004. (7-bit activations, torchao's ``reduce_range``, left the demo model 0.017 off
    its graph.) Done when the program is compiled, not when it is quantized: the file keeps its 8 bits for the CPUs
    that have VNNI.
    """
    qd = torch.ops.quantized_decomposed

    def eight_bit(node: torch.fx.Node) -> bool:
        # (weight, scales, zero points, axis, quant_min, quant_max, dtype): -128..127, or a narrow -127..127
        if node.target is not qd.dequantize_per_channel.default or len(node.args) != 7:
            return False
        low, high, dtype = node.args[4:]
        return dtype == torch.int8 and isinstance(low, int) and isinstance(high, int) and max(-low, high) > 64

    if not any(map(eight_bit, program.graph.nodes)):
        return program
    program = copy.deepcopy(program)  # the caller's program (a loaded file's) stays as it was
    signature = program.graph_signature
    # where each placeholder's tensor is kept: the state dict (buffers) or the constants
    slots = {
        **{k: (program.state_dict, v) for k, v in signature.inputs_to_buffers.items()},
        **{k: (program.constants, v) for k, v in signature.inputs_to_lifted_tensor_constants.items()},
    }
    halved = set()  # a tensor two nodes share is halved once
    for node in filter(eight_bit, program.graph.nodes):
        (weights, w), (scales, s), (zeros, z) = (slots[arg.name] for arg in node.args[:3])
        if zeros[z].any():  # not symmetric: halving the weights would need the zero points halved too
            raise ValueError(f"{node.name}: int8 weights with a zero point")
        if w not in halved:
            weights[w] = _halved(weights[w])
        if s not in halved:
            scales[s] = scales[s] * 2
        halved |= {w, s}
        node.args = (*node.args[:4], round(node.args[4] / 2), round(node.args[5] / 2), torch.int8)  # -64..64
    program.graph_module.recompile()
    log.debug("int8 weights on 7 bits: this CPU has no VNNI, and oneDNN's int8 sums would overflow at 8")
    return program


def _halved(w: torch.Tensor) -> torch.Tensor:
    """``torch.round(w / 2)`` of int8 ``w`` (halves to even: -128..127 → -64..64), in int8 throughout: through
    float each step made a copy of 4 bytes a weight (`alexnet_owt`'s fc6: 151 MB each), which had the load of its int8
    program killed in an 800 MB memory cgroup before the compile's memory was checked."""
    floor = w >> 1  # floor(w / 2), -64..63
    return floor + (w & floor & 1)  # an odd w is a half: up to the even neighbour where the floor is odd


class Int8Model(ExportedModule):
    """A quantized program compiled by `aot_compile` for batches of exactly ``batch`` (B, C, H, W) inputs; other
    batch sizes are cut into such chunks, the last one zero-padded."""

    def __init__(
        self, program: torch.export.ExportedProgram, batch: int, autotune: bool = False, cache: bool = False
    ) -> None:
        super().__init__()
        self.batch = batch
        # Each rewrite fits the program to this CPU; a graph one did not foresee compiles as it was, and is said.
        # The fc layers' kernel first: its sums are exact at 8 bits, so only what stays on oneDNN goes to 7 (with the
        # fc layers at 8 bits `alexnet_owt`'s batch-1 logits came out 1.4% off the fp32 model's instead of 2.3%).
        for wanted, rewrite, otherwise in (
            (qlinear_rows.wanted(batch), qlinear_rows.rewrite, "int8 fc layers stay on oneDNN"),  # a few rows, no VNNI
            (
                native.int8_saturates(),
                seven_bit_weights,
                "int8 weights stay on 8 bits, where this CPU's int8 sums can overflow",
            ),
        ):
            if wanted:
                try:
                    program = rewrite(program)
                except Exception as err:
                    log.warning("%s (%s)", otherwise, first_line(err))
        self._run = aot_compile(program, autotune, cache)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float().contiguous()
        if len(x) == self.batch:  # the common case, batch 1 served one by one: nothing to cut or pad
            return self._run([x])[0]
        outs = []
        for chunk in x.split(self.batch):
            n = len(chunk)
            if n < self.batch:
                chunk = torch.cat([chunk, chunk.new_zeros(self.batch - n, *chunk.shape[1:])])
            outs.append(self._run([chunk])[0][:n])
        return torch.cat(outs)


def load_program(path: Path | str) -> TrainedModel:
    """A ``.pt2`` this project wrote: `alexnet export --format exported-program` (fp32, dynamic batch) or
    `alexnet quantize` (int8, compiled on load)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    check_program(path)  # before torch reads it: torch.export.load unpickles and evaluates parts of an archive
    # torch.export.load reads every weight into memory: set against what is left (the out-of-memory killer is silent)
    check_need("loading", f"{path} needs", archive_tensor_bytes(path), LOAD_ADVICE)
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
    _check_shapes(program, meta, path)
    quantization = meta.provenance.get("quantization")
    if quantization:
        batch, autotune = int(quantization["batch"]), bool(quantization.get("autotune"))
        model: nn.Module = Int8Model(program, batch, autotune, cache=True)
        return TrainedModel(model.eval(), meta, None, str(path))
    return TrainedModel(ProgramModel(program.module(), meta.model.in_channels), meta, None, str(path))


def _check_shapes(program: torch.export.ExportedProgram, meta: ModelMeta, path: Path) -> None:
    """The program takes one float batch (N, C, S, S) and gives (N, classes) logits, as its metadata says: a
    program saved under another model's metadata (edited) printed predictions from the wrong classes' list, or
    ended in an IndexError, at the first batch. The batch may be symbolic or fixed (an int8 program's)."""
    size, channels, classes = meta.preprocessing.input_size, meta.model.in_channels, meta.model.num_classes
    names = program.graph_signature.user_inputs
    given = [n.meta.get("val") for n in program.graph.nodes if n.op == "placeholder" and n.name in names]
    output = next(n for n in program.graph.nodes if n.op == "output").args[0]
    gives = [getattr(a, "meta", {}).get("val") for a in output]

    def shape(value: Any) -> tuple | None:
        return tuple(int(d) if isinstance(d, int) else None for d in value.shape) if value is not None else None

    takes = [shape(v) for v in given]
    if len(given) != 1 or given[0] is None or given[0].dtype != torch.float32 or takes[0][1:] != (channels, size, size):
        raise CorruptCheckpointError(
            f"{path}: its program takes {takes}, where its metadata says one float batch "
            f"(N, {channels}, {size}, {size})"
        )
    if len(gives) != 1 or gives[0] is None or shape(gives[0])[1:] != (classes,):
        raise CorruptCheckpointError(
            f"{path}: its program gives {[shape(v) for v in gives]}, where its metadata says (N, {classes}) logits"
        )


class ProgramModel(ExportedModule):
    """An fp32 exported program as a module."""

    def __init__(self, graph: nn.Module, in_channels: int) -> None:
        super().__init__()
        self.graph, self.in_channels = graph, in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.graph(x.contiguous())


def is_int8(trained: TrainedModel) -> bool:
    return bool(trained.meta.provenance.get("quantization"))
