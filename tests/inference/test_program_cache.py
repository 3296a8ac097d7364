"""Compiled int8 programs are kept between loads (`alexnet.artifacts.program_cache`): `quantize` compiles once, every
later load of the same file on this CPU takes the kept package, and anything that would change the compile (the
file's bytes, the batch, autotuning, the CPU, torch, the code) compiles anew."""

from __future__ import annotations

import os
import stat

import pytest
import torch

from alexnet.artifacts import program_cache
from alexnet.artifacts.program import load_program
from alexnet.inference.quantize import quantize_file

from ..conftest import make_weights


@pytest.fixture
def compiles(monkeypatch):
    """Counts AOTInductor's compiles."""
    count = [0]
    real = torch._inductor.aoti_compile_and_package

    def counting(*args, **kwargs):
        count[0] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(torch._inductor, "aoti_compile_and_package", counting)
    return count


def test_quantize_compiles_once_and_later_loads_take_the_kept_program(tmp_path, monkeypatch, compiles):
    cache = tmp_path / "cache"
    monkeypatch.setenv(program_cache.ENV, str(cache))
    weights = make_weights(tmp_path / "m.safetensors")
    out = tmp_path / "q.pt2"
    quantize_file(weights, out, calibration=16, batch=8, autotune=False)
    assert compiles[0] == 1
    kept = list(cache.iterdir())
    assert len(kept) == 1 and kept[0].name == program_cache.key(out, 8, False) + ".pt2"
    # Private to the user: a directory of shared libraries another user could add to would run their code.
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700 and stat.S_IMODE(kept[0].stat().st_mode) == 0o600

    x = torch.rand(11, 3, 32, 32)  # 11: one full batch of 8, and a padded one
    first = load_program(out)
    assert compiles[0] == 1  # taken from the cache
    with torch.no_grad():
        got = first.model(x)
    # A kept package damaged on disk (its zip checksums fail) is compiled again from the file, computes what the kept
    # one did, and replaces it.
    data = bytearray(kept[0].read_bytes())
    data[len(data) // 2] ^= 0xFF
    kept[0].write_bytes(bytes(data))
    with torch.no_grad():
        assert torch.equal(load_program(out).model(x), got)
    assert compiles[0] == 2 and list(cache.iterdir()) == kept
    load_program(out)
    assert compiles[0] == 2  # the replacement loads


def test_everything_the_compile_depends_on_names_another_program(tmp_path, monkeypatch):
    model = tmp_path / "q.pt2"
    model.write_bytes(b"a program")
    base = program_cache.key(model, 8, False)
    assert program_cache.key(model, 8, False) == base
    others = {program_cache.key(model, 16, False), program_cache.key(model, 8, True)}
    model.write_bytes(b"a program, its metadata changed")
    others.add(program_cache.key(model, 8, False))
    model.write_bytes(b"a program")
    monkeypatch.setattr(program_cache.native, "cpu_fingerprint", lambda: "another cpu")
    others.add(program_cache.key(model, 8, False))
    monkeypatch.undo()
    monkeypatch.setattr(program_cache.torch, "__version__", "9.9.9")
    others.add(program_cache.key(model, 8, False))
    monkeypatch.undo()
    monkeypatch.setattr(program_cache, "_code_digest", lambda: "edited")
    others.add(program_cache.key(model, 8, False))
    assert len(others) == 6 and base not in others


def test_the_least_recently_used_go_beyond_the_limit(tmp_path, monkeypatch):
    monkeypatch.setenv(program_cache.ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(program_cache, "KEEP", 2)
    package = tmp_path / "package.pt2"
    package.write_bytes(b"compiled")
    for i, name in enumerate(("a", "b")):
        program_cache.store(name, package)
        os.utime(tmp_path / "cache" / f"{name}.pt2", (1000 + i, 1000 + i))
    assert program_cache.lookup("a") is not None  # used: now the most recent
    program_cache.store("c", package)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["a.pt2", "c.pt2"]
    assert program_cache.lookup("b") is None


def test_a_cache_that_cannot_be_written_costs_nothing_but_the_next_compile(tmp_path, monkeypatch):
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    monkeypatch.setenv(program_cache.ENV, str(blocked / "cache"))
    package = tmp_path / "package.pt2"
    package.write_bytes(b"compiled")
    program_cache.store("a", package)  # no exception
    assert program_cache.lookup("a") is None
    monkeypatch.setenv(program_cache.ENV, "0")
    assert program_cache.cache_dir() is None and program_cache.lookup("a") is None
    monkeypatch.delenv(program_cache.ENV)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    assert program_cache.cache_dir() == tmp_path / "torch" / "alexnet" / "programs"


def test_a_package_others_could_have_written_is_not_taken(tmp_path, monkeypatch):
    """A cache directory (or package) another user may write could hold their code: it is not loaded from."""
    cache = tmp_path / "cache"
    monkeypatch.setenv(program_cache.ENV, str(cache))
    package = tmp_path / "package.pt2"
    package.write_bytes(b"compiled")
    program_cache.store("a", package)
    assert program_cache.lookup("a") is not None
    for target, mode in ((cache, 0o777), (cache, 0o720), (cache / "a.pt2", 0o666)):
        before = stat.S_IMODE(target.stat().st_mode)
        target.chmod(mode)
        assert program_cache.lookup("a") is None, (target, oct(mode))
        target.chmod(before)
    me = os.getuid()
    monkeypatch.setattr(program_cache.os, "getuid", lambda: me + 1)  # owned by someone else
    assert program_cache.lookup("a") is None
