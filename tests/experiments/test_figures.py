"""Figures 3 and 4 for any trained model, the per-run report, and fc7 features."""

import json
import os

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from alexnet.cli import main
from alexnet.experiments.figures import colour_specificity
from alexnet.training.fit import fit
from tests.conftest import tiny_config


@pytest.fixture(scope="module")
def two_tower_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("fig") / "run"
    fit(tiny_config(out, "model.overrides.groups=2", "model.overrides.width=0.5", "train.epochs=2"))
    return out


def test_colour_specificity_by_hand():
    grey = torch.ones(1, 3, 2, 2)  # R = G = B: luminance only
    opponent = torch.stack([torch.ones(2, 2), -torch.ones(2, 2), torch.zeros(2, 2)])[None]  # R − G
    half = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)  # red only: (1 − 1/3)² + 2·(1/3)² over 1 = 2/3
    spec = colour_specificity(torch.cat([grey, opponent, half.expand(1, 3, 2, 2)]))
    assert spec.tolist() == pytest.approx([0.0, 1.0, 2 / 3])


def test_the_random_split_test_tells_specialised_towers_from_mixed_ones():
    from alexnet.experiments.figures import random_split_p

    specialised = torch.tensor([0.05, 0.1, 0.08, 0.12, 0.06, 0.09, 0.8, 0.9, 0.85, 0.7, 0.95, 0.75])
    assert random_split_p(specialised, 2) < 0.01  # only the real split (and its mirror) is that far apart
    mixed = specialised[torch.tensor([0, 6, 1, 7, 2, 8, 3, 9, 4, 10, 5, 11])]
    assert random_split_p(mixed, 2) > 0.5
    assert random_split_p(specialised, 2) == random_split_p(specialised, 2)  # seeded


def test_fig3_measures_each_tower(two_tower_run, capsys):
    assert main(["paper", "fig3", str(two_tower_run)]) == 0
    result = json.loads((two_tower_run / "fig3.json").read_text())
    towers = result["towers"]
    assert [t["kernels"] for t in towers] == [16, 16]  # width 0.5: 32 conv1 kernels (multiples of 16), half each
    weights = load_file(two_tower_run / "best.safetensors")["features.0.weight"]  # what a run directory shows
    by_hand = colour_specificity(weights)
    assert towers[0]["mean"] == pytest.approx(by_hand[:16].mean().item(), abs=1e-4)
    assert towers[1]["mean"] == pytest.approx(by_hand[16:].mean().item(), abs=1e-4)
    assert (two_tower_run / "fig3.png").stat().st_size > 5000
    assert 0 < result["p_random_split"] <= 1
    assert "tower 2: 16 conv1 kernels" in capsys.readouterr().out


def test_a_figure_never_writes_over_a_users_file(two_tower_run, tmp_path, capsys):
    """fig3 and fig4 write ``<kind>.png`` and ``<kind>.json`` into ``--out``: a user's file of that name is refused
    and kept; the figure's own earlier output is written again."""
    for kind, name in (("fig3", "fig3.png"), ("fig4", "fig4.json")):
        mine = tmp_path / kind / name
        mine.parent.mkdir()
        mine.write_text("mine")
        capsys.readouterr()
        args = ["paper", kind, str(two_tower_run), "--out", str(mine.parent), "--dataset", "fake", "--queries", "1"]
        assert main(args) == 2
        err = capsys.readouterr().err
        assert f"holds {name}, which this command writes" in err and len(err.splitlines()) == 1, err
        assert mine.read_text() == "mine" and [p.name for p in mine.parent.iterdir()] == [name]
    assert main(["paper", "fig3", str(two_tower_run), "--out", str(tmp_path / "again")]) == 0
    assert main(["paper", "fig3", str(two_tower_run), "--out", str(tmp_path / "again")]) == 0


def test_fig4_neighbours_and_retrieval_precision(two_tower_run, capsys):
    assert main(["paper", "fig4", str(two_tower_run), "--dataset", "fake", "--queries", "3"]) == 0
    result = json.loads((two_tower_run / "fig4.json").read_text())
    assert len(result["queries"]) == 3 and all(len(q["neighbours"]) == 6 for q in result["queries"])
    assert all(len(q["top5"]) == 5 for q in result["queries"])
    # The fake classes are learnable: fc7 neighbours mostly share the query's class, far above chance.
    assert result["retrieval_precision"] > 3 * result["chance_precision"]
    assert (two_tower_run / "fig4.png").stat().st_size > 5000


def test_fig4_refuses_a_data_set_of_other_classes(tmp_path, capsys):
    """A model of 4 classes given fig4 on the fake set's 10 ended in an IndexError (the set's labels indexing the
    model's names): refused as eval refuses it, one line, nothing written."""
    from tests.conftest import make_weights

    weights = make_weights(tmp_path / "m.safetensors")
    out = tmp_path / "fig"
    assert main(["paper", "fig4", str(weights), "--dataset", "fake", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "was trained on 4 classes" in err and "fake has 10" in err, err
    assert not out.exists()


def test_every_train_run_writes_a_report_and_report_rebuilds_it(tmp_path, capsys):
    out = tmp_path / "run"
    args = [
        "train",
        "--dataset",
        "fake",
        "--epochs",
        "1",
        "--limit-train-batches",
        "3",
        "-b",
        "16",
        "--no-progress",
        "--precision",
        "fp32",
        "--set",
        "model.overrides.width=0.25",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    report = (out / "report.md").read_text()
    assert "## Test split" in report and "class_9" in report and "test top-1 (%), after the last epoch" in report
    for png in ("curves.png", "conv1_filters.png", "confusion.png"):
        assert (out / png).stat().st_size > 1000
    (out / "report.md").unlink()
    assert main(["report", str(out)]) == 0
    assert (out / "report.md").read_text().split("## Figures")[0] == report.split("## Figures")[0]


def test_features_command_writes_embeddings_in_file_order(two_tower_run, tmp_path, capsys):
    from PIL import Image

    for i in range(3):
        Image.new("RGB", (40, 40), (80 * i, 100, 50)).save(tmp_path / f"{i}.png")
    weights = str(two_tower_run / "best.safetensors")
    assert main(["features", "--weights", weights, str(tmp_path), "--out", str(tmp_path / "f.npy")]) == 0
    feats = np.load(tmp_path / "f.npy")
    order = (tmp_path / "f.txt").read_text().splitlines()
    assert feats.shape == (3, 512) and order == [str(tmp_path / f"{i}.png") for i in range(3)]  # fc7 at width 0.5
    assert (feats >= 0).all()  # after fc7's ReLU
    # The file order holds each name's own bytes (one that is not UTF-8 read back as the file system has it); a
    # line break inside a name is escaped, as predict prints it, so the rows stay one a line.
    names = [os.fsencode(tmp_path) + b"/\xff.png", os.fsencode(tmp_path) + b"/two\nlines.png"]
    for name in names:
        Image.new("RGB", (40, 40), (10, 20, 30)).save(name.decode(errors="surrogateescape"))
    assert main(["features", "--weights", weights, str(tmp_path), "--out", str(tmp_path / "f.npy")]) == 0
    lines = (tmp_path / "f.txt").read_bytes().splitlines()
    assert np.load(tmp_path / "f.npy").shape == (5, 512) and len(lines) == 5
    assert names[0] in lines and os.fsencode(tmp_path) + b"/two\\x0alines.png" in lines


def test_the_figures_take_the_model_as_weights_too_once_and_only_where_one_is_read(two_tower_run, tmp_path, capsys):
    """`--weights` names a model in every other command; `paper fig3 --weights RUN` was "unrecognized arguments".
    Given twice (SOURCE and --weights), or to fig1, which trains its own networks and ignored it, it is one line."""
    out = tmp_path / "f3"
    assert main(["paper", "fig3", "--weights", str(two_tower_run), "--out", str(out)]) == 0
    assert json.loads((out / "fig3.json").read_text())["source"] == str(two_tower_run)
    for words, said in (
        (["fig3", str(two_tower_run), "--checkpoint", str(two_tower_run)], "give the model once"),
        (["fig1", "--weights", str(two_tower_run), "--out", str(tmp_path / "f1")], "fig1 trains its own networks"),
        (["fig1", str(two_tower_run), "--out", str(tmp_path / "f1")], "fig1 trains its own networks"),
    ):
        capsys.readouterr()
        with pytest.raises(SystemExit) as stop:
            main(["paper", *words])
        err = capsys.readouterr().err
        assert stop.value.code == 2 and said in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "f1").exists()
