"""Predictor and `alexnet predict`: inputs of every kind, bad files in a batch, JSON shape, ten-crop."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from alexnet.cli import main
from alexnet.inference.predictor import Predictor
from tests.conftest import make_weights
from tests.helpers import bad_files, mixed_images


def test_predict_paths_pil_and_tensors_agree(tmp_path, weights):
    predictor = Predictor.from_path(weights)
    paths = mixed_images(tmp_path / "imgs")
    by_path = predictor.predict(paths, topk=3)
    by_pil = predictor.predict([Image.open(p) for p in paths], topk=3)
    by_tensor = predictor.predict(
        [torch.from_numpy(np.array(Image.open(p).convert("RGB"))).permute(2, 0, 1) for p in paths], topk=3
    )
    for a, b, c in zip(by_path, by_pil, by_tensor):
        assert a.error is None and len(a.topk) == 3
        assert [t[0] for t in a.topk] == [t[0] for t in b.topk] == [t[0] for t in c.topk]
        assert np.allclose([t[1] for t in a.topk], [t[1] for t in c.topk], atol=1e-6)
        probs = [p for _, p in a.topk]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
        assert all(label.startswith("label_") for label, _ in a.topk)
    single = predictor.predict(paths[0], topk=1)
    assert len(single) == 1 and single[0].topk[0][0] == by_path[0].topk[0][0]
    assert single[0].topk[0][1] == pytest.approx(by_path[0].topk[0][1], abs=1e-6)
    # A file's bytes (as the service receives them) and RGB arrays (np.asarray of a PIL image: read-only, uint8 or
    # floats in [0, 1]) give the same predictions, one input or a list.
    by_bytes = predictor.predict([p.read_bytes() for p in paths], topk=3)
    arrays = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    by_array = predictor.predict(arrays, topk=3)
    by_float = predictor.predict([a.astype(np.float32) / 255 for a in arrays], topk=3)
    for a, b, c, d in zip(by_path, by_bytes, by_array, by_float):
        assert b.error is None and c.error is None and d.error is None, (b.error, c.error, d.error)
        assert b.topk == a.topk and c.topk == by_tensor[by_path.index(a)].topk == d.topk
    assert predictor.predict(paths[0].read_bytes(), topk=1)[0].topk == single[0].topk
    assert predictor.predict(bytearray(paths[0].read_bytes()), topk=1)[0].topk == single[0].topk  # one, not ints
    assert len(predictor.predict(arrays[0], topk=1)) == 1


def test_batching_does_not_change_results(tmp_path, weights):
    predictor = Predictor.from_path(weights)
    paths = mixed_images(tmp_path / "imgs")
    one = predictor.predict(paths, batch_size=1)
    many = predictor.predict(paths, batch_size=4)
    for a, b in zip(one, many):
        assert [lbl for lbl, _ in a.topk] == [lbl for lbl, _ in b.topk]
        assert np.allclose([p for _, p in a.topk], [p for _, p in b.topk], atol=1e-5)


def test_grayscale_model_takes_colour_photos(tmp_path):
    weights = make_weights(tmp_path / "gray.safetensors", in_channels=1, num_classes=10, input_size=28)
    predictor = Predictor.from_path(weights)
    path = mixed_images(tmp_path / "imgs")[0]
    (pred,) = predictor.predict([path], topk=10)
    assert pred.error is None and len(pred.topk) == 10
    # A colour photo is read as its luma: the same prediction as the grayscale file PIL makes of it.
    Image.open(path).convert("L").save(tmp_path / "luma.png")
    (luma,) = predictor.predict([tmp_path / "luma.png"], topk=10)
    assert [lbl for lbl, _ in luma.topk] == [lbl for lbl, _ in pred.topk]
    assert [p for _, p in luma.topk] == pytest.approx([p for _, p in pred.topk], abs=2e-3)


def test_cli_predict_json_with_bad_files(tmp_path, weights, capsys):
    good = mixed_images(tmp_path / "data" / "nested")
    for name, data in bad_files().items():
        (tmp_path / "data" / name).write_bytes(data)
    code = main(["predict", "--checkpoint", str(weights), "--json", "--topk", "2", "-b", "3", str(tmp_path / "data")])
    assert code == 1  # some files failed
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == len(good) + len(bad_files())
    ok = [r for r in lines if "topk" in r]
    bad = [r for r in lines if "error" in r]
    assert len(ok) == len(good) and len(bad) == len(bad_files())
    for r in ok:
        assert set(r) == {"path", "topk"} and [set(t) for t in r["topk"]] == [{"label", "prob"}] * 2
    assert {r["path"].rsplit("/", 1)[1] for r in bad} == set(bad_files())
    assert all(isinstance(r["error"], str) and r["error"] for r in bad)


def test_cli_predict_runs_at_the_precision_asked(tmp_path, weights, capsys):
    """`predict` had no --precision and ran in fp32 whatever the CPU, where eval and serve run bf16 where it is fast
    (1,000 photos through alexnet_owt on an AMD EPYC with AVX512-BF16: 0.71× fp32's time, start-up included)."""
    paths = [str(p) for p in mixed_images(tmp_path / "imgs")]
    runs = {}
    for precision in ("fp32", "bf16"):
        argv = ["predict", "--checkpoint", str(weights), *paths, "--topk", "10", "--json", "--precision", precision]
        assert main(argv) == 0
        runs[precision] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        want = Predictor.from_path(weights, precision=precision).predict(paths, topk=10)
        for got, pred in zip(runs[precision], want, strict=True):
            assert [t["label"] for t in got["topk"]] == [label for label, _ in pred.topk]
            assert [t["prob"] for t in got["topk"]] == pytest.approx([q for _, q in pred.topk], abs=1e-6)
    assert runs["fp32"] != runs["bf16"]


def test_cli_predict_table_glob_and_success_exit(tmp_path, weights, capsys):
    mixed_images(tmp_path / "imgs")
    assert main(["predict", "--checkpoint", str(weights), str(tmp_path / "imgs" / "*.png")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and all("label_" in line and "%" in line for line in out)


def test_ten_crop_prediction(tmp_path, weights):
    predictor = Predictor.from_path(weights)
    paths = mixed_images(tmp_path / "imgs")
    ten = predictor.predict(paths, ten_crop=True)
    centre = predictor.predict(paths)
    assert all(len(p.topk) == 4 for p in ten)
    assert any(a.topk != b.topk for a, b in zip(ten, centre))
    # By hand: each image's ten crops (4 corners, centre, their mirrors) through the model one by one, softmax
    # averaged per image; the batched, crop-major path must group them the same way.
    stored = torch.stack([predictor.stored(p) for p in paths])
    tf, s, c = predictor.transform, stored.shape[-1], predictor.transform.crop
    for i, pred in enumerate(ten):
        crops = [
            stored[i, :, y : y + c, x : x + c]
            for y, x in [(0, 0), (0, s - c), (s - c, 0), (s - c, s - c), ((s - c) // 2, (s - c) // 2)]
        ]
        crops += [crop.flip(-1) for crop in crops]
        with torch.no_grad():
            probs = predictor.model(tf._normalize(torch.stack(crops), tf.mean)).softmax(1).mean(0)
        top = probs.topk(4)
        assert [lbl for lbl, _ in pred.topk] == [predictor.classes[j] for j in top.indices]
        assert [p for _, p in pred.topk] == pytest.approx(top.values.tolist(), abs=1e-5)


def test_missing_file_is_an_error_line(tmp_path, weights, capsys):
    assert main(["predict", "--checkpoint", str(weights), str(tmp_path / "nope.jpg")]) == 1
    assert "cannot read" in capsys.readouterr().out


BAD_INPUTS = [
    (torch.zeros(2, 2), "is not a (C, H, W) image"),
    (torch.zeros(4, 8, 8), "is not a (C, H, W) image"),
    (torch.zeros(3, 0, 8, dtype=torch.uint8), "has no pixels"),  # raised ZeroDivisionError from the resize
    (torch.full((3, 8, 8), float("nan")), "NaN or infinite"),
    (torch.zeros(3, 8, 8, dtype=torch.int32), "give uint8, or floats"),
    (np.zeros((8, 8, 4), np.uint8), "is not an (H, W) or (H, W, C) image"),
    (np.zeros((8, 8, 3), np.int64), "give uint8, or floats"),
    (np.full((8, 8), np.inf, np.float32), "NaN or infinite"),
    (b"\x89PNG not really", "not a decodable image"),
    (b"", "empty file"),
    (12345, "cannot predict on an object of type int"),
]


@pytest.mark.parametrize(("bad", "says"), BAD_INPUTS, ids=lambda v: type(v).__name__)
def test_bad_python_inputs(weights, bad, says):
    """Each is an error on its own prediction, never an exception out of predict."""
    predictor = Predictor.from_path(weights)
    (pred,) = predictor.predict([bad])
    assert pred.topk == [] and says in pred.error, pred.error


def test_fifo_empty_argument_empty_glob_and_urls(tmp_path, weights, capsys):
    import os

    good = mixed_images(tmp_path / "imgs")
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)  # reading it would block forever
    args = [
        "predict",
        "--checkpoint",
        str(weights),
        "--json",
        str(good[0]),
        str(fifo),
        "https://x.test/a.jpg",
        str(good[1]),
    ]
    assert main(args) == 1
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["path"] for r in lines] == [str(good[0]), str(fifo), "https://x.test/a.jpg", str(good[1])]  # input order
    assert "not a regular file" in lines[1]["error"] and "URLs are not read" in lines[2]["error"]
    assert "topk" in lines[0] and "topk" in lines[3]
    for bad, message in [
        ("", "an input is empty"),
        (str(tmp_path / "none*.png"), "matches no file"),
        (str(tmp_path / "imgs" / "sub"), "holds no image files"),
    ]:
        (tmp_path / "imgs" / "sub").mkdir(exist_ok=True)
        assert main(["predict", "--checkpoint", str(weights), bad]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1


def test_file_size_cap_is_checked_before_reading(tmp_path, weights, capsys):
    big = tmp_path / "big.png"
    Image.new("RGB", (600, 600)).save(big)
    size = big.stat().st_size
    args = ["predict", "--checkpoint", str(weights), "--max-file-mb", str(size / 2**20 / 2), str(big)]
    assert main(args) == 1
    assert "exceeds the file-size limit" in capsys.readouterr().out


def test_large_jpegs_decode_at_reduced_scale_and_batches_hold_storedmixed_images(tmp_path, weights):
    from alexnet.data.decode import decode_image

    photo = tmp_path / "big.jpg"
    Image.new("RGB", (4000, 3000), (90, 120, 200)).save(photo, quality=80)
    assert decode_image(photo).shape == (3, 3000, 4000)
    assert decode_image(photo, min_size=64).shape == (3, 375, 500)  # 1/8 DCT scale, both sides >= 64
    predictor = Predictor.from_path(weights)
    assert predictor.stored(photo).shape == (3, 32, 32)  # what waits for a batch: the stored square only


def test_cpu_inference_keeps_freed_memory_as_training_does(tmp_path, monkeypatch):
    """Predictor and evaluate_checkpoint on a CPU tune the allocator (alexnet.device.tune_cpu_allocator): without it
    every batch's activations fault their pages in anew (alexnet_paper's forward 1.3x slower)."""
    import alexnet.inference.evaluate as evaluate_module
    import alexnet.inference.predictor as predictor_module

    calls = []
    for module in (predictor_module, evaluate_module):
        monkeypatch.setattr(module, "tune_cpu_allocator", lambda: calls.append(1) or True)
    from alexnet.training.fit import fit
    from tests.conftest import tiny_config

    fit(tiny_config(tmp_path / "run", "train.epochs=1"))
    calls.clear()  # training tunes it too
    Predictor.from_path(tmp_path / "run" / "last.pt")
    assert calls == [1]
    evaluate_module.evaluate_checkpoint(tmp_path / "run" / "last.pt", device="cpu", limit_batches=1, progress=False)
    assert calls == [1, 1]


@pytest.mark.parametrize("compile_", [False, True])
def test_a_cpu_predictor_prepares_its_fused_kernels_side_by_side_unless_compiled(tmp_path, monkeypatch, compile_):
    # The kernels its first batch would ask for one by one (`native.prepare`); a compiled program runs none of them.
    from alexnet import native
    from alexnet.models import fused_lrn, fused_pool

    prepared = []
    monkeypatch.setattr(native, "prepare", lambda kernels: prepared.append(list(kernels)))
    if compile_:
        from alexnet.inference import compiled

        monkeypatch.setattr(compiled, "CompiledModel", lambda model, *a: model)  # the compile itself is tested there
    Predictor.from_path(make_weights(tmp_path / "paper.safetensors", "alexnet_paper", width=0.25), compile=compile_)
    assert prepared == ([] if compile_ else [[fused_pool.kernel, fused_lrn.kernel]])


@pytest.mark.parametrize("name", ["alexnet_small", "alexnet_paper"])  # batch norm; LRN and two towers
def test_a_predictor_runs_channels_last_and_casts_bf16_weights_once_as_autocast_would(tmp_path, name):
    # Autocast would cast each conv and fc weight on every call (alexnet_owt at batch 1: 26 ms where fp32 took 18).
    from alexnet.artifacts.loader import load_trained

    path = make_weights(tmp_path / f"{name}.safetensors", name, num_classes=5)
    predictor = Predictor.from_path(path, precision="bf16")
    kinds: dict[str, set] = {}
    for m in predictor.model.modules():
        params = [p.dtype for p in m.parameters(recurse=False)]
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            kinds.setdefault("matmul", set()).update(params)
        elif params:
            kinds.setdefault("other", set()).update(params)
    assert kinds["matmul"] == {torch.bfloat16}
    assert kinds.get("other", {torch.float32}) == {torch.float32}  # batch norm as autocast leaves it
    reference = load_trained(path).model.eval()  # fp32 weights, cast by autocast on each call
    x = torch.randn(3, 3, *[reference.spec.input_size] * 2)
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
        expected = reference(x).float().softmax(1)
    assert torch.equal(predictor.probabilities(x), expected)
    # Channels last, as training and evaluation run (batch 64 on the Zen 4: 316 ms in NCHW, 216 so), in fp32 too.
    for precision, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        model = Predictor.from_path(path, precision=precision).model
        convs = [m.weight for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
        assert all(w.is_contiguous(memory_format=torch.channels_last) and w.dtype == dtype for w in convs)


def test_a_bf16_cpu_predictor_prepares_the_batch_1_fc_kernel_where_it_runs(tmp_path, monkeypatch):
    from alexnet import native
    from alexnet.models import fused_pool, gemv

    prepared = []
    monkeypatch.setattr(native, "prepare", lambda kernels: prepared.append(list(kernels)))
    path = make_weights(tmp_path / "owt.safetensors", "alexnet_owt", width=0.25)
    for fits in (True, False):  # AVX512-BF16 without AMX, or not
        monkeypatch.setattr(gemv, "cpu_fits", lambda fits=fits: fits)
        Predictor.from_path(path, precision="bf16")
    assert prepared == [[fused_pool.kernel, gemv.kernel], [fused_pool.kernel]]


def test_predict_reads_an_image_piped_to_it_as_dash(tmp_path, weights, capsys, monkeypatch):
    """`curl -s URL | alexnet predict --weights W -` read a file called `-` (`cannot read`). `-` is standard
    input now, among other inputs in their order, bounded by --max-file-mb without reading past it."""
    import io
    import sys

    paths = mixed_images(tmp_path / "imgs")
    data = __import__("pathlib").Path(paths[0]).read_bytes()

    def piped(payload: bytes, *argv: str, tty: bool = False) -> tuple[int, str]:
        stdin = io.TextIOWrapper(io.BytesIO(payload))
        monkeypatch.setattr(stdin, "isatty", lambda: tty)
        monkeypatch.setattr(sys, "stdin", stdin)
        code = main(["predict", "--checkpoint", str(weights), "--json", *argv])
        captured = capsys.readouterr()
        return code, captured.out + captured.err

    code, out = piped(data, str(paths[1]), "-", str(paths[0]))
    assert code == 0, out
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["path"] for r in rows] == [str(paths[1]), "-", str(paths[0])]
    assert rows[1]["topk"] == rows[2]["topk"]  # the same file's bytes, piped or named
    code, out = piped(data, "--max-file-mb", str(len(data) / 2**20 / 2), "-")
    assert code == 1 and json.loads(out.splitlines()[0]) == {
        "path": "-",
        "error": f"larger than the file-size limit of {len(data) // 2:,} bytes",
    }
    assert piped(b"", "-")[1].startswith('{"path": "-", "error": "empty file"}')
    for argv, says in ((["-", "-"], "- is given twice"), (["-"], "which is a terminal here")):
        code, out = piped(data, *argv, tty=argv == ["-"])
        assert code == 2 and says in out and out.count("\n") == 1, out


def test_class_names_a_terminals_encoding_cannot_spell_are_escaped_not_fatal(tmp_path, weights):
    """Printing to a stream whose encoding cannot spell a class name (`> out.txt` on Windows is cp1252; here
    PYTHONIOENCODING=ascii) showed no prediction, only "'ascii' codec can't encode characters"."""
    import os
    import subprocess
    import sys

    from alexnet.artifacts.checkpoint import save_weights
    from alexnet.artifacts.loader import load_trained

    trained = load_trained(weights)
    meta = trained.meta.to_dict()
    meta["classes"] = ["café", "日本", "naïve", "plain"]
    named = tmp_path / "named.safetensors"
    save_weights(trained.model, named, {k: meta[k] for k in ("model", "classes", "data")})
    image = tmp_path / "x.png"
    Image.new("RGB", (40, 40), (200, 10, 30)).save(image)
    env = {**os.environ, "PYTHONIOENCODING": "ascii"}
    base = [sys.executable, "-m", "alexnet.cli", "predict", "--weights", str(named), "--topk", "4", str(image)]
    table = subprocess.run(base, capture_output=True, text=True, env=env, encoding="ascii")
    assert table.returncode == 0 and table.stderr == "", table.stderr
    assert {"caf\\xe9", "\\u65e5\\u672c", "na\\xefve", "plain"} <= set(table.stdout.split()), table.stdout
    lines = subprocess.run([*base, "--json"], capture_output=True, text=True, env=env, encoding="ascii")
    assert {t["label"] for t in json.loads(lines.stdout)["topk"]} == set(meta["classes"])
