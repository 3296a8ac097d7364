"""Loading a model file never runs code from it (issue 21 §1). One shape for every loader: a file carrying a payload
that would create a marker directory if anything unpickled or evaluated it, loaded the way a user would (the
library's loader and `alexnet predict`); the load is refused with one line and the marker never appears.

The `.pt2` cases are the places where ``torch.export.load`` itself unpickles (``weights_only=False``) or evaluates
(guard code, sympy expressions); each of them creates the marker when handed to ``torch.export.load`` directly,
which `test_each_pt2_attack_is_real` shows, so the guard is what stops them.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import zipfile
from pathlib import Path

import pytest
import torch

import alexnet
from alexnet.artifacts.loader import load_trained
from alexnet.artifacts.program_guard import ALLOWED_OPS, check_program
from alexnet.cli import main
from alexnet.errors import AlexNetError
from alexnet.inference.export import export_model

from ..conftest import make_weights


class _Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (self.marker,))  # creates a directory when unpickled


def _pickled(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def program(tmp_path_factory) -> Path:
    """A genuine fp32 program with a dynamic batch (symbolic shapes), as `alexnet export` writes it."""
    root = tmp_path_factory.mktemp("pt2")
    trained = load_trained(make_weights(root / "w.safetensors"))
    return export_model(trained, "exported-program", root / "ok.pt2").path


def _rewrite(src: Path, dst: Path, change) -> Path:
    with zipfile.ZipFile(src) as z:
        entries = {i.filename: z.read(i.filename) for i in z.infolist()}
    top = next(iter(entries)).split("/")[0]
    change(entries, top)
    with zipfile.ZipFile(dst, "w") as z:
        for name, data in entries.items():
            z.writestr(name, data)
    return dst


def _edit_json(entries, name, edit):
    tree = json.loads(entries[name])
    edit(tree)
    entries[name] = json.dumps(tree).encode()


def _sample_inputs(e, top, m):
    e[f"{top}/data/sample_inputs/model.pt"] = _pickled((_Payload(m),))


def _pickled_weight(e, top, m):
    name = f"{top}/data/weights/model_weights_config.json"
    cfg = json.loads(e[name])
    first = next(iter(cfg["config"]))
    cfg["config"][first]["use_pickle"] = True
    e[name] = json.dumps(cfg).encode()
    e[f"{top}/data/weights/{cfg['config'][first]['path_name']}"] = _pickled(_Payload(m))


def _legacy_weights(e, top, m):
    e[f"{top}/data/weights/model.pt"] = _pickled({"w": _Payload(m)})


def _opaque_constant(e, top, m):
    def add(cfg):
        entry = {"path_name": "opaque_obj_0", "is_param": False, "use_pickle": True, "tensor_meta": None}
        cfg["config"]["evil"] = entry

    _edit_json(e, f"{top}/data/constants/model_constants_config.json", add)
    e[f"{top}/data/constants/opaque_obj_0"] = pickle.dumps(_Payload(m))


def _guard_code(e, top, m):
    _edit_json(e, f"{top}/models/model.json", lambda t: t.update(guards_code=[f"__import__('os').makedirs({m!r})"]))


def _sympy_expression(e, top, m):
    def poison(tree, done=[]):  # noqa: B006 (one replacement per call tree)
        if isinstance(tree, dict):
            if isinstance(tree.get("expr_str"), str) and not done:
                tree["expr_str"] = f"__import__('os').makedirs('{m}') or " + tree["expr_str"]
                done.append(1)
            for v in tree.values():
                poison(v, done)
        elif isinstance(tree, list):
            for v in tree:
                poison(v, done)

    _edit_json(e, f"{top}/models/model.json", lambda t: poison(t, []))


def _foreign_operator(e, top, m):
    def edit(tree):
        node = tree["graph_module"]["graph"]["nodes"][0]
        node["target"] = "torch.os.makedirs"
        node["inputs"] = [{"name": "name", "arg": {"as_string": m}, "kind": 1}]

    _edit_json(e, f"{top}/models/model.json", edit)


PT2_ATTACKS = {
    "sample inputs": (_sample_inputs, "sample inputs are not plain tensors"),
    "use_pickle weight": (_pickled_weight, "stored as a pickle"),
    "legacy weights file": (_legacy_weights, "unexpected entry"),
    "opaque constant": (_opaque_constant, "unexpected entry|stored as a pickle"),
    "guard code": (_guard_code, "guard code"),
    "sympy expression": (_sympy_expression, "not plain arithmetic"),
    "foreign operator": (_foreign_operator, "torch.os.makedirs"),
}
RUN_BY_TORCH = (
    "sample inputs",
    "use_pickle weight",
    "legacy weights file",
    "opaque constant",
    "guard code",
    "sympy expression",
)


@pytest.mark.parametrize("attack", list(PT2_ATTACKS))
def test_a_pt2_payload_is_refused_and_never_runs(program, tmp_path, attack, capsys):
    change, reason = PT2_ATTACKS[attack]
    marker = tmp_path / "pwned"
    evil = _rewrite(program, tmp_path / "evil.pt2", lambda e, top: change(e, top, str(marker)))
    with pytest.raises(AlexNetError, match=reason):
        load_trained(evil)
    assert not marker.exists()
    image = tmp_path / "x.png"
    from PIL import Image

    Image.new("RGB", (40, 40)).save(image)
    assert main(["predict", "--checkpoint", str(evil), str(image)]) == 2
    err = capsys.readouterr().err
    assert "refused" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not marker.exists()


@pytest.mark.parametrize("attack", RUN_BY_TORCH)
def test_each_pt2_attack_is_real(program, tmp_path, attack):
    """Without the guard, torch.export.load (and the module it returns) runs the payload: the guard is needed."""
    change, _ = PT2_ATTACKS[attack]
    marker = tmp_path / "pwned"
    evil = _rewrite(program, tmp_path / "evil.pt2", lambda e, top: change(e, top, str(marker)))
    with pytest.raises(Exception):  # noqa: B017 (whatever torch makes of the rest of the file)
        torch.export.load(str(evil)).module()(torch.zeros(2, 3, 32, 32))
        raise RuntimeError("loaded")  # guard code and sympy: the load itself succeeds after running the payload
    assert marker.exists(), "this file no longer runs code in torch.export.load: the test's attack is stale"


def test_a_genuine_program_passes_the_guard(program):
    check_program(program)
    assert load_trained(program).model(torch.zeros(3, 3, 32, 32)).shape == (3, 4)


@pytest.mark.parametrize("name", alexnet.list_models())
def test_every_variant_exports_only_allowed_operators(name):
    """The guard's operator list covers what every variant exports to, with each norm, activation and pooling."""
    for overrides in (
        {},
        {"norm": "lrn"},
        {"norm": "batch"},
        {"norm": "none", "activation": "tanh"},
        {"groups": 1, "pool": "non_overlapping", "dropout_position": "before"},
    ):
        try:
            model = alexnet.create_model(name, num_classes=3, width=0.25, **overrides).eval()
        except ValueError:
            continue  # an override this variant does not take
        size = model.spec.input_size
        batch = torch.export.Dim("batch", min=1, max=64)
        graph = torch.export.export(model, (torch.zeros(2, 3, size, size),), dynamic_shapes=({0: batch},)).graph
        used = {f"torch.ops.{n.target}" for n in graph.nodes if n.op == "call_function"}
        used = {"_operator.getitem" if "getitem" in u else u for u in used}
        assert used <= ALLOWED_OPS, (name, overrides, used - ALLOWED_OPS)


def test_a_pickle_in_every_other_format_never_runs(tmp_path, capsys):
    """.pt checkpoints, safetensors (payload in the metadata and as tensor bytes), .caffemodel, .onnx and a weights
    registry file: each carries a pickle payload; each load is refused or reads it as inert bytes."""
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Payload(str(marker)))
    cases: dict[str, Path] = {}
    cases["checkpoint"] = tmp_path / "evil.pt"
    torch.save({"model": {}, "config": {}, "payload": _Payload(str(marker))}, cases["checkpoint"])
    from safetensors.torch import save_file

    cases["safetensors"] = tmp_path / "evil.safetensors"
    save_file(
        {"w": torch.frombuffer(bytearray(payload), dtype=torch.uint8)},
        cases["safetensors"],
        metadata={"alexnet": payload.decode("latin-1")},
    )
    cases["caffemodel"] = tmp_path / "evil.caffemodel"
    cases["caffemodel"].write_bytes(payload)
    cases["registry .pth"] = tmp_path / "evil.pth"
    cases["registry .pth"].write_bytes(_pickled({"features.0.weight": _Payload(str(marker))}))
    onnx = pytest.importorskip("onnx")
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["images"], ["logits"])],
        "g",
        [onnx.helper.make_tensor_value_info("images", onnx.TensorProto.FLOAT, [1, 3])],
        [onnx.helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, [1, 3])],
    )
    model = onnx.helper.make_model(graph)
    model.metadata_props.add(key="alexnet", value=payload.decode("latin-1"))
    cases["onnx"] = tmp_path / "evil.onnx"
    cases["onnx"].write_bytes(model.SerializeToString())
    for kind, path in cases.items():
        if kind == "registry .pth":
            from alexnet.artifacts import weights as W

            with pytest.raises(AlexNetError):
                W._load_state_dict_file(path, W.get_weights("alexnet_owt.IMAGENET1K_V1"))
        elif kind == "onnx":
            from alexnet.inference.export import load_onnx

            with pytest.raises(AlexNetError):
                load_onnx(path)
        else:
            with pytest.raises(AlexNetError):
                load_trained(path)
            assert main(["predict", "--checkpoint", str(path), str(path)]) == 2, kind
            err = capsys.readouterr().err
            assert "Traceback" not in err and len(err.strip().splitlines()) == 1, (kind, err)
        assert not marker.exists(), kind


def test_an_onnx_files_external_data_is_read_only_beside_it(tmp_path, capfd):
    """An ONNX file may keep its weights in other files (`external_data`), named by path: a shared model could name
    /etc/shadow, ../../.ssh/id_rsa, a symlink to either, /dev/zero (a read without end) or a FIFO (a read that blocks).
    onnxruntime refuses each (its own check, kept by this test); our line says why in one line, and onnxruntime's
    own coloured log line beside it is silenced."""
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    meta = json.dumps(
        make_weights(tmp_path / "m.safetensors") and load_trained(tmp_path / "m.safetensors").meta.to_dict()
    )
    secret = tmp_path / "outside" / "secret"
    secret.parent.mkdir()
    secret.write_bytes(b"hush")
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "link.bin").symlink_to(secret)
    (folder / "zero.bin").symlink_to("/dev/zero")
    os.mkfifo(folder / "fifo.bin")

    def model_reading(location: str, length: int) -> Path:
        weight = TensorProto(name="W", data_type=TensorProto.UINT8, dims=[length], data_location=TensorProto.EXTERNAL)
        for key, value in (("location", location), ("offset", "0"), ("length", str(length))):
            weight.external_data.add(key=key, value=value)
        nodes = [  # logits = mean(images) · W[:4]: the file's bytes would reach the output
            helper.make_node("Slice", ["W", "s0", "s4"], ["w4"]),
            helper.make_node("Cast", ["w4"], ["wf"], to=TensorProto.FLOAT),
            helper.make_node("ReduceMean", ["images"], ["m"], axes=[1, 2, 3], keepdims=0),
            helper.make_node("Unsqueeze", ["m", "ax"], ["m1"]),
            helper.make_node("Mul", ["m1", "wf"], ["logits"]),
        ]
        consts = [
            numpy_helper.from_array(__import__("numpy").array([v], "int64"), n)
            for n, v in (("s0", 0), ("s4", 4), ("ax", 1))
        ]
        graph = helper.make_graph(
            nodes,
            "g",
            [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["b", 3, 32, 32])],
            [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["b", 4])],
            initializer=[weight, *consts],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
        model.metadata_props.add(key="alexnet", value=meta)
        path = folder / f"{len(list(folder.glob('*.onnx')))}.onnx"
        path.write_bytes(model.SerializeToString())
        return path

    image = tmp_path / "x.png"
    __import__("PIL.Image", fromlist=["Image"]).new("RGB", (32, 32)).save(image)
    (folder / "inside.bin").write_bytes(b"\x01\x02\x03\x04")
    inside = model_reading("inside.bin", 4)  # what the format is for: a file beside the model is read
    assert main(["predict", "--weights", str(inside), "--json", str(image)]) == 0, capfd.readouterr().err
    capfd.readouterr()
    for location, length in (
        (str(secret), 4),
        (os.path.relpath(secret, folder), 4),
        ("link.bin", 4),
        ("zero.bin", 8 << 30),
        ("fifo.bin", 4),
    ):
        path = model_reading(location, length)
        assert main(["predict", "--weights", str(path), str(image)]) == 2, location
        err = capfd.readouterr().err
        assert err.count("\n") == 1 and "is not a loadable ONNX model" in err and "ONNXRuntimeError" not in err, err
        assert "hush" not in err


@pytest.mark.parametrize(
    "images, logits, graph, says",
    [
        (["b", 3, 64, 64], ["b", 4], "4 logits", "its graph takes images tensor(float) ['b', 3, 64, 64]"),  # a size
        (["b", 1, 32, 32], ["b", 4], "4 logits", "its metadata says one float batch (N, 3, 32, 32)"),  # grey
        (["b", 3, 32, 32], ["b", 5], "5 logits", "its graph gives ['b', 5], where its metadata says (N, 4) logits"),
        (["b", 3, 32, 32], ["b", "k"], "5 logits from the data", "gave logits of shape (1, 5) for a batch of 1"),
        (
            ["b", 3, 32, 32],
            ["b", 4],
            "a reshape that fails",
            "the ONNX model failed on a batch of shape (1, 3, 32, 32)",
        ),
    ],
)
def test_an_onnx_graph_that_disagrees_with_its_metadata_is_one_line(tmp_path, capfd, images, logits, graph, says):
    """An ONNX file whose graph takes another input, or gives another number of logits, than its metadata says
    (edited, or another model's graph under this metadata) ended `predict` in onnxruntime's traceback, or printed
    predictions from logits of another shape. Refused on loading where the graph's shapes are known, else at the
    first batch; one line either way."""
    from onnx import TensorProto, helper

    def const(name: str, dtype: int, values: list) -> object:
        return helper.make_tensor(name, dtype, [len(values)], values)

    meta = json.dumps(
        make_weights(tmp_path / "m.safetensors") and load_trained(tmp_path / "m.safetensors").meta.to_dict()
    )
    nodes = [
        helper.make_node("GlobalAveragePool", ["images"], ["p"]),  # (N, 3, 1, 1)
        helper.make_node("Flatten", ["p"], ["f"]),  # (N, 3): zeros padded after the channel means are the logits
    ]
    inits = [const("zero", TensorProto.FLOAT, [0.0]), const("begin", TensorProto.INT64, [0, 0, 0])]
    if graph == "5 logits from the data":  # a pad of 0 · max(images) + 2: no shape inference can know it
        nodes += [
            helper.make_node("ReduceMax", ["images"], ["m"], keepdims=0),
            helper.make_node("Mul", ["m", "zero"], ["z"]),
            helper.make_node("Add", ["z", "two"], ["t"]),
            helper.make_node("Cast", ["t"], ["end"], to=TensorProto.INT64),
            helper.make_node("Concat", ["begin", "end"], ["pads"], axis=0),
        ]
        inits.append(const("two", TensorProto.FLOAT, [2.0]))
    else:
        inits.append(const("pads", TensorProto.INT64, [0, 0, 0, 2 if graph == "5 logits" else 1]))
    nodes.append(helper.make_node("Pad", ["f", "pads"], ["padded"]))
    if graph == "a reshape that fails":
        nodes.append(helper.make_node("Reshape", ["padded", "shape"], ["logits"]))
        inits.append(const("shape", TensorProto.INT64, [3, -1]))
    else:
        nodes.append(helper.make_node("Identity", ["padded"], ["logits"]))
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, images)],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, logits)],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    model.metadata_props.add(key="alexnet", value=meta)
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    image = tmp_path / "x.png"
    __import__("PIL.Image", fromlist=["Image"]).new("RGB", (32, 32)).save(image)
    code = main(["predict", "--weights", str(path), str(image)])
    err = capfd.readouterr().err
    assert code == 2 and err.count("\n") == 1 and says in err, err


def _five_classes(tree: dict) -> None:
    tree["model"]["num_classes"], tree["classes"] = 5, [*tree["classes"], "label_4"]


def _grey(tree: dict) -> None:
    tree["model"]["in_channels"] = 1
    tree["data"]["mean"], tree["data"]["std"] = [0.5], [0.25]


@pytest.mark.parametrize(
    "edit, says",
    [
        (_five_classes, "its program gives [(None, 4)], where its metadata says (N, 5) logits"),
        (_grey, "its program takes [(None, 3, 32, 32)], where its metadata says one float batch (N, 1, 32, 32)"),
    ],
)
def test_a_program_under_another_models_metadata_is_refused_on_loading(program, tmp_path, capsys, edit, says):
    """A `.pt2` whose metadata is another model's (five classes for a program of four) printed predictions under the
    wrong names, or ended in an IndexError at the first batch."""
    edited = _rewrite(
        program, tmp_path / "edited.pt2", lambda entries, top: _edit_json(entries, f"{top}/extra/alexnet.json", edit)
    )
    image = tmp_path / "x.png"
    __import__("PIL.Image", fromlist=["Image"]).new("RGB", (32, 32)).save(image)
    assert main(["predict", "--weights", str(edited), str(image)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and says in err, err


def test_a_program_whose_weights_cannot_fit_is_refused_before_it_is_read(program, monkeypatch):
    """torch.export.load reads every weight of a .pt2 into memory: set against what is left from the archive's
    directory, as a checkpoint's tensors are, before torch reads anything."""
    from alexnet import memory
    from alexnet.artifacts.checkpoint import archive_tensor_bytes
    from alexnet.memory import Available, MemoryBudgetError

    with zipfile.ZipFile(program) as z:
        weights = sum(i.file_size for i in z.infolist() if "/data/weights/weight_" in i.filename)
    need = archive_tensor_bytes(program)
    assert weights <= need < weights + 128 * 1024  # the weights, and the few small entries beside them
    monkeypatch.setattr(torch.export, "load", lambda *a, **k: pytest.fail("read"))
    monkeypatch.setattr(memory, "available", lambda: Available(need - 1, "available on this machine"))
    with pytest.raises(MemoryBudgetError, match=f"^loading: {re.escape(str(program))} needs at least"):
        load_trained(program)
    monkeypatch.undo()
    monkeypatch.setattr(memory, "available", lambda: Available(need, "available on this machine"))
    assert load_trained(program).meta.model.variant
