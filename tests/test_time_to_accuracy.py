"""benchmarks/time_to_accuracy.py reports the test split's accuracy after the last epoch, never a validation
figure: with a held-out split that is the ``test_acc1`` column, without one the last epoch's (test) figure."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tta():
    spec = importlib.util.spec_from_file_location("time_to_accuracy", ROOT / "benchmarks" / "time_to_accuracy.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TINY = [
    'model.name="alexnet_small"',
    "model.overrides.width=0.25",
    'data.dataset="fake"',
    "data.batch_size=32",
    "train.epochs=1",
    'train.precision="fp32"',
    'train.device="cpu"',
]


def test_the_figure_is_the_test_split_after_the_last_epoch(tta):
    final, seconds, history = tta.one_run("cifar10", [*TINY, "data.val_split=0.25"], seed=0)
    assert final == history[-1]["test_acc1"] and seconds > 0
    final, _, history = tta.one_run("cifar10", [*TINY, "data.val_split=0"], seed=0)
    assert "test_acc1" not in history[-1] and final == history[-1]["val_acc1"]


def test_the_verdict_is_the_mean_and_counts_the_seeds_that_met_it_alone(tta, monkeypatch, capsys):
    runs = iter([(93.2, 170.0), (92.9, 175.0), (93.3, 181.0)])  # (test top-1 %, seconds) per seed
    monkeypatch.setattr(
        tta, "one_run", lambda recipe, overrides, seed: (*next(runs), [{"epoch": 1, "elapsed": 1.0, "val_acc1": 90.0}])
    )
    monkeypatch.setattr("sys.argv", ["time_to_accuracy.py", "--seeds", "3"])
    tta.main()
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert "93.13 ± 0.21% in 175.33 ± 5.51 s over 3 seed(s)" in last
    assert last.endswith("target 93.0% in 180 s: MET in the mean, by 1 of 3 seed(s) alone")


def test_a_bad_override_is_one_line_and_a_non_zero_exit(tta, monkeypatch):
    monkeypatch.setattr("sys.argv", ["time_to_accuracy.py", "--set", "model.overrides.fc=[512,512]"])
    with pytest.raises(SystemExit) as stop:
        tta.main()
    message = str(stop.value.code)
    assert message.startswith("time_to_accuracy: error: unknown override 'fc'") and "\n" not in message


def test_an_ensemble_run_trains_k_seeds_and_scores_them_as_one(tta, monkeypatch):
    seeds, calls = [], []
    real_fit, real_eval = tta.fit, tta.evaluate_checkpoint

    def fit(cfg):
        seeds.append(cfg.train.seed)
        return real_fit(cfg)

    def evaluate(paths, **kwargs):
        result = real_eval(paths, **kwargs)
        calls.append((len(paths), kwargs.get("split", "test"), result.acc1))
        return result

    monkeypatch.setattr(tta, "fit", fit)
    monkeypatch.setattr(tta, "evaluate_checkpoint", evaluate)
    final, seconds, history = tta.ensemble_run("cifar10", [*TINY, "data.val_split=0.25"], seed=1, models=2)
    assert seeds == [2, 3]  # seeds K·s … K·s + K − 1: no two runs share a model
    assert [c[:2] for c in calls] == [(2, "test"), (2, "val")]
    assert final == calls[0][2] and history[-1]["val_acc1"] == calls[1][2] and seconds > 0
