"""The settings of ``alexnet serve``'s service (its limits, batching and access) and the names it serves under,
checked when made: a value out of range is one line before anything starts."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from ...errors import ConfigError

MIN_KEY_CHARS = 16  # secrets.token_urlsafe() gives 43
BODY_BUDGET_MB = 256.0  # request bodies held at once, by default: 16 bodies at the default limit, or ~1,000 photos


@dataclass(frozen=True)
class ServeSettings:
    """Limits and batching of the service (the ``alexnet serve`` flags).

    Attributes:
        max_batch: the most images run together.
        max_wait_ms: how long a request waits for others to batch with (ms).
        max_queue: the most requests in progress (and images waiting for the model); beyond it requests get 503
            with Retry-After at once, before their body is read.
        timeout_s: a request waiting longer than this for its result gets 504 (s).
        max_body_mb: request bodies over this get 413 (MiB).
        body_budget_mb: request bodies held at once, over all requests, as they arrive and until answered (MiB); a
            body that would pass it gets 503 with Retry-After at once (at its Content-Length, when the rest of the
            budget is less). At least ``max_body_mb``; None: 256, or ``max_body_mb`` where that is larger.
        api_key: required on every endpoint but the health checks, when set.
        device: where the model runs; precision: ``auto`` (bf16 where fast), ``fp32``, ``bf16``.
        compile: compile the model ahead of time before serving (`alexnet.inference.compiled`): seconds at start-up,
            then half the batch-1 latency on the CPU.
        body_timeout_s: a request body not received within this gets 408 (s): a trickling client holds nothing.
        head_timeout_s: a request's line and headers not received within this get 408 (s).
        decode_budget_mp: megapixels being decoded at once, over all requests; an image needing more than all of it
            gets 413, others wait their turn. An 81-megapixel PNG takes ~1.2 GB while it decodes: the default lets
            one such decode run at a time, or hundreds of photos (JPEGs decode reduced, and count as such).
        allowed_hosts: the host names requests may be addressed to (their Host header: ``localhost``, ``[::1]``,
            ``*.example.com``), others get 400; empty or ``*``: any. `serve` bound to loopback answers only to loopback
            names and these, so that a web page whose DNS name is rebound to 127.0.0.1 cannot reach the model.
    """

    max_batch: int = 32
    max_wait_ms: float = 10.0
    max_queue: int = 256
    timeout_s: float = 10.0
    max_body_mb: float = 16.0
    body_budget_mb: float | None = None
    api_key: str | None = None
    device: str = "cpu"
    precision: str = "auto"
    compile: bool = False
    body_timeout_s: float = 30.0
    decode_budget_mp: float = 100.0
    head_timeout_s: float = 10.0
    grpc_port: int | None = None  # KServe v2 over gRPC on this port too (alexnet.inference.serving.grpc_service)
    grpc_host: str = "127.0.0.1"
    allowed_hosts: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        bounds = {
            "max_batch": (1, 4096),
            "max_wait_ms": (0, 10_000),
            "max_queue": (1, 1_000_000),
            "timeout_s": (0.001, 3600),
            "max_body_mb": (0.001, 4096),
            "body_budget_mb": (0.001, 1_000_000),
            "body_timeout_s": (0.001, 3600),
            "head_timeout_s": (0.001, 3600),
            "decode_budget_mp": (1, 10_000),
        }
        if self.api_key is not None and not (
            len(self.api_key) >= MIN_KEY_CHARS and all("!" <= ch <= "~" for ch in self.api_key)
        ):  # a short key is guessed; a space, a line break or non-ASCII cannot travel in an x-api-key header
            raise ConfigError(
                f"--api-key (or $ALEXNET_API_KEY) must be at least {MIN_KEY_CHARS} printable ASCII characters "
                f"without spaces (it has {len(self.api_key)}): "
                "python -c 'import secrets; print(secrets.token_urlsafe())' makes one"
            )
        for pattern in self.allowed_hosts:
            if not is_host_pattern(pattern):
                raise ConfigError(
                    f"allowed host {pattern!r} is not a host name: give names such as api.example.com, "
                    "*.example.com (its subdomains), 10.0.0.5 or [::1], without a port"
                )
        if self.grpc_port is not None and not (isinstance(self.grpc_port, int) and 0 <= self.grpc_port <= 65535):
            raise ConfigError(f"gRPC port {self.grpc_port!r} is not a port number")
        for name, (low, high) in bounds.items():
            value = getattr(self, name)
            if value is None:  # body_budget_mb's default, which follows max_body_mb (`body_budget`)
                continue
            if not (isinstance(value, (int, float)) and low <= value <= high):  # NaN fails too
                flag = "--" + name.removesuffix("_s").replace("_", "-")
                raise ConfigError(f"{flag} {value!r} is out of range: give a number from {low:g} to {high:g}")
        if self.body_budget_mb is not None and self.body_budget_mb < self.max_body_mb:
            raise ConfigError(
                f"--body-budget-mb {self.body_budget_mb:g} is less than --max-body-mb {self.max_body_mb:g}: a body "
                "of the largest size could never be received"
            )

    @property
    def body_budget(self) -> int:
        """The body budget in bytes: ``body_budget_mb``, by default 256 MiB or ``max_body_mb`` where that is larger (a
        limit raised past the budget without naming one still receives a body of the largest size)."""
        mb = self.body_budget_mb if self.body_budget_mb is not None else max(BODY_BUDGET_MB, self.max_body_mb)
        return int(mb * 2**20)


def is_host_pattern(pattern: str) -> bool:
    """A name a Host header can carry (without its port), ``*.`` and a domain (its subdomains), or ``*`` (any)."""
    if pattern == "*":
        return True
    name = pattern.removeprefix("*.")
    if name.startswith("[") and name.endswith("]"):  # an IPv6 address, as Host writes it
        try:
            ipaddress.IPv6Address(name[1:-1])
            return True
        except ValueError:
            return False
    return bool(name) and all(ch.isascii() and (ch.isalnum() or ch in "-._") for ch in name)


# A model name is one path segment of /v2/models/NAME that clients can write as it is (KServe and Triton names are
# such): letters, digits, '.', '_' and '-', not starting with '.'.
MODEL_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}")


def check_model_name(name: str) -> str:
    """``name`` if it can be served under /v2/models/NAME.

    Raises:
        ConfigError: a name with '/', spaces or other characters a URL path segment would need escaped.
    """
    if not MODEL_NAME.fullmatch(name):
        raise ConfigError(
            f"model name {name!r}: use letters, digits, '.', '_' and '-' (at most 128, not starting with '.'), "
            "as /v2/models/NAME needs"
        )
    return name
