"""uvicorn's httptools protocol with the two limits it lacks: the size of a request's head (request line and
headers) and the time to receive it. Without them one client sending an endless header, or a byte a minute, holds a
connection and the parser's memory for as long as it likes; with them it gets 431 or 408 and is disconnected. The
body's own deadline is the application's (`alexnet.inference.serving.app`).

A response sent before its request's body has all arrived (413 from the Content-Length, 503 at admission) leaves the
rest of that body on the connection: uvicorn's parser drains it and the connection stays open for the next request.
Those bytes are the old request's, not the next head; they are bounded here as a body is (``max_drain_bytes``, the
head's deadline), so a client that declared a terabyte and sends on, or trickles, is disconnected."""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

MAX_HEAD_BYTES = 64 * 1024  # nginx's large_client_header_buffers is 4 × 8 KB; Node's limit is 16 KB
HEAD_TIMEOUT_S = 10.0
MAX_DRAIN_BYTES = 64 * 2**20  # four times the service's default body limit


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """Closes a connection whose request head passes ``max_head_bytes`` (431) or has not arrived within
    ``head_timeout_s`` of the connection or of the previous request (408), or whose answered request's body goes
    on past ``max_drain_bytes`` or ``head_timeout_s`` after its response."""

    max_head_bytes = MAX_HEAD_BYTES
    head_timeout_s = HEAD_TIMEOUT_S
    max_drain_bytes = MAX_DRAIN_BYTES

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_bytes = 0
        self._in_head = True
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_done = True  # the current request's body has all arrived (or it had none)
        self._drained: int | None = None  # bytes of an answered request's body drained so far; None: not draining

    def _arm(self) -> None:
        self._in_head, self._head_bytes = True, 0
        self._disarm()
        self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_timed_out)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _refuse(self, status: bytes, reason: str) -> None:
        if not self.transport.is_closing():
            self.transport.write(
                b"HTTP/1.1 "
                + status
                + b"\r\ncontent-type: text/plain\r\ncontent-length: "
                + str(len(reason)).encode()
                + b"\r\nconnection: close\r\n\r\n"
                + reason.encode()
            )
            self.transport.close()

    def _drain_timed_out(self) -> None:
        self._head_timer = None
        if self._drained is not None:
            self.transport.close()  # its answer was sent; nothing more to say

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._in_head:
            self._refuse(b"408 Request Timeout", f"the request head did not arrive within {self.head_timeout_s:g} s")

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._drained is not None:
            self._drained += len(data)
            if self._drained > self.max_drain_bytes:
                self._disarm()
                self.transport.close()
                return
        counting = self._in_head
        super().data_received(data)
        # Still in the head after this chunk (a chunk may carry the head's end and a body's start: only a head that
        # has not ended counts against the limit).
        if counting and self._in_head:
            self._head_bytes += len(data)
            if self._head_bytes > self.max_head_bytes:
                self._disarm()
                self._refuse(b"431 Request Header Fields Too Large", f"request head over {self.max_head_bytes} bytes")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._body_done = False

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._body_done = True
        if self._drained is not None:  # the answered request's body has ended: the next head starts here
            self._drained = None
            self._arm()

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._disarm()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.transport.is_closing():
            return
        if self._body_done:
            self._arm()  # the next request on a kept-alive connection gets its own deadline
        elif not self.cycle.response_complete:  # a pipelined request, now running: its body arrives, read by it
            self._in_head = False
            self._disarm()
        else:  # answered before its body arrived: what follows is that body, drained, not the next head
            self._in_head, self._drained = False, 0
            self._disarm()
            self._head_timer = self.loop.call_later(self.head_timeout_s, self._drain_timed_out)


def guarded(
    max_head_bytes: int = MAX_HEAD_BYTES, head_timeout_s: float = HEAD_TIMEOUT_S, max_drain_bytes: int = MAX_DRAIN_BYTES
) -> type:
    """The protocol class with these limits, for ``uvicorn.Config(http=...)``."""
    limits = {"max_head_bytes": max_head_bytes, "head_timeout_s": head_timeout_s, "max_drain_bytes": max_drain_bytes}
    return type("GuardedHttp", (GuardedHttpToolsProtocol,), limits)
