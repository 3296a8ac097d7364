"""`alexnet reproduce` in miniature on fake data: every experiment's table with intervals and censoring, records that
carry a reproduction across sittings, and the statistics behind the verdicts."""

import json
import math
import shutil
from pathlib import Path

import pytest

from alexnet.cli import main
from alexnet.experiments import claims
from alexnet.experiments.ablations import BUDGETS
from tests.helpers import strict_json

TINY = [
    "--dataset",
    "fake",
    "--no-progress",
    "--precision",
    "fp32",
    "--set",
    "train.epochs=1",
    "--set",
    "train.limit_train_batches=2",
    "--set",
    "train.limit_val_batches=1",
    "--set",
    "data.batch_size=16",
    "--set",
    "data.eval_batch_size=64",
]
# What a run's record holds that the report reads: every epoch's losses and accuracies, and the seconds.
RUN = {"history": [{"epoch": 1, "train_loss": 2.0, "train_acc1": 10.0, "val_acc1": 10.0}], "seconds": 1.0}


@pytest.mark.slow
def test_the_cpu_budget_in_miniature_reports_intervals_censoring_and_figure3(tmp_path, capsys):
    out, records = tmp_path / "runs", tmp_path / "records"
    # One experiment of each kind: error (with the shared baseline), epochs, converge, paired; and lrn_cifar.
    names = ["relu_tanh", "lrn_cifar", "lrn", "dropout", "ten_crop", "ensemble"]
    assert set(names) <= {e.name for e in BUDGETS["cpu"]().experiments}
    assert (
        main(
            [
                "reproduce",
                "--budget",
                "cpu",
                "--out",
                str(out),
                "--records",
                str(records),
                "--seeds",
                "2",
                "--only",
                ",".join(names),
                *TINY,
            ]
        )
        == 0
    )
    report = (records / "report.md").read_text()
    for name in names:
        assert f"| **{name}** (" in report
    assert "| claim | paper | ours: arms | effect, 95% CI | verdict | time | others |" in report
    assert "47.0% top-1 error with LRN and without" in report  # Mishkin et al. beside the LRN claim
    assert "runs, **" in report and " h** of training" in report and "torch " in report  # total time, machine
    results = json.loads((records / "results.json").read_text())
    assert set(results) == set(names)
    for name in ("lrn", "lrn_cifar", "ten_crop"):
        effect = results[name]["effect"]
        assert effect["low"] <= effect["estimate"] <= effect["high"], name  # two seeds: an interval
        assert "[" in results[name]["text"]
    # One epoch of two fake batches reaches neither 25% training error nor a training loss of 0.75: censored runs,
    # reported as bounds without an interval, never as plain numbers.
    for name in ("relu_tanh", "dropout"):
        r = results[name]
        assert any(a["censored"] and all(a["censored"]) for a in r["arms"].values()), name
        assert "censored" in r["text"] or "censored" in r["verdict"], r
        assert r["effect"]["low"] is None
    assert "(censored: > 1 in 2 of 2 runs)" in report
    # The baseline's records hold its ten-crop figures and Figure 3 (no weights in any record).
    base = records / "lrn" / "paper" / "seed0"
    done = json.loads((base / "done.json").read_text())
    assert {"test_err_centre", "test_err_ten_crop", "fig3"} <= set(done) and (base / "fig3.png").is_file()
    assert "## Figure 3" in report
    # The ensemble: the baseline's two runs as one, beside each alone (the same weights and view as the ten-crop
    # claim's centre crop), kept in the records for later sittings.
    ensemble = json.loads((records / "lrn" / "paper" / "ensemble.json").read_text())
    centre = [
        json.loads((records / "lrn" / "paper" / f"seed{s}" / "done.json").read_text())["test_err_centre"]
        for s in (0, 1)
    ]
    assert ensemble["seeds"] == [0, 1] and ensemble["members_err"] == centre
    from alexnet.inference.evaluate import evaluate_checkpoint

    weights = [out / "lrn" / "paper" / f"seed{s}" / "last.pt" for s in (0, 1)]
    kwargs = {"ten_crop": False, "precision": "fp32", "dataset": "fake", "progress": False}
    together = evaluate_checkpoint(weights, **kwargs)
    assert ensemble["ensemble_loss"] == pytest.approx(together.loss, abs=1e-4)
    assert together.loss <= sum(evaluate_checkpoint(w, **kwargs).loss for w in weights) / 2 + 1e-6  # Jensen
    arms = results["ensemble"]["arms"]
    assert arms["one model"]["values"] == centre and arms["2 averaged"]["values"] == [ensemble["ensemble_err"]]
    assert results["ensemble"]["effect"]["estimate"] == pytest.approx(
        sum(centre) / 2 - ensemble["ensemble_err"], abs=1e-3
    )
    assert "| **ensemble** (§6, Table 2)" in report and "40.7% → 38.1%" in report
    assert f"2 averaged {ensemble['ensemble_err']:.2f}% |" in report  # one value, of both seeds: no "(one seed)"
    assert not list(records.rglob("*.pt")) and not list(records.rglob("*.safetensors"))
    assert "report:" in capsys.readouterr().out


@pytest.mark.slow
def test_records_carry_a_reproduction_across_sittings(tmp_path, monkeypatch, capsys):
    out, records = tmp_path / "runs", tmp_path / "records"
    args = [
        "reproduce",
        "--out",
        str(out),
        "--records",
        str(records),
        "--seeds",
        "1",
        "--only",
        "lrn,pca,ensemble",
        *TINY,
    ]
    assert main(args) == 0
    results = json.loads((records / "results.json").read_text())
    assert results["lrn"]["verdict"] == "one seed: no interval, no verdict"
    machine = json.loads((records / "lrn" / "paper" / "ensemble.json").read_text())["machine"]
    assert f"; the ensemble measured on {machine}." in (records / "report.md").read_text()
    # The ablations' shared baseline trained once, under the first experiment that uses it.
    assert (records / "lrn" / "paper" / "seed0" / "done.json").is_file() and not (records / "pca" / "paper").exists()
    # A fresh clone has the records but no run directories: nothing trains again, the report is rebuilt.
    shutil.rmtree(out)
    (records / "report.md").unlink()
    import alexnet.experiments.reproduce as reproduce

    trained = []
    real_fit = reproduce.fit
    monkeypatch.setattr(reproduce, "fit", lambda cfg: trained.append(cfg) or real_fit(cfg))
    assert main(args) == 0
    assert trained == [] and (records / "report.md").is_file()
    # The ensemble was measured in the first sitting, where the weights were, and is read back from its record;
    # without the record a later sitting has no weights to measure it with, and says so.
    again = json.loads((records / "results.json").read_text())
    assert again["ensemble"] == results["ensemble"] and results["ensemble"]["arms"]["1 averaged"]["values"]
    (records / "lrn" / "paper" / "ensemble.json").unlink()
    assert main(args) == 0
    gone = strict_json((records / "results.json").read_text())["ensemble"]
    assert gone["text"] == "not measured" and "weights are gone" in gone["verdict"]
    assert gone["effect"]["estimate"] is None  # not NaN, which strict JSON parsers refuse
    for damaged in ("[1]", '{"seeds": [0], "members_err": "x"}'):  # not read (a warning), not a traceback
        (records / "lrn" / "paper" / "ensemble.json").write_text(damaged)
        assert main(args) == 0
        assert strict_json((records / "results.json").read_text())["ensemble"]["text"] == "not measured"
        assert "ensemble measured on" not in (records / "report.md").read_text()
    # A record is read only by a sitting that would train its run the same way: other --set values (or an arm
    # whose definition changed since) are refused before anything trains, naming the difference; nothing is lost.
    done = records / "pca" / "no_pca" / "seed0" / "done.json"
    kept = done.read_bytes()
    two = [*args[: -len(TINY)], *TINY, "--set", "train.epochs=2"]
    assert main(two) == 2 and trained == [] and done.read_bytes() == kept
    err = capsys.readouterr().err
    assert "seed0/done.json was trained otherwise (train.epochs=1, not 2): run with its settings" in err, err
    assert len(err.strip().splitlines()) == 1
    stale = json.loads(kept)
    stale["overrides"] = [("data.pca_std=0.5" if o == "data.pca_std=0" else o) for o in stale["overrides"]]
    done.write_text(json.dumps(stale))
    assert main(args) == 2 and trained == []
    said = "trained otherwise (the arm had ['data.pca_std=0.5'], now ['data.pca_std=0']): run with"
    assert said in capsys.readouterr().err
    # A run without a record and without a checkpoint trains from scratch; one with a checkpoint (killed after it)
    # resumes from it.
    done.unlink()
    assert main(args) == 0
    assert len(trained) == 1 and trained[0].train.resume == "auto" and str(trained[0].train.out).endswith("seed0")
    first = json.loads(done.read_text())
    assert [r["epoch"] for r in first["history"]] == [1] and first["settings"]["train.epochs"] == "1"
    done.unlink()
    assert main(args) == 0
    assert len(trained) == 2 and json.loads(done.read_text())["history"] == first["history"]  # nothing retrained
    # A baseline run trained again (its record removed) replaces the weights the ensemble averaged: measured anew,
    # not read from the record of the old weights.
    stale = {**results["ensemble"], "seeds": [0], "members_err": [99.0], "ensemble_err": 99.0, "seconds": 1.0}
    (records / "lrn" / "paper" / "ensemble.json").write_text(json.dumps(stale))
    (records / "lrn" / "paper" / "seed0" / "done.json").unlink()
    assert main(args) == 0
    fresh = json.loads((records / "lrn" / "paper" / "ensemble.json").read_text())
    assert fresh["members_err"] == [
        json.loads((records / "lrn" / "paper" / "seed0" / "done.json").read_text())["test_err_centre"]
    ]


def test_only_and_unknown_names(tmp_path, capsys):
    assert main(["reproduce", "--out", str(tmp_path), "--only", "lrn,nope", *TINY]) == 2
    assert "unknown experiment(s) ['nope']; choose from [" in capsys.readouterr().err
    assert main(["reproduce", "--out", str(tmp_path), "--only", "Depth_Conv", *TINY]) == 2
    assert "unknown experiment(s) ['Depth_Conv']; did you mean 'depth_conv3'? choose" in capsys.readouterr().err


def test_t_quantiles():
    assert claims.t975(1) == 12.706 and claims.t975(4) == 2.776 and claims.t975(10) == 2.228
    assert 2.228 > claims.t975(11) > 2.179 and abs(claims.t975(10_000) - 1.96) < 0.01


def test_a_difference_has_welchs_interval():
    paper, other = claims.Arm([20.0, 21.0, 22.0]), claims.Arm([24.0, 26.0, 28.0])
    e = claims.difference(paper, other)
    # se = sqrt(1/3 + 4/3); Welch's degrees of freedom (5/3)² / ((1/3)²/2 + (4/3)²/2) = 2.94
    assert e.estimate == pytest.approx(5.0)
    half = claims.t975((5 / 3) ** 2 / ((1 / 3) ** 2 / 2 + (4 / 3) ** 2 / 2)) * math.sqrt(5 / 3)
    assert e.low == pytest.approx(5 - half) and e.high == pytest.approx(5 + half) and e.low > 0
    assert claims.verdict(e, 4.0) == "reproduced in sign and size"
    assert claims.verdict(e, 1.0) == "reproduced in sign only"  # 5 points against the paper's 1: not its size
    assert claims.verdict(e, None) == "reproduced (in sign: the paper gives no figure for its size)"
    assert claims.verdict(claims.difference(other, paper), 4.0) == "not reproduced (opposite)"
    noisy = claims.difference(claims.Arm([20.0, 30.0]), claims.Arm([22.0, 31.0]))
    assert noisy.low < 0 < noisy.high and claims.verdict(noisy, 1.5) == "not reproduced (within noise)"


def test_one_seed_gives_no_interval_and_says_so():
    e = claims.difference(claims.Arm([50.0]), claims.Arm([55.0]))
    assert e.low is None and claims.verdict(e, 1.4) == "one seed: no interval, no verdict"
    assert claims.describe(e) == "+5.00 points"


def test_censored_runs_are_bounds_not_numbers():
    relu = claims.Arm([6.0, 7.0, 6.0])
    tanh = claims.Arm([40.0, 31.0, 40.0], [True, False, True])  # two runs never reached the target in 40 epochs
    e = claims.ratio(tanh, relu)
    assert e.bound == "lower" and e.low is None and e.estimate == pytest.approx(37 / (19 / 3))
    assert claims.describe(e).startswith("≥ 5.84×") and "censored" in claims.describe(e)
    assert claims.verdict(e, 6.0) == "reproduced in sign (a lower bound: censored runs)"
    assert claims.describe_arm(tanh, " epochs") == "≥ 37.00 epochs (censored: > 40 in 2 of 3 runs)"
    unknown = claims.ratio(claims.Arm([10.0, 12.0]), claims.Arm([20.0, 20.0], [True, True]))
    assert claims.verdict(unknown, 2.0).startswith("no verdict")
    uncensored = claims.ratio(claims.Arm([24.0, 22.0, 23.0]), relu)
    assert uncensored.low < uncensored.estimate < uncensored.high
    assert claims.verdict(uncensored, 6.0) == "reproduced in sign and size"  # 3.6× against 6×: within 2× in log


def test_paired_differences():
    e = claims.paired([2.0, 2.5, 1.5])
    assert e.estimate == pytest.approx(2.0) and e.low == pytest.approx(2 - 4.303 * 0.5 / math.sqrt(3), rel=1e-4)


def test_a_missing_data_set_is_named_before_the_first_run(tmp_path, capsys, monkeypatch):
    """The small budget's dropout claim reads Fashion-MNIST after the CIFAR-10 claims have trained: missing, it is
    named before anything trains; once its runs have their records it is not needed."""
    import alexnet.experiments.reproduce as reproduce
    from alexnet.data import sources
    from tests.conftest import make_folder

    trained = []

    def fit(cfg):
        trained.append(cfg)
        raise KeyboardInterrupt  # the preflight passed: stop at the first run

    monkeypatch.setattr(reproduce, "fit", fit)
    monkeypatch.setattr(sources, "DEBIAN_FASHION_MNIST", tmp_path / "no-debian-package")
    cifar = make_folder(tmp_path / "cifar", splits=("train", "test"))
    out = tmp_path / "runs"
    args = ["reproduce", "--out", str(out), "--only", "lrn,dropout", "--seeds", "1", "--cifar-dir", str(cifar)]
    missing = ["--fashion-dir", str(tmp_path / "nowhere"), "--no-progress", "--set", "data.download=false"]
    assert main([*args, *missing]) == 2
    err = capsys.readouterr().err
    assert "fashion-mnist not found" in err and len(err.splitlines()) == 1, err
    assert trained == [] and not out.exists()
    dropout = next(e for e in BUDGETS["small"]().experiments if e.name == "dropout")
    for arm in (dropout.paper_arm, dropout.other_arm):  # as a fresh clone of committed records has them
        record = out / "dropout" / arm.name / "seed0" / "done.json"
        record.parent.mkdir(parents=True)
        settings = {"data.download": "false"}  # this sitting's --set
        kept = {"recipe": arm.recipe, "overrides": list(arm.overrides), "settings": settings, **RUN}
        record.write_text(json.dumps(kept))
    assert main([*args, *missing]) == 130 and len(trained) == 1  # on to the first CIFAR-10 run


def test_a_second_reproduce_on_the_same_out_is_refused_at_the_run_the_first_is_training(tmp_path, capsys):
    """Two `reproduce --out runs` at once: the second reaches the run the first is training (its lock held here,
    as the first process holds it) and stops with one line, writing no record, report or result of its own."""
    from alexnet.training.rundir import RunLock

    busy = RunLock(tmp_path / "lrn" / "paper" / "seed0")
    try:
        assert main(["reproduce", "--out", str(tmp_path), "--only", "lrn", "--seeds", "1", *TINY]) == 2
    finally:
        busy.release()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"is being written by process {__import__('os').getpid()}" in err, err
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]  # the held lock's file went with its release


def test_a_record_that_is_not_json_is_named(tmp_path, capsys):
    """Records are committed to carry a reproduction across sittings, so a merge can leave conflict markers in one:
    `reproduce` said only "Expecting value: line 1 column 1 (char 0)", naming no file."""
    done = tmp_path / "lrn" / "paper" / "seed0" / "done.json"
    done.parent.mkdir(parents=True)
    done.write_text('<<<<<<< HEAD\n{"history": []}\n=======\n{}\n>>>>>>> theirs\n')
    assert main(["reproduce", "--out", str(tmp_path), "--only", "lrn", "--seeds", "1", *TINY]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"run record {done} is not valid JSON" in err, err


def test_the_committed_records_rebuild_the_committed_report(tmp_path, capsys):
    """`results/reproduce-cpu` is what the README and docs/paper.md quote: its records, read again by today's code,
    must give its report and results word for word (no data, no training), so neither a change to the statistics
    nor a record changed by hand leaves the quoted figures behind."""
    committed = Path(__file__).resolve().parents[2] / "results" / "reproduce-cpu"
    records = shutil.copytree(committed, tmp_path / "records")
    words = ["reproduce", "--budget", "cpu", "--seeds", "3", "--records", str(records), "--out", str(tmp_path / "x")]
    assert main(words) == 0
    assert "report: " in capsys.readouterr().out
    for name in ("report.md", "results.json"):
        assert (records / name).read_text() == (committed / name).read_text(), name
    assert not (tmp_path / "x").exists() or not any((tmp_path / "x").rglob("*.pt"))  # nothing trained


@pytest.mark.parametrize(
    ("body", "said"),
    [
        ("[1]", "is not a run record (a JSON object with every epoch"),
        ('{"history": [{}], "seconds": 1}', "is not a run record"),
        ("{", "is not valid JSON"),
        (json.dumps({"recipe": 3, "overrides": "x", "settings": [1], **RUN}), "(recipe 3; the arm's overrides"),
    ],
)
def test_a_damaged_record_is_one_line_before_anything_trains(body, said, tmp_path, capsys, monkeypatch):
    import alexnet.experiments.reproduce as reproduce

    monkeypatch.setattr(reproduce, "fit", lambda cfg: pytest.fail("trained"))
    done = tmp_path / "lrn" / "paper" / "seed0" / "done.json"
    done.parent.mkdir(parents=True)
    done.write_text(body)
    assert main(["reproduce", "--out", str(tmp_path), "--only", "lrn", "--seeds", "1", *TINY]) == 2
    err = capsys.readouterr().err
    assert said in err and len(err.strip().splitlines()) == 1 and done.read_text() == body, err


def test_a_damaged_record_past_the_sittings_seeds_is_left_out_of_the_report(tmp_path, capsys):
    """A seed the sitting does not ask for is not checked before the runs; the report, which reads every seed's
    record for its totals and curves, leaves a damaged one out (it was a traceback after the runs)."""
    committed = Path(__file__).resolve().parents[2] / "results" / "reproduce-cpu"
    records = shutil.copytree(committed, tmp_path / "records")
    (records / "depth" / "no_conv4" / "seed3").mkdir()
    (records / "depth" / "no_conv4" / "seed3" / "done.json").write_text('{"history": [1]}')
    words = ["reproduce", "--budget", "cpu", "--seeds", "3", "--records", str(records), "--out", str(tmp_path / "x")]
    assert main(words) == 0
    assert (records / "report.md").read_text() == (committed / "report.md").read_text()
