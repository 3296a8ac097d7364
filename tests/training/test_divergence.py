"""Divergence never costs a run (T18): non-finite weights are never written, never "best", never resumed."""

import dataclasses
import math

import pytest
import torch

from alexnet.artifacts.checkpoint import load_checkpoint, save_checkpoint
from alexnet.errors import NonFiniteLossError, NonFiniteOutputError, NonFiniteWeightsError
from alexnet.training.fit import fit
from tests.conftest import tiny_config


def _finite(path) -> bool:
    state = load_checkpoint(path)
    return all(bool(torch.isfinite(v).all()) for v in state["model"].values() if v.is_floating_point())


def test_an_update_that_breaks_the_weights_is_never_saved(tmp_path, monkeypatch):
    import alexnet.training.optim as optim

    fit(tiny_config(tmp_path / "run", "train.epochs=1", "train.checkpoint_every=4"))
    real_step, steps = optim.PaperSGD.step, []

    def step_then_poison(self, closure=None):  # a finite loss whose update turns one weight into NaN
        out = real_step(self, closure)
        steps.append(1)
        if len(steps) == 8:
            self.param_groups[0]["params"][0].data[0].fill_(float("nan"))
        return out

    monkeypatch.setattr(optim.PaperSGD, "step", step_then_poison)
    cfg = tiny_config(tmp_path / "run", "train.epochs=2", 'train.resume="auto"', "train.checkpoint_every=4")
    with pytest.raises(NonFiniteWeightsError, match="not saved"):
        fit(cfg)  # step 8 is a checkpoint step (every 4): the periodic save refuses
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert (state["epoch"], state["step"]) == (1, 4) and _finite(tmp_path / "run" / "last.pt")  # the save before
    monkeypatch.setattr(optim.PaperSGD, "step", real_step)
    assert fit(cfg).history[-1]["epoch"] == 2  # --resume auto continues from the last finite state


def test_bf16_divergence_with_periodic_checkpoints_writes_nothing_non_finite(tmp_path):
    cfg = tiny_config(
        tmp_path / "run",
        "train.epochs=1",
        'train.precision="bf16"',
        "train.checkpoint_every=1",
        "optim.lr=1e20",
        'model.overrides.norm="none"',
    )
    with pytest.raises((NonFiniteLossError, NonFiniteWeightsError)):
        fit(cfg)
    for name in ("last.pt", "best.pt"):
        path = tmp_path / "run" / name
        assert not path.exists() or _finite(path)


def test_a_nan_validation_loss_never_becomes_best(tmp_path, monkeypatch):
    import alexnet.training.fit as fit_module

    real_evaluate, calls = fit_module.evaluate, []

    def evaluate(*args, **kwargs):
        result = real_evaluate(*args, **kwargs)
        calls.append(1)
        if len(calls) == 2:  # epoch 2: better accuracy, but a NaN loss
            result = dataclasses.replace(result, loss=math.nan, acc1=100.0)
        return result

    monkeypatch.setattr(fit_module, "evaluate", evaluate)
    # Finite weights whose outputs are not: the run stops, and its last good state stays the last and the best.
    with pytest.raises(NonFiniteOutputError, match="non-finite in epoch 2"):
        fit(tiny_config(tmp_path / "run", "train.epochs=2", "optim.lr=0.001"))
    assert load_checkpoint(tmp_path / "run" / "best.pt")["epoch"] == 1
    assert load_checkpoint(tmp_path / "run" / "last.pt")["epoch"] == 1


def test_auto_resume_skips_a_checkpoint_with_non_finite_weights(tmp_path, caplog):
    fit(tiny_config(tmp_path / "run", "train.epochs=1"))
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    first = next(iter(state["model"]))
    state["model"][first] = torch.full_like(state["model"][first], math.inf)
    save_checkpoint(state, tmp_path / "run" / "last.pt")  # a NaN checkpoint written by an older version
    result = fit(tiny_config(tmp_path / "run", "train.epochs=2", 'train.resume="auto"'))
    assert "non-finite weights" in caplog.text and "trying the previous checkpoint" in caplog.text
    assert result.history[-1]["epoch"] == 2 and _finite(tmp_path / "run" / "last.pt")


def test_finite_weights_with_non_finite_outputs_never_print_a_number(tmp_path, capsys):
    """A model whose weights are finite but overflow (a diverged run's last state): predict and eval say so with
    one line and exit 2; they never print nan%."""
    from PIL import Image

    from alexnet.artifacts.checkpoint import load_weights, save_weights
    from alexnet.artifacts.loader import load_trained
    from alexnet.cli import main
    from tests.conftest import make_weights

    path = make_weights(tmp_path / "w.safetensors")
    trained = load_trained(path)
    with torch.no_grad():
        for p in trained.model.parameters():
            p.mul_(1e30)  # finite (< 3.4e38), but products overflow to inf and inf − inf is NaN
    _, meta = load_weights(path)
    save_weights(trained.model, path, meta)
    image = tmp_path / "x.png"
    Image.new("RGB", (40, 40), (120, 30, 200)).save(image)
    assert main(["predict", "--checkpoint", str(path), str(image)]) == 2
    err = capsys.readouterr().err
    assert "non-finite outputs" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "nan" not in capsys.readouterr().out
