"""Restoring a checkpoint's optimizer state into a model laid out differently."""

import copy

import pytest
import torch

from alexnet.config import OptimConfig
from alexnet.models import create_model
from alexnet.training.optim import build_optimizer
from alexnet.training.state import match_layouts


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_state_saved_in_another_layout_steps_the_right_weights(name):
    """A channels-last run's momentum restored into an NCHW model (``model.channels_last=false`` on resume): after
    `match_layouts`, torch's fused step equals the one the channels-last run takes. Without it, the fused kernels
    pair each weight with another's momentum by place in memory."""
    torch.manual_seed(0)
    nchw = create_model("alexnet_small", num_classes=10, width=0.25)
    cl = copy.deepcopy(nchw).to(memory_format=torch.channels_last)
    cfg = OptimConfig(name=name, lr=0.1, momentum=0.9, weight_decay=5e-4)
    grads = {n: torch.randn_like(p) for n, p in nchw.named_parameters()}

    def step(model, optimizer):
        for n, p in model.named_parameters():
            p.grad = torch.empty_like(p).copy_(grads[n])  # in the parameter's own layout, as autograd gives it
        optimizer.step()

    cl_opt = build_optimizer(cl, cfg)
    step(cl, cl_opt)  # the saved run: its state now in channels-last layout
    nchw.load_state_dict(cl.state_dict())
    nchw_opt = build_optimizer(nchw, cfg)
    nchw_opt.load_state_dict(copy.deepcopy(cl_opt.state_dict()))  # as torch.load gives it: tensors of its own
    match_layouts(nchw_opt)
    step(cl, cl_opt)
    step(nchw, nchw_opt)
    for (key, a), b in zip(cl.state_dict().items(), nchw.state_dict().values()):
        assert torch.equal(a, b), key
