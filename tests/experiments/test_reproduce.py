"""`alexnet reproduce` in miniature on fake data: every experiment's table, and a rerun that skips finished runs."""

import json

import pytest

from alexnet.cli import main
from alexnet.experiments.reproduce import BUDGETS, _verdict

TINY = ["--dataset", "fake", "--no-progress", "--precision", "fp32", "--set", "train.epochs=1",
        "--set", "train.limit_train_batches=2", "--set", "train.limit_val_batches=1", "--set", "data.batch_size=16",
        "--set", "data.eval_batch_size=64"]  # fmt: skip


@pytest.mark.slow
def test_reproduce_writes_every_table_and_a_rerun_skips_finished_runs(tmp_path, capsys, monkeypatch):
    out = tmp_path / "repro"
    assert main(["reproduce", "--out", str(out), "--seeds", "2", *TINY]) == 0
    report = (out / "report.md").read_text()
    names = [e.name for e in BUDGETS["small"]().experiments]
    for name in names:
        assert f"| **{name}** (" in report
    results = json.loads((out / "results.json").read_text())
    assert set(results) == set(names)
    for r in results.values():
        assert r["verdict"].startswith(("reproduced", "not reproduced"))
        assert all(len(a["values"]) == 2 for a in r["arms"].values())  # two seeds per arm
    # The ablations' shared baseline trained once, under the first experiment that uses it.
    assert (out / "lrn" / "paper" / "seed1" / "done.json").is_file()
    assert not (out / "pooling" / "paper").exists()
    assert "paper" in results["pooling"]["arms"]
    # A rerun trains nothing; an interrupted run (no done.json) resumes from its checkpoint.
    (out / "pca" / "no_pca" / "seed0" / "done.json").unlink()
    import alexnet.experiments.reproduce as reproduce

    trained = []
    real_fit = reproduce.fit
    monkeypatch.setattr(reproduce, "fit", lambda cfg: trained.append(cfg) or real_fit(cfg))
    assert main(["reproduce", "--out", str(out), "--seeds", "2", *TINY]) == 0
    assert len(trained) == 1 and trained[0].train.resume == "auto" and str(trained[0].train.out).endswith("seed0")
    assert "report:" in capsys.readouterr().out


def test_only_and_unknown_names(tmp_path, capsys):
    assert main(["reproduce", "--out", str(tmp_path), "--only", "lrn,nope", *TINY]) == 2
    assert "unknown experiment(s) ['nope']" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("effect", "se", "paper", "ratio", "verdict"),
    [
        (1.5, 0.2, 1.4, False, "reproduced in sign and size"),
        (5.0, 0.2, 1.4, False, "reproduced in sign only"),
        (0.3, 0.2, 1.4, False, "not reproduced (within noise)"),
        (-1.0, 0.2, 1.4, False, "not reproduced (opposite)"),
        (4.0, 0.5, 6.0, True, "reproduced in sign and size"),  # 4× against 6×: within a factor of two in log
        (1.2, 0.3, 6.0, True, "not reproduced (within noise)"),
    ],
)
def test_verdicts(effect, se, paper, ratio, verdict):
    assert _verdict(effect, se, paper, ratio) == verdict
