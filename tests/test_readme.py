"""The documentation's commands stay true: every command line in the README and the docs pages parses, and each one
runs on fake data."""

import re
import shlex
import shutil
from pathlib import Path

import pytest
from PIL import Image

from alexnet.cli import build_parser, main

ROOT = Path(__file__).parents[1]
README = ROOT / "README.md"
# The docs pages in the site's order, then the README: the first training line is the demo's recipe (models.md).
PAGES = [
    ROOT / "docs" / page
    for page in (
        "index.md",
        "models.md",
        "training.md",
        "using.md",
        "weights.md",
        "serving.md",
        "paper.md",
        "performance.md",
    )
] + [README]
# Appended to a README training command: the same command in miniature on synthetic data.
TINY = [
    "--dataset",
    "fake",
    "--epochs",
    "1",
    "--limit-train-batches",
    "1",
    "--limit-val-batches",
    "1",
    "-b",
    "8",
    "--no-progress",
    "--set",
    "data.eval_batch_size=8",
    "--set",
    "data.workers=0",
]


def readme_commands() -> list[list[str]]:
    """Argument lists of every ``alexnet ...`` or ``torchrun ... -m alexnet.cli ...`` line in a bash block."""
    blocks = [b for page in PAGES for b in re.findall(r"```bash\n(.*?)```", page.read_text(), re.S)]
    commands = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line.replace("[", "").replace("]", ""), comments=True)
            if words[:1] == ["alexnet"]:
                commands.append(words[1:])
            elif words[:1] == ["torchrun"]:
                commands.append(words[words.index("alexnet.cli") + 1 :])
    return commands


def _uses_published_weights(words: list[str]) -> bool:
    from alexnet.artifacts.weights import list_weights

    names = {w.name for w in list_weights()}
    return words[0] in ("weights", "convert-caffe") or "finetune" in words or bool(names & set(words))


def test_the_readme_has_commands_and_every_one_parses():
    commands = readme_commands()
    assert {c[0] for c in commands} >= {"train", "eval", "predict", "export"}
    for words in commands:
        build_parser().parse_args(words)  # an unknown flag or subcommand exits 2 here


@pytest.mark.slow
def test_the_readme_commands_run_on_fake_data(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    commands = readme_commands()
    trained = 0
    # --parallel towers/hybrid need torchrun's processes: tests/training/test_model_parallel.py runs them.
    # Published weights cannot be downloaded here: tests/inference/test_weights.py runs those commands on a registry
    # entry it serves over loopback, and test_caffe.py converts a .caffemodel it writes.
    commands = [c for c in commands if not _uses_published_weights(c)]
    runnable = [c for c in commands if c[0] == "train" and "--list-recipes" not in c and "--parallel" not in c]
    # Lines that differ only in batch size or data location (torchrun's per-process -b) run the same code: once.
    distinct = {}
    skip = ("-b", "--data-dir")
    for c in runnable:
        key = tuple(w for i, w in enumerate(c) if w not in skip and (i == 0 or c[i - 1] not in skip))
        distinct.setdefault(key, c)
    runnable = list(distinct.values())
    for i, words in enumerate(runnable):
        assert main([*words, *TINY, "--out", str(tmp_path / f"run{i}")]) == 0, words
        trained += 1
    assert trained >= 5  # every distinct recipe line, the paper's and torchrun's included
    # The evaluation block, on weights trained above (the first line: the demo's recipe).
    shutil.copytree(tmp_path / "run0", tmp_path / "runs" / "demo")
    for name in "abc":  # the ensemble line's runs: the demo's run thrice (members must read images alike)
        shutil.copytree(tmp_path / "run0", tmp_path / "runs" / name)
    for folder in ("photos", "more"):
        (tmp_path / folder).mkdir()
        for j in range(2):
            Image.new("RGB", (40, 30), (40 * j, 90, 200)).save(tmp_path / folder / f"{j}.png")
    ran = set()
    for words in commands:
        if words[0] in ("eval", "predict", "export"):
            args = [*words, "--limit-val-batches", "1"] if words[0] == "eval" else words
            assert main(args) == 0, words
            ran.add(words[0])
    assert ran == {"eval", "predict", "export"}
    assert (tmp_path / "model.onnx").stat().st_size > 10_000


def test_every_page_with_commands_is_checked():
    with_commands = {p for p in (ROOT / "docs").glob("*.md") if "```bash" in p.read_text()}
    assert with_commands <= set(PAGES), with_commands - set(PAGES)
