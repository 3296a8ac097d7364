"""The experiment table of `alexnet reproduce`: every arm of every budget is a configuration that loads and a model
that builds (the ``full`` budget's arms run only on GPUs, never in CI), and the table's names keep runs apart."""

import pytest

from alexnet.config import load_config
from alexnet.experiments.ablations import BUDGETS, Arm
from alexnet.models import get_spec

METRICS = {"error", "epochs", "converge", "tencrop", "ensemble"}
ONE_ARM = {"tencrop", "ensemble"}  # measured on the paper arm's runs: no second training


def _arms() -> list[tuple[str, str, Arm]]:
    return [
        (budget, exp.name, arm)
        for budget, make in BUDGETS.items()
        for exp in make().experiments
        for arm in (exp.paper_arm, exp.other_arm)
        if arm is not None
    ]


@pytest.mark.parametrize(("budget", "experiment", "arm"), _arms(), ids=lambda v: getattr(v, "name", v))
def test_every_arm_loads_and_builds(budget, experiment, arm):
    cfg = load_config(arm.recipe, list(arm.overrides))
    spec = get_spec(cfg.model.name, **cfg.model.overrides)  # the overrides a run would build its model with
    assert spec.convs, (budget, experiment, arm.name)


@pytest.mark.parametrize("budget", sorted(BUDGETS))
def test_names_keep_runs_apart(budget):
    plan = BUDGETS[budget]()
    names = [exp.name for exp in plan.experiments]
    assert len(names) == len(set(names)), "two experiments would share OUT/<experiment>/"
    for exp in plan.experiments:
        assert exp.metric in METRICS, exp.name
        assert (exp.other_arm is None) == (exp.metric in ONE_ARM), exp.name
        if exp.other_arm is not None:  # the arms' runs are told apart by name: OUT/<experiment>/<arm>/seed<k>/
            assert exp.paper_arm.name != exp.other_arm.name, exp.name
    assert plan.baseline is None or any(plan.baseline == exp.paper_arm for exp in plan.experiments)


@pytest.mark.parametrize("budget", sorted(BUDGETS))
def test_the_towers_arm_is_the_papers_one_gpu_net(budget):
    """§3.2's comparison: one tower with half the kernels of conv1-4, conv5 and the fc layers whole (footnote 2:
    "to make the two nets have approximately the same number of parameters"). The arm once had every layer at
    half width, fc included: a net of a quarter of the parameters, whose error made the towers' gain look twice
    the paper's."""
    towers = next(e for e in BUDGETS[budget]().experiments if e.name == "towers")
    two, one = [
        get_spec(cfg.model.name, **cfg.model.overrides)
        for cfg in (load_config(a.recipe, list(a.overrides)) for a in (towers.paper_arm, towers.other_arm))
    ]
    assert (two.groups, one.groups) == (2, 1)
    assert one.channels()[:-1] == [c // 2 for c in two.channels()[:-1]]
    assert one.channels()[-1] == two.channels()[-1] and one.hidden() == two.hidden()
    params = [s.parameters(10, 3) for s in (two, one)]
    assert 0.85 < params[1] / params[0] < 1.0, params


def test_one_gpu_gives_the_papers_widths():
    one = get_spec("alexnet_paper", groups=1, one_gpu=True)
    assert one.channels() == [48, 128, 192, 192, 256] and one.hidden() == [4096, 4096]
    with pytest.raises(ValueError, match="one_gpu=True is not valid with groups=2: the paper's one-GPU net is one"):
        get_spec("alexnet_paper", one_gpu=True)  # the paper's two towers


@pytest.mark.parametrize("budget", sorted(BUDGETS))
def test_the_depth_claim_takes_out_each_middle_conv_once(budget):
    """§7: "removing any of the middle layers results in a loss of about 2%": one experiment a middle conv that
    keeps the maps' sides (conv3 and conv4 in every variant here), each against the five-conv baseline."""
    plan = BUDGETS[budget]()
    depth = [e for e in plan.experiments if e.section == "§7"]
    base = load_config(depth[0].paper_arm.recipe, list(depth[0].paper_arm.overrides))
    spec = get_spec(base.model.name, **base.model.overrides)
    middle = [i for i, c in enumerate(spec.convs[1:-1], 2) if not (c.pool or c.lrn)]
    dropped = []
    for exp in depth:
        assert exp.paper_arm == plan.baseline and exp.metric == "error", exp.name
        cfg = load_config(exp.other_arm.recipe, list(exp.other_arm.overrides))
        k = cfg.model.overrides["drop_conv"]
        assert f"conv{k}" in exp.claim and len(get_spec(cfg.model.name, **cfg.model.overrides).convs) == 4
        dropped.append(k)
    assert sorted(dropped) == middle == [3, 4], (budget, dropped, middle)
