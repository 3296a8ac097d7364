"""Caffe's ``bvlc_alexnet.caffemodel`` → the paper's network (``alexnet_paper``) with the settings Caffe used.

The ``.caffemodel`` is a protobuf ``NetParameter`` (caffe.proto, proto2). It is parsed with the ``protobuf``
package from message descriptors built here at run time from caffe.proto's field numbers (the subset that holds
the weights), so no ``protoc`` build step and no generated code are needed. Both layer encodings are read: the
current ``layer = 100`` and the deprecated ``layers = 2`` (``V1LayerParameter``) of files written by older Caffe.

What the converted model needs, from BVLC's deploy.prototxt (see ../shared/reference/alexnet-paper-spec.md):
- LRN with k = 1 and α divided by the window (``lrn_k=1, lrn_convention="caffe"``), whose window spans both
  towers' channels (``lrn_across_towers=True``): Caffe groups only the convolutions;
- conv1 reads BGR: its input-channel axis is reversed here, so the converted model takes RGB like every other;
- inputs are 227 px on the [0, 255] scale minus the mean: per-channel means (about B 104, G 117, R 123, the
  averages of ``ilsvrc_2012_mean.binaryproto``), or those of a mean file given to the converter.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import AlexNetError, CorruptCheckpointError
from ..files import MB, read_input
from .trained import MAX_CLASSES, ModelMeta, TrainedModel, check_finite, load_state

log = logging.getLogger(__name__)
CAFFE_LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8")
# BVLC's per-channel ImageNet means in Caffe's BGR order, [0, 255] (the mean image's channel averages, rounded).
IMAGENET_MEAN_BGR = (104.0, 117.0, 123.0)
OVERRIDES = {"lrn_k": 1.0, "lrn_convention": "caffe", "lrn_across_towers": True}
MAX_FILE_BYTES = 2 << 30  # protobuf refuses messages over 2 GB; bvlc_alexnet is 233 MB


@functools.cache
def messages() -> dict[str, Any]:
    """Message classes for caffe.proto's ``NetParameter``, ``LayerParameter``, ``V1LayerParameter``, ``BlobProto``
    and ``BlobShape`` (only the fields that carry names and weights; protobuf skips the rest unread)."""
    try:
        from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
    except ImportError:
        raise AlexNetError("reading a .caffemodel needs protobuf: pip install 'alexnet[caffe]'") from None

    F = descriptor_pb2.FieldDescriptorProto
    file = descriptor_pb2.FileDescriptorProto(name="alexnet_caffe_subset.proto", package="caffe", syntax="proto2")

    def message(name: str, *fields: tuple[str, int, int, int, str | None, bool]) -> None:
        msg = file.message_type.add(name=name)
        for fname, number, ftype, label, type_name, packed in fields:
            field = msg.field.add(name=fname, number=number, type=ftype, label=label)
            if type_name:
                field.type_name = f".caffe.{type_name}"
            if packed:
                field.options.packed = True

    opt, rep = F.LABEL_OPTIONAL, F.LABEL_REPEATED
    message("BlobShape", ("dim", 1, F.TYPE_INT64, rep, None, True))
    message(
        "BlobProto",
        ("num", 1, F.TYPE_INT32, opt, None, False),
        ("channels", 2, F.TYPE_INT32, opt, None, False),
        ("height", 3, F.TYPE_INT32, opt, None, False),
        ("width", 4, F.TYPE_INT32, opt, None, False),
        ("data", 5, F.TYPE_FLOAT, rep, None, True),
        ("shape", 7, F.TYPE_MESSAGE, opt, "BlobShape", False),
        ("double_data", 8, F.TYPE_DOUBLE, rep, None, True),
    )
    message(
        "LayerParameter",
        ("name", 1, F.TYPE_STRING, opt, None, False),
        ("type", 2, F.TYPE_STRING, opt, None, False),
        ("blobs", 7, F.TYPE_MESSAGE, rep, "BlobProto", False),
    )
    message(
        "V1LayerParameter",
        ("name", 4, F.TYPE_STRING, opt, None, False),
        ("type", 5, F.TYPE_INT32, opt, None, False),
        ("blobs", 6, F.TYPE_MESSAGE, rep, "BlobProto", False),
    )
    message(
        "NetParameter",
        ("name", 1, F.TYPE_STRING, opt, None, False),
        ("layers", 2, F.TYPE_MESSAGE, rep, "V1LayerParameter", False),
        ("layer", 100, F.TYPE_MESSAGE, rep, "LayerParameter", False),
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"caffe.{name}"))
        for name in ("NetParameter", "BlobProto", "BlobShape")
    }


def _blob_array(blob: Any, source: str) -> np.ndarray:
    """A BlobProto as float32 with its dims: ``shape`` when set, else the legacy (num, channels, height, width)."""
    dims = list(blob.shape.dim) if blob.HasField("shape") else [blob.num, blob.channels, blob.height, blob.width]
    if any(d < 0 for d in dims) or int(np.prod([float(d) for d in dims])) > MAX_FILE_BYTES:
        # declared sizes are checked against the data before anything is built from them (10^12 × 0 included)
        raise CorruptCheckpointError(f"{source}: a blob declares dims {dims}")
    values = np.asarray(blob.data if len(blob.data) else blob.double_data, dtype=np.float32)
    if int(np.prod(dims)) != values.size:
        raise CorruptCheckpointError(f"{source}: a blob of shape {dims} holds {values.size} values")
    return values.reshape(dims)


def read_caffemodel(path: Path | str) -> dict[str, list[np.ndarray]]:
    """The weights of every layer that has any, by layer name, each as [weights, bias] arrays in Caffe's layout.

    Raises:
        FileNotFoundError; CorruptCheckpointError: not a NetParameter, or a blob whose size disagrees with its dims.
    """
    from google.protobuf.message import DecodeError

    path = Path(path)
    data = read_input(path, MAX_FILE_BYTES, "Caffe model")  # a regular file, smaller than protobuf's limit
    net = messages()["NetParameter"]()
    try:
        net.ParseFromString(data)
    except DecodeError as err:
        raise CorruptCheckpointError(f"{path} is not a Caffe model (protobuf NetParameter): {err}") from None
    layers = {}
    for layer in [*net.layer, *net.layers]:
        if len(layer.blobs):
            layers[layer.name] = [_blob_array(b, str(path)) for b in layer.blobs]
    if not layers:
        raise CorruptCheckpointError(f"{path} holds no layer with weights: not a trained Caffe model")
    return layers


def mean_from_binaryproto(path: Path | str) -> tuple[float, float, float]:
    """Per-channel BGR means of a Caffe mean image (``ilsvrc_2012_mean.binaryproto``: a 3×256×256 BlobProto)."""
    from google.protobuf.message import DecodeError

    blob = messages()["BlobProto"]()
    try:
        blob.ParseFromString(read_input(path, 64 * MB, "mean file"))
    except DecodeError as err:
        raise CorruptCheckpointError(f"{path} is not a Caffe mean file (protobuf BlobProto): {err}") from None
    array = _blob_array(blob, str(path))
    if array.ndim < 3 or array.shape[-3] != 3:
        raise CorruptCheckpointError(f"{path}: a mean image of shape {list(array.shape)}, not 3 × H × W")
    image = array.reshape(-1, 3, *array.shape[-2:])  # (1, 3, 256, 256) or (3, 256, 256), BGR
    return tuple(float(v) for v in image.mean(axis=(0, 2, 3)))  # type: ignore[return-value]


def convert_caffe(
    path: Path | str,
    classes: list[str] | None = None,
    mean_bgr: tuple[float, float, float] = IMAGENET_MEAN_BGR,
    provenance: dict[str, Any] | None = None,
) -> TrainedModel:
    """A Caffe AlexNet (bvlc_alexnet's layer names and layout) as a `TrainedModel` of ``alexnet_paper``.

    The width and class count are read from the file (conv1's filters / 96, fc8's outputs), so fine-tuned or
    slimmer Caffe AlexNets convert too; ImageNet's names are used for 1,000 classes unless ``classes`` is given.

    Raises:
        CorruptCheckpointError: a layer is missing; IncompatibleCheckpointError: a blob's shape does not fit.
    """
    from ..models import create_model

    source = str(path)
    layers = read_caffemodel(path)
    missing = [n for n in CAFFE_LAYERS if n not in layers]
    if missing:
        raise CorruptCheckpointError(f"{source} has no layer(s) {missing}: not bvlc_alexnet's layout")
    conv1, fc8 = layers["conv1"][0], layers["fc8"][0]
    num_classes, overrides = int(fc8.shape[-2]) if fc8.ndim >= 2 else 0, dict(OVERRIDES)
    if not 1 <= num_classes <= MAX_CLASSES or fc8.size == 0 or not 8 <= conv1.shape[0] <= 4 * 96:
        raise CorruptCheckpointError(
            f"{source}: fc8 of shape {list(fc8.shape)} and conv1 of {list(conv1.shape)} are no AlexNet's"
        )
    if conv1.shape[0] != 96:
        overrides["width"] = conv1.shape[0] / 96
    if classes is None:
        classes = imagenet_categories() if num_classes == 1000 else [f"class_{i}" for i in range(num_classes)]
    with torch.device("meta"):
        model = create_model("alexnet_paper", num_classes=num_classes, in_channels=3, **overrides)
    ours = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    own = dict(model.state_dict())
    names = [k.removesuffix(".weight") for k in own if k.endswith(".weight")]
    state: dict[str, torch.Tensor] = {}
    for caffe_name, ours_name, module in zip(CAFFE_LAYERS, names, ours):
        weight, bias = layers[caffe_name][0], layers[caffe_name][1].reshape(-1)
        weight = weight.reshape(module.weight.shape) if weight.size == module.weight.numel() else weight
        if caffe_name == "conv1":
            weight = weight[:, ::-1]  # Caffe's conv1 reads B, G, R: reversed, it reads R, G, B
        state[f"{ours_name}.weight"] = torch.from_numpy(np.ascontiguousarray(weight))
        state[f"{ours_name}.bias"] = torch.from_numpy(np.ascontiguousarray(bias))
    check_finite(state, source)
    load_state(model, state, source, assign=True)
    meta = ModelMeta.build(
        model.config,
        list(classes),
        # Caffe warps to 256×256 and crops 227; ours keeps the aspect ratio (shorter side 256, central square).
        {
            "stored_size": 256,
            "crop": 227,
            "input_size": 227,
            "mean": [m / 255 for m in mean_bgr[::-1]],
            "std": None,
            "pixel_scale": 255.0,
        },
        provenance={"converted_from": Path(path).name, "format": "caffemodel", **(provenance or {})},
        source=source,
    )
    return TrainedModel(model.eval(), meta, None, source)


def imagenet_categories() -> list[str]:
    """ImageNet-1K's 1,000 class names in index order, as torchvision ships them."""
    from torchvision.models._meta import _IMAGENET_CATEGORIES

    return list(_IMAGENET_CATEGORIES)
