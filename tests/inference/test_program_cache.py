"""Compiled programs are kept between loads (`alexnet.artifacts.program_cache`): `quantize` compiles once, every later
load of the same int8 file (and every `--compile` of the same model) on this CPU takes the kept package, and anything
that would change the compile (the program's graph or weights, autotuning, the CPU, torch, the code) compiles anew."""

from __future__ import annotations

import copy
import os
import stat

import pytest
import torch

import alexnet
from alexnet.artifacts import program_cache
from alexnet.artifacts.loader import load_trained
from alexnet.artifacts.program import load_program
from alexnet.inference.compiled import CompiledModel
from alexnet.inference.quantize import calibration_inputs, quantize, quantize_file
from alexnet.models import standard_modules

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
    # Quantized again: the same bytes (no provenance with object ids in the file), and the kept package serves it.
    quantize_file(weights, tmp_path / "again.pt2", calibration=16, batch=8, autotune=False)
    assert (tmp_path / "again.pt2").read_bytes() == out.read_bytes() and compiles[0] == 1
    kept = list(cache.iterdir())
    assert len(kept) == 1
    # Private to the user: a directory of shared libraries another user could add to would run their code.
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700 and stat.S_IMODE(kept[0].stat().st_mode) == 0o600

    x = torch.rand(11, 3, 32, 32)  # 11: one full batch of 8, and a padded one
    first = load_program(out)
    assert compiles[0] == 1  # taken from the cache
    # `eval --precision int8` quantizes in memory: the same calibration makes the same program, kept already.
    trained = load_trained(weights)
    quantize(trained, calibration_inputs(trained, 16), batch=8)
    assert compiles[0] == 1
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


def _program(seed: int = 0):
    torch.manual_seed(seed)
    model = alexnet.create_model("alexnet_small", num_classes=4, width=0.25).eval()
    with torch.no_grad(), standard_modules(model):
        return model, torch.export.export(model, (torch.zeros(2, 3, 32, 32),))


def test_everything_the_compile_depends_on_names_another_program(monkeypatch):
    _, program = _program()
    base = program_cache.key(program, False)
    assert program_cache.key(_program()[1], False) == base  # the same program, exported again
    others = {program_cache.key(_program(seed=1)[1], False), program_cache.key(program, True)}  # weights; autotune
    monkeypatch.setattr(program_cache.native, "cpu_fingerprint", lambda: "another cpu")
    others.add(program_cache.key(program, False))
    monkeypatch.undo()
    monkeypatch.setattr(program_cache.torch, "__version__", "9.9.9")
    others.add(program_cache.key(program, False))
    monkeypatch.undo()
    monkeypatch.setattr(program_cache, "_code_digest", lambda: "edited")
    others.add(program_cache.key(program, False))
    assert len(others) == 5 and base not in others


def test_compile_takes_the_kept_program_of_the_same_model(tmp_path, monkeypatch, compiles):
    """`--compile` (`serve --compile` at every start): the same model compiles once (other weights are another
    program: the test above)."""
    monkeypatch.setenv(program_cache.ENV, str(tmp_path / "cache"))
    model, _ = _program()
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        want = CompiledModel(model, 3, 32, torch.float32)(x)
        assert compiles[0] == 1
        assert torch.equal(CompiledModel(model, 3, 32, torch.float32)(x), want)
    assert compiles[0] == 1 and len(list((tmp_path / "cache").iterdir())) == 1


def test_the_least_recently_used_go_beyond_the_limit(tmp_path, monkeypatch):
    monkeypatch.setenv(program_cache.ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(program_cache, "KEEP", 2)
    a, b, c, d, e = (letter * 32 for letter in "abcde")  # names as the cache gives them (32 hex digits)
    package = tmp_path / "package.pt2"
    package.write_bytes(b"compiled")
    for i, name in enumerate((a, b)):
        program_cache.store(name, package)
        os.utime(tmp_path / "cache" / f"{name}.pt2", (1000 + i, 1000 + i))
    assert program_cache.lookup(a) is not None  # used: now the most recent
    program_cache.store(c, package)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [f"{a}.pt2", f"{c}.pt2"]
    assert program_cache.lookup(b) is None
    monkeypatch.setattr(program_cache, "KEEP_BYTES", len(b"compiled") * 3 // 2)  # room for one and a half
    program_cache.store(d, package)
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [f"{d}.pt2"]
    package.write_bytes(b"compiled" * 10)  # larger than the limit alone: the newest stays all the same
    program_cache.store(e, package)
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [f"{e}.pt2"]


def test_a_directory_the_user_chose_keeps_their_files_and_its_mode(tmp_path, monkeypatch):
    """$ALEXNET_PROGRAM_CACHE pointed at a folder of the user's own int8 models: pruning takes only the packages the
    cache named, and a folder others may write is neither made private nor written to."""
    models = tmp_path / "models"
    models.mkdir(mode=0o700)
    mine = [models / f"model{i}.pt2" for i in range(3)]
    for path in mine:
        path.write_bytes(b"the user's int8 model")
        os.utime(path, (1000, 1000))  # older than any package
    monkeypatch.setenv(program_cache.ENV, str(models))
    monkeypatch.setattr(program_cache, "KEEP", 1)
    package = tmp_path / "package.pt2"
    package.write_bytes(b"compiled")
    for letter in "ab":
        program_cache.store(letter * 32, package)
    assert sorted(p.name for p in models.iterdir()) == ["b" * 32 + ".pt2", *(p.name for p in mine)]
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    monkeypatch.setenv(program_cache.ENV, str(shared))
    program_cache.store("c" * 32, package)
    assert stat.S_IMODE(shared.stat().st_mode) == 0o777 and not any(shared.iterdir())


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


def test_a_compile_the_memory_left_cannot_hold_is_refused_before_it_starts(tmp_path, monkeypatch, compiles):
    """The out-of-memory killer ended `alexnet predict` of an int8 `alexnet_owt` in an 800 MB cgroup without a word,
    while inductor compiled it: a compile, and the load of a kept package, are set against the memory left first."""
    from alexnet import memory
    from alexnet.artifacts import program as program_module
    from alexnet.memory import Available, MemoryBudgetError

    monkeypatch.setenv(program_cache.ENV, str(tmp_path / "cache"))
    _, program = _program()
    weights, compiling = program_module.compile_floor(program)
    assert weights == sum(t.numel() for t in program.state_dict.values())
    loading = int(program_module.KEPT_FIXED + program_module.KEPT_PER_WEIGHT * weights)
    assert loading < compiling

    def left(n: int) -> None:
        monkeypatch.setattr(memory, "available", lambda: Available(n, "left under the memory limit of cgroup /t"))

    left(compiling - 1)
    with pytest.raises(MemoryBudgetError, match=r"^compiling: a program of 0\.\d M weights needs, while inductor") as e:
        program_module.aot_compile(program, cache=True)
    assert str(e.value).endswith("(once compiled it is kept, and later loads need less)") and compiles[0] == 0
    left(compiling)
    x = torch.rand(2, 3, 32, 32)
    want = program_module.aot_compile(program, cache=True)([x])[0]
    assert compiles[0] == 1
    left(loading - 1)
    with pytest.raises(MemoryBudgetError, match=r"^loading: the compiled program kept for this one \(0\.\d M weights"):
        program_module.aot_compile(program, cache=True)
    left(loading)
    assert torch.equal(program_module.aot_compile(program, cache=True)([x])[0], want) and compiles[0] == 1


def test_each_kind_of_program_has_its_own_compile_floor():
    """int8 and fp32 programs take more to compile than a bf16 one (alexnet_owt: 658-708 and 990-1,090 MB left against
    417-619 on a Xeon with AMX; the bf16 one ran with 391 on a Zen 3), so one floor under all of them left int8 loads
    killed without a word in cgroups of 0.95-1.2 GB: each is set by the dtype most of the program's weights are in."""
    from alexnet.artifacts import program as program_module
    from alexnet.inference.quantize import quantize_graph

    torch.manual_seed(0)
    model = alexnet.create_model("alexnet_small", num_classes=4, width=0.25).eval()
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad(), standard_modules(model):
        fp32 = torch.export.export(model, (x,))
        bf16 = torch.export.export(copy.deepcopy(model).bfloat16(), (x.bfloat16(),))
        int8 = quantize_graph(model, torch.rand(8, 3, 32, 32), batch=4)
    n = sum(p.numel() for p in model.parameters())
    for program, (fixed, per_weight) in (
        (fp32, (250e6, 10)),
        (bf16, (200e6, 1.4)),
        (int8, (250e6, 6)),  # its weights int8, their scales and biases fp32
    ):
        weights, floor = program_module.compile_floor(program)
        assert n <= weights < 1.05 * n and floor == int(fixed + per_weight * weights), (weights, floor)


def test_predict_compile_without_the_memory_is_one_line(tmp_path, monkeypatch, capsys, image_folder):
    from alexnet import memory
    from alexnet.cli import main
    from alexnet.memory import Available

    monkeypatch.setenv(program_cache.ENV, "0")  # nothing kept: the advice does not promise it
    monkeypatch.setattr(memory, "available", lambda: Available(150 * 10**6, "available on this machine"))
    weights = make_weights(tmp_path / "m.safetensors")
    assert main(["predict", "--compile", "--precision", "fp32", "--weights", str(weights), str(image_folder)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "Traceback" not in err, err
    assert "error: compiling: a program of" in err and err.rstrip().endswith("free memory or raise the limit"), err
