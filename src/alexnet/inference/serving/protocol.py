"""The Open Inference Protocol (KServe v2) infer request and response, with Triton's binary tensor extension.

A request's body is JSON, or (binary extension, what ``tritonclient.http`` sends by default) a JSON header of
``Inference-Header-Content-Length`` bytes followed by each binary input's raw data in order, each input saying its
size as ``parameters.binary_data_size``. Inputs here are either images (datatype ``BYTES``, shape ``[N]``, each
element an encoded JPEG/PNG/...; OpenVINO Model Server's convention) or model inputs (``FP32``, shape
``[N, C, H, W]``, already preprocessed). BYTES elements in binary form are a 4-byte little-endian length followed by
the bytes; in JSON they are strings, which cannot carry arbitrary bytes, so JSON BYTES are read as base64.
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

HEADER = "Inference-Header-Content-Length"
MAX_ELEMENTS = 256  # images in one request
MAX_DIM = 1 << 20  # any one dimension of a tensor: its element count is bounded before anything is allocated


class ProtocolError(ValueError):
    """A malformed infer request: the server answers 400 with this message."""


@dataclass
class InferInput:
    name: str
    datatype: str
    shape: list[int]
    images: list[bytes] | None = None  # BYTES
    tensor: np.ndarray | None = None  # FP32, (N, C, H, W)


@dataclass
class InferRequest:
    id: str | None
    inputs: list[InferInput]
    binary_outputs: dict[str, bool]  # output name → wants binary data
    binary_default: bool


def _shape(value: Any) -> list[int]:
    if (
        not isinstance(value, list)
        or len(value) > 8
        or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= MAX_DIM for d in value)
    ):
        raise ProtocolError(f"shape {str(value)[:80]} must be a list of at most 8 integers from 0 to {MAX_DIM}")
    return value


def _count(shape: list[int]) -> int:
    """Elements of ``shape``, in Python's integers (numpy's product of large dims overflows silently)."""
    count = 1
    for d in shape:
        count *= d
    return count if shape else 0


def _bytes_elements(raw: bytes, count: int) -> list[bytes]:
    out, pos = [], 0
    for _ in range(count):
        if pos + 4 > len(raw):
            raise ProtocolError("binary BYTES data ends inside an element's length")
        (n,) = struct.unpack_from("<I", raw, pos)
        if pos + 4 + n > len(raw):
            raise ProtocolError("binary BYTES data ends inside an element")
        out.append(raw[pos + 4 : pos + 4 + n])
        pos += 4 + n
    if pos != len(raw):
        raise ProtocolError("binary BYTES data is longer than its elements")
    return out


def parse_infer(body: bytes, header_length: str | None) -> InferRequest:
    """Parse an infer request body (see the module's docstring).

    Raises:
        ProtocolError: anything malformed, named.
    """
    try:
        return _parse(body, header_length)
    except ProtocolError:
        raise
    except (ValueError, TypeError, AttributeError, KeyError, OverflowError, RecursionError, MemoryError) as err:
        # What the checks below did not foresee is still the client's malformed request, not the server's fault.
        raise ProtocolError(f"malformed infer request ({type(err).__name__}: {str(err)[:120]})") from None


def _parse(body: bytes, header_length: str | None) -> InferRequest:
    if header_length is not None:
        if not (header_length.isascii() and header_length.isdigit()) or int(header_length) > len(body):
            raise ProtocolError(f"{HEADER}={header_length!r} is not a length within the body ({len(body)} bytes)")
        split = int(header_length)
        head, binary = body[:split], body[split:]
    else:
        head, binary = body, b""
    try:
        tree = json.loads(head)
    except (ValueError, UnicodeDecodeError) as err:  # ValueError: also integers of more than 4,300 digits
        raise ProtocolError(f"the request is not JSON: {str(err)[:120]}") from None
    except RecursionError:
        raise ProtocolError("the request's JSON nests too deeply") from None
    if not isinstance(tree, dict) or not isinstance(tree.get("inputs"), list) or len(tree["inputs"]) != 1:
        raise ProtocolError("the request must be an object with exactly one entry in 'inputs'")
    params = tree.get("parameters", {})
    if not isinstance(params, dict):
        raise ProtocolError("'parameters' must be an object")
    inputs, offset = [], 0
    for spec in tree["inputs"]:
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise ProtocolError("each input needs a 'name'")
        datatype, shape = spec.get("datatype"), _shape(spec.get("shape"))
        if datatype not in ("BYTES", "FP32"):
            raise ProtocolError(f"input datatype {datatype!r}: send images as BYTES or model inputs as FP32")
        count = _count(shape)
        if datatype == "BYTES" and (len(shape) != 1 or not 1 <= shape[0] <= MAX_ELEMENTS):
            raise ProtocolError(f"BYTES input shape must be [N] with 1 ≤ N ≤ {MAX_ELEMENTS}, not {shape}")
        own = spec.get("parameters", {})
        if not isinstance(own, dict):
            raise ProtocolError(f"input {spec['name']!r}: 'parameters' must be an object")
        size = own.get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0 or offset + size > len(binary):
                raise ProtocolError(f"binary_data_size={size!r} runs past the body")
            raw, offset = binary[offset : offset + size], offset + size
        elif "data" not in spec:
            raise ProtocolError(f"input {spec['name']!r} has neither 'data' nor binary data")
        if datatype == "BYTES":
            images = None if size is not None else _json_bytes(spec["data"], count)
            item = build_input(spec["name"], datatype, shape, raw=raw if size is not None else None, images=images)
        else:
            item = build_input(
                spec["name"],
                datatype,
                shape,
                raw=raw if size is not None else None,
                values=None if size is not None else spec["data"],
            )
        inputs.append(item)
    outputs = tree.get("outputs") if isinstance(tree.get("outputs"), list) else []
    wanted = {}
    for o in outputs:
        if isinstance(o, dict) and isinstance(o.get("name"), str):
            own = o.get("parameters", {})
            if not isinstance(own, dict):
                raise ProtocolError(f"output {o['name']!r}: 'parameters' must be an object")
            wanted[o["name"]] = bool(own.get("binary_data", False))
    request_id = tree.get("id") if isinstance(tree.get("id"), str) else None
    return InferRequest(request_id, inputs, wanted, bool(params.get("binary_data_output", False)))


def build_input(
    name: str,
    datatype: str,
    shape: list[int],
    *,
    raw: bytes | None = None,
    images: list[bytes] | None = None,
    values: Any = None,
) -> InferInput:
    """One input, checked, whichever transport carried it: ``raw`` binary data (BYTES: 4-byte little-endian
    lengths before each element; FP32: little-endian floats), or the decoded ``images`` / numeric ``values``.

    Raises:
        ProtocolError: a datatype other than BYTES or FP32, a shape out of bounds, or data that does not fill it.
    """
    shape = _shape(shape)
    if datatype not in ("BYTES", "FP32"):
        raise ProtocolError(f"input datatype {datatype!r}: send images as BYTES or model inputs as FP32")
    count = _count(shape)
    item = InferInput(name, datatype, shape)
    if datatype == "BYTES":
        if len(shape) != 1 or not 1 <= shape[0] <= MAX_ELEMENTS:
            raise ProtocolError(f"BYTES input shape must be [N] with 1 ≤ N ≤ {MAX_ELEMENTS}, not {shape}")
        item.images = _bytes_elements(raw, count) if raw is not None else list(images or [])
        if len(item.images) != count:
            raise ProtocolError(f"{len(item.images)} BYTES element(s) for shape {shape}")
        return item
    if len(shape) != 4 or not 1 <= shape[0] <= MAX_ELEMENTS or count > MAX_ELEMENTS * 3 * 1024 * 1024:
        raise ProtocolError(f"FP32 input shape must be [N, C, H, W] with 1 ≤ N ≤ {MAX_ELEMENTS}, not {shape}")
    if raw is not None:
        if len(raw) != 4 * count:
            raise ProtocolError(f"{len(raw)} bytes of data are not 4 × {count} FP32 elements")
        array = np.frombuffer(raw, dtype="<f4")
    else:
        try:
            array = np.asarray(values, dtype=np.float32).reshape(-1)
        except (ValueError, TypeError, OverflowError):  # OverflowError: an integer beyond any float
            raise ProtocolError("FP32 'data' must be a flat or nested list of numbers") from None
    if array.size != count:
        raise ProtocolError(f"{array.size} FP32 values for shape {shape}")
    item.tensor = array.reshape(shape).astype(np.float32)
    return item


def _json_bytes(data: Any, count: int) -> list[bytes]:
    if not isinstance(data, list) or len(data) != count or not all(isinstance(d, str) for d in data):
        raise ProtocolError(f"BYTES 'data' must be {count} base64 string(s)")
    try:
        return [base64.b64decode(d, validate=True) for d in data]
    except (binascii.Error, ValueError):
        raise ProtocolError("BYTES 'data' in JSON must be base64 (or send binary data)") from None


def infer_response(model: str, request: InferRequest, outputs: dict[str, np.ndarray]) -> tuple[bytes, dict[str, str]]:
    """The response body and extra headers: JSON, or a JSON header plus binary data for outputs asked that way."""
    tree: dict[str, Any] = {"model_name": model, "model_version": "1", "outputs": []}
    if request.id is not None:
        tree["id"] = request.id
    binary = []
    for name, array in outputs.items():
        if request.binary_outputs and name not in request.binary_outputs:
            continue  # the client asked for other outputs only
        datatype = "FP32" if array.dtype == np.float32 else "INT64"
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if request.binary_outputs.get(name, request.binary_default):
            raw = array.astype("<f4" if datatype == "FP32" else "<i8").tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            binary.append(raw)
        else:
            entry["data"] = array.reshape(-1).tolist()
        tree["outputs"].append(entry)
    head = json.dumps(tree).encode()
    if not binary:
        return head, {}
    return head + b"".join(binary), {HEADER: str(len(head))}
