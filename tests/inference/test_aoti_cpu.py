"""A compiled program's weights in aligned memory (`alexnet.artifacts.aoti_cpu`): large constants that AOTInductor
left off a 64-byte boundary are swapped for aligned copies with the same values, the runner is told by pointer, the
old pages are given back, and a real compiled program computes what AOTInductor's own loader does."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import pytest
import torch

from alexnet.artifacts import aoti_cpu

PAGE = os.sysconf("SC_PAGE_SIZE")


class FakeRunner:
    """The three calls `realign` makes of AOTInductor's container runner, over tensors placed where a test wants."""

    def __init__(self, constants: dict[str, tuple[str, torch.Tensor]]) -> None:
        self.constants = constants  # the runner's name -> (original name, tensor)
        self.updates: list[tuple] = []

    def extract_constants_map(self, use_inactive: bool) -> dict[str, torch.Tensor]:
        assert use_inactive is False
        return {fqn: t for fqn, t in self.constants.values()}

    def get_constant_names_to_original_fqns(self) -> dict[str, str]:
        return {name: fqn for name, (fqn, _) in self.constants.items()}

    def update_constant_buffer(self, tensors, use_inactive, validate_full_update, user_managed) -> None:
        self.updates.append((dict(tensors), use_inactive, validate_full_update, user_managed))


def at(block: torch.Tensor, offset: int, n: int) -> torch.Tensor:
    """``n`` float32 values ``offset`` bytes into ``block`` (64-byte aligned by torch's allocator)."""
    return block[offset : offset + 4 * n].view(torch.float32)


def test_large_misaligned_constants_are_swapped_for_aligned_copies_and_their_pages_released():
    block = torch.empty(11 * PAGE, dtype=torch.uint8)
    assert block.data_ptr() % 64 == 0
    weight = at(block, 16, 3 * PAGE // 4)  # three pages' worth, 16 bytes off: moved
    aligned = at(block, 4 * PAGE, PAGE // 4)  # on a boundary: left where it is
    weight.copy_(torch.arange(weight.numel(), dtype=torch.float32) + 1)
    aligned.fill_(2.0)
    values = weight.clone()
    small = at(block, 6 * PAGE + 16, 8)  # misaligned but 32 bytes: left
    # Two large constants under one original name: which is which cannot be told, so neither moves.
    scale_a, scale_b = at(block, 7 * PAGE + 16, PAGE // 4), at(block, 9 * PAGE + 16, PAGE // 4)
    runner = FakeRunner(
        {
            "fc_weight": ("fc.weight", weight),
            "conv_weight": ("conv.weight", aligned),
            "x_zp": ("x_zp", small),
            "x_scale": ("x_scale", scale_a),
            "x_scale_0": ("x_scale", scale_b),
        }
    )
    copies = aoti_cpu.realign(runner)

    assert list(copies) == ["fc_weight"]
    assert copies["fc_weight"].data_ptr() % 64 == 0 and torch.equal(copies["fc_weight"], values)
    [(sent, use_inactive, validate, user_managed)] = runner.updates
    # The active set, by pointer: the runner's name, the copy itself (not a copy of it), no full-update check.
    assert sent["fc_weight"] is copies["fc_weight"] and (use_inactive, validate, user_managed) == (False, False, True)
    if platform.system() == "Linux":
        # The pages wholly inside the old extent read as zeros now (given back); the partial ones at its edges and
        # everything outside it are untouched.
        base, nbytes = block.data_ptr(), 4 * weight.numel()
        lo = -(-(base + 16) // PAGE) * PAGE - base  # the whole pages, as offsets into the block: [lo, hi)
        hi = (base + 16 + nbytes) // PAGE * PAGE - base
        assert hi - lo >= 2 * PAGE
        assert not block[lo:hi].any()
        old = values.view(torch.uint8)
        assert torch.equal(block[16:lo], old[: lo - 16]) and torch.equal(block[hi : 16 + nbytes], old[hi - 16 :])
        assert (aligned == 2.0).all()  # outside the extent: as it was


def test_nothing_to_move_leaves_the_runner_alone():
    block = torch.ones(2 * PAGE, dtype=torch.uint8)
    runner = FakeRunner({"w": ("w", at(block, 0, PAGE // 2))})
    assert aoti_cpu.realign(runner) == {} and runner.updates == []
    assert block.all()


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 96), torch.nn.ReLU(), torch.nn.Linear(96, 8)).eval()
    program = torch.export.export(model, (torch.randn(2, 64),))
    path = tmp_path_factory.mktemp("aoti") / "p.pt2"
    with torch.no_grad():
        return Path(torch._inductor.aoti_compile_and_package(program, package_path=str(path)))


def test_a_compiled_program_computes_what_aotinductors_loader_does_its_weights_aligned(package, tmp_path):
    program = aoti_cpu.load_cpu(package, tmp_path)
    reference = torch._inductor.aoti_load_package(str(package)).loader.boxed_run
    x = torch.randn(2, 64)
    with torch.no_grad():
        assert torch.equal(program([x])[0], reference([x])[0])
    for fqn, t in program._runner.extract_constants_map(False).items():
        ptr, nbytes = aoti_cpu._extent(t)
        assert nbytes < 4096 or ptr % 64 == 0, fqn


def test_a_package_without_one_library_is_refused(package, tmp_path):
    import zipfile

    empty = tmp_path / "empty.pt2"
    with zipfile.ZipFile(empty, "w") as archive:
        archive.writestr("p/archive_version", "0")
    with pytest.raises(ValueError, match="one shared library"):
        aoti_cpu.load_cpu(empty, tmp_path)


def test_where_the_runner_fails_aotinductors_own_loader_runs_the_program(monkeypatch, caplog):
    # A torch whose container runner moved: the program still runs (weights where AOTInductor put them), and says so.
    from alexnet.artifacts import program as programs

    def moved(*_):
        raise AttributeError("AOTIModelContainerRunnerCpu is gone")

    monkeypatch.setattr(aoti_cpu, "load_cpu", moved)
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(16, 4)).eval()
    run = programs.aot_compile(torch.export.export(model, (torch.randn(2, 16),)))
    x = torch.randn(2, 16)
    with torch.no_grad():
        torch.testing.assert_close(run([x])[0], model(x))
    assert not isinstance(run, aoti_cpu.CpuProgram)
    assert "stay where AOTInductor put them (AOTIModelContainerRunnerCpu is gone)" in caplog.text
