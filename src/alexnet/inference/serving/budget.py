"""Budgets over all requests at once: of pixels being decoded (memory per request is bounded by what its image
decodes to, and the sum over concurrent requests by the budget, so many large uploads at once wait their turn
instead of taking gigabytes together), and of request bodies held (each bounded by the body limit, their sum by
the budget: without it a thousand connections each sending most of a 16 MiB body held 16 GB)."""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import AsyncIterator

from PIL import Image

from ...data.decode import FORMATS
from ...errors import InvalidImageError


def decode_cost(data: bytes, min_side: int) -> int:
    """Pixels ``data`` will decode to, from its header alone: JPEGs decode reduced (1/2, 1/4, 1/8) while both sides
    stay at least ``min_side``, other formats at full size.

    Raises:
        InvalidImageError: no image header that Pillow reads.
    """
    try:
        with Image.open(io.BytesIO(data), formats=FORMATS) as img:
            width, height, kind = img.width, img.height, img.format
    except Exception as err:  # Pillow raises several types for what is not an image
        raise InvalidImageError(f"the upload: not a decodable image ({type(err).__name__})") from None
    scale = 1
    if kind == "JPEG":
        while scale < 8 and min(width, height) // (2 * scale) >= min_side:
            scale *= 2
    return max(1, (width // scale) * (height // scale))


class PixelBudget:
    """At most ``total`` pixels reserved at once; `reserve` waits (on the event loop) for room."""

    def __init__(self, total: int) -> None:
        self.total, self.used = total, 0
        self._room = asyncio.Condition()

    @contextlib.asynccontextmanager
    async def reserve(self, pixels: int, timeout_s: float) -> AsyncIterator[None]:
        """Hold ``pixels`` (at most ``total``) of the budget for the block.

        Raises:
            TimeoutError: no room within ``timeout_s``.
        """
        async with asyncio.timeout(timeout_s), self._room:
            await self._room.wait_for(lambda: self.used + pixels <= self.total)
            self.used += pixels
        try:
            yield
        finally:
            async with self._room:
                self.used -= pixels
                self._room.notify_all()


class ByteBudget:
    """At most ``total`` bytes held at once. `take` never waits: a body that would pass the budget is refused at once
    (503), as a request beyond a full queue is; waiting would hold its connection and what it has sent."""

    def __init__(self, total: int) -> None:
        self.total, self.used = total, 0

    def room(self) -> int:
        return self.total - self.used

    def take(self, n: int) -> bool:
        """Hold ``n`` more bytes if there is room (the event loop is one thread: no lock needed)."""
        if self.used + n > self.total:
            return False
        self.used += n
        return True

    def give(self, n: int) -> None:
        self.used -= n
