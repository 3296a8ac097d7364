"""Two processes under torchrun on the CPU (gloo): sharding, exact evaluation, resume (reliability T20-T22)."""

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from alexnet.artifacts.checkpoint import load_checkpoint
from alexnet.config import load_config
from alexnet.data.batch import epoch_order
from alexnet.errors import ConfigError, IncompatibleCheckpointError
from alexnet.inference.evaluate import evaluate_checkpoint
from alexnet.training import distributed
from alexnet.training.distributed import DistInfo
from alexnet.training.state import _check_processes
from tests.helpers import child_signals, train_command

TORCHRUN = [
    sys.executable,
    "-m",
    "torch.distributed.run",
    "--standalone",
    "--nproc_per_node=2",
    *train_command("fashion-mnist", "--set", "model.overrides.input_size=32", "--set", "data.pad=2", "--lr", "0.02"),
]


@pytest.fixture
def environ(monkeypatch):
    """Set torchrun's variables as given, the others unset."""

    def put(**env: str) -> None:
        for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
            monkeypatch.delenv(name, raising=False)
        for name, value in env.items():
            monkeypatch.setenv(name, value)

    return put


@pytest.mark.parametrize(
    "env, info",
    [
        ({}, DistInfo()),
        ({"WORLD_SIZE": "1"}, DistInfo()),
        ({"WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0"}, DistInfo()),  # torchrun with one process
        ({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"}, DistInfo(3, 4, 1)),
        ({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}, DistInfo(3, 4, 1, 2)),
        ({"WORLD_SIZE": "2", "RANK": "1"}, DistInfo(1, 2, 0)),
    ],
)
def test_the_place_among_processes_comes_from_torchruns_variables(environ, env, info):
    environ(**env)
    assert distributed.from_environment() == info


@pytest.mark.parametrize(
    "env, message",
    [
        ({"WORLD_SIZE": "2"}, "WORLD_SIZE=2 asks for 2 processes but RANK is not set: start them with torchrun"),
        ({"WORLD_SIZE": "abc"}, "WORLD_SIZE='abc': expected a whole number ≥ 1"),
        ({"WORLD_SIZE": "0"}, "WORLD_SIZE='0': expected a whole number ≥ 1"),
        ({"WORLD_SIZE": "2", "RANK": "2"}, "RANK='2': expected a whole number ≥ 0 below WORLD_SIZE (2)"),
        ({"WORLD_SIZE": "2", "RANK": "-1"}, "RANK='-1'"),
        ({"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "one"}, "LOCAL_RANK='one'"),
        ({"WORLD_SIZE": "2", "RANK": "0", "LOCAL_WORLD_SIZE": "0"}, "LOCAL_WORLD_SIZE='0'"),
    ],
)
def test_a_bad_torchrun_environment_is_named(environ, env, message):
    environ(**env)
    with pytest.raises(ConfigError, match="unset it|unset WORLD_SIZE") as caught:
        distributed.from_environment()
    assert message in str(caught.value)


def test_more_processes_than_gpus_is_named(environ, monkeypatch):
    """`torchrun --nproc-per-node=2` on a machine with one GPU: the second rank asked for cuda:1, and torch said
    "CUDA error: invalid device ordinal"."""
    environ(WORLD_SIZE="2", RANK="1", LOCAL_RANK="1")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", lambda index: pytest.fail(f"cuda:{index} was set"))
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda *a, **k: pytest.fail("the group was joined"))
    with pytest.raises(ConfigError, match=r"LOCAL_RANK=1 asks for cuda:1 and this machine has 1 CUDA device\(s\)"):
        distributed.setup(torch.device("cuda"))


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_rank_waiting_for_its_peers_stops_on_a_signal(tmp_path, signum):
    """A rank started without its peers (by hand, or whose peers never came) waits for them inside a C++ call, where
    Python's handlers cannot run: Ctrl-C and SIGTERM did nothing until the store's 30-minute timeout. They now end
    it at once, before anything is written."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, *TORCHRUN[5:], "--out", str(out)],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=child_signals(),
    )
    try:
        deadline = time.monotonic() + 120
        while True:  # waiting: rank 0 serves the store the others join at MASTER_PORT
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() else ""
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.2)
        time.sleep(0.5)
        proc.send_signal(signum)
        assert proc.wait(timeout=10) in (-signum, 128 + signum)
        assert not out.exists()
    finally:
        proc.kill()
        proc.wait()


def test_epoch_order_shards():
    train = [epoch_order(103, 5, True, 0, r, 4, equal=True) for r in range(4)]
    assert all(len(t) == 25 for t in train)
    assert len(set(torch.cat(train).tolist())) == 100  # disjoint
    val = [epoch_order(103, 0, False, 0, r, 4) for r in range(4)]
    assert sorted(torch.cat(val).tolist()) == list(range(103))  # each image exactly once, no padding
    assert not torch.equal(epoch_order(50, 0, True, 0), epoch_order(50, 1, True, 0))  # reshuffled each epoch


def _run(*args):
    result = subprocess.run([*TORCHRUN, *args], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp") / "run"
    _run("--epochs", "2", "--out", str(out))
    return out


def test_two_processes_train_and_evaluate_exactly(two_process_run):
    with open(two_process_run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["1", "2"]  # one writer
    assert float(rows[-1]["val_acc1"]) > 50
    # The same weights evaluated in one process: the same accuracy, so no image was counted twice or missed (the
    # recipe holds out 10% of the training images for validation; the test split is evaluated after the last epoch).
    single = evaluate_checkpoint(two_process_run / "last.pt", precision="fp32", progress=False)
    assert single.images == 256
    assert single.acc1 == pytest.approx(float(rows[-1]["test_acc1"]), abs=1e-3)
    assert single.loss == pytest.approx(float(rows[-1]["test_loss"]), abs=1e-4)
    held = evaluate_checkpoint(two_process_run / "last.pt", precision="fp32", progress=False, split="val")
    assert held.images == 102 and held.acc1 == pytest.approx(float(rows[-1]["val_acc1"]), abs=1e-3)
    state = load_checkpoint(two_process_run / "last.pt")
    assert len(state["rng_ranks"]) == 2 and not torch.equal(
        state["rng_ranks"][0]["torch"], state["rng_ranks"][1]["torch"]
    )


CHAOS = """
import os, signal, sys
import alexnet.training.fit as fit_module

real = fit_module.train_one_epoch

def train_one_epoch(*args, **kwargs):
    epoch = args[6]
    if os.environ["RANK"] == "1" and epoch == 1 and os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0":
        if os.environ["CHAOS"] == "kill":
            os.kill(os.getpid(), signal.SIGKILL)  # a lost machine: no Python error, no cleanup
        raise RuntimeError("rank 1 fails at the start of epoch 2")
    return real(*args, **kwargs)

fit_module.train_one_epoch = train_one_epoch
from alexnet.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _chaos_run(tmp_path, chaos: str, restarts: int, out):
    script = tmp_path / "chaos.py"
    script.write_text(CHAOS)
    launcher = [*TORCHRUN[:5], f"--max-restarts={restarts}", str(script), *TORCHRUN[7:]]
    # The agent's rendezvous store is shared with the workers by default, and a restarted worker can then read the
    # previous attempt's addresses (gloo: "connectFullMesh failed ... Connection refused"; pytorch/pytorch#135712).
    env = {**os.environ, "CHAOS": chaos, "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}
    args = ["--epochs", "2", "--out", str(out), "--resume", "auto"]
    result = subprocess.run([*launcher, *args], capture_output=True, text=True, timeout=300, env=env)
    orphans = subprocess.run(["pgrep", "-f", str(out)], capture_output=True, text=True).stdout.split()
    assert not orphans, f"processes left behind: {orphans}"
    return result


def test_another_number_of_processes_resumes_only_when_allowed(two_process_run, tmp_path):
    """A run of 2 processes resumed in 1 went on silently with half the global batch and rank 0's random state; one
    of 1 resumed by 2 said "the checkpoint holds RNG states for 1 processes, not 2". The number is part of the run
    (each process reads every N-th image with its own random state): refused unless --allow-changes, then at an
    epoch's end only."""
    import shutil

    out = tmp_path / "run"
    shutil.copytree(two_process_run, out)  # the module's run stays as it is
    single = [sys.executable, *TORCHRUN[5:], "--epochs", "3", "--out", str(out), "--resume", "auto"]
    refused = subprocess.run(single, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert "was trained by 2 processes; this run has 1" in refused.stderr and "--allow-changes" in refused.stderr
    assert load_checkpoint(out / "last.pt")["epoch"] == 2  # nothing trained
    done = subprocess.run([*single, "--allow-changes"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    state = load_checkpoint(out / "last.pt")
    assert state["epoch"] == 3 and len(state["rng_ranks"]) == 1
    _run("--epochs", "4", "--out", str(out), "--resume", "auto", "--allow-changes")  # and from 1 process to 2
    state = load_checkpoint(out / "last.pt")
    assert state["epoch"] == 4 and len(state["rng_ranks"]) == 2
    state["step"] = 3  # inside an epoch: its images were split among 2
    with pytest.raises(IncompatibleCheckpointError, match="stopped inside an epoch whose images are split among 2"):
        _check_processes(state, load_config("fashion-mnist", ["train.allow_changes=true"]), "last.pt", 1)


def test_elastic_restart_after_a_lost_rank_continues_bitwise(two_process_run, tmp_path):
    """T20: rank 1 is SIGKILLed in epoch 2; torchrun restarts both ranks, which resume from epoch 1's checkpoint
    and finish with the weights of the uninterrupted run (constant learning rate, so resume is exact)."""
    out = tmp_path / "elastic"
    result = _chaos_run(tmp_path, "kill", 2, out)  # one restart needed; a second spare for the launcher
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resumed from" in result.stderr
    a, b = load_checkpoint(two_process_run / "last.pt"), load_checkpoint(out / "last.pt")
    assert b["epoch"] == 2
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key


def test_one_failing_rank_stops_every_rank(tmp_path):
    """T21: rank 1 raises; the job exits non-zero soon, with no process left waiting on the dead rank."""
    out = tmp_path / "diverged"
    start = time.monotonic()
    result = _chaos_run(tmp_path, "raise", 0, out)
    assert result.returncode != 0 and "rank 1 fails" in result.stderr
    assert time.monotonic() - start < 120


CRAMPED = """
import os, sys
import alexnet.memory as memory
import alexnet.training.floor as floor_module

real = floor_module.training_floor
room = []

def floor(cfg, *args, **kwargs):  # the memory left: half as much again as one process's floor
    per_image, weights, held = real(cfg, *args, **kwargs)
    room.append((cfg.data.batch_size * per_image + weights) * 3 // 2)
    return per_image, weights, held

floor_module.training_floor = floor
# Rank 0 reads ten times as much (as a machine of its own would): it has room, and refuses with rank 1.
memory.available = lambda: memory.Available(room[-1] * (10 if os.environ["RANK"] == "0" else 1), "available here")
from alexnet.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_the_processes_of_one_machine_share_its_memory(tmp_path):
    """Each rank set its batch against the memory left as if it were alone: two ranks on one machine whose batches fit
    one at a time, and not together, both started and were ended by the out-of-memory killer. Every rank now counts
    the machine's ranks (LOCAL_WORLD_SIZE) against the memory it reads once all have loaded their data, and all refuse,
    each in one line, when one lacks room, before any builds its model."""
    script = tmp_path / "cramped.py"
    script.write_text(CRAMPED)
    out = tmp_path / "run"
    launcher = [*TORCHRUN[:5], str(script), *TORCHRUN[7:]]
    result = subprocess.run([*launcher, "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    ours = [line for line in result.stderr.splitlines() if line.startswith("alexnet train: error: training:")]
    assert len(ours) == 2, result.stderr[-3000:]  # each rank, one line
    assert all(line.endswith("use a smaller batch size or model (or fewer processes a machine)") for line in ours)
    own = [line for line in ours if "2 processes on this machine, each with a batch of 32, need at least" in line]
    assert len(own) == 1 and " is available here: " in own[0]  # rank 1's, which has too little
    assert sum("another process of this run has too little memory for its batch" in line for line in ours) == 1
    assert not any(out.glob("*.pt")), list(out.iterdir())


def test_uneven_shards_neither_hang_nor_double_count(tmp_path):
    """T22 end to end: 23 training images (11 + 11 used, equal step counts) and 17 validation images over two
    ranks in batches of 5 (9 + 8 images: 2 and 2 batches of different sizes); every image counted once."""
    from tests.conftest import make_folder

    root = make_folder(tmp_path / "imgs", classes=("a", "b"), per_class=12, splits=("train",))
    (root / "train" / "b" / "0.png").unlink()  # 23 training images
    make_folder(tmp_path / "imgs", classes=("a", "b"), per_class=9, splits=("val",))
    (root / "val" / "a" / "0.png").unlink()  # 17 validation images
    out = tmp_path / "run"
    _run(
        "--dataset",
        "folder",
        "--data-dir",
        str(root),
        "--epochs",
        "1",
        "-b",
        "4",
        "--set",
        "data.eval_batch_size=5",
        "--set",
        "model.overrides.input_size=20",
        "--set",
        "data.pad=0",
        "--set",
        "data.in_memory_gb=0",
        "-j",
        "0",
        "--out",
        str(out),
        "--set",
        "data.val_split=0",
    )
    with open(out / "metrics.csv") as f:
        logged = list(csv.DictReader(f))[-1]
    single = evaluate_checkpoint(out / "last.pt", data_dir=str(root), precision="fp32", progress=False)
    assert single.images == 17
    assert single.acc1 == pytest.approx(float(logged["val_acc1"]), abs=1e-3)
    assert single.loss == pytest.approx(float(logged["val_loss"]), abs=1e-4)


def test_two_nodes_on_loopback_equal_one_node(two_process_run, tmp_path):
    """Two torchrun invocations with --nnodes 2 (one process each) on 127.0.0.1: the multi-node path, with a
    static rendezvous, trains exactly what one node with two processes trains."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "two-nodes"
    node = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes=2",
        "--nproc_per_node=1",
        "--master_addr=127.0.0.1",
        f"--master_port={port}",
    ]
    # Which interface gloo binds (the README's multi-node advice), and the thread count torchrun gives a 2-process
    # node (with one process per node it sets none): kernels may sum in another order with more threads.
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [*node, f"--node_rank={rank}", *TORCHRUN[5:], "--epochs", "2", "--out", str(out)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for rank in (0, 1)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
    a, b = load_checkpoint(two_process_run / "last.pt"), load_checkpoint(out / "last.pt")
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key


SYNC_BN = textwrap.dedent("""
    import json, torch, torch.distributed as dist
    from torch import nn
    import alexnet
    from alexnet.training.distributed import convert_sync_batchnorm
    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    rank = dist.get_rank()
    torch.manual_seed(0)
    # fc_norm: BatchNorm1d in the classifier too, under the convs' BatchNorm2d
    whole = alexnet.create_model("alexnet_small", num_classes=10, width=0.25, dropout=0.0, fc_norm=True)
    ddp = nn.parallel.DistributedDataParallel(convert_sync_batchnorm(alexnet.create_model(
        "alexnet_small", num_classes=10, width=0.25, dropout=0.0, fc_norm=True)))
    ddp.module.load_state_dict(whole.state_dict())
    x = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 10, (16,), generator=torch.Generator().manual_seed(2))
    reference = whole(x)  # one forward: the running statistics move once, as the DDP model's do
    nn.functional.cross_entropy(reference, y).backward()  # one process, the global batch of 16
    mine = slice(8 * rank, 8 * rank + 8)
    logits = ddp(x[mine])
    nn.functional.cross_entropy(logits, y[mine]).backward()  # two processes, 8 each, DDP averaging
    grads = {k: p.grad for k, p in ddp.module.named_parameters()}
    out = {"logits": (logits - reference[mine]).abs().max().item(),
           "grad": max((grads[k] - p.grad).abs().max().item() for k, p in whole.named_parameters()),
           "scale": max(p.grad.abs().max().item() for p in whole.parameters()),
           "running": max((a - b).abs().max().item() for (n, a), b in zip(ddp.module.state_dict().items(),
                          whole.state_dict().values()) if "running" in n)}
    if rank == 0:
        print("RESULT " + json.dumps(out))
    dist.barrier()  # both ranks done before either tears gloo down (an early exit can abort the other)
    dist.destroy_process_group()
""")


def test_sync_batchnorm_equals_one_process_on_the_global_batch(tmp_path):
    script = tmp_path / "sync_bn.py"
    script.write_text(SYNC_BN)
    done = subprocess.run([*TORCHRUN[:5], str(script)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    r = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))[7:])
    assert r["logits"] < 1e-4 and r["grad"] <= 1e-5 * r["scale"] and r["running"] < 1e-5
