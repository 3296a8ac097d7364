"""Loading weights safely: malicious pickles, truncation, corruption, mismatched models."""

import io
import os
import random
import shutil
import time
import zipfile

import pytest
import torch

import alexnet
from alexnet import files
from alexnet.artifacts.checkpoint import load_checkpoint, load_weights, save_checkpoint
from alexnet.artifacts.loader import load_trained
from alexnet.artifacts.trained import load_state as load_model_state
from alexnet.errors import CorruptCheckpointError, IncompatibleCheckpointError, UnsafeCheckpointError, WriteError
from alexnet.files import atomic_write


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (self.marker,))  # would create a directory when unpickled


def test_malicious_checkpoint_is_refused_and_does_not_run(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "config": {}, "payload": _Payload(str(marker))}, path)
    with pytest.raises(UnsafeCheckpointError, match=r"refused.*os\.makedirs"):
        load_checkpoint(path)
    with pytest.raises(UnsafeCheckpointError):
        load_trained(path)
    assert not marker.exists()


def test_library_never_loads_unsafely():
    """T2: every torch.load in the package passes weights_only=True; no pickle.load, no allow_pickle."""
    import ast
    from pathlib import Path

    root = Path(alexnet.__file__).parent
    for file in root.rglob("*.py"):
        tree = ast.parse(file.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                target = ast.unparse(node.func)
                if target == "torch.load":
                    kw = {k.arg: ast.unparse(k.value) for k in node.keywords}
                    assert kw.get("weights_only") == "True", f"{file}: torch.load without weights_only=True"
                assert target not in ("pickle.load", "pickle.loads"), f"{file}: {target}"
                if target == "np.load":
                    assert all(k.arg != "allow_pickle" for k in node.keywords), file


def test_truncated_checkpoint_is_a_clear_error(tmp_path, weights):
    path = tmp_path / "c.pt"
    torch.save({"model": {"w": torch.ones(1000)}, "config": {}}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptCheckpointError, match="truncated"):
        load_checkpoint(path)
    path.write_bytes(b"")
    with pytest.raises(CorruptCheckpointError):
        load_checkpoint(path)
    path.write_bytes(b"garbage bytes, not a pickle")  # corrupt, not unsafe
    with pytest.raises(CorruptCheckpointError, match="not a checkpoint"):
        load_checkpoint(path)


def test_a_checkpoint_too_large_for_memory_is_not_called_corrupt(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    torch.save({"model": {}, "config": {}}, path)
    for failure in (MemoryError(), RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 9")):

        def load(*args, failure=failure, **kwargs):
            raise failure

        monkeypatch.setattr(torch, "load", load)
        with pytest.raises(type(failure)):  # the CLI reports it as out of memory
            load_checkpoint(path)


def _rezip(archive: bytes, name: str, payload: bytes) -> bytes:
    """``archive`` with entry ``name`` replaced by ``payload`` and every CRC valid, as an attacker would write it."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(archive)) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, payload if info.filename == name else src.read(info.filename))
    return out.getvalue()


def test_bytes_that_are_no_checkpoint_never_escape_as_another_error(tmp_path):
    """Text, a pickle outside a zip (torch's legacy format) and 600 mutations of a real checkpoint's pickle, re-zipped
    with valid CRCs so that the unpickler meets them: each is refused as corrupt or unsafe, or loads; none raises
    the unpickler's own IndexError, TypeError or struct.error, which the CLI would show as a traceback."""
    path = tmp_path / "c.pt"
    state = {"model": {"w": torch.arange(4.0)}, "config": {"a": [1, 2.5, "x"]}, "epoch": 3, "rng": (True, None)}
    torch.save(state, path)
    assert load_checkpoint(path)["epoch"] == 3
    archive = path.read_bytes()
    name = next(n for n in zipfile.ZipFile(path).namelist() if n.endswith("/data.pkl"))
    pickled = zipfile.ZipFile(path).read(name)
    torch.load(io.BytesIO(_rezip(archive, name, pickled)), weights_only=True)  # the rewriting alone is accepted
    path.write_text("root:x:0:0:root:/root:/bin/bash\n")
    with pytest.raises(CorruptCheckpointError, match="not the zip archive"):
        load_checkpoint(path)
    torch.save(state, path, _use_new_zipfile_serialization=False)
    with pytest.raises(CorruptCheckpointError, match="not the zip archive"):
        load_checkpoint(path)
    rng = random.Random(0)
    outcomes: dict[str, int] = {}
    for i in range(600):
        b = bytearray(pickled)
        if i % 3 == 0:  # one byte changed: opcodes, lengths, memo indices
            b[rng.randrange(len(b))] = rng.randrange(256)
        elif i % 3 == 1:  # cut short
            del b[rng.randrange(1, len(b)) :]
        else:  # a run of the pickle repeated elsewhere
            start = rng.randrange(len(b))
            b[rng.randrange(len(b)) : start] = b[start : start + rng.randrange(1, 16)]
        path.write_bytes(_rezip(archive, name, bytes(b)))
        try:
            load_checkpoint(path)
            kind = "loaded"
        except (CorruptCheckpointError, UnsafeCheckpointError) as err:
            kind = type(err).__name__
        outcomes[kind] = outcomes.get(kind, 0) + 1
    assert outcomes.get("CorruptCheckpointError", 0) > 300, outcomes


def test_a_flipped_byte_is_caught_by_the_digest_before_unpickling(tmp_path, monkeypatch):
    """T7: torch.load reads a flipped byte in tensor data silently; the recorded SHA-256 does not."""
    import hashlib
    import struct

    import alexnet.artifacts.checkpoint as ckpt

    path = tmp_path / "last.pt"
    save_checkpoint({"model": {"w": torch.arange(1000, dtype=torch.float32)}, "config": {}}, path)
    data = bytearray(path.read_bytes())
    assert (tmp_path / "last.pt.sha256").read_text() == f"{hashlib.sha256(data).hexdigest()}  last.pt\n"  # sha256sum
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.arange(1000, dtype=torch.float32))
    data[data.index(struct.pack("<f", 500.0))] ^= 1
    path.write_bytes(bytes(data))
    assert torch.load(path, weights_only=True)["model"]["w"][500] != 500  # what the digest protects against
    monkeypatch.setattr(ckpt.torch, "load", lambda *a, **k: pytest.fail("unpickled before the digest check"))
    with pytest.raises(CorruptCheckpointError, match="SHA-256"):
        load_checkpoint(path)


def test_disk_full_is_a_clear_error_and_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    """T8: ENOSPC while writing (patched fsync) gives a WriteError; the old file and its digest stay valid."""
    import errno

    from alexnet.errors import WriteError

    path = tmp_path / "last.pt"
    save_checkpoint({"model": {"w": torch.zeros(10)}, "config": {}}, path)
    before = path.read_bytes()

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(files.os, "fsync", full)
    with pytest.raises(WriteError, match="No space left on device; any previous last.pt is unchanged"):
        save_checkpoint({"model": {"w": torch.ones(10)}, "config": {}}, path)
    monkeypatch.undo()
    assert path.read_bytes() == before and torch.equal(load_checkpoint(path)["model"]["w"], torch.zeros(10))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "last.pt.sha256"]  # no temporaries left


def test_a_checkpoint_without_a_recorded_digest_still_loads(tmp_path):
    path = tmp_path / "elsewhere.pt"
    torch.save({"model": {"w": torch.ones(3)}, "config": {}}, path)
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(3))


def test_safetensors_round_trip_is_bitwise(weights):
    trained = load_trained(weights)
    tensors, meta = load_weights(weights)
    for key, value in trained.model.state_dict().items():
        assert torch.equal(value, tensors[key])
    assert meta["classes"] == trained.classes and meta["model"]["variant"] == "alexnet_small"


def test_truncated_safetensors_is_a_clear_error(tmp_path, weights):
    data = weights.read_bytes()
    for cut in (0, 4, 8, 100, len(data) // 2, len(data) - 1):
        broken = tmp_path / f"cut{cut}.safetensors"
        broken.write_bytes(data[:cut])
        with pytest.raises(CorruptCheckpointError):
            load_trained(broken)


def test_mutated_safetensors_never_crash(tmp_path, weights):
    """T4: 1,000 mutations (header byte flips, bad header lengths, bad offsets, truncations) each give
    CorruptCheckpointError or a model that round-trips, in under 2 s, and most are rejected."""
    data = weights.read_bytes()
    header_len = int.from_bytes(data[:8], "little")
    rng = random.Random(0)
    path = tmp_path / "m.safetensors"
    rejected = loaded = 0
    for i in range(1000):
        b = bytearray(data)
        kind = i % 4
        if kind == 0:  # a byte of the JSON header (names, dtypes, shapes, offsets, our metadata)
            pos = rng.randrange(8, 8 + header_len)
            b[pos] = rng.randrange(256)
        elif kind == 1:  # header_len beyond the file, zero, or absurd
            b[:8] = rng.choice([0, 1, header_len + 1, len(data), 2**63 - 1, 2**64 - 1]).to_bytes(8, "little")
        elif kind == 2:  # a data offset moved
            header = b[8 : 8 + header_len].decode(errors="replace")
            digits = [j for j, ch in enumerate(header) if ch.isdigit()]
            j = 8 + rng.choice(digits)
            b[j] = ord(str(rng.randrange(10)))
        else:
            del b[rng.randrange(8, len(b)) :]
        path.write_bytes(bytes(b))
        began = time.perf_counter()
        try:
            trained = load_trained(path)
        except (CorruptCheckpointError, IncompatibleCheckpointError):
            rejected += 1
        else:  # a mutation that kept the file valid must give a working model with its own metadata
            loaded += 1
            assert trained.model(torch.zeros(1, 3, 32, 32)).shape == (1, len(trained.classes))
        assert time.perf_counter() - began < 2, f"mutation {i} took too long"
    assert rejected > 700 and rejected + loaded == 1000


def test_weights_for_another_model_are_refused(tmp_path, weights):
    tensors, _ = load_weights(weights)
    other = alexnet.create_model("alexnet_small", num_classes=7, width=0.25)
    with pytest.raises(IncompatibleCheckpointError, match="does not fit"):
        load_model_state(other, tensors, "w.safetensors")
    paper = alexnet.create_model("alexnet_paper", num_classes=4)
    with pytest.raises(IncompatibleCheckpointError, match="does not fit"):
        load_model_state(paper, tensors, "w.safetensors")


@pytest.mark.parametrize(
    "free_mb, says", [(3, r"no space left on its disk \(3.0 MB free\)"), (5000, r"\[enforce fail at .*unexpected pos")]
)
def test_a_full_disk_that_torch_save_words_its_own_way_is_named(tmp_path, monkeypatch, free_mb, says):
    """torch.save reports a full disk as an "enforce fail ... unexpected pos" RuntimeError (CI met it): with little
    space left the line says the disk is full; with space left, the writer's own words stay."""
    path = tmp_path / "last.pt"
    save_checkpoint({"model": {"w": torch.zeros(10)}, "config": {}}, path)
    before = path.read_bytes()

    def enforce_fail(f):
        f.write(b"half a checkpoint")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 236990144 vs 236990032")

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(files.shutil, "disk_usage", lambda d: usage._replace(free=free_mb * files.MB))
    with pytest.raises(WriteError, match=f"could not write .*last.pt: {says}.*; any previous last.pt is unchanged"):
        atomic_write(path, enforce_fail)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "last.pt.sha256"]


def test_exception_mid_write_leaves_the_old_file(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"old")

    def explode(f):
        f.write(b"new but incomplete")
        raise RuntimeError("boom")

    with pytest.raises(WriteError, match="boom; any previous f.bin is unchanged"):  # any failure: one write error
        atomic_write(path, explode)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_a_digest_record_that_is_not_one_is_refused_without_reading_it_whole(tmp_path):
    """`last.pt.sha256` a link to /dev/zero was read until the machine ran out of memory (measured: killed at 24 GB
    of RSS by the kernel) at the next `--resume auto`, `eval` or `predict` of the checkpoint; a 200 MB record was
    read whole (1.9 GB of RSS). A record is a few lines: anything else refuses its checkpoint, naming the record."""
    from alexnet.artifacts.checkpoint import digest_path, load_checkpoint, remove_stale_temporaries, save_checkpoint
    from alexnet.errors import CorruptCheckpointError

    path = tmp_path / "last.pt"
    save_checkpoint({"model": {"w": torch.zeros(2)}, "config": {}}, path)
    record = digest_path(path)
    for make, says in (
        (lambda: record.write_bytes(b"a" * (1 << 20)), "is 1.0 MB, more than the 64 KB allowed"),
        (lambda: record.write_bytes(b"\xff\xfe not text"), "is not UTF-8 text"),
        (lambda: record.symlink_to("/dev/zero"), "is not a regular file"),  # last: a regression would read forever
    ):
        record.unlink()
        make()
        with pytest.raises(CorruptCheckpointError, match=says):
            load_checkpoint(path)
        remove_stale_temporaries(tmp_path)  # skips it: the load says what is wrong
    record.unlink()
    assert load_checkpoint(path)["model"]["w"].shape == (2,)  # no record: loaded unchecked, as before
    save_checkpoint({"model": {"w": torch.ones(2)}, "config": {}}, path)  # a save writes a record of its own again
    assert record.read_text().split()[1] == "last.pt" and load_checkpoint(path)["model"]["w"].sum() == 2


def test_a_checkpoint_whose_tensors_cannot_fit_is_refused_before_it_is_read(tmp_path, monkeypatch):
    """torch.load reads every tensor of a checkpoint (the weights and the optimizer's state) into memory: where they
    cannot fit, the out-of-memory killer would end the process without a word; the archive's directory says how many
    bytes they are before any is read."""
    from alexnet import memory
    from alexnet.memory import Available, MemoryBudgetError

    path = tmp_path / "c.pt"
    save_checkpoint({"model": {"w": torch.zeros(250_000), "b": torch.zeros(10)}, "config": {}}, path)  # 1,000,040 B
    read = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: read.append(a) or pytest.fail("read"))
    monkeypatch.setattr(memory, "available", lambda: Available(1_000_039, "available on this machine"))
    with pytest.raises(MemoryBudgetError) as refused:
        load_checkpoint(path)
    assert str(refused.value).startswith(f"loading: {path} needs at least 1.000 MB and 1.000 MB is available")
    assert read == []
    monkeypatch.undo()
    monkeypatch.setattr(memory, "available", lambda: Available(1_000_040, "available on this machine"))
    assert load_checkpoint(path)["model"]["w"].numel() == 250_000
