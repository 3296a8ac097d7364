"""End-to-end training: learning, bitwise resume, checkpoint safety, non-finite losses."""

import math

import pytest
import torch

from alexnet.artifacts.checkpoint import load_checkpoint, load_weights
from alexnet.errors import NonFiniteLossError
from alexnet.files import MB
from alexnet.training.fit import fit
from tests.conftest import tiny_config


def _assert_same_state(a: dict, b: dict) -> None:
    assert a["epoch"] == b["epoch"] and a["step"] == b["step"]
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key]["momentum_buffer"], sb[key]["momentum_buffer"]), key
    assert a["schedule"] == b["schedule"]
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])


def test_short_run_learns_and_writes_the_run_directory(tmp_path):
    result = fit(tiny_config(tmp_path / "run", "train.epochs=3"))
    losses = [row["train_loss"] for row in result.history]
    assert losses[-1] < losses[0]
    assert result.history[-1]["val_acc1"] > 50  # 10 classes: chance is 10%
    for name in ("config.json", "metrics.csv", "last.pt", "best.pt", "best.safetensors"):
        assert (tmp_path / "run" / name).is_file(), name
    header = (tmp_path / "run" / "metrics.csv").read_text().splitlines()[0]
    assert (
        header
        == "epoch,lr,train_loss,train_acc1,val_loss,val_acc1,val_acc5,img_s,seconds,test_loss,test_acc1,test_acc5"
    )
    _, meta = load_weights(tmp_path / "run" / "best.safetensors")
    assert meta["model"]["variant"] == "alexnet_small" and len(meta["classes"]) == 10
    assert meta["data"]["input_size"] == 32 and len(meta["data"]["mean"]) == 3


def test_resume_is_bitwise_with_augmentation(tmp_path):
    straight = fit(tiny_config(tmp_path / "a"))
    fit(tiny_config(tmp_path / "b", "train.epochs=1"))
    resumed = fit(tiny_config(tmp_path / "b", 'train.resume="auto"'))
    _assert_same_state(load_checkpoint(tmp_path / "a" / "last.pt"), load_checkpoint(tmp_path / "b" / "last.pt"))
    assert straight.history == [
        {**r, "seconds": a["seconds"], "img_s": a["img_s"], "elapsed": a["elapsed"]}
        for r, a in zip(resumed.history, straight.history)
    ]


def test_resume_mid_epoch_is_bitwise(tmp_path, monkeypatch):
    fit(tiny_config(tmp_path / "a", "train.epochs=1"))
    import alexnet.training.checkpointer as fit_module

    real_save = fit_module.save_checkpoint

    def save_then_die(state, path):  # the process is killed right after the mid-epoch checkpoint at batch 20
        real_save(state, path)
        if state["step"] == 20:
            raise KeyboardInterrupt

    monkeypatch.setattr(fit_module, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        fit(tiny_config(tmp_path / "b", "train.epochs=1", "train.checkpoint_every=10"))
    monkeypatch.setattr(fit_module, "save_checkpoint", real_save)
    assert load_checkpoint(tmp_path / "b" / "last.pt")["step"] == 20
    fit(tiny_config(tmp_path / "b", "train.epochs=1", 'train.resume="auto"'))
    _assert_same_state(load_checkpoint(tmp_path / "a" / "last.pt"), load_checkpoint(tmp_path / "b" / "last.pt"))


def test_resume_with_workers_on_an_image_folder_is_bitwise(tmp_path, image_folder):
    common = [
        'data.dataset="folder"',
        f'data.data_dir="{image_folder}"',
        "data.workers=2",
        "data.batch_size=4",
        "data.eval_batch_size=8",
        "data.flip=true",
        "data.in_memory_gb=0",
    ]  # streamed by workers
    fit(tiny_config(tmp_path / "a", *common))
    fit(tiny_config(tmp_path / "b", *common, "train.epochs=1"))
    fit(tiny_config(tmp_path / "b", *common, 'train.resume="auto"'))
    _assert_same_state(load_checkpoint(tmp_path / "a" / "last.pt"), load_checkpoint(tmp_path / "b" / "last.pt"))


def test_a_folder_held_in_memory_trains_exactly_as_streamed(tmp_path, image_folder):
    common = [
        'data.dataset="folder"',
        f'data.data_dir="{image_folder}"',
        "data.workers=2",
        "data.batch_size=4",
        "data.eval_batch_size=8",
        "train.epochs=1",
    ]
    streamed = fit(tiny_config(tmp_path / "a", *common, "data.in_memory_gb=0"))
    held = fit(tiny_config(tmp_path / "b", *common))
    assert streamed.history[0]["val_acc1"] == held.history[0]["val_acc1"]
    _assert_same_state(load_checkpoint(tmp_path / "a" / "last.pt"), load_checkpoint(tmp_path / "b" / "last.pt"))


def test_interrupted_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    fit(tiny_config(tmp_path / "run", "train.epochs=1"))
    before = (tmp_path / "run" / "last.pt").read_bytes()
    real_save = torch.save

    def dying_save(obj, f, *args, **kwargs):
        f.write(b"partial")  # half a file reaches the temporary
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(OSError, match="No space"):
        fit(tiny_config(tmp_path / "run", "train.epochs=2", 'train.resume="auto"'))
    monkeypatch.setattr(torch, "save", real_save)
    assert (tmp_path / "run" / "last.pt").read_bytes() == before
    assert load_checkpoint(tmp_path / "run" / "last.pt")["epoch"] == 1
    assert not list((tmp_path / "run").glob(".*.tmp"))


def test_a_disk_without_room_for_the_next_save_is_warned_of_once_before_it(tmp_path, monkeypatch, caplog):
    """A disk of a given capacity (free = capacity − the run's files): with room, no warning; with room for the first
    epoch's files but not one more checkpoint, one warning after epoch 1 (not again after epoch 2); with less than
    the first epoch writes, one before training, naming what it will write."""
    import alexnet.training.checkpointer as checkpointer

    capacity = {}

    def used(out):
        return sum(p.stat().st_size for p in out.rglob("*") if p.is_file())

    def disk(out):
        def free(directory):
            return capacity[out] - used(out)

        return free

    def warnings():
        return [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "MB free" in r.getMessage()]

    roomy = tmp_path / "roomy"
    capacity[roomy] = 1 << 40
    monkeypatch.setattr(checkpointer, "free_bytes", disk(roomy))
    with caplog.at_level("WARNING"):
        fit(tiny_config(roomy, "train.epochs=1"))
    assert warnings() == []
    first_epoch = used(roomy)
    checkpoint = (roomy / "last.pt").stat().st_size

    tight = tmp_path / "tight"
    capacity[tight] = first_epoch + checkpoint // 2
    monkeypatch.setattr(checkpointer, "free_bytes", disk(tight))
    with caplog.at_level("WARNING"):
        fit(tiny_config(tight, "train.epochs=3"))  # the real disk has room: the saves themselves succeed
    assert (
        len(warnings()) == 1
        and f"less than the run will write (one more checkpoint: {checkpoint / MB:.0f} MB)" in (warnings()[0])
    )
    caplog.clear()

    small = tmp_path / "small"
    capacity[small] = first_epoch // 2
    monkeypatch.setattr(checkpointer, "free_bytes", disk(small))
    with caplog.at_level("WARNING"):
        fit(tiny_config(small, "train.epochs=1"))
    assert len(warnings()) == 1 and "the first epoch's last.pt, best.pt and best.safetensors" in warnings()[0]
    caplog.clear()

    # Resuming, the files are there: each save replaces one, so one checkpoint's room is what it needs.
    monkeypatch.setattr(checkpointer, "free_bytes", disk(roomy))
    for room, warned in ((2 * checkpoint, 0), (checkpoint // 2, 1)):
        capacity[roomy] = used(roomy) + room
        with caplog.at_level("WARNING"):
            fit(tiny_config(roomy, f"train.epochs={2 + warned}", 'train.resume="auto"'))
        assert len(warnings()) == warned, (room, warnings())
        caplog.clear()


def test_non_finite_loss_stops_without_overwriting_the_checkpoint(tmp_path):
    fit(tiny_config(tmp_path / "run", "train.epochs=1"))
    before = (tmp_path / "run" / "last.pt").read_bytes()
    with pytest.raises(NonFiniteLossError, match="loss became"):
        fit(
            tiny_config(
                tmp_path / "run", "train.epochs=2", 'train.resume="auto"', "optim.lr=1e30", "train.allow_changes=true"
            )
        )
    assert (tmp_path / "run" / "last.pt").read_bytes() == before
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_resume_refuses_another_model(tmp_path):
    from alexnet.errors import IncompatibleCheckpointError

    fit(tiny_config(tmp_path / "run", "train.epochs=1"))
    with pytest.raises(IncompatibleCheckpointError, match="overrides"):
        fit(tiny_config(tmp_path / "run", 'train.resume="auto"', "model.overrides.width=0.5"))


@pytest.mark.parametrize(("dataset", "lr"), [("fashion-mnist", 0.05), ("mnist", 0.01)])
def test_real_data_excerpts_learn(tmp_path, fashion_dir, dataset, lr):
    # tests/fixtures holds both excerpts (fashion-mnist/ and mnist/, IDX files as torchvision's downloads are)
    cfg = tiny_config(
        tmp_path / "run",
        f'data.dataset="{dataset}"',
        f'data.data_dir="{fashion_dir}"',
        "data.download=false",
        "model.overrides.input_size=28",
        f"optim.lr={lr}",
        "data.pad=0",
        "train.epochs=3",
    )
    result = fit(cfg)
    # Chance is 10%; 3 epochs on the 2,000-image excerpts reach 45-63% (Fashion-MNIST) and 72-81% (MNIST, seeds
    # 0-2; at Fashion's lr 0.05 11-26%) here: a margin no run-to-run noise crosses.
    assert result.history[-1]["val_acc1"] > 30
    assert result.history[-1]["train_loss"] < math.log(10) - 0.5


def test_auto_resume_falls_back_when_last_is_corrupt(tmp_path, caplog):
    from alexnet.errors import CorruptCheckpointError

    fit(tiny_config(tmp_path / "run", "train.epochs=1"))
    last = tmp_path / "run" / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])  # truncated, as by a full disk outside our atomic writes
    result = fit(tiny_config(tmp_path / "run", "train.epochs=2", 'train.resume="auto"'))
    assert "trying the previous checkpoint" in caplog.text
    assert [row["epoch"] for row in result.history] == [1, 2]  # continued from best.pt (epoch 1), not from scratch
    for name in ("last.pt", "best.pt"):
        (tmp_path / "run" / name).write_bytes(b"garbage")
    with pytest.raises(CorruptCheckpointError, match="no checkpoint"):
        fit(tiny_config(tmp_path / "run", "train.epochs=3", 'train.resume="auto"'))
    with pytest.raises(CorruptCheckpointError):
        fit(tiny_config(tmp_path / "other", f'train.resume="{last}"'))


@pytest.mark.parametrize("dataset", ["fake", "folder"])
def test_a_mean_image_run_evaluates_as_it_trained(tmp_path, image_folder, dataset):
    from alexnet.inference.evaluate import evaluate_checkpoint

    data = [f'data.dataset="{dataset}"', f'data.data_dir="{image_folder}"', "data.batch_size=4", "data.workers=0"]
    result = fit(tiny_config(tmp_path / "run", *data, "data.mean_image=true", "train.epochs=1"))
    for name in ("last.pt", "best.safetensors"):
        got = evaluate_checkpoint(tmp_path / "run" / name, data_dir=str(image_folder), precision="fp32", progress=False)
        assert got.acc1 == pytest.approx(result.final.acc1) and got.loss == pytest.approx(result.final.loss)


def test_val_every_skips_validation_but_not_the_last_epoch_and_trains_the_same(tmp_path, monkeypatch):
    import alexnet.training.fit as fit_module

    every = fit(tiny_config(tmp_path / "a", "train.epochs=3"))
    calls = []
    real = fit_module.evaluate
    monkeypatch.setattr(fit_module, "evaluate", lambda *a, **k: calls.append(1) or real(*a, **k))
    sparse = fit(tiny_config(tmp_path / "b", "train.epochs=3", "train.val_every=2"))
    assert len(calls) == 2  # epochs 2 and 3 (the last), not 1
    assert math.isnan(sparse.history[0]["val_acc1"]) and "nan" in (tmp_path / "b" / "metrics.csv").read_text()
    assert sparse.history[-1]["val_acc1"] == every.history[-1]["val_acc1"]
    _assert_same_state(load_checkpoint(tmp_path / "a" / "last.pt"), load_checkpoint(tmp_path / "b" / "last.pt"))
    # A run stopped early by its training-accuracy target is validated at the epoch it stops.
    calls.clear()
    stopped = fit(tiny_config(tmp_path / "c", "train.epochs=5", "train.val_every=4", "train.stop_at_train_acc1=0"))
    assert len(stopped.history) == 1 and len(calls) == 1 and not math.isnan(stopped.history[0]["val_acc1"])


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_fit_prepares_the_first_steps_kernels_side_by_side(tmp_path, monkeypatch, precision):
    # alexnet_small (batch norm) on the CPU: ReLU → max-pool's kernel, batch norm → ReLU's, and in bf16 the copies'.
    from alexnet import native
    from alexnet.models import fused_bn, fused_pool
    from alexnet.training import bf16_copies

    prepared = []
    monkeypatch.setattr(native, "prepare", lambda kernels: prepared.append(list(kernels)))
    limits = ("train.epochs=1", "train.limit_train_batches=1", "train.limit_val_batches=1")
    fit(tiny_config(tmp_path / "run", f'train.precision="{precision}"', *limits))
    copies = [bf16_copies.kernel] if precision == "bf16" else []
    assert prepared == [[fused_pool.kernel, fused_bn.kernel, *copies]]


def test_evaluating_a_run_prepares_its_inference_kernels_side_by_side(tmp_path, monkeypatch):
    from alexnet import native
    from alexnet.inference.evaluate import evaluate_checkpoint
    from alexnet.models import fused_lrn, fused_pool

    limits = ("train.epochs=1", "train.limit_train_batches=1", "train.limit_val_batches=1")
    fit(tiny_config(tmp_path / "run", 'model.overrides.norm="lrn"', *limits))
    prepared = []
    monkeypatch.setattr(native, "prepare", lambda kernels: prepared.append(list(kernels)))
    evaluate_checkpoint(tmp_path / "run" / "last.pt", precision="fp32", limit_batches=1, progress=False)
    assert prepared == [[fused_pool.kernel, fused_lrn.kernel]]  # no batch norm kernel: it is for training


def test_a_training_split_smaller_than_one_batch_is_refused_not_trained_on(tmp_path):
    """The last incomplete batch is dropped: with fewer images than one batch an epoch had no step, "trained" and
    reported chance with exit 0. Now one line before anything is written."""
    from alexnet.errors import ConfigError

    with pytest.raises(ConfigError, match=r"the training split \(\d+ images\) is smaller than one batch of 100000"):
        fit(tiny_config(tmp_path / "run", "data.batch_size=100000"))
    assert not (tmp_path / "run").exists()
