"""int8 post-training quantization: `alexnet quantize` writes a program that loads like any weights, agrees with
fp32, is really quantized, runs any batch size, and evaluates as fp32 does; `eval --precision int8` on the fly."""

from __future__ import annotations

import json
import zipfile

import pytest
import torch

from alexnet.artifacts.loader import load_trained
from alexnet.artifacts.program import Int8Model, is_int8, load_torchao
from alexnet.cli import main
from alexnet.inference.quantize import calibration_inputs
from alexnet.training.fit import fit

from ..conftest import FIXTURES, tiny_config


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("q") / "run"
    fit(tiny_config(out, "train.epochs=1", "data.pad=0", "data.pca_std=0.0"))
    return out


def test_quantize_writes_an_int8_program_that_loads_and_agrees(trained_run, tmp_path, capsys):
    weights, program = trained_run / "best.safetensors", tmp_path / "int8.pt2"
    assert (
        main(
            [
                "quantize",
                "--checkpoint",
                str(weights),
                "--out",
                str(program),
                "--calibration",
                "128",
                "--batch",
                "32",
                "--no-autotune",
            ]
        )
        == 0
    )
    assert "calibrated on 128 training images of fake" in capsys.readouterr().out
    # Only what the graph reads is saved: converting left each fp32 weight beside its int8 copy, and export saved both
    # (alexnet_owt's program at batch 8: 290 MB where 62 do).
    load_torchao()
    saved = torch.export.load(program)
    read = {node.name for node in saved.graph.nodes if node.op == "placeholder" and node.users}
    inputs = saved.graph_signature.input_specs
    assert [spec.target for spec in inputs if spec.target is not None and spec.arg.name not in read] == []
    weights_saved = [t for t in [*saved.state_dict.values(), *saved.constants.values()] if t.ndim >= 2]
    # Its example batch (zeros, which AOTInductor compiles from) is kept as one zero expanded, not 32 images' worth.
    (example,), _ = saved.example_inputs
    with zipfile.ZipFile(program) as archive:
        kept = next(i.file_size for i in archive.infolist() if i.filename.endswith("sample_inputs/model.pt"))
    assert example.shape[0] == 32 and example.numel() * 4 > 300_000 and kept < 4096 and not example.any()
    int8, fp32 = load_trained(program), load_trained(weights)
    layers = sum(isinstance(m, torch.nn.Conv2d | torch.nn.Linear) for m in fp32.model.modules())
    assert len(weights_saved) == layers and all(t.dtype == torch.int8 for t in weights_saved)
    assert is_int8(int8) and isinstance(int8.model, Int8Model) and int8.classes == fp32.classes
    record = int8.meta.provenance["quantization"]
    assert record["calibration_images"] == 128 and record["calibration_split"] == "train" and record["batch"] == 32
    assert record["autotune"] is False  # --no-autotune, recorded: loading compiles the same way
    x = calibration_inputs(fp32, 45, seed=3)  # other training images; 45 is not a multiple of 32: padded, then cut
    with torch.no_grad():
        got, want = int8.model(x), fp32.model(x)
    assert got.shape == want.shape
    assert 0 < (got - want).abs().max() < 0.1 * want.abs().max()  # quantized (not fp32 passed through), and close
    assert (got.argmax(1) == want.argmax(1)).float().mean() >= 0.9

    assert main(["predict", "--checkpoint", str(program), "--json", str(tmp_path)]) == 2  # no image: a clear error
    results = {}
    for name, args in (
        ("fp32", [str(weights), "--precision", "fp32"]),
        ("int8", [str(program)]),
        ("fly", [str(weights), "--precision", "int8"]),
    ):
        assert main(["eval", "--checkpoint", *args, "--json", "--out-dir", str(tmp_path / name)]) == 0
        results[name] = json.loads(capsys.readouterr().out.splitlines()[0])
    assert results["fp32"]["images"] == results["int8"]["images"] == results["fly"]["images"]
    assert abs(results["int8"]["acc1"] - results["fp32"]["acc1"]) <= 3.0
    assert abs(results["fly"]["acc1"] - results["fp32"]["acc1"]) <= 3.0
    assert results["fly"]["loss"] != results["fp32"]["loss"]  # quantized on the fly, not the fp32 model again


def test_eval_int8_on_the_wrong_data_is_refused_before_quantizing(trained_run, monkeypatch, capsys):
    """The class check comes before the calibration and the compile (for alexnet_owt with autotuning, minutes)."""
    import alexnet.inference.evaluate as evaluate_module

    quantized = []
    monkeypatch.setattr(evaluate_module, "_quantized", lambda *args: quantized.append(args))
    weights = str(trained_run / "best.safetensors")
    args = ["eval", "--checkpoint", weights, "--precision", "int8", "--dataset", "fashion-mnist"]
    assert main([*args, "--data-dir", str(FIXTURES)]) == 2
    assert "this data set has 10" in capsys.readouterr().err and quantized == []


def test_quantize_refuses_a_wrong_suffix_and_a_broken_program(trained_run, tmp_path, capsys):
    assert (
        main(["quantize", "--checkpoint", str(trained_run / "best.safetensors"), "--out", str(tmp_path / "q.pt")]) == 2
    )
    assert ".pt2" in capsys.readouterr().err
    broken = tmp_path / "broken.pt2"
    broken.write_bytes(b"PK\x03\x04 not really a zip")
    assert main(["eval", "--checkpoint", str(broken)]) == 2
    assert "not a loadable torch.export program" in capsys.readouterr().err


def test_a_batch_beyond_any_use_is_refused_before_the_model_loads(tmp_path, capsys, monkeypatch):
    """`--batch 100000` wrote a 946 MB program for a 4-class 32 px model (its file keeps a zero example batch);
    at 224 px the example alone would have asked 60 GB."""
    import alexnet.inference.quantize as Q

    monkeypatch.setattr(Q, "load_network", lambda *a: pytest.fail("the model loaded"))
    for batch in ("1025", "100000"):
        assert main(["quantize", "--weights", "x.safetensors", "--out", str(tmp_path / "q.pt2"), "--batch", batch]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"batch {batch} is out of range" in err and "from 1 to 1024" in err, err
    assert not list(tmp_path.iterdir())
    # Every calibration image is held preprocessed at once: a million of ImageNet's would ask 600 GB.
    argv = ["quantize", "--weights", "x.safetensors", "--out", str(tmp_path / "q.pt2"), "--calibration", "10001"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "calibration on 10,001 images is out of range: from 1 to 10,000" in err, err


def test_calibration_images_that_cannot_fit_are_one_line(trained_run, monkeypatch):
    """The images are held preprocessed at once (fp32): in a container whose limit they exceed, the out-of-memory
    killer would end `quantize` without a word."""
    import alexnet.memory as memory
    from alexnet.memory import Available, MemoryBudgetError

    trained = load_trained(trained_run / "best.safetensors")
    monkeypatch.setattr(memory, "available", lambda: Available(10_000, "available on this machine"))
    with pytest.raises(MemoryBudgetError, match="calibration: a batch of 16 needs at least .*: calibrate on fewer"):
        calibration_inputs(trained, 16)
    monkeypatch.setattr(memory, "available", lambda: Available(10**9, "available on this machine"))
    assert len(calibration_inputs(trained, 16)) == 16


# The last chunk short of a batch; fewer images than one batch; a batch of one (the bench's latency program).
@pytest.mark.parametrize(("images", "batch"), [(45, 32), (20, 32), (8, 1)])
def test_calibration_images_need_not_fill_whole_batches(images, batch):
    from alexnet import create_model
    from alexnet.inference.quantize import quantize_graph

    torch.manual_seed(0)
    model = create_model("alexnet_small", num_classes=4, width=0.25).eval()
    program = quantize_graph(model, torch.randn(images, 3, 32, 32), batch=batch)
    assert program.example_inputs[0][0].shape == (batch, 3, 32, 32)  # the program's own batch stays fixed


@pytest.mark.parametrize("name", ["alexnet_owt", "alexnet_paper"])
def test_every_weight_layer_is_quantized_the_strided_stem_too(name):
    """The quantizer matches torch's module types: conv1 (`StemConv2d`) must reach it as ``nn.Conv2d``
    (`standard_modules`), or the program keeps conv1 in fp32 (and its int8 throughput halves)."""
    from alexnet import create_model
    from alexnet.inference.quantize import quantize_graph

    torch.manual_seed(0)
    model = create_model(name, num_classes=4, width=0.25).eval()
    size = model.spec.input_size
    program = quantize_graph(model, torch.randn(4, 3, size, size), batch=2)
    nodes = list(program.graph.nodes)
    convs = [n for n in nodes if n.target == torch.ops.aten.conv2d.default]
    linears = [n for n in nodes if n.target == torch.ops.aten.linear.default]
    assert len(convs) == 5 and len(linears) == 3
    for node in convs + linears:  # the input and the weight of each arrive dequantized from int8
        assert all("dequantize" in str(arg.target) for arg in node.args[:2]), node
    assert type(model.features[0]).__name__ == "StemConv2d"  # the model itself is left as it was
