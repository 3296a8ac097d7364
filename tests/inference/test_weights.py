"""The weights registry end to end, offline: a registry entry a test adds, pointing at a weights file the test makes
and serves from a loopback HTTP server, then download (progress bar, hash check, cache), predict with its class
names, eval, export and fine-tuning from it; and every way a download can go wrong."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import subprocess
import sys
import threading

import pytest
import torch

import alexnet
from alexnet.artifacts import weights as W
from alexnet.artifacts.loader import load_trained
from alexnet.cli import main
from tests.helpers import noise_images

CLASSES = ["ant", "bee", "cat", "dog", "eel"]
SMALL = {"width": 0.25, "input_size": 64}  # alexnet_owt at a quarter width and 64 px: 2.5 M parameters


class _Server(http.server.ThreadingHTTPServer):
    routes: dict[str, tuple[bytes, dict[str, str]]]
    hits: list[str]


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.server.hits.append(self.path)
        body, headers = self.server.routes.get(self.path, (None, {}))
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", headers.get("Content-Length", str(len(body))))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    srv = _Server(("127.0.0.1", 0), _Handler)
    srv.routes, srv.hits = {}, []
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()


@pytest.fixture(scope="module")
def state_bytes(tmp_path_factory) -> bytes:
    """A torchvision-format release file (a torch.save'd state dict, no metadata) of a small alexnet_owt."""
    torch.manual_seed(0)
    model = alexnet.create_model("alexnet_owt", num_classes=len(CLASSES), **SMALL)
    path = tmp_path_factory.mktemp("src") / "owt.pth"
    torch.save(model.state_dict(), path)
    return path.read_bytes()


@pytest.fixture
def entry(server, state_bytes, tmp_path, monkeypatch):
    """A registry entry served over loopback, with torch.hub's cache in a fresh TORCH_HOME."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    server.routes["/w/owt-test.pth"] = (state_bytes, {})
    weights = W.register(
        W.Weights(
            name="alexnet_owt.TEST_V1",
            url=f"http://127.0.0.1:{server.server_port}/w/owt-test.pth",
            file_name="owt-test.pth",
            digest="sha256:" + hashlib.sha256(state_bytes).hexdigest(),
            size_mb=len(state_bytes) / 2**20,
            file_format="state_dict",
            num_classes=len(CLASSES),
            overrides=SMALL,
            preprocessing={
                "stored_size": 72,
                "crop": 64,
                "input_size": 64,
                "mean": [0.5, 0.4, 0.3],
                "std": [0.25, 0.25, 0.25],
            },
            categories=lambda: list(CLASSES),
            metrics={"acc1": 12.5, "acc5": 50.0},
            metrics_source="a test",
            licence="CC0",
        )
    )
    yield weights
    W._REGISTRY.pop(weights.name, None)


def test_download_verifies_caches_and_predicts_with_the_entrys_classes(entry, server, tmp_path, capsys):
    server.hits.clear()
    assert not W.is_cached(entry)
    model = alexnet.create_model("alexnet_owt", weights="TEST_V1")  # the torchvision way
    assert W.is_cached(entry) and entry.cache_path().parent == tmp_path / "torch-home" / "hub" / "checkpoints"
    assert server.hits == ["/w/owt-test.pth"]
    assert model.meta.classes == tuple(CLASSES) and not model.training
    expected = torch.load(entry.cache_path(), weights_only=True)
    assert all(torch.equal(v, expected[k]) for k, v in model.state_dict().items())
    assert "100%" in capsys.readouterr().err  # torch.hub's progress bar, finished

    load_trained("alexnet_owt.TEST_V1")  # the second time comes from the cache
    assert server.hits == ["/w/owt-test.pth"]

    image = noise_images(tmp_path / "imgs", 1)[0]
    assert main(["predict", "--weights", "alexnet_owt.TEST_V1", "--json", str(image)]) == 0
    top = json.loads(capsys.readouterr().out)["topk"]
    assert {t["label"] for t in top} == set(CLASSES)

    assert main(["weights", "--json"]) == 0
    rows = {r["name"]: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
    assert rows["alexnet_owt.TEST_V1"]["cached"] is True and rows["alexnet_owt.TEST_V1"]["acc1"] == 12.5
    assert rows["alexnet_paper.BVLC_IMAGENET1K"]["licence"].startswith("non-commercial")


def test_a_corrupted_download_is_refused_and_nothing_is_cached(entry, server, state_bytes):
    bad = bytearray(state_bytes)
    bad[len(bad) // 2] ^= 0xFF
    server.routes["/w/owt-test.pth"] = (bytes(bad), {})
    with pytest.raises(W.WeightsError, match=entry.digest.split(":")[1][:16]):
        W.download(entry, progress=False)
    assert not list(entry.cache_path().parent.iterdir())  # no partial, no wrong file


def test_a_download_removes_what_a_killed_download_left(entry, server):
    """A download killed outright (SIGKILL) leaves our partial file and torch.hub's temporary in the cache, the
    file's size each, for good: the next download removes those whose process is gone, and keeps a live one's."""
    import os
    import subprocess

    from alexnet.files import process_tag

    child = subprocess.Popen(["true"])
    child.wait()  # a process id that is gone
    cache = entry.cache_path().parent
    cache.mkdir(parents=True)
    name = entry.file_name
    host = process_tag().split("@")[1]
    gone = f"{child.pid}@{host}"
    left = [cache / f".{name}.{gone}.download", cache / f".{name}.{gone}.download.9f86d081884c7d65.partial"]
    kept = [
        cache / f".{name}.{os.getppid()}@{host}.download",  # a live download
        cache / f".{name}.{child.pid}@other-node.download",  # another machine's, the cache on a shared home (NFS)
        cache / f".other.pth.{gone}.download",
    ]
    for path in left + kept:
        path.write_bytes(b"x" * 100)
    W.download(entry, progress=False)
    assert entry.cache_path().is_file() and not any(p.exists() for p in left) and all(p.exists() for p in kept)


def test_a_truncated_download_is_refused(entry, server, state_bytes):
    # The server promises the whole file and sends half of it: never resumed, never kept.
    server.routes["/w/owt-test.pth"] = (state_bytes[: len(state_bytes) // 2], {"Content-Length": str(len(state_bytes))})
    with pytest.raises(W.WeightsError):
        W.download(entry, progress=False)
    assert not list(entry.cache_path().parent.iterdir())


def test_offline_says_where_to_put_the_file(entry, tmp_path):
    offline = W.register(W.Weights(**{**entry.__dict__, "url": "http://127.0.0.1:9/owt-test.pth"}))
    with pytest.raises(W.WeightsError) as err:
        W.download(offline, progress=False)
    assert str(offline.cache_path()) in str(err.value) and offline.digest in str(err.value)
    # ...and the CLI says it on one line, exit 2
    assert main(["predict", "--weights", offline.name, str(tmp_path)]) == 2


def test_file_urls_work_and_a_tampered_cache_is_refused(entry, state_bytes, tmp_path):
    src = tmp_path / "published.pth"
    src.write_bytes(state_bytes)
    local = W.register(W.Weights(**{**entry.__dict__, "url": src.as_uri()}))
    assert W.download(local, progress=False) == local.cache_path()
    with open(local.cache_path(), "r+b") as f:  # bit rot or tampering after the download
        f.seek(100)
        f.write(b"\x00\x01\x02")
    with pytest.raises(W.WeightsError, match="delete it"):
        load_trained(local.name)


def test_a_local_copy_works_wherever_a_name_does(entry, state_bytes, tmp_path):
    copy = tmp_path / "elsewhere" / entry.file_name
    copy.parent.mkdir()
    copy.write_bytes(state_bytes)
    trained = load_trained(copy)  # recognised by its name, hash-checked, with the entry's classes
    assert trained.classes == CLASSES
    other = tmp_path / "unknown.pth"
    other.write_bytes(state_bytes)
    with pytest.raises(W.WeightsError, match="no metadata"):
        load_trained(other)
    with pytest.raises(W.WeightsError, match="neither a file nor registered"):
        load_trained("alexnet_owt.NO_SUCH_TAG")
    # create_model(weights=) takes published names only: a file is pointed to load_trained, not called unregistered
    with pytest.raises(ValueError, match=r"a file such as .*loads with alexnet.load_trained\(path\)"):
        alexnet.create_model("alexnet_owt", weights=str(copy))


def test_eval_export_and_fine_tuning_from_an_entry(entry, tmp_path, capsys):
    data = tmp_path / "pets"
    for split, n in (("train", 12), ("val", 4)):
        for k, name in enumerate(("cat", "dog")):
            noise_images(data / split / name, n, seed=10 * k + (split == "val"), tint=2 * k)
    onnx = tmp_path / "m.onnx"
    images = [str(p) for p in sorted((data / "val" / "cat").iterdir())]
    assert main(["export", "--weights", entry.name, "--format", "onnx", "--out", str(onnx), "--images", *images]) == 0
    assert (
        main(
            [
                "eval",
                "--weights",
                entry.name,
                "--dataset",
                "folder",
                "--data-dir",
                str(data),
                "--json",
                "--out-dir",
                str(tmp_path / "ev"),
            ]
        )
        == 2
    )
    assert "classes" in capsys.readouterr().err  # its 5 classes are not the folder's 2: said, not crashed

    out = tmp_path / "ft"
    before = load_trained(entry.name).model.state_dict()
    code = main(
        [
            "train",
            "--recipe",
            "finetune",
            "--weights",
            entry.name,
            "--freeze",
            "features",
            "--data-dir",
            str(data),
            "--epochs",
            "20",
            "-b",
            "8",
            "--out",
            str(out),
            "--device",
            "cpu",
            "--precision",
            "fp32",
            "--no-progress",
            "--set",
            "data.workers=0",
            "--set",
            "optim.lr=0.2",
        ]
    )
    assert code == 0
    after = load_trained(out / "best.safetensors")
    assert after.classes == ["cat", "dog"] and after.meta.model.overrides == SMALL
    assert after.preprocessing.mean == (0.5, 0.4, 0.3) and after.preprocessing.stored_size == 72
    state = after.model.state_dict()
    for k, v in state.items():
        if k.startswith("features."):
            assert torch.equal(v, before[k]), k  # frozen: bitwise the published weights
    assert not torch.equal(state["classifier.4.weight"], before["classifier.4.weight"])  # fc7 trained
    assert state["classifier.6.weight"].shape == (2, before["classifier.6.weight"].shape[1])  # new head
    # It learns. On these random "published" features, frozen, little signal reaches the fc layers: 3 epochs at lr
    # 0.01 left the training loss at ln 2 within dropout's noise (0.6923 → 0.6921 passed, → 0.6933 with other masks
    # failed). So 20 epochs at 0.2, judged on the validation loss, which dropout does not touch (0.693 → 0.662).
    rows = [r.split(",") for r in (out / "metrics.csv").read_text().splitlines()[1:]]
    val_loss, val_acc1 = [float(r[4]) for r in rows], [float(r[5]) for r in rows]
    assert len(rows) == 20 and val_loss[-1] < val_loss[0] - 0.02 and val_acc1[-1] == 100.0


@pytest.mark.parametrize("weights", ["NOPE_V1", "alexnet_owt.NOPE", "runs/x/best.safetensors", "best.pt"])
def test_create_model_points_a_file_of_weights_to_load_trained(weights):
    """`create_model(weights=...)` takes registered names only: unknown names and file paths are told the way to
    a file (it once said "or give a file path", which it then refused)."""
    with pytest.raises((W.WeightsError, ValueError), match=r"alexnet\.load_trained\(path\)") as refused:
        alexnet.create_model("alexnet_owt", weights=weights)
    assert "give a file path" not in str(refused.value)


def test_torchvisions_pretrained_and_progress_work_as_there(entry, server, tmp_path, monkeypatch, capsys):
    """`torch.hub.load(..., pretrained=True)`, as torchvision's hub takes it, was an unknown override: it is
    weights="DEFAULT" (the variant's first entry, here the test's) with torchvision's FutureWarning; progress=False
    downloads without the bar."""
    from pathlib import Path

    server.hits.clear()
    monkeypatch.delitem(W._REGISTRY, "alexnet_owt.IMAGENET1K_V1")  # so that DEFAULT is the loopback entry
    repo = Path(__file__).resolve().parents[2]
    with pytest.warns(FutureWarning, match="use weights='DEFAULT'"):
        model = torch.hub.load(str(repo), "alexnet_owt", source="local", pretrained=True, progress=False)
    assert server.hits == ["/w/owt-test.pth"] and "%" not in capsys.readouterr().err  # downloaded, no bar
    assert model.meta.classes == tuple(CLASSES) and not model.training
    expected = torch.load(entry.cache_path(), weights_only=True)
    assert all(torch.equal(v, expected[k]) for k, v in model.state_dict().items())
    with pytest.warns(FutureWarning, match="use weights=None"):
        assert not hasattr(alexnet.create_model("alexnet_owt", pretrained=False, width=0.25), "meta")
    with pytest.raises(ValueError, match="not pretrained=True with weights='TEST_V1'"):
        alexnet.create_model("alexnet_owt", pretrained=True, weights="TEST_V1")


def test_the_listing_tells_a_damaged_cached_file_from_the_published_one(entry, capsys):
    """`alexnet weights` said `cached` for a cached file of any content. A file cut short shows by its size; any
    other change by its hash, which `--verify` checks (exit 1 when one differs)."""

    def listed(*flags: str) -> tuple[int, dict, str]:
        code = main(["weights", *flags])
        out = capsys.readouterr().out
        if "--json" in flags:
            rows = {r["name"]: r for r in map(json.loads, out.splitlines())}
            return code, rows[entry.name], out
        line = next(line for line in out.splitlines() if line.startswith(entry.name))
        return code, {}, line

    W.download(entry, progress=False)
    code, row, _ = listed("--verify", "--json")
    assert code == 0 and row["cached"] and row["verified"] is True and row["problem"] is None
    assert listed()[2].endswith("MB  cached") and listed("--verify")[2].endswith("cached, verified")

    path = entry.cache_path()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # the same size: only the hash tells
    path.write_bytes(bytes(data))
    assert listed()[2].endswith("MB  cached")
    code, row, _ = listed("--verify", "--json")
    assert code == 1 and row["verified"] is False and "delete it and download again" in row["problem"]
    code, _, line = listed("--verify")
    assert code == 1 and line.endswith("cached, damaged")

    path.write_bytes(bytes(data[: len(data) // 2]))  # cut short: the size tells without hashing
    assert "check it with --verify" in listed()[2]


@pytest.mark.parametrize(
    "env",
    [{}, {"TORCH_HOME": "{tmp}/th"}, {"XDG_CACHE_HOME": "{tmp}/xdg"}, {"TORCH_HOME": "~/th", "XDG_CACHE_HOME": "/x"}],
)
def test_the_catalog_finds_torch_hubs_cache_without_importing_torch(env, tmp_path):
    """`published.cache_dir` follows torch.hub's rule for ``$TORCH_HOME`` and ``$XDG_CACHE_HOME`` without importing
    torch (so ``alexnet weights`` answers at once), and asks torch.hub once it is loaded (``set_dir`` holds)."""
    probe = (
        "import sys; from alexnet.artifacts.published import cache_dir; print(cache_dir());"
        "print('torch' in sys.modules); import torch.hub; print(torch.hub.get_dir());"
        f"torch.hub.set_dir({str(tmp_path / 'set')!r}); print(cache_dir())"
    )
    environ = {k: v for k, v in os.environ.items() if k not in ("TORCH_HOME", "XDG_CACHE_HOME")}
    environ.update({k: v.format(tmp=tmp_path) for k, v in env.items()})
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=environ, timeout=120)
    ours, loaded, hub, after_set = done.stdout.splitlines()
    assert (ours, loaded) == (f"{hub}/checkpoints", "False"), done.stderr
    assert after_set == f"{tmp_path}/set/checkpoints"
