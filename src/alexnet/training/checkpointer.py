"""When and how a run's state is written: at each epoch's end (by the loop), every ``train.checkpoint_every`` steps,
and on SIGTERM or Ctrl-C, which finish the step, save, and leave with the signal's exit code."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from ..artifacts.checkpoint import save_checkpoint
from ..errors import TrainingInterrupted
from ..files import MB, free_bytes
from . import distributed
from .run import Run
from .state import EpochTotals, build_state, rng_state

log = logging.getLogger(__name__)


class Checkpointer:
    """Writes ``run``'s training state; `step_hook` is what the step loop calls after each batch."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.stop_signals: list[int] = []  # signals received while training, handled at the next step boundary
        self.warned_room = False
        self.largest = _largest(run.out / "last.pt", run.out / "best.pt")  # bytes; a resumed run's are there
        if run.dist.is_main and self.largest:
            self.check_room()
        elif run.dist.is_main:
            # What the first epoch writes: last.pt and best.pt (the weights and the optimizer's momentum, as much
            # again) and best.safetensors (the weights): five times the weights' bytes.
            weights = sum(t.numel() * t.element_size() for t in run.plain.state_dict().values())
            self.check_room(5 * weights, "the first epoch's last.pt, best.pt and best.safetensors: about ")

    def check_room(self, size: int | None = None, what: str = "one more checkpoint: ") -> None:
        """Warn, once a run, when the disk of the run's directory has fewer than ``size`` bytes free (by default the
        largest checkpoint written: each save replaces one, beside it): the save that needs them would fail an
        epoch or an hour into the run (keeping the file it would have replaced)."""
        size = self.largest if size is None else size
        free = free_bytes(self.run.out)
        if free is None or free >= size or self.warned_room:
            return
        self.warned_room = True
        log.warning(
            "the disk holding %s has %.0f MB free, less than the run will write (%s%.0f MB): saves will fail "
            "until space is made",
            self.run.out,
            free / MB,
            what,
            size / MB,
        )

    def save(self, epoch: int, step: int, totals: EpochTotals, *paths: Path) -> dict[str, torch.Tensor]:
        """Write the state at ``epoch`` (completed epochs) and ``step`` (batches into the next) to ``paths``. Every
        process calls it (it gathers states); rank 0 writes. Returns the model's state dict."""
        run = self.run
        where = f"at epoch {epoch + (step > 0)}, batch {step}"
        run.strategy.check_finite(run.plain, where, str(run.out / "last.pt"))  # never written: resume would load it
        model_state = run.strategy.model_state(run.plain)
        optimizer_states = run.strategy.optimizer_states(run.optimizer)
        rng = rng_state()
        rng_ranks = [rng] * run.dist.world
        if run.dist.enabled:  # every process's RNG, so a resumed multi-process run continues each of them
            torch.distributed.all_gather_object(rng_ranks, rng)
        if run.dist.is_main:
            state = build_state(
                model_state=model_state,
                model_config=run.plain.config,
                optimizer_states=optimizer_states,
                schedule=run.schedule,
                scaler=run.scaler,
                rng=rng,
                rng_ranks=rng_ranks,
                epoch=epoch,
                step=step,
                totals=totals,
                history=run.result.history,
                best_acc1=run.result.best_acc1,
                cfg=run.cfg,
                classes=run.data.classes,
                data_meta=run.data.meta,
                ema=run.ema.state_dict() if run.ema is not None else None,
            )
            for path in paths:
                save_checkpoint(state, path)
                if run.callbacks is not None:
                    run.callbacks.on_checkpoint(run, path)
            self.largest = max(self.largest, _largest(*paths))
        return model_state

    def step_hook(self, epoch: int, totals: EpochTotals) -> Callable[[int], None]:
        """Called after batch ``step`` of ``epoch``: saves every ``train.checkpoint_every`` steps, and on a stop
        signal saves and raises `TrainingInterrupted`."""
        run = self.run
        every, accumulate, steps = run.cfg.train.checkpoint_every, run.cfg.train.accumulate, run.steps

        def hook(step: int) -> None:
            if (step + 1) % accumulate and step + 1 < steps:
                return  # checkpoints and stops fall between optimizer steps, never inside an accumulation
            if run.dist.enabled:  # stop together: a process leaving alone would hang the others' all-reduce
                flag = distributed.all_reduce_sum(torch.tensor([len(self.stop_signals)], device=run.device), run.dist)
                if flag.item() and not self.stop_signals:
                    self.stop_signals.append(signal.SIGTERM)
            if self.stop_signals:
                self.save(epoch, step + 1, totals, run.out / "last.pt")
                signum = self.stop_signals[0]
                raise TrainingInterrupted(
                    f"stopped by {signal.Signals(signum).name} at epoch {epoch + 1}, batch {step + 1}; saved "
                    f"{run.out / 'last.pt'}",
                    signum,
                    str(run.out),
                )
            if every and (step + 1) % every == 0 and step + 1 < steps:
                self.save(epoch, step + 1, totals, run.out / "last.pt")

        return hook

    @contextlib.contextmanager
    def catching_signals(self, signums: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)) -> Iterator[None]:
        """Record ``signums`` instead of dying, while training runs (main thread only): the step finishes and a
        checkpoint is written. A second Ctrl-C interrupts at once. A signal the caller ignores stays ignored (a
        script's background job ignores SIGINT, so that Ctrl-C in the script's terminal leaves it running)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        signums = tuple(s for s in signums if signal.getsignal(s) is not signal.SIG_IGN)

        def handler(signum: int, _frame: Any) -> None:
            if signum == signal.SIGINT and self.stop_signals:
                raise KeyboardInterrupt
            self.stop_signals.append(signum)

        previous = {s: signal.signal(s, handler) for s in signums}
        try:
            yield
        finally:
            for s, old in previous.items():
                signal.signal(s, old)


def _largest(*paths: Path) -> int:
    """The largest size of ``paths`` in bytes (0 for none), skipping any gone (a callback may move its files)."""
    sizes = [0]
    for path in paths:
        with contextlib.suppress(OSError):
            sizes.append(path.stat().st_size)
    return max(sizes)
