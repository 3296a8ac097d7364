"""The paper's towers and the 2014 hybrid on two gloo processes: equal to one process, and the plan's numbers."""

import csv
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import alexnet
from alexnet.artifacts.checkpoint import load_checkpoint
from alexnet.inference.evaluate import evaluate_checkpoint
from alexnet.training.model_parallel import parallel_plan
from tests.helpers import train_command

EQUIVALENCE = textwrap.dedent("""
    import json, torch, torch.distributed as dist
    import sys
    sys.path.insert(0, __ROOT__)
    from tests.training.parallel_equivalence import equivalence
    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    # steps: SGD steps before the weights are compared. The hybrid with batch-normed fc layers stops at one: on an
    # AVX2 EPYC its weights agreed to 5e-8 after one step and 1.4e-4 after two, a jump no rounding makes (a ReLU or
    # max-pool decision flipped by a last-bit difference and carried on); the momentum path of the hybrid is the
    # plain hybrid cases' to check, three steps each. The towers with batch norm stop at two for the same reason:
    # with the fused batch norm -> ReLU kernel (alexnet.models.fused_bn) on an Intel Xeon, logits equal, weights
    # 6e-8 after one step, 1.2e-7 after two and 7.9e-5 after three.
    cases = [("towers", "alexnet_paper", {}, 3), ("hybrid", "alexnet_paper", {}, 3), ("hybrid", "alexnet_owt", {}, 3),
             ("towers", "alexnet_paper", {"norm": "batch", "fc_norm": True}, 2),
             ("hybrid", "alexnet_owt", {"fc_norm": True}, 1)]
    out = {f"{m} {n} {o}": equivalence(m, n, batch=4, steps=k, width=0.25, **o) for m, n, o, k in cases}
    if dist.get_rank() == 0:
        print("RESULT " + json.dumps(out))
    dist.barrier()  # both ranks done before either tears gloo down (an early exit can abort the other)
    dist.destroy_process_group()
""").replace("__ROOT__", repr(str(Path(__file__).resolve().parents[2])))  # the repository, for tests.*
LAUNCH = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
# fp32 sums the split layers in another order than the whole ones: differences of a few ulps of the values' scale.
TOL = 1e-5


@pytest.mark.slow
def test_sharded_models_equal_the_single_process_model(tmp_path):
    script = tmp_path / "equivalence.py"
    script.write_text(EQUIVALENCE)
    done = subprocess.run([*LAUNCH, str(script)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))[7:])
    for case, r in results.items():
        assert r["logits"] <= TOL, case  # forward
        assert r["grad"] <= TOL * r["grad_scale"], case  # every parameter's gradient after one step
        assert r["weights"] <= TOL, case  # the weights after the case's SGD steps with momentum
    # The bytes each rank sent, counted at every exchange, are what the plan computes from the spec alone.
    plan = {r.mode: r for r in parallel_plan("alexnet_paper", 2, 8, num_classes=20, width=0.25, input_size=67)}
    assert results["towers alexnet_paper {}"]["bytes_per_step"] == plan["towers"].bytes_per_step
    conv = sum(
        p.numel() for p in alexnet.create_model("alexnet_paper", width=0.25, input_size=67).features.parameters()
    )
    activations = plan["hybrid"].bytes_per_step - conv * 4  # the rest is the conv gradients' all-reduce
    assert results["hybrid alexnet_paper {}"]["bytes_per_step"] == activations


def test_parallel_plan_matches_a_hand_count():
    """alexnet_paper at 227 px, 2 workers, global batch 128, fp32 (4 bytes), counted by hand from Figure 2."""
    plan = {r.mode: r for r in parallel_plan("alexnet_paper", 2, 128)}
    params = 60_965_224
    # Data parallel: a ring all-reduce of every gradient sends 2·(K−1)/K of it: all of it for K = 2.
    assert plan["data"].bytes_per_step == params * 4
    # Towers: per image, each rank sends its half of pool2 (128×13×13), of pool5 (128×6×6), of fc6 and fc7
    # (2048 each) and of the logits (500), forward, and as much backward.
    per_image = (128 * 13 * 13 + 128 * 6 * 6 + 2048 + 2048 + 500) * 4 * 2
    assert per_image == 246_688 and plan["towers"].bytes_per_image == per_image
    assert plan["towers"].param_bytes == params // 2 * 4
    # Hybrid: each worker's 64 images' pool5 features (9216 each), its half of fc6/fc7/fc8's units for all 128
    # images, both directions; plus a ring all-reduce of the 2,334,080 conv gradients.
    conv = 96 * 3 * 121 + 96 + 256 * 48 * 25 + 256 + 384 * 256 * 9 + 384 + 384 * 192 * 9 + 384 + 256 * 192 * 9 + 256
    assert conv == 2_334_080
    hybrid = (64 * 9216 + 128 * (2048 + 2048 + 500)) * 4 * 2 + conv * 4
    assert plan["hybrid"].bytes_per_step == hybrid == 18_761_216
    assert plan["hybrid"].param_bytes == (conv + (params - conv) // 2) * 4


TRAIN = [
    *LAUNCH,
    *train_command(
        "paper-imagenet",
        "--lr",
        "0.01",
        "--limit-train-batches",
        "4",
        "--set",
        "model.overrides.input_size=67",
        "--set",
        "data.ten_crop=false",
        "--set",
        "data.pixel_scale=1.0",
        "--set",
        'data.normalize="meanstd"',
        "--set",
        "data.eval_batch_size=64",
        batch=16,
    ),
]


def _train(*args):
    done = subprocess.run([*TRAIN, *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["towers", "hybrid"])
def test_training_evaluates_as_one_model_and_resumes_bitwise(tmp_path, mode):
    # Two launches, not three: the straight run keeps its epoch-1 state, and a second run resumes from that file.
    _train(
        "--parallel", mode, "--epochs", "2", "--out", str(tmp_path / "straight"), "--set", "train.keep_every_epoch=true"
    )
    assert sorted(p.name for p in (tmp_path / "straight").glob("epoch-*.pt")) == ["epoch-1.pt", "epoch-2.pt"]
    first = str(tmp_path / "straight" / "epoch-1.pt")
    _train("--parallel", mode, "--epochs", "2", "--out", str(tmp_path / "resumed"), "--resume", first)
    a, b = (load_checkpoint(tmp_path / run / "last.pt") for run in ("straight", "resumed"))
    assert len(a["optimizer_ranks"]) == 2  # each rank's momentum for its own shard
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    with open(tmp_path / "straight" / "metrics.csv") as f:
        last = list(csv.DictReader(f))[-1]
    # The gathered checkpoint is the ordinary whole network: one process evaluates it to the logged figures.
    single = evaluate_checkpoint(tmp_path / "straight" / "last.pt", precision="fp32", progress=False)
    assert single.images == 256
    assert single.acc1 == pytest.approx(float(last["val_acc1"]), abs=1e-3)
    assert single.loss == pytest.approx(float(last["val_loss"]), abs=1e-4)


@pytest.mark.gpu
def test_towers_on_two_gpus_with_nccl(tmp_path):
    """The same proof on two CUDA devices with NCCL (one process per GPU), where a machine has them."""
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA devices")
    script = tmp_path / "equivalence.py"
    script.write_text(
        EQUIVALENCE.replace('dist.init_process_group("gloo")', 'dist.init_process_group("nccl")').replace(
            "torch.set_num_threads(1)", "torch.cuda.set_device(dist.get_rank())"
        )
    )
    done = subprocess.run([*LAUNCH, str(script)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
