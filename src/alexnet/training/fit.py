"""`fit(config)`: wire data, model, optimizer and engine into a resumable run directory.

A run directory holds ``config.json`` (the resolved config), ``metrics.csv`` (one row per epoch), ``last.pt``
and ``best.pt`` (full training state; ``epoch-N.pt`` too with ``train.keep_every_epoch``) and ``best.safetensors``
(release weights with their metadata).
Everything random derives from the seed, the epoch and the step, and the torch RNG state (dropout) is saved, so
training two epochs equals training one, stopping, and resuming the second: bitwise on the CPU.
"""

from __future__ import annotations

import contextlib
import csv
import gc
import io
import json
import logging
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import native
from ..artifacts.checkpoint import digest_path, load_checkpoint, remove_stale_temporaries, save_weights
from ..artifacts.trained import ModelMeta
from ..config import Config
from ..data.config import FOLDER_DATASETS
from ..data.folder import find_splits, reporting_worker_crashes
from ..data.pipeline import ChannelsError, Data, build_data
from ..data.sources import data_root
from ..device import pick_device, pick_precision, tune_cpu_allocator
from ..errors import AlexNetError, ConfigError, IncompatibleCheckpointError, NonFiniteOutputError, WriteError
from ..evaluation import Evaluation, StepSettings, evaluate
from ..files import RECORD_BYTES, RUN_RECORDS, RUN_REPORT, RUN_RESULTS, atomic_write, check_target, read_json_input
from ..models import create_model, fused_kernels, get_spec
from . import bf16_copies, distributed
from .bf16_copies import Bf16Copies, applies
from .callbacks import Callback, Callbacks, Control, ProgressLog, StopAtTrainAccuracy, TensorBoardLogger
from .checkpointer import Checkpointer
from .ema import WeightEma
from .engine import train_one_epoch
from .finetune import adopt_pretrained, freeze, transfer, whiten_conv1
from .floor import check_training_memory
from .optim import PaperSGD, Schedule, build_optimizer
from .run import Run, RunResult
from .rundir import claim
from .state import EpochTotals, check_resume, latest_valid, restore, seed_everything
from .strategy import Strategy

log = logging.getLogger(__name__)
# An epoch trained without validation (train.val_every > 1): its row's validation figures are NaN.
CSV_FIELDS = [
    "epoch",
    "lr",
    "train_loss",
    "train_acc1",
    "val_loss",
    "val_acc1",
    "val_acc5",
    "img_s",
    "seconds",
    "test_loss",
    "test_acc1",
    "test_acc5",
]
EMA_FIELDS = ["ema_val_loss", "ema_val_acc1", "ema_val_acc5"]  # with train.ema_decay only
# With data.val_split, the row of the last epoch also holds the test split's figures (the other rows' test columns
# read nan in metrics.csv).
TEST_KEYS = ("loss", "acc1", "acc5")
HELD_OUT = "held_out.json"  # the run's record of the images data.val_split holds out of the training split


def default_out(cfg: Config) -> Path:
    return Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{cfg.model.name}-{cfg.data.dataset}"


def weights_meta(model: nn.Module, data: Data, cfg: Config, metrics: dict[str, Any]) -> dict[str, Any]:
    """What travels with release weights (`alexnet.artifacts.trained.ModelMeta`): how to rebuild the model and
    preprocess its inputs, its classes, metrics and provenance."""
    provenance = {"recipe": cfg.recipe, "model": cfg.model.name, "dataset": cfg.data.dataset}
    provenance["eval_views"] = cfg.data.eval_views()  # alexnet eval scores as the run validated
    if cfg.data.dataset in FOLDER_DATASETS or cfg.data.data_dir:  # so eval finds a folder's images without --data-dir
        provenance["data_dir"] = str(data_root(cfg.data.data_dir).resolve())
    return ModelMeta.build(model.config, data.classes, data.meta, metrics, provenance).to_dict()


def _write_metrics(path: Path, history: list[dict[str, float]]) -> None:
    buf = io.StringIO()
    fields = CSV_FIELDS + (EMA_FIELDS if any("ema_val_loss" in row for row in history) else [])
    writer = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore", restval="nan")  # no test: nan
    writer.writeheader()
    writer.writerows(history)
    atomic_write(path, lambda f: f.write(buf.getvalue().encode()))


def check_writable(out: Path) -> None:
    """Fail before any training when the run directory cannot be created or written (creating nothing yet)."""
    probe = out
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        why = "is not a directory" if not probe.is_dir() else "is not writable"
        raise WriteError(f"cannot write the run directory {out}: {probe} {why}; choose another --out")


def fit(cfg: Config, callbacks: list[Callback] | None = None) -> RunResult:
    """Train ``cfg`` to completion (or resume it), validating after every epoch (every ``train.val_every``).

    Args:
        cfg: the run's configuration (`alexnet.load_config`).
        callbacks: called at the run's events after the built-in ones (the epoch log line, the training-accuracy
            stop, the loggers of ``train.loggers``); see `alexnet.training.callbacks`. Early stopping on the
            held-out figures is ``train.early_stop_patience``.

    Raises:
        ConfigError: a field of the wrong type or out of range (``cfg`` is checked as `load_config` checks it, so
            one built or changed in Python fails here, before anything is read or written).
        DataNotFoundError, IncompatibleCheckpointError, NonFiniteLossError, ValueError: with a message for the user.
    """
    cfg.validate()
    with contextlib.ExitStack() as cleanup:  # releases the run directory's lock, however training ends
        run = _setup(cfg, cleanup)
        run.callbacks = Callbacks([*_builtin_callbacks(cfg), *(callbacks or [])])
        run.ema = _weight_ema(cfg, run)
        _resume(run)
        _start(run)
        checkpointer = Checkpointer(run)
        run.callbacks.on_run_start(run)
        end = run.start_epoch if _finished_early(run) else cfg.train.epochs
        with checkpointer.catching_signals(), reporting_worker_crashes(run.data.train, run.data.val):
            for epoch in range(run.start_epoch, end):
                if _epoch(run, epoch, checkpointer):
                    break
        distributed.barrier(run.dist)
        run.callbacks.on_run_end(run, run.result)
    # A failure leaves as it came: the launcher stops the other processes. On success, DDP and the towers' modules
    # hold the process group in reference cycles: collected now, while the interpreter is whole. Left to interpreter
    # shutdown, destroying gloo's threads there aborted a worker now and then (SIGABRT, "terminate called without an
    # active exception"; pytorch/pytorch#179291 describes the mechanism). Only then: a collection costs ~0.1 s.
    result, dist_info = run.result, run.dist
    del run, checkpointer
    if dist_info.enabled:
        gc.collect()
    distributed.cleanup(dist_info)
    return result


def _builtin_callbacks(cfg: Config) -> list[Callback]:
    """What ``alexnet train`` does at each epoch, made of the same events users' callbacks get."""
    builtin: list[Callback] = [ProgressLog()]
    if cfg.train.stop_at_train_acc1 is not None:
        builtin.append(StopAtTrainAccuracy(cfg.train.stop_at_train_acc1))
    if "tensorboard" in cfg.train.loggers:
        builtin.append(TensorBoardLogger())
    return builtin


def _weight_ema(cfg: Config, run: Run) -> WeightEma | None:
    """The moving average of the weights when ``train.ema_decay`` asks for one."""
    if cfg.train.ema_decay is None:
        return None
    if run.strategy.sharded:
        raise ConfigError("train.ema_decay averages a whole model: use it with data parallelism, not towers or hybrid")
    return WeightEma(run.plain, cfg.train.ema_decay, cfg.train.ema_warmup)


def _step_hook(run: Run, save: Callable[[int], None]) -> Callable[[int], None]:
    """After each batch: average the weights after each optimizer step, then let the checkpointer save or stop."""
    accumulate = run.cfg.train.accumulate

    def hook(step: int) -> None:
        if run.ema is not None and ((step + 1) % accumulate == 0 or step + 1 == run.steps):
            run.ema.update(run.plain)
        save(step)

    return hook


def _setup(cfg: Config, cleanup: contextlib.ExitStack) -> Run:
    """The device and processes, the run directory (claimed), the data, the model, its optimizer and schedule."""
    started = time.perf_counter()
    cfg, pretrained = adopt_pretrained(cfg)  # model.weights: their network and preprocessing
    device = pick_device(cfg.train.device)
    dist_info = distributed.setup(device)
    device = distributed.local_device(device, dist_info)
    precision = pick_precision(cfg.train.precision, device)
    if device.type == "cpu" and cfg.train.tune_allocator:
        tune_cpu_allocator()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick the fastest kernels once
    seed_everything(cfg.train.seed + dist_info.rank)  # each process its own dropout masks
    if not dist_info.is_main:
        logging.getLogger("alexnet").setLevel(logging.WARNING)  # one process reports
    out = _run_dir(cfg, dist_info)
    if dist_info.is_main:  # before the data loads: one process owns the directory, and a finished run is kept
        targets = [out / name for name in (*RUN_RESULTS, *RUN_REPORT, *RUN_RECORDS)]
        for target in targets + [digest_path(t) for t in targets if t.suffix == ".pt"]:  # and checkpoints' records
            check_target(target)  # a link to nowhere, a device: said now, not when the first checkpoint is written
        cleanup.callback(claim(out, resuming=bool(cfg.train.resume)).release)
    strategy = Strategy.for_run(cfg.train.parallel, dist_info, cfg.optim.clip_grad_norm, cfg.train.compile)
    spec = get_spec(cfg.model.name, **cfg.model.overrides)
    # Towers and hybrid: every rank evaluates the whole validation set (the model spans the ranks).
    try:
        data = build_data(
            cfg.data, spec.input_size, device, cfg.train.seed, *strategy.data_shard(), not strategy.sharded
        )
    except ChannelsError as err:  # the weights' mean and std, one value a channel, met images of other channels
        if pretrained is None:
            raise
        raise IncompatibleCheckpointError(
            f"the weights {pretrained.source} take {pretrained.meta.model.in_channels}-channel images and this data "
            f"set has {err.channels}: fine-tune on a data set with the same channels"
        ) from None
    if device.type == "cpu":  # a batch that cannot fit: the out-of-memory killer would end the run without a word
        check_training_memory(cfg, spec, data, precision, strategy)
    model, plain, new = _build_model(cfg, data, device, strategy, pretrained)
    if device.type == "cpu":  # the kernels the first step asks for one by one, built side by side
        copies = [bf16_copies.kernel] if precision == "bf16" and cfg.train.bf16_copies else []
        native.prepare([*fused_kernels(plain, training=True, bf16=precision == "bf16"), *copies])
    optim_cfg = strategy.scaled_lr(cfg.optim, cfg.data.batch_size * cfg.train.accumulate)
    scales = None
    if pretrained is not None and cfg.optim.pretrained_lr_scale != 1.0:
        scales = {n: cfg.optim.pretrained_lr_scale for n, _ in plain.named_parameters() if n not in new}
    optimizer = build_optimizer(plain, optim_cfg, scales)
    model = _on_bf16_copies(cfg, model, optimizer, device, precision, dist_info.enabled)
    limit = cfg.train.limit_train_batches
    steps = len(data.train) if limit is None else min(len(data.train), limit)
    if steps == 0:  # the last incomplete batch is dropped: an epoch of nothing would "train" and report chance
        split = getattr(data.train, "split", None)
        images = f" ({len(split.labels)} images)" if split is not None else ""
        per = f" per process ({dist_info.world})" if dist_info.enabled else ""
        raise ConfigError(
            f"the training split{images} is smaller than one batch of {cfg.data.batch_size}{per}: lower --batch-size"
        )
    schedule = Schedule(optimizer, optim_cfg, cfg.train.epochs, steps)
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    if dist_info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(out)
    distributed.barrier(dist_info)
    progress = cfg.train.progress and dist_info.is_main
    settings = StepSettings(
        device,
        precision,
        strategy.aug_seed(cfg.train.seed),
        len(data.classes),
        cfg.optim.label_smoothing,
        cfg.optim.clip_grad_norm,
        cfg.train.limit_train_batches,
        progress,
        accumulate=cfg.train.accumulate,
    )
    eval_settings = StepSettings(
        device,
        precision,
        cfg.train.seed,
        len(data.classes),
        limit_batches=cfg.train.limit_val_batches,
        progress=progress,
        sync=strategy.eval_synced,
    )
    return Run(
        cfg,
        out,
        device,
        precision,
        dist_info,
        strategy,
        data,
        model,
        plain,
        optimizer,
        schedule,
        scaler,
        steps,
        settings,
        eval_settings,
        RunResult(out),
        started,
    )


def _on_bf16_copies(
    cfg: Config, model: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device, precision: str, dist: bool
) -> nn.Module:
    """``model`` run on bf16 copies of its weights, which ``optimizer`` then steps, where `bf16_copies.applies`;
    else ``model`` itself."""
    train, optim = cfg.train, cfg.optim
    if not (train.bf16_copies and isinstance(optimizer, PaperSGD)):
        return model
    if not applies(
        device,
        precision,
        accumulate=train.accumulate,
        clip=optim.clip_grad_norm,
        compile=train.compile,
        distributed=dist,
    ):
        return model
    copies = Bf16Copies(model)  # one process: model is the bare module
    optimizer.use_copies(copies.copies())
    return copies


def _resume(run: Run) -> None:
    """Continue from ``train.resume`` (a path, or ``auto``: the run's latest valid checkpoint) when there is one."""
    resume, state = run.cfg.train.resume, None
    if resume == "auto":
        resume, state = latest_valid(run.out)
    elif resume:
        state = load_checkpoint(resume)  # an explicit path that is missing or corrupt is an error, never a fresh start
    if state is not None:
        check_resume(state, run.plain, run.data.classes, run.cfg, resume, run.dist.world)
        rank = run.dist.rank if run.dist.enabled else None
        run.totals = restore(state, run.plain, run.optimizer, run.schedule, run.scaler, run.strategy, rank)
        run.start_epoch, run.start_step = state["epoch"], state["step"]
        run.result.history, run.result.best_acc1 = list(state["history"]), state["best_acc1"]
        if run.ema is not None and "ema" in state:
            run.ema.load_state_dict(state["ema"])
        elif run.ema is not None:  # a run that had no average: start it from the restored weights
            run.ema = _weight_ema(run.cfg, run)
        log.info("resumed from %s at epoch %d, batch %d", resume, run.start_epoch + 1, run.start_step)
    if run.dist.is_main:
        _record_held_out(run.out, run.data, run.cfg)  # after check_resume: a changed data.val_split is named as such


def _finished_early(run: Run) -> bool:
    """Whether the resumed run had already stopped where ``train.stop_at_train_acc1`` or
    ``train.early_stop_patience`` stops it: its last epoch's training accuracy (as recorded) reached the target, or
    its last validations ran out of patience. Resuming it trains no further, as a run that finished its epochs
    (Figure 1's sweep, continued after an interruption, must not add an epoch to a finished curve)."""
    target, history = run.cfg.train.stop_at_train_acc1, run.result.history
    reached = target is not None and bool(history) and history[-1].get("train_acc1", -math.inf) >= target
    return reached or _out_of_patience(run.cfg, history) is not None


def _out_of_patience(cfg: Config, history: list[dict[str, float]]) -> str | None:
    """Why to stop when the last ``train.early_stop_patience`` validations of ``history`` each failed to beat the
    best before them on ``train.monitor`` (a held-out figure: never the test split's), else None."""
    patience, monitor = cfg.train.early_stop_patience, cfg.train.monitor
    validated = [(s, int(r["epoch"])) for r in history if (s := _score(monitor, r)) is not None]
    if patience is None or len(validated) <= patience:
        return None
    scores = [s for s, _ in validated]
    best = scores.index(max(scores))  # the first of equals: a tie is no improvement
    if len(scores) - 1 - best < patience:
        return None
    return f"{monitor} no better than epoch {validated[best][1]}'s for {patience} validations (early_stop_patience)"


def _start(run: Run) -> None:
    """Compile if asked, record the resolved config, and say what is about to train."""
    cfg = run.cfg
    if isinstance(run.model, Bf16Copies):  # said here, after the resume's checks: a refusal stays the one line
        log.info("training on bf16 copies of the conv and fc weights, no per-step casts (train.bf16_copies=false: off)")
    if cfg.train.compile:
        run.model = torch.compile(run.model)
    if run.dist.is_main:
        atomic_write(run.out / "config.json", lambda f: f.write(json.dumps(cfg.to_dict(), indent=2).encode()))
    log.info(
        "%s on %s (recipe %s): %d train batches of %d, %d classes, device %s, precision %s, out %s",
        cfg.model.name,
        cfg.data.dataset,
        cfg.recipe or "none",
        run.steps,
        cfg.data.batch_size,
        len(run.data.classes),
        run.device,
        run.precision,
        run.out,
    )


def _epoch(run: Run, epoch: int, checkpointer: Checkpointer) -> bool:
    """Train one epoch, validate it, write its metrics row and checkpoints; True when training should stop early."""
    cfg, data, result = run.cfg, run.data, run.result
    began = time.perf_counter()
    totals, start_step = run.totals, run.start_step
    train = train_one_epoch(
        run.model,
        data.train,
        data.train_transform,
        run.optimizer,
        run.schedule,
        run.settings,
        epoch,
        start_step,
        run.scaler,
        _step_hook(run, checkpointer.step_hook(epoch, totals)),
        totals,
        data.augment,
    )
    run.start_step, run.totals = 0, EpochTotals()
    # A finite loss whose update broke the weights: stop before evaluating them.
    run.strategy.check_finite(run.plain, f"in epoch {epoch + 1}", str(run.out / "last.pt"))
    run.last_train = train
    control = Control()
    # Callbacks decide from the mean over processes, so every process stops at the same epoch.
    overall = dict(train)
    if run.dist.enabled:
        overall["acc1"] = distributed.all_reduce_sum(torch.tensor([train["acc1"]]), run.dist).item() / run.dist.world
    run.callbacks.on_train_epoch_end(run, epoch, overall, control)
    stopping = control.stop
    # Every val_every-th epoch, and always the last one trained.
    validate = (epoch + 1) % cfg.train.val_every == 0 or epoch + 1 == cfg.train.epochs or stopping
    val = Evaluation.skipped()
    views = cfg.data.eval_views()
    if validate:
        val = evaluate(run.model, data.val, data.eval_transform, run.eval_settings, **views)
        if not val.finite:  # finite weights, non-finite outputs: never the last good state
            raise NonFiniteOutputError(
                f"the model's outputs became non-finite in epoch {epoch + 1} (its weights are finite): "
                f"training diverged; {run.out / 'last.pt'} keeps the state before it; lower the learning rate"
            )
        run.schedule.end_epoch(val.err1)
        result.final = val
    row = _epoch_row(epoch, run.optimizer.param_groups[0]["lr"], train, val, began, run.started)
    ema_val = None
    if validate and run.ema is not None:  # the average, on the same images
        ema_val = evaluate(run.ema.module, data.val, data.eval_transform, run.eval_settings, **views)
        row.update(ema_val_loss=round(ema_val.loss, 5), ema_val_acc1=round(ema_val.acc1, 3))
        row.update(ema_val_acc5=round(ema_val.acc5, 3))
    if validate and not stopping and (why := _out_of_patience(cfg, [*result.history, row])):
        stopping, control.reason = True, why  # the same in every process: the validation figures are summed
    if data.test is not None and (epoch + 1 == cfg.train.epochs or stopping):
        # The test split, once: nothing selects on it (best, plateau and early stops read the held-out split).
        result.test = evaluate(run.model, data.test, data.eval_transform, run.eval_settings, **views)
        row.update({f"test_{k}": round(getattr(result.test, k), 5 if k == "loss" else 3) for k in TEST_KEYS})
    result.history.append(row)
    # The same in every process (the metrics are summed); a NaN loss never makes a model "best".
    improved = validate and val.finite and _improves(cfg.train.monitor, result.history)
    if validate and val.finite and val.acc1 > result.best_acc1:
        result.best_acc1 = val.acc1
    top = _top_epochs(cfg.train.monitor, result.history, cfg.train.keep_best) if cfg.train.keep_best > 1 else []
    if run.dist.is_main:
        _write_metrics(run.out / "metrics.csv", result.history)  # the run's own record: resume and reports read it
    run.callbacks.on_epoch_end(run, epoch, row)
    # In every process (it gathers the model, optimizer and RNG states); rank 0 writes.
    names = ["last.pt", *["best.pt"] * improved, *[f"epoch-{epoch + 1}.pt"] * cfg.train.keep_every_epoch]
    names += [f"best-epoch{epoch + 1}.pt"] * (epoch + 1 in top)
    model_state = checkpointer.save(epoch + 1, 0, run.totals, *(run.out / n for n in names))
    if top and run.dist.is_main:  # the top k by train.monitor stay; an epoch that fell out goes
        for stale in run.out.glob("best-epoch*.pt"):
            if (
                stale.stem.removeprefix("best-epoch").isdigit()
                and int(stale.stem.removeprefix("best-epoch")) not in top
            ):
                stale.unlink(missing_ok=True)
                Path(f"{stale}.sha256").unlink(missing_ok=True)
    if improved and run.dist.is_main:
        metrics = {"acc1": val.acc1, "acc5": val.acc5, "loss": val.loss, "epoch": epoch + 1}
        save_weights(model_state, run.out / "best.safetensors", weights_meta(run.plain, data, cfg, metrics))
        run.callbacks.on_checkpoint(run, run.out / "best.safetensors")
    if ema_val is not None and run.dist.is_main:
        metrics = {"acc1": ema_val.acc1, "acc5": ema_val.acc5, "loss": ema_val.loss, "epoch": epoch + 1}
        meta = weights_meta(run.plain, data, cfg, metrics)
        meta["provenance"]["ema"] = {"decay": cfg.train.ema_decay, "warmup": cfg.train.ema_warmup, "step": run.ema.step}
        save_weights(run.ema.module, run.out / "ema.safetensors", meta)
        run.callbacks.on_checkpoint(run, run.out / "ema.safetensors")
    if run.dist.is_main and epoch + 1 < cfg.train.epochs and not stopping:
        checkpointer.check_room()  # the next epoch's saves, now that this one's files are all written
    if stopping:
        log.info("%s: stopping", control.reason or "a callback asked to stop")
    return stopping


def _score(monitor: str, row: dict[str, float]) -> float | None:
    """``row``'s figure for ``monitor``, higher is better (a loss negated); None when the epoch was not validated."""
    value = row.get(monitor, math.nan)
    if not math.isfinite(value):
        return None
    return -value if monitor.endswith("loss") else value


def _improves(monitor: str, history: list[dict[str, float]]) -> bool:
    """Whether the last row beats every earlier one on ``monitor`` (val_acc1 must also beat 0, as before)."""
    *earlier, last = history
    score = _score(monitor, last)
    floor = 0.0 if monitor == "val_acc1" else -math.inf
    best = max((s for r in earlier if (s := _score(monitor, r)) is not None), default=floor)
    return score is not None and score > best


def _top_epochs(monitor: str, history: list[dict[str, float]], k: int) -> set[int]:
    """The epochs (1-based) of the ``k`` best validated rows on ``monitor``, the earlier first among equals."""
    scored = [(s, -int(r["epoch"])) for r in history if (s := _score(monitor, r)) is not None]
    return {-epoch for _, epoch in sorted(scored, reverse=True)[:k]}


def _record_held_out(out: Path, data: Data, cfg: Config) -> None:
    """Write which training images ``data.val_split`` holds out (``held_out.json``), or check a resumed run's record:
    the same images must stay held out, or selection would have seen images that trained."""
    if data.held_out is None:
        return
    record = {"val_split": cfg.data.val_split, "val_seed": cfg.data.val_seed, "indices": data.held_out}
    path = out / HELD_OUT
    if path.is_file():
        try:
            before = read_json_input(path, RECORD_BYTES, "held-out record")
        except (OSError, AlexNetError) as err:
            why = f"{err}: it records this run's held-out images"
            raise IncompatibleCheckpointError(why) from None
        if not isinstance(before, dict) or before.get("indices") != data.held_out:
            raise IncompatibleCheckpointError(
                f"{path} records other held-out images than this run would hold out (the data set changed?): "
                "resuming would validate on images that trained; start a new --out"
            )
        return
    atomic_write(path, lambda f: f.write(json.dumps(record).encode()))


def _run_dir(cfg: Config, dist_info: distributed.DistInfo) -> Path:
    """The run directory every process agrees on (a timestamped default is rank 0's), checked writable."""
    out = Path(cfg.train.out) if cfg.train.out else default_out(cfg)
    if dist_info.enabled:
        shared = [str(out)]
        torch.distributed.broadcast_object_list(shared, src=0)
        out = Path(shared[0])
    if dist_info.is_main:
        _outside_the_splits(out, cfg)
        check_writable(out)  # before the data loads and anything trains
    return out


def _outside_the_splits(out: Path, cfg: Config) -> None:
    """Refuse a run directory inside an image folder's split: in ``train/`` it is read as a class folder of its own
    (empty at first, so the run failed with "class folder ... has no images"; the next run would have trained on
    its figures)."""
    if cfg.data.dataset not in FOLDER_DATASETS:
        return
    try:
        splits = find_splits(data_root(cfg.data.data_dir))
    except AlexNetError:  # no splits there: the data's own error says so when it loads
        return
    for split in splits:
        if out.resolve().is_relative_to(split.resolve()):
            raise ConfigError(
                f"the run directory {out} is inside the data's {split}, where it would be read as a class: "
                "choose one outside it"
            )


def _build_model(
    cfg: Config, data: Data, device: torch.device, strategy: Strategy, pretrained: Any = None
) -> tuple[nn.Module, nn.Module, set[str]]:
    """(what trains, the bare module, names of parameters not pretrained): the variant for ``data``, started from
    ``pretrained`` weights if given, frozen where ``model.freeze`` says, on ``device``, wrapped as ``strategy``
    says."""
    with torch.random.fork_rng(devices=[]) if strategy.sharded else contextlib.nullcontext():
        if strategy.sharded:
            torch.manual_seed(cfg.train.seed)  # one whole model, the same on every rank, to take the shards of
        model = create_model(
            cfg.model.name, num_classes=len(data.classes), in_channels=data.in_channels, **cfg.model.overrides
        )
    new = {n for n, _ in model.named_parameters()}
    if pretrained is not None:
        new = transfer(model, pretrained, data.classes)
    if cfg.model.whiten_conv1:
        whiten_conv1(model, data)
    freeze(model, cfg.model.freeze)
    model = model.to(device, memory_format=torch.channels_last if cfg.model.channels_last else torch.contiguous_format)
    return (*strategy.wrap(model, cfg.train.sync_bn), new)


def _epoch_row(
    epoch: int, lr: float, train: dict[str, float], val: Evaluation, began: float, started: float
) -> dict[str, float]:
    """One ``metrics.csv`` row (``elapsed``: seconds since fit() began, data loading included)."""
    now = time.perf_counter()
    return {
        "epoch": epoch + 1,
        "lr": lr,
        "train_loss": round(train["loss"], 5),
        "train_acc1": round(train["acc1"], 3),
        "val_loss": round(val.loss, 5),
        "val_acc1": round(val.acc1, 3),
        "val_acc5": round(val.acc5, 3),
        "img_s": round(train["img_s"], 1),
        "seconds": round(now - began, 2),
        "elapsed": round(now - started, 2),
    }
