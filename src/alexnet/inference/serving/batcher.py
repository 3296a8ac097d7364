"""Dynamic batching off the event loop: requests wait (at most ``max_wait_ms``) to be run together, up to
``max_batch`` images, in one worker thread that owns the model. A full queue refuses at once (`QueueFull`) instead
of making the client wait, and a request whose result is not wanted any more (timed out) is skipped."""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """The batcher holds ``max_queue`` images already: the caller should answer 503 with Retry-After."""


@dataclass
class _Item:
    inputs: torch.Tensor  # (n, C, H, W) model inputs of one request
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    queued: float = field(default_factory=time.perf_counter)


class Batcher:
    """Run ``infer`` on batches gathered from concurrent requests.

    Args:
        infer: the requests' tensors (each (n, ...)) → (Σn, K) outputs; called in the worker thread only.
        max_batch: the most images in one call.
        max_wait_ms: how long the first request of a batch waits for others (ms).
        max_queue: the most images waiting; more are refused with `QueueFull`.
        on_batch: called with (batch size, seconds) after every call, for metrics.
    """

    def __init__(
        self,
        infer: Callable[[list[torch.Tensor]], torch.Tensor],
        max_batch: int = 32,
        max_wait_ms: float = 10.0,
        max_queue: int = 256,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        self.infer, self.max_batch, self.max_wait = infer, max_batch, max_wait_ms / 1000
        self.max_queue, self.on_batch = max_queue, on_batch
        self._items: collections.deque[_Item] = collections.deque()
        self._queued = 0  # images waiting
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="alexnet-batcher", daemon=True)
        self.threads = torch.get_num_threads()  # the model's intra-op threads, as the process was configured

    @property
    def alive(self) -> bool:
        """The worker thread runs (started, not stopped, not dead)."""
        return self._thread.is_alive()

    @property
    def depth(self) -> int:
        """Images waiting to run."""
        return self._queued

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Finish what is queued, then end the worker thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout)

    async def submit(self, inputs: torch.Tensor) -> torch.Tensor:
        """The outputs for ``inputs`` (n, C, H, W), computed with whatever else is waiting.

        Raises:
            QueueFull: the queue cannot take ``n`` more images now.
        """
        loop = asyncio.get_running_loop()
        item = _Item(inputs, loop.create_future(), loop)
        with self._cond:
            if self._stopping or self._queued + len(inputs) > self.max_queue:
                raise QueueFull(f"{self._queued} images are waiting (limit {self.max_queue})")
            self._items.append(item)
            self._queued += len(inputs)
            self._cond.notify()
        return await item.future  # cancelled by the caller's timeout: the worker then skips the item

    def _take(self) -> list[_Item] | None:
        """The next batch: wait for a first item, then up to ``max_wait`` for more (None: stopped and drained)."""
        with self._cond:
            while not self._items:
                if self._stopping:
                    return None
                self._cond.wait()
            deadline = self._items[0].queued + self.max_wait
            while self._queued < self.max_batch and not self._stopping:
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                self._cond.wait(left)
            batch, n = [], 0
            while self._items and (not batch or n + len(self._items[0].inputs) <= self.max_batch):
                item = self._items.popleft()
                self._queued -= len(item.inputs)
                if not item.future.cancelled():
                    batch.append(item)
                    n += len(item.inputs)
            return batch

    def _run(self) -> None:
        torch.set_grad_enabled(False)
        torch.set_num_threads(self.threads)  # OpenMP's thread count is per calling thread: this one runs the model
        while (batch := self._take()) is not None:
            if not batch:
                continue
            began = time.perf_counter()
            try:
                outputs = self.infer([item.inputs for item in batch])
                error = None
            except Exception as err:  # a bug must fail its requests, not kill the worker and hang every later one
                log.exception("inference failed")
                outputs, error = None, err
            if self.on_batch:
                self.on_batch(sum(len(item.inputs) for item in batch), time.perf_counter() - began)
            start = 0
            for item in batch:
                n = len(item.inputs)
                result = error if outputs is None else outputs[start : start + n]
                start += n
                item.loop.call_soon_threadsafe(_settle, item.future, result)


def _settle(future: asyncio.Future, result: torch.Tensor | BaseException) -> None:
    if future.done():  # the request timed out meanwhile
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)
