"""`evaluate_checkpoint` in bf16: the convolution and fc weights cast once, the figures autocast's."""

import torch
from torch import nn

import alexnet.inference.evaluate as ev
from alexnet.training.fit import fit
from tests.conftest import tiny_config


def test_bf16_evaluation_casts_the_matmul_weights_once_and_scores_as_autocast_does(tmp_path, monkeypatch):
    fit(tiny_config(tmp_path / "run", "train.epochs=1"))
    seen = []
    real = ev.evaluate

    def spy(model, *args, **kwargs):
        matmul = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        seen.append({p.dtype for m in matmul for p in m.parameters(recurse=False)})
        return real(model, *args, **kwargs)

    monkeypatch.setattr(ev, "evaluate", spy)
    kw = {"device": "cpu", "precision": "bf16", "progress": False, "limit_batches": 2}
    once = ev.evaluate_checkpoint(tmp_path / "run" / "last.pt", **kw)
    monkeypatch.setattr(ev, "matmul_weights_to", lambda model, dtype: model)  # autocast casts on every batch
    every_batch = ev.evaluate_checkpoint(tmp_path / "run" / "last.pt", **kw)
    assert seen == [{torch.bfloat16}, {torch.float32}]
    assert (once.loss, once.acc1, once.acc5) == (every_batch.loss, every_batch.acc1, every_batch.acc5)
