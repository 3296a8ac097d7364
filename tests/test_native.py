"""The C++ kernels' build: once per process, and where it fails, one warning and the fallback."""

import functools
import logging
import subprocess
import sys
import threading

import pytest
import torch

from alexnet import native
from alexnet.logs import level_set
from alexnet.training import bf16_copies


def test_a_kernel_that_cannot_be_built_warns_once_and_falls_back(monkeypatch, caplog):
    calls = []

    def no_compiler(name, source, flags=()):
        calls.append(name)
        raise RuntimeError("Ninja is required to load C++ extensions")

    monkeypatch.setattr(native, "_loaded", {})
    monkeypatch.setattr(native, "build", no_compiler)
    with caplog.at_level(logging.WARNING, logger="alexnet"):
        assert bf16_copies.kernel() is None and bf16_copies.kernel() is None
        # a bf16 CPU run then trains with autocast's casts rather than failing
        assert not bf16_copies.applies(torch.device("cpu"), "bf16")
    assert calls == ["alexnet_sgd_bf16"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "Ninja is required" in warnings[0] and "autocast's per-step casts" in warnings[0]


def test_a_kernel_is_rebuilt_when_its_source_a_header_beside_it_or_a_flag_changes(tmp_path):
    source, header = tmp_path / "k.cpp", tmp_path / "helpers.h"
    source.write_text('#include "helpers.h"\n')
    header.write_text("inline int one() { return 1; }\n")
    tag = native.source_tag(source)
    assert native.source_tag(source) == tag
    header.write_text("inline int one() { return 2; }\n")
    assert native.source_tag(source) != tag
    assert native.source_tag(source, ("-DX",)) != native.source_tag(source)
    (tmp_path / "notes.txt").write_text("not compiled")
    assert native.source_tag(source) == native.source_tag(source)


# A module of Python's C API alone: compiled by torch's builder in about a second (torch's headers take 15-25 s).
TINY = """#include <Python.h>
#define STR2(x) #x
#define STR(x) STR2(x)
#define CAT2(a, b) a##b
#define CAT(a, b) CAT2(a, b)
static struct PyModuleDef def = {PyModuleDef_HEAD_INIT, STR(TORCH_EXTENSION_NAME), NULL, -1, NULL};
PyMODINIT_FUNC CAT(PyInit_, TORCH_EXTENSION_NAME)(void) {
  PyObject *m = PyModule_Create(&def);
  PyModule_AddIntConstant(m, "answer", ANSWER);
  return m;
}
"""


def test_checkouts_and_environments_share_one_build_of_the_same_source(tmp_path, monkeypatch):
    """A second checkout (or venv) of the same source loads the first one's build without the builder, which would
    compile it anew for its own paths; an edited source builds its own; an unmarked build (the process died
    between linking and marking it) and a library that does not load are built again, not used or raised."""
    import torch.utils.cpp_extension

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "cache"))
    real, builds = torch.utils.cpp_extension.load, []

    def load(name, *args, **kwargs):
        builds.append(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(torch.utils.cpp_extension, "load", load)

    def checkout(where, answer):
        source = tmp_path / where / "tiny.c"
        source.parent.mkdir()
        source.write_text(TINY.replace("ANSWER", str(answer)))
        return source

    first, second, edited = checkout("a", 42), checkout("b", 42), checkout("c", 43)
    assert native.build("tiny", first).answer == 42 and len(builds) == 1
    assert native.build("tiny", second).answer == 42 and len(builds) == 1  # the first one's build
    assert native.build("tiny", edited).answer == 43 and builds[1] != builds[0]
    unmarked, damaged = checkout("d", 44), checkout("e", 45)
    native.build("tiny", unmarked)
    (tmp_path / "cache" / builds[-1] / native.BUILT).unlink()
    assert native.build("tiny", unmarked).answer == 44 and builds[-1] == builds[-2]
    native.build("tiny", damaged)
    library = tmp_path / "cache" / builds[-1] / f"{builds[-1]}.so"
    library.unlink()  # not written over: this process has it mapped
    library.write_bytes(b"not a library")
    # In a process that has not loaded it (this one would find it among its loaded modules).
    loads = "import sys, pathlib; from alexnet import native; "
    loads += "print(native.build('tiny', pathlib.Path(sys.argv[1])).answer)"
    run = subprocess.run([sys.executable, "-c", loads, damaged], capture_output=True, text=True, timeout=300)
    assert run.stdout.split() == ["45"], run.stderr[-2000:]
    assert library.read_bytes()[:4] == b"\x7fELF" and (library.parent / native.BUILT).is_file()


def test_every_variant_trains_and_infers_with_no_kernel_built(monkeypatch, caplog):
    """Without a compiler each fused run (batch norm → ReLU, ReLU → LRN, ReLU → max-pool, the inference stage) falls
    back to its layers: a training step and an inference pass of every variant, in bf16 channels last, raise nothing,
    and each kernel warns once."""
    import alexnet

    def no_compiler(name, source, flags=()):
        raise RuntimeError("Ninja is required to load C++ extensions")

    monkeypatch.setattr(native, "_loaded", {})
    monkeypatch.setattr(native, "build", no_compiler)
    with caplog.at_level(logging.WARNING, logger="alexnet"):
        for name in alexnet.list_models():
            model = alexnet.create_model(name, width=0.25, num_classes=10).to(memory_format=torch.channels_last)
            size = alexnet.models.get_spec(name).input_size
            x = torch.randn(2, model.in_channels, size, size).contiguous(memory_format=torch.channels_last)
            with torch.autocast("cpu", torch.bfloat16):
                model(x).float().sum().backward()
                with torch.no_grad():
                    assert model.eval()(x).shape == (2, 10)
    warned = {r.getMessage().split(" kernel")[0] for r in caplog.records if r.levelno == logging.WARNING}
    assert {"alexnet_bn_relu", "alexnet_lrn", "alexnet_relu_pool"} <= warned


def test_prepare_builds_two_kernels_at_once_and_each_once(monkeypatch, tmp_path):
    """`native.prepare` runs the kernels side by side: two fake builds that each wait for the other (a barrier of 2)
    finish only if they overlap. A kernel asked for twice builds once. Each build quiets the builder's logger as
    `native.build` does, the second entering after and leaving after the first, which would leave it quiet for good
    but for `prepare`'s own quieting around them."""
    meet, a_in, a_out = threading.Barrier(2, timeout=10), threading.Event(), threading.Event()
    built = []

    def build(name, source, flags=()):
        built.append(name)
        if name == "b":
            a_in.wait(10)
        with level_set("torch.utils.cpp_extension", logging.ERROR):
            if name == "a":
                a_in.set()
            meet.wait()  # a BrokenBarrierError where the other build did not run at the same time
            if name == "b":
                a_out.wait(10)
        if name == "a":
            a_out.set()
        return name

    monkeypatch.setattr(native, "_loaded", {})
    monkeypatch.setattr(native, "_locks", {})
    monkeypatch.setattr(native, "build", build)
    first, second = (functools.partial(native.load, name, tmp_path / "k.cpp", instead="-") for name in ("a", "b"))
    builder = logging.getLogger("torch.utils.cpp_extension")
    with level_set("torch.utils.cpp_extension", logging.INFO):
        native.prepare([first, second, first])
        assert builder.level == logging.INFO
    assert sorted(built) == ["a", "b"] and first() == "a" and second() == "b"


def test_prepare_of_one_kernel_builds_it_in_this_thread(monkeypatch):
    threads = []
    native.prepare([lambda: threads.append(threading.current_thread())])
    assert threads == [threading.current_thread()]


def _cached_build(cache, name, source, torch_dir="/venv/torch", flags="-O3"):
    """A build directory as torch's builder leaves it: its build file names the build, its flags and its source."""
    d = cache / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "build.ninja").write_text(
        f"cflags = -DTORCH_EXTENSION_NAME={name} -isystem {torch_dir}/include {flags}\n"
        f"build k.o: compile {source}\n"
        f"build {name}.so: link k.o\ndefault {name}.so\n"
    )
    (d / f"{name}.so").write_bytes(b"\0" * 64)
    return d


def test_a_build_removes_the_builds_it_replaces_and_keeps_the_others(tmp_path):
    cache, source = tmp_path / "cache", tmp_path / "src" / "k.cpp"
    source.parent.mkdir()
    source.write_text("int x;\n")
    new = _cached_build(cache, "k_cpu_new", source)
    edited = _cached_build(cache, "k_cpu_old", source)  # this checkout before an edit: replaced
    gone = _cached_build(cache, "k_cpu_gone", tmp_path / "deleted" / "k.cpp")  # a checkout since deleted
    venv = _cached_build(cache, "k_cpu_venv", source, torch_dir="/other/torch")  # another environment
    flags = _cached_build(cache, "k_cpu_avx2", source, flags="-O3 -mno-avx512f")  # other flags (the AVX2 build)
    other_cpu = _cached_build(cache, "k_zen_old", source)  # another CPU sharing the cache
    other_kernel = _cached_build(cache, "j_cpu_old", source)
    building = cache / "k_cpu_building"  # under way: no build file yet
    building.mkdir()
    compiling = _cached_build(cache, "k_cpu_compiling", source)  # build file written, library not yet linked
    (compiling / "k_cpu_compiling.so").unlink()
    removed = native.prune_replaced(new, "k_cpu_")
    assert sorted(removed) == sorted([edited, gone])
    assert not edited.exists() and not gone.exists()
    for kept in (new, venv, flags, other_cpu, other_kernel, building, compiling):
        assert kept.is_dir(), kept.name
    assert native.prune_replaced(new, "k_cpu_") == []


def test_build_prunes_beside_what_it_loaded(tmp_path, monkeypatch):
    import types

    import torch.utils.cpp_extension

    source = tmp_path / "k.cpp"
    source.write_text("int x;\n")
    cache = tmp_path / "cache"
    fingerprint = native.cpu_fingerprint()
    old = _cached_build(cache, f"k_{fingerprint}_0000000000", source)

    def load(name, *args, **kwargs):
        build = _cached_build(cache, name, source)
        return types.SimpleNamespace(__file__=str(build / f"{name}.so"))

    monkeypatch.setattr(torch.utils.cpp_extension, "load", load)
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(cache))
    native.build("k", source)
    assert not old.exists() and len(list(cache.iterdir())) == 1


def test_a_read_only_cache_with_the_kernel_built_in_loads_it(tmp_path, monkeypatch):
    """A container image with its kernels built in, mounted read-only (Kubernetes' readOnlyRootFilesystem): the
    lock file cannot be made, and the builder could not run either; the marked build loads all the same. Where
    there is none, the failure is the builder's (the caller warns and runs the reference)."""
    import errno

    import filelock

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "cache"))
    source = tmp_path / "tiny.c"
    source.write_text(TINY.replace("ANSWER", "46"))
    native.build("tiny", source)  # built while the cache was writable

    class ReadOnly(filelock.FileLock):
        def acquire(self, *args, **kwargs):
            raise OSError(errno.EROFS, "Read-only file system", str(self.lock_file))

    monkeypatch.setattr(filelock, "FileLock", ReadOnly)
    assert native.build("tiny", source).answer == 46
    unbuilt = tmp_path / "other.c"
    unbuilt.write_text(TINY.replace("ANSWER", "47"))
    with pytest.raises(OSError, match="Read-only"):
        native.build("tiny", unbuilt)
