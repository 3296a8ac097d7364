"""Run the service with uvicorn: the safety checks on the address and key, and a clean exit on SIGTERM."""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import os
import re
import signal
from collections.abc import Iterator, Sequence
from pathlib import Path

from ...artifacts.loader import load_trained
from ...errors import AlexNetError
from .app import create_app
from .guarded_http import MAX_HEAD_BYTES, guarded
from .settings import MODEL_NAME, ServeSettings, check_model_name

log = logging.getLogger(__name__)
KEY_ENV = "ALEXNET_API_KEY"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(
    source: str | Sequence[str],
    host: str = "127.0.0.1",
    port: int = 8000,
    settings: ServeSettings | None = None,
    name: str | None = None,
) -> None:
    """Serve ``source`` (published weights by name, or our ``.safetensors`` / ``.pt``) until SIGTERM or Ctrl-C.
    Several sources are served as one model, their softmax averaged (the paper's five CNNs; `create_app`).

    SIGTERM stops accepting connections, lets the requests in flight and the queued batch finish, and returns
    (the process exits 0). Binding anything but a loopback address needs an API key (``settings.api_key`` or
    $ALEXNET_API_KEY).

    Raises:
        AlexNetError: a non-loopback address without a key; anything `load_trained` raises.
    """
    import uvicorn

    settings = settings or ServeSettings()
    if settings.api_key is None and os.environ.get(KEY_ENV):
        from dataclasses import replace

        settings = replace(settings, api_key=os.environ[KEY_ENV])
    if not is_loopback(host) and not settings.api_key:
        raise AlexNetError(
            f"binding {host} exposes the model beyond this machine: set an API key with --api-key "
            f"or ${KEY_ENV} (or bind 127.0.0.1)"
        )
    if is_loopback(host):  # DNS rebinding: a page of evil.example whose name resolves to 127.0.0.1 says so in Host
        from dataclasses import replace

        own = f"[{host}]" if ":" in host else host
        names = dict.fromkeys(("localhost", "127.0.0.1", "[::1]", own, *settings.allowed_hosts))
        settings = replace(settings, allowed_hosts=tuple(names))
    sources = [source] if isinstance(source, str) else list(source)
    if any(Path(s).suffix == ".onnx" for s in sources):
        raise AlexNetError(
            "serve takes our .safetensors / .pt files or published weights; ONNX files are for "
            "onnxruntime-based servers"
        )
    if name is not None:
        check_model_name(name)
    _check_port(host, port)  # before the model loads: a port in use is one line, not uvicorn's log and exit 1
    if settings.grpc_port is not None:
        try:
            from .grpc_service import protocol

            protocol()  # compile the .proto now: a missing extra is one line, before the model loads
        except ImportError as err:
            raise AlexNetError(f"serving gRPC needs the [grpc] extra: pip install 'alexnet[grpc]' ({err})") from None
        if settings.grpc_port == port != 0:  # 0: the system picks a free port for each
            raise AlexNetError(f"gRPC port {port} is the HTTP port: give gRPC a port of its own")
        _check_port(host, settings.grpc_port)
        from dataclasses import replace

        settings = replace(settings, grpc_host=host)
    members = [load_trained(s) for s in sources]
    model_name = name or default_name(sources[0], members[0].meta.provenance)
    if not name and len(members) > 1:
        model_name += f"-ensemble-{len(members)}"
    app = create_app(members, model_name, settings, sources)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="critical",
        timeout_graceful_shutdown=30,
        access_log=False,
        limit_concurrency=4 * settings.max_queue + 256,
        h11_max_incomplete_event_size=MAX_HEAD_BYTES,
        # A refused body up to four times the limit is drained (its client reads the 413 and keeps the connection).
        http=guarded(head_timeout_s=settings.head_timeout_s, max_drain_bytes=int(4 * settings.max_body_mb * 2**20)),
    )
    # A signal the caller ignores stays ignored, as it would for any program: `nohup` ignores SIGHUP so that closing
    # the terminal leaves the service running, and a script's background job (`alexnet serve &`) ignores SIGINT so
    # that Ctrl-C in the script's terminal does not reach it. uvicorn (and the handlers below) would replace SIG_IGN.
    ignored = {s for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP) if signal.getsignal(s) is signal.SIG_IGN}

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            with super().capture_signals():  # restores the handlers it replaced, SIG_IGN included, as it ends
                for signum in ignored:
                    signal.signal(signum, signal.SIG_IGN)
                yield

    server = Server(config)
    # uvicorn shuts down gracefully on SIGTERM and SIGINT, then raises the signal again for the previous handler:
    # these make that a no-op, so a requested stop is a clean exit (status 0), as process managers expect. SIGHUP
    # (a closed terminal, a supervisor's reload) drains the same way instead of killing requests in flight.
    handlers = {
        signal.SIGTERM: lambda *_: None,
        signal.SIGHUP: lambda *_: setattr(server, "should_exit", True),
    }
    previous = {s: signal.signal(s, handler) for s, handler in handlers.items() if s not in ignored}
    try:
        # Bound here, so the line names the port the system chose for --port 0 (uvicorn's own log would say 0).
        sock = config.bind_socket()
        where = f"[{host}]" if ":" in host else host
        log.info("alexnet serve: http://%s:%d/ (model %s)", where, sock.getsockname()[1], model_name)
        if settings.allowed_hosts:
            log.info(
                "answering requests addressed to %s (--allowed-hosts adds a proxy's name)",
                ", ".join(settings.allowed_hosts),
            )
        server.run(sockets=[sock])
    except SystemExit:  # uvicorn exits 1 when it cannot bind, after logging: our one line below says why
        pass
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if not server.started:
        raise AlexNetError(f"could not listen on {host}:{port} (in use, or not an address of this machine)")


def default_name(source: str, provenance: dict) -> str:
    """The model's name when ``--name`` is not given: the published weights' name, else the run's directory for a
    run's ``best``/``last``/``epoch-N`` files (``runs/demo/best.safetensors`` is ``demo``, not ``best``), else the
    file's stem."""
    path = Path(source)
    name = provenance.get("weights") or path.stem
    if not provenance.get("weights") and (path.stem in ("best", "last") or path.stem.startswith("epoch-")):
        name = path.resolve().parent.name or path.stem
    name = re.sub(r"[^A-Za-z0-9._-]", "_", str(name)).lstrip(".")[:100]  # a run directory "my run" serves as my_run
    return name if MODEL_NAME.fullmatch(name) else "model"


def _check_port(host: str, port: int) -> None:
    """Refuse a port another process listens on, or an address that is not this machine's."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        raise AlexNetError(f"host {host}: not an address ({err.strerror})") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: TIME_WAIT is no conflict
        try:
            probe.bind(address)
        except OSError as err:
            why = "in use by another process" if err.errno == errno.EADDRINUSE else err.strerror
            raise AlexNetError(f"cannot listen on {host}:{port}: {why}; choose another --port") from None
