"""Check a ``.pt2`` archive before torch reads it, so that loading one never runs code from the file.

``torch.export.load`` runs code from an archive in several places: a weight, constant or custom object marked
``use_pickle`` is unpickled with ``weights_only=False``; sample inputs that ``weights_only=True`` refuses are
unpickled again without it; legacy ``data/weights/model.pt`` files and the 2.7 zip layout are unpickled;
``guards_code`` strings are compiled into a function; symbolic shape expressions go through ``sympy.sympify``
(``eval``); and a graph node's target ``torch.<anything>`` resolves any attribute under ``torch`` (``torch.os.system``)
and is called when the program runs.

`check_program` refuses all of these from the archive's bytes alone, before torch sees it: only the entries
``torch.export.save`` writes for one program, every payload a raw tensor, sample inputs that ``weights_only=True``
reads, no guard code, symbolic expressions of plain arithmetic over shape symbols, and graph nodes that call only the
operators an image classifier of this project exports (`ALLOWED_OPS`). What passes is data and a graph of
those operators; torch then reads it with ``torch.export.load``.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from ..errors import CorruptCheckpointError, UnsafeCheckpointError, first_line

# Every operator a registered variant (any norm, activation, pooling, towers) or its int8 program exports to, and
# the int8 program's (de)quantize steps. Anything else (aten::from_file maps a file; torch.os.system is os.system)
# is refused. tests/inference/test_program_guard.py exports every variant and checks it stays inside this set.
ALLOWED_OPS = frozenset(
    f"torch.ops.{op}"
    for op in (
        "aten.adaptive_avg_pool2d.default",
        "aten.add.Tensor",
        "aten.batch_norm.default",
        "aten.cat.default",
        "aten.contiguous.default",
        "aten.conv2d.default",
        "aten.div.Tensor",
        "aten.dropout.default",
        "aten.flatten.using_ints",
        "aten.linear.default",
        "aten.max_pool2d.default",
        "aten.mul.Tensor",
        "aten.pad.default",
        "aten.pow.Tensor_Scalar",
        "aten.relu.default",
        "aten.relu_.default",
        "aten.reshape.default",
        "aten.slice.Tensor",
        "aten.split.Tensor",
        "aten.square.default",
        "aten.sym_size.int",
        "aten.tanh.default",
        "aten.view.default",
        "quantized_decomposed.quantize_per_tensor.default",
        "quantized_decomposed.dequantize_per_tensor.default",
        "quantized_decomposed.dequantize_per_channel.default",
    )
) | {"_operator.getitem"}

# The entries torch.export.save writes for one program named "model", below the archive's own top folder.
_ENTRY = re.compile(
    r"(archive_format|archive_version|byteorder|\.data/version|\.data/serialization_id|models/model\.json"
    r"|data/sample_inputs/model\.pt|data/weights/model_weights_config\.json|data/weights/weight_\d+"
    r"|data/constants/model_constants_config\.json|data/constants/tensor_\d+|extra/alexnet\.json)"
)
_PAYLOAD = re.compile(r"(weight|tensor)_\d+")
# A shape expression as torch writes it (sympy's srepr: ``Symbol('s31', positive=True, integer=True)``,
# ``Mul(Integer(2), ...)``): sympy's own constructors, quoted shape symbols, integers and arithmetic. No other
# name, string, dot or underscore can appear, so nothing reaches ``__import__`` or an attribute: sympify evaluates
# what it is given. No powers (``**``, ``Pow``) and integers of at most 12 digits, so it cannot make sympy compute
# a huge number either.
_EXPR = re.compile(
    r"(?:Symbol|Integer|Add|Mul|Max|Min|FloorDiv|Mod|PythonMod|CeilToInt|FloorToInt|IntTrueDiv"
    r"|'[su]\d{1,6}'|(?:positive|integer|nonnegative|nonzero|real|finite)=(?:True|False)|\d{1,12}|[-+/%(), ]|\*(?!\*))*"
)
MAX_EXPR = 400  # characters: a dynamic batch's expressions are ~45
MAX_UNCOMPRESSED = 8 << 30  # bytes: alexnet_paper's fp32 program is 244 MB; a bigger archive is refused unread
MAX_JSON = 64 << 20  # bytes of one JSON entry


def _refuse(path: Path, why: str) -> UnsafeCheckpointError:
    return UnsafeCheckpointError(f"{path} was refused: {why}; nothing in it was run or unpickled")


def _json(archive: zipfile.ZipFile, name: str, path: Path) -> Any:
    if archive.getinfo(name).file_size > MAX_JSON:
        raise _refuse(path, f"{name} is larger than {MAX_JSON >> 20} MB")
    try:
        return json.loads(archive.read(name))
    except (ValueError, RecursionError, UnicodeDecodeError) as err:
        raise _refuse(path, f"{name} is not valid JSON ({type(err).__name__})") from None


def _walk(tree: Any, depth: int = 0) -> Any:
    """Every (key, value) pair of a JSON tree, depth first."""
    if depth > 200:
        raise RecursionError
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield key, value
            yield from _walk(value, depth + 1)
    elif isinstance(tree, list):
        for value in tree:
            yield from _walk(value, depth + 1)


def _check_payloads(config: Any, name: str, path: Path) -> None:
    entries = config.get("config") if isinstance(config, dict) else None
    if not isinstance(entries, dict):
        raise _refuse(path, f"{name} has no payload table")
    for fqn, meta in entries.items():
        if not isinstance(meta, dict) or meta.get("use_pickle") is not False or meta.get("tensor_meta") is None:
            raise _refuse(path, f"{name}: {fqn!r} is stored as a pickle, not as raw tensor data")
        if not isinstance(meta.get("path_name"), str) or not _PAYLOAD.fullmatch(meta["path_name"]):
            raise _refuse(path, f"{name}: {fqn!r} is not a plain tensor entry ({meta.get('path_name')!r})")


def _check_program(tree: Any, path: Path) -> None:
    if not isinstance(tree, dict) or not isinstance(tree.get("graph_module"), dict):
        raise _refuse(path, "models/model.json is not an exported program")
    if tree.get("guards_code"):
        raise _refuse(path, "it carries guard code (Python source torch would compile)")
    symbols = tree.get("range_constraints") or {}
    if not isinstance(symbols, dict) or not all(re.fullmatch(r"[su]\d+", str(k)) for k in symbols):
        raise _refuse(path, "its range constraints name something other than shape symbols")
    graph = tree["graph_module"].get("graph")
    if not isinstance(graph, dict) or graph.get("custom_obj_values"):
        raise _refuse(path, "it holds custom objects")
    try:
        for key, value in _walk(tree):
            if key == "expr_str" and not (isinstance(value, str) and len(value) <= MAX_EXPR and _EXPR.fullmatch(value)):
                raise _refuse(path, f"symbolic expression {str(value)[:60]!r} is not plain arithmetic")
            if key in ("as_graph", "as_custom_obj", "as_operator", "as_graph_module"):
                raise _refuse(path, f"it holds a {key[3:]} argument (nested graphs and objects are not loaded)")
    except RecursionError:
        raise _refuse(path, "models/model.json is nested too deeply") from None
    for node in graph.get("nodes") or []:
        target = node.get("target") if isinstance(node, dict) else None
        if target not in ALLOWED_OPS:
            raise _refuse(path, f"its graph calls {str(target)[:80]!r}, which no model of this project uses")


def check_program(path: Path | str) -> None:
    """Refuse a ``.pt2`` whose loading could run code (see the module's docstring); return when it is safe to give
    to ``torch.export.load``.

    Raises:
        UnsafeCheckpointError: naming the first entry or field that would run code, or that is not ours.
        CorruptCheckpointError: not a zip archive at all.
    """
    path = Path(path)
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as err:  # damaged, not hostile
        raise CorruptCheckpointError(f"{path} is not a loadable torch.export program ({err})") from None
    with archive:
        infos = archive.infolist()
        tops = {info.filename.split("/", 1)[0] for info in infos}
        if len(tops) != 1:
            raise _refuse(path, "its entries are not under one top folder (not a torch.export.save archive)")
        top = tops.pop()
        for info in infos:
            rest = info.filename[len(top) + 1 :]
            if info.is_dir() or not _ENTRY.fullmatch(rest):
                raise _refuse(path, f"unexpected entry {info.filename!r} (legacy or foreign layouts are not loaded)")
        if sum(info.file_size for info in infos) > MAX_UNCOMPRESSED:
            raise _refuse(path, f"its entries add up to more than {MAX_UNCOMPRESSED >> 30} GB")
        names = {info.filename for info in infos}
        for needed in (
            "models/model.json",
            "data/sample_inputs/model.pt",
            "data/weights/model_weights_config.json",
            "data/constants/model_constants_config.json",
        ):
            if f"{top}/{needed}" not in names:
                raise _refuse(path, f"{needed} is missing")
        for kind in ("weights", "constants"):
            name = f"{top}/data/{kind}/model_{kind}_config.json"
            _check_payloads(_json(archive, name, path), name, path)
        _check_program(_json(archive, f"{top}/models/model.json", path), path)
        sample = archive.read(f"{top}/data/sample_inputs/model.pt")
    if sample:
        try:  # torch retries a refused weights_only load without it: refuse here, so it never does
            torch.load(io.BytesIO(sample), weights_only=True)
        except Exception as err:
            reason = first_line(err)[:120]
            raise _refuse(path, f"its sample inputs are not plain tensors ({reason})") from None
