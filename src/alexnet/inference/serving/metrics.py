"""Prometheus metrics of ``alexnet serve`` (``/metrics``): requests by endpoint and status code, latency, batch
sizes, model time, queue depth and request bodies held."""

from __future__ import annotations

import re
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.applications import Starlette


class Metrics:
    """The service's own registry, not the process-wide default: two services in one process count apart."""

    def __init__(self, batcher_depth: Any, body_bytes: Any) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "alexnet_requests", "HTTP requests by endpoint and status code", ["endpoint", "code"], registry=r
        )
        self.latency = Histogram(
            "alexnet_request_seconds",
            "request latency (s)",
            ["endpoint"],
            registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.batch = Histogram(
            "alexnet_batch_size", "images per model call", registry=r, buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256)
        )
        self.inference = Histogram(
            "alexnet_inference_seconds",
            "model call time (s)",
            registry=r,
            buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
        )
        Gauge("alexnet_queue_depth", "images waiting for the model", registry=r).set_function(batcher_depth)
        Gauge("alexnet_request_body_bytes", "request bodies held (--body-budget-mb)", registry=r).set_function(
            body_bytes
        )

    def on_batch(self, n: int, seconds: float) -> None:
        self.batch.observe(n)
        self.inference.observe(seconds)


def endpoint_label(path: str) -> str:
    """A bounded label for metrics: the route's template, never the raw path a client sent."""
    path = re.sub(r"^/v2/models/[^/]+", "/v2/models/{name}", path)
    known = (
        "/",
        "/v1/classify",
        "/metrics",
        "/v2",
        "/v2/health/live",
        "/v2/health/ready",
        "/v2/models/{name}",
        "/v2/models/{name}/ready",
        "/v2/models/{name}/infer",
    )
    return path if path in known else "other"


class Measured:
    """ASGI wrapper counting every HTTP response by endpoint and status, and timing it."""

    def __init__(self, app: Starlette, metrics: Metrics) -> None:
        self.app, self.metrics, self.state = app, metrics, app.state

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began, status = time.perf_counter(), [500]
        endpoint = endpoint_label(scope.get("path", ""))

        async def sending(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            self.metrics.requests.labels(endpoint, str(status[0])).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - began)
