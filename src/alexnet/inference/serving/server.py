"""Run the service with uvicorn: the safety checks on the address and key, and a clean exit on SIGTERM."""

from __future__ import annotations

import ipaddress
import logging
import os
import signal
from pathlib import Path

from ...errors import AlexNetError
from ..artifact import load_trained
from .app import ServeSettings, create_app

log = logging.getLogger(__name__)
KEY_ENV = "ALEXNET_API_KEY"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(source: str, host: str = "127.0.0.1", port: int = 8000, settings: ServeSettings | None = None,
          name: str | None = None) -> None:  # fmt: skip
    """Serve ``source`` (published weights by name, or our ``.safetensors`` / ``.pt``) until SIGTERM or Ctrl-C.

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
        raise AlexNetError(f"binding {host} exposes the model beyond this machine: set an API key with --api-key "
                           f"or ${KEY_ENV} (or bind 127.0.0.1)")  # fmt: skip
    if Path(source).suffix == ".onnx":
        raise AlexNetError("serve takes our .safetensors / .pt files or published weights; ONNX files are for "
                           "onnxruntime-based servers")  # fmt: skip
    trained = load_trained(source)
    model_name = name or trained.meta.provenance.get("weights") or Path(source).stem
    model_name = model_name.replace("/", "_")
    app = create_app(trained, model_name, settings)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=30,
                            limit_concurrency=4 * settings.max_queue + 256, access_log=False)  # fmt: skip
    server = uvicorn.Server(config)
    # uvicorn shuts down gracefully on SIGTERM, then raises the signal again for the previous handler: this one
    # makes that a no-op, so a requested stop is a clean exit (status 0), as process managers expect.
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        log.info("alexnet serve: http://%s:%d/ (model %s)", host, port, model_name)
        server.run()
    finally:
        signal.signal(signal.SIGTERM, previous)
    if not server.started:
        raise AlexNetError(f"could not listen on {host}:{port} (in use, or not an address of this machine)")
