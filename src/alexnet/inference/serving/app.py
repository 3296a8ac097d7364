"""The ASGI application of ``alexnet serve`` (Starlette): the page, ``/v1/classify``, the Open Inference Protocol
(KServe v2) endpoints and Prometheus metrics, over one trained model (or several averaged) and a dynamic batcher.

Bad input is always a 4xx with ``{"error": ...}``: a body over the limit 413 before it is read (its Content-Length)
or as soon as it passes the limit (chunked), a bad Content-Length 400, a wrong Content-Type 415, an image that does
not decode (or is a bomb, or is truncated) 400. Overload is 503 with Retry-After at once, a slow inference 504.
A request addressed to a host name the service does not answer to (``ServeSettings.allowed_hosts``) is 400.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import io
import logging
import re
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import torch
from PIL import Image
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from ...artifacts.trained import TrainedModel
from ...data.decode import decode_stored
from ...device import release_free_memory
from ...errors import InvalidImageError
from ..predictor import Predictor
from .batcher import Batcher, QueueFull
from .budget import ByteBudget, PixelBudget, decode_cost
from .metrics import Measured, Metrics
from .protocol import HEADER, InferInput, ProtocolError, infer_response, parse_infer
from .settings import ServeSettings, check_model_name

log = logging.getLogger(__name__)
IMAGE_TYPES = ("image/", "application/octet-stream")
TRIM_AFTER_PIXELS = 8_000_000  # a decode this large (~100 MB while it runs) hands its freed memory back
TRIM_AFTER_BYTES = 4 * 2**20  # so does a request body or gRPC message this large, once its request has gone


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


class _Service:
    def __init__(
        self, members: Sequence[TrainedModel], name: str, settings: ServeSettings, paths: Sequence[str]
    ) -> None:
        self.name, self.settings, self.members = name, settings, len(members)
        self.predictor = Predictor.from_trained(
            members, paths, settings.device, settings.precision, compile=settings.compile
        )
        # Refused at start, not by the out-of-memory killer at the first busy moment: a full batch, with the request
        # bodies and the decoding its budgets allow (3 bytes a decoded pixel at the least).
        bodies, decoding = settings.body_budget, int(3 * settings.decode_budget_mp * 1e6)
        self.predictor.check_batch(
            settings.max_batch,
            what="serving",
            fixed=bodies + decoding,
            fixed_what="request bodies and decoding",
            advice="use a smaller --max-batch, --body-budget-mb or --decode-budget-mp",
        )
        self.meta = self.predictor.meta  # the members agree on classes and preprocessing
        prep = self.meta.preprocessing
        self.input_shape = [self.meta.model.in_channels, prep.input_size, prep.input_size]
        self.max_body = int(settings.max_body_mb * 2**20)
        self.metrics = Metrics(lambda: self.batcher.depth, lambda: self.bodies.used)
        self.batcher = Batcher(
            self._infer, settings.max_batch, settings.max_wait_ms, settings.max_queue, self.metrics.on_batch
        )
        self.pixels = PixelBudget(int(settings.decode_budget_mp * 1e6))
        self.bodies = ByteBudget(bodies)
        self._trim_pending = False
        self.ready = False
        self.admitted = 0  # requests between admission and their answer: at most max_queue
        self.labels = self.meta.labels  # display-safe names, escaped once (not per request)

    @contextlib.contextmanager
    def admission(self):
        """Admit a request that will need the model, or refuse it with 503 at once: before its body is read or its
        image decoded, so an overloaded server spends nothing on what it cannot serve."""
        if self.admitted >= self.settings.max_queue:
            raise HTTPException(
                503, f"busy: {self.admitted} requests are in progress; retry shortly", headers={"Retry-After": "1"}
            )
        self.admitted += 1  # the event loop is one thread: no lock needed
        try:
            yield
        finally:
            self.admitted -= 1

    def _infer(self, parts: list[torch.Tensor]) -> torch.Tensor:
        """Requests' tensors → probabilities, in the batcher's thread. Decoded images arrive as uint8 stored squares
        and are cropped and normalised here, as one batch: torch ops in the many decoding threads would each start
        OpenMP work competing with the model's."""
        images = [x for x in parts if x.dtype == torch.uint8]
        tensors = [x for x in parts if x.dtype != torch.uint8]
        if images and tensors:  # both kinds in one batch: run them separately, answer in the requests' order
            out = {id(x): p for x, p in zip(images, self._infer(images).split([len(x) for x in images]))}
            out |= {id(x): p for x, p in zip(tensors, self._infer(tensors).split([len(x) for x in tensors]))}
            return torch.cat([out[id(x)] for x in parts])
        x = torch.cat(parts) if len(parts) > 1 else parts[0]
        x = self.predictor.transform.eval(x) if images else x
        # Unchecked: one client's input that overflows the network (finite FP32 values of 3e38) must not fail the
        # other requests batched with it; `run` judges each request's own rows.
        return self.predictor.probabilities(x, check_finite=False)  # it runs channels last itself

    # --- request plumbing ---
    def authorize(self, request: Request) -> None:
        origin = request.headers.get("origin")
        if request.method == "POST" and origin is not None and not self._trusted_origin(origin, request):
            # A page of another site posting here from the user's browser (it cannot read the answer, but the model
            # would run for it): browsers name the page's origin on every cross-origin POST; clients that are not
            # browsers send none. This service sets no CORS headers, so no other origin's page could use it anyway.
            raise HTTPException(
                403,
                f"a request from the web page of {origin[:100]!r} is refused (another site); a site of yours in front "
                "of this service: name it with --allowed-hosts",
            )
        key = self.settings.api_key
        if key is None:
            return
        given = request.headers.get("x-api-key") or request.query_params.get("api_key") or ""
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            given = auth[7:]
        if not hmac.compare_digest(given.encode(), key.encode()):  # constant time: no key prefix leaks by timing
            raise HTTPException(401, "a valid API key is required (X-API-Key or Authorization: Bearer)")

    def _trusted_origin(self, origin: str, request: Request) -> bool:
        """The page's own site (its ``Origin`` names the ``Host`` addressed), or one of ``allowed_hosts`` (a proxy
        that rewrites ``Host`` to this service's address serves the page from its public name)."""
        try:
            parts = urlsplit(origin)
            name = parts.hostname or ""
        except ValueError:  # "http://[x": no site at all
            return False
        if parts.netloc.lower() == request.headers.get("host", "").lower():
            return True
        name = f"[{name}]" if ":" in name else name
        return any(
            p == "*" or name == p.lower() or (p.startswith("*.") and name.endswith(p[1:].lower()))
            for p in self.settings.allowed_hosts
        )

    @contextlib.asynccontextmanager
    async def received(self, request: Request) -> AsyncIterator[bytes]:
        """The body, held against the body budget until the block ends; refused with 413 as soon as it is known to
        be over the limit (before reading it, when the client said its length), 503 when the budget has no room for
        it, and 408 when it has not all arrived within ``body_timeout_s``."""
        length = request.headers.get("content-length")
        if length is not None:
            if not (length.isascii() and length.isdigit()):
                raise HTTPException(400, f"Content-Length {length!r} is not a byte count")
            if int(length) > self.max_body:
                raise HTTPException(413, f"the body is {length} bytes; the limit is {self.max_body}")
            if int(length) > self.bodies.room():
                raise self._no_room()
        chunks, n = [], 0
        try:
            try:
                async with asyncio.timeout(self.settings.body_timeout_s):
                    async for chunk in request.stream():
                        if n + len(chunk) > self.max_body:
                            raise HTTPException(413, f"the body passed the limit of {self.max_body} bytes")
                        if not self.bodies.take(len(chunk)):
                            raise self._no_room()
                        n += len(chunk)
                        chunks.append(chunk)
            except TimeoutError:
                raise HTTPException(408, f"the body did not arrive within {self.settings.body_timeout_s:g} s") from None
            body = b"".join(chunks)
            chunks.clear()
            yield body
        finally:
            self._release(n)

    @contextlib.contextmanager
    def holding(self, size: int) -> Iterator[None]:
        """``size`` bytes of a request received whole (a gRPC message) held against the body budget for the block.

        Raises:
            HTTPException: 503 when the budget has no room for them.
        """
        if not self.bodies.take(size):
            if size > TRIM_AFTER_BYTES:  # refused, its message is freed all the same
                self._trim_soon()
            raise self._no_room()
        try:
            yield
        finally:
            self._release(size)

    def _release(self, size: int) -> None:
        """``size`` bytes of a request that has gone given back to the body budget."""
        self.bodies.give(size)
        if size > TRIM_AFTER_BYTES:
            self._trim_soon()

    def _trim_soon(self) -> None:
        """Hand freed memory back to the OS 0.1 s after a large request (its body or message is freed only once its
        handler has returned); one trim at a time. The predictor keeps large freed blocks in the heap for its
        activations' sake (`alexnet.device.tune_cpu_allocator`): without this, a client's 15 MiB gRPC messages, one at
        a time, left the service 1 GB larger for good after 150 of them."""
        if self._trim_pending:
            return
        self._trim_pending = True
        loop = asyncio.get_running_loop()

        def trim() -> None:
            self._trim_pending = False
            with contextlib.suppress(RuntimeError):  # the executor shut down: the service is stopping
                loop.run_in_executor(None, release_free_memory)

        loop.call_later(0.1, trim)

    def _no_room(self) -> HTTPException:
        return HTTPException(
            503,
            f"busy: the request bodies being received fill the budget of {self.bodies.total / 2**20:g} MiB; "
            "retry shortly",
            headers={"Retry-After": "1"},
        )

    def _prepare(self, data: bytes) -> torch.Tensor:
        """Encoded image → (1, C, S, S) uint8 stored square (in a worker thread: decoding is CPU work)."""
        prep = self.meta.preprocessing
        return decode_stored(data, prep.stored_size, self.input_shape[0], self.max_body).unsqueeze(0)

    async def images_to_inputs(self, images: list[bytes]) -> torch.Tensor:
        """Decode each image in a worker thread, within the decoding budget: an image's cost (its pixels, as they
        will decode) is read from its header first and reserved while it decodes."""
        try:
            out = []
            for data in images:
                cost = decode_cost(data, 2 * self.meta.preprocessing.stored_size)
                if cost > self.pixels.total:
                    raise HTTPException(
                        413,
                        f"the image decodes to {cost / 1e6:.0f} megapixels; this server decodes "
                        f"at most {self.pixels.total / 1e6:.0f} at once",
                    )
                try:
                    async with self.pixels.reserve(cost, self.settings.timeout_s):
                        out.append(await run_in_threadpool(self._prepare, data))
                        if cost > TRIM_AFTER_PIXELS:  # a large decode's freed memory goes back to the OS
                            await run_in_threadpool(release_free_memory)
                except TimeoutError:
                    raise HTTPException(
                        503, "busy decoding other images; retry shortly", headers={"Retry-After": "1"}
                    ) from None
            return torch.cat(out)
        except InvalidImageError as err:
            message = re.sub(r"<_io\.BytesIO object at 0x[0-9a-f]+>", "the upload", str(err))
            raise HTTPException(400, message.removeprefix("<bytes>: ")) from None

    def warm_up(self) -> None:
        """A small PNG and a small JPEG through the decoding path and the model, before the server says it is ready.

        The first decode imports Pillow's format plugins and starts torchvision's resize: without this, the first
        request took 315 ms in the server where later ones took 15 (a 2-core AMD EPYC). The batcher is not used, so
        no request or batch is counted."""
        images = []
        for fmt in ("PNG", "JPEG"):
            buffer = io.BytesIO()
            Image.new("RGB", (32, 32), (90, 120, 200)).save(buffer, fmt)
            images.append(self._prepare(buffer.getvalue()))
        self._infer(images)

    async def run(self, inputs: torch.Tensor) -> torch.Tensor:
        """This request's probabilities, batched with others'.

        Raises:
            HTTPException: 503 when the queue is full, 504 past the time limit; 422 when its FP32 inputs take the
                network's outputs beyond any float (the client's input), 500 when images do (the model's weights).
        """
        try:
            probs = await asyncio.wait_for(self.batcher.submit(inputs), self.settings.timeout_s)
        except QueueFull as err:
            raise HTTPException(503, f"busy: {err}; retry shortly", headers={"Retry-After": "1"}) from None
        except TimeoutError:
            raise HTTPException(504, f"no result within {self.settings.timeout_s:g} s") from None
        if not bool(torch.isfinite(probs).all()):
            if inputs.dtype == torch.uint8:  # decoded images: nothing a client sent can do this
                raise HTTPException(500, "the model gives non-finite outputs for this image: its training diverged")
            raise HTTPException(
                422,
                "the model's outputs for this FP32 input are not finite: send inputs as the model's preprocessing "
                "makes them (a few units either side of 0), or the image itself as BYTES",
            )
        return probs

    # --- endpoints ---
    async def page(self, request: Request) -> Response:
        self.authorize(request)
        html = resources.files(__package__).joinpath("page.html").read_text()
        return HTMLResponse(html)

    async def classify(self, request: Request) -> Response:
        began = time.perf_counter()
        self.authorize(request)
        topk = request.query_params.get("topk", "5")
        if not (topk.isascii() and topk.isdigit()) or not 1 <= int(topk) <= 1000:
            raise HTTPException(400, f"topk={topk!r} must be an integer from 1 to 1000")
        ctype = request.headers.get("content-type", "").lower()
        if not (ctype.startswith("multipart/form-data") or ctype.startswith(IMAGE_TYPES)):
            raise HTTPException(415, f"Content-Type {ctype or 'none'!r}: send multipart/form-data or image/*")
        async with self.received(request) as body:  # before admission: a slow client holds no place in the queue
            data = await self._multipart_file(request, body) if ctype.startswith("multipart/") else body
            with self.admission():
                probs = (await self.run(await self.images_to_inputs([data])))[0]
        values, indices = probs.topk(min(int(topk), probs.numel()))
        labels = self.labels
        return JSONResponse(
            {
                "model": self.name,
                "classes": [labels[i] for i in indices.tolist()],
                "probabilities": [round(v, 6) for v in values.tolist()],
                "latency_ms": round(1000 * (time.perf_counter() - began), 2),
            }
        )

    async def _multipart_file(self, request: Request, body: bytes) -> bytes:
        async def replay() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            async with Request(request.scope, replay).form(max_files=1, max_fields=8) as form:
                files = [v for v in form.values() if hasattr(v, "read")]
                if not files:
                    raise HTTPException(400, "the form has no file: send the image as a file field")
                return await files[0].read()
        except HTTPException:
            raise
        except Exception as err:  # python-multipart's parse errors
            raise HTTPException(400, f"malformed multipart body: {err}") from None

    async def infer(self, request: Request) -> Response:
        self.authorize(request)
        self.check_model(request)
        ctype = request.headers.get("content-type", "application/json").lower()
        if not ctype.startswith(("application/json", "application/octet-stream", "application/x-www-form")):
            raise HTTPException(415, f"Content-Type {ctype!r}: send JSON (or Triton's binary extension)")
        async with self.received(request) as body:  # before admission: a slow client holds no place in the queue
            try:
                req = parse_infer(body, request.headers.get(HEADER))
            except ProtocolError as err:
                raise HTTPException(400, str(err)) from None
            outputs = await self.infer_outputs(req.inputs[0])
        payload, headers = infer_response(self.name, req, outputs)
        media = "application/octet-stream" if headers else "application/json"
        return Response(payload, media_type=media, headers=headers)

    async def infer_outputs(self, item: InferInput) -> dict[str, np.ndarray]:
        """The outputs for one checked input, REST's or gRPC's: admitted, decoded or checked, batched, run.

        Raises:
            HTTPException: with the status REST answers (gRPC maps it to its own codes).
        """
        with self.admission():
            if item.images is not None:
                inputs = await self.images_to_inputs(item.images)
            else:
                if list(item.tensor.shape[1:]) != self.input_shape:
                    raise HTTPException(400, f"FP32 input shape {item.shape}: this model takes [N, {self.input_shape}]")
                if not np.isfinite(item.tensor).all():
                    raise HTTPException(400, "FP32 input holds NaN or infinity")
                inputs = torch.from_numpy(item.tensor.copy())
            probs = (await self.run(inputs)).numpy().astype(np.float32)
        return {"probabilities": probs, "top1": probs.argmax(1).astype(np.int64)}

    def metadata(self) -> dict[str, Any]:
        """The model's KServe v2 metadata (REST's JSON; gRPC's message has the same fields)."""
        meta = self.meta
        return {
            "name": self.name,
            "versions": ["1"],
            "platform": "pytorch_alexnet",
            "inputs": [
                {"name": "image", "datatype": "BYTES", "shape": [-1]},
                {"name": "input", "datatype": "FP32", "shape": [-1, *self.input_shape]},
            ],
            "outputs": [
                {"name": "probabilities", "datatype": "FP32", "shape": [-1, meta.model.num_classes]},
                {"name": "top1", "datatype": "INT64", "shape": [-1]},
            ],
            "parameters": {"variant": meta.model.variant, "classes": list(self.labels)},
        }

    def check_model(self, request: Request) -> None:
        if request.path_params.get("name") != self.name:
            raise HTTPException(404, f"no model {request.path_params.get('name')!r}; this server has {self.name!r}")

    async def model_metadata(self, request: Request) -> Response:
        self.authorize(request)
        self.check_model(request)
        return JSONResponse(self.metadata())

    async def model_ready(self, request: Request) -> Response:
        self.authorize(request)
        self.check_model(request)
        ready = self.ready and self.batcher.alive
        return JSONResponse({"name": self.name, "ready": ready}, status_code=200 if ready else 503)

    async def live(self, request: Request) -> Response:
        return JSONResponse({"live": True})

    async def health_ready(self, request: Request) -> Response:
        ready = self.ready and self.batcher.alive  # a dead batching thread would time out every request: not ready
        return JSONResponse({"ready": ready}, status_code=200 if ready else 503)

    async def server_metadata(self, request: Request) -> Response:
        self.authorize(request)
        from ...version import __version__

        return JSONResponse({"name": "alexnet", "version": __version__, "extensions": ["binary_tensor_data"]})

    async def metrics_text(self, request: Request) -> Response:
        self.authorize(request)
        return Response(generate_latest(self.metrics.registry), media_type=CONTENT_TYPE_LATEST)


def create_app(
    trained: TrainedModel | Sequence[TrainedModel],
    name: str,
    settings: ServeSettings | None = None,
    paths: Sequence[str] | None = None,
) -> Starlette:
    """The service for ``trained`` under the model name ``name``; the batcher starts and stops with the app.

    Several models are served as one, their softmax averaged (`Predictor.from_trained`: they must agree on classes and
    preprocessing; ``paths`` name them in its errors).
    """
    check_model_name(name)
    members = [trained] if isinstance(trained, TrainedModel) else list(trained)
    paths = list(paths) if paths is not None else [f"model {i + 1}" for i in range(len(members))]
    service = _Service(members, name, settings or ServeSettings(), paths)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        await run_in_threadpool(service.warm_up)
        service.batcher.start()
        grpc_server = None
        if service.settings.grpc_port is not None:  # the same service over gRPC, in this event loop
            from .grpc_service import build_server

            grpc_server, grpc_port = build_server(service, service.settings.grpc_host, service.settings.grpc_port)
            await grpc_server.start()
            log.info("KServe v2 over gRPC on %s:%d", service.settings.grpc_host, grpc_port)  # chosen for 0
        service.ready = True
        log.info(
            "serving %s (%s%s): batches of up to %d, queue %d",
            name,
            service.meta.model.variant,
            f", {service.members} models, softmax averaged" if service.members > 1 else "",
            service.settings.max_batch,
            service.settings.max_queue,
        )
        try:
            yield
        finally:
            service.ready = False
            if grpc_server is not None:
                await grpc_server.stop(grace=service.settings.timeout_s)  # calls in flight finish
            await run_in_threadpool(service.batcher.stop)  # what is queued still runs

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return _error(exc.status_code, str(exc.detail), exc.headers)

    async def server_error(request: Request, exc: Exception) -> Response:
        log.exception("unexpected error on %s", request.url.path)
        return _error(500, f"internal error ({type(exc).__name__})")

    s = service
    routes = [
        Route("/", s.page),
        Route("/v1/classify", s.classify, methods=["POST"]),
        Route("/v2", s.server_metadata),
        Route("/v2/health/live", s.live),
        Route("/v2/health/ready", s.health_ready),
        Route("/v2/models/{name}", s.model_metadata),
        Route("/v2/models/{name}/ready", s.model_ready),
        Route("/v2/models/{name}/infer", s.infer, methods=["POST"]),
        Route("/metrics", s.metrics_text),
    ]
    hosts = service.settings.allowed_hosts
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={HTTPException: http_error, Exception: server_error},
        middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=list(hosts), www_redirect=False)] if hosts else [],
    )
    app.state.service = service
    return Measured(app, service.metrics)
