"""What the serving tests share: a model file set, a real `alexnet serve` process on a loopback port, raw HTTP."""

from __future__ import annotations

import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import torch

import alexnet
from alexnet.artifacts.checkpoint import save_weights
from tests.helpers import child_signals

CLASSES = ["apple", "boat", "cloud", "daisy", "eagle", "fern"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _weights(path: Path, variant: str, size: int, seed: int = 0, classes: list[str] = CLASSES, **overrides) -> Path:
    torch.manual_seed(seed)
    model = alexnet.create_model(variant, num_classes=len(classes), **overrides)
    meta = {
        "model": model.config,
        "classes": classes,
        "data": {
            "stored_size": size + size // 8,
            "crop": size,
            "input_size": size,
            "mean": [0.5, 0.45, 0.4],
            "std": [0.25, 0.25, 0.25],
        },
    }
    save_weights(model, path, meta)
    return path


class Server:
    """`alexnet serve` on ports the system chooses (``--port 0``, and ``--grpc-port 0`` with ``grpc=True``), read
    back from the lines it logs: no other process can take them between choosing and binding."""

    def __init__(self, weights: Path, *flags: str, grpc: bool = False, ignoring: tuple[int, ...] = ()) -> None:
        cmd = [
            sys.executable,
            "-m",
            "alexnet.cli",
            "serve",
            "--checkpoint",
            str(weights),
            "--port",
            "0",
            "--precision",
            "fp32",
            *(["--grpc-port", "0"] if grpc else []),
            *flags,
        ]
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=child_signals(ignoring),
        )
        self.log: list[str] = []
        lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=_read_lines, args=(self.proc.stderr, lines), daemon=True).start()
        found = {}
        deadline = time.time() + 60
        while time.time() < deadline and not ("ready" in found and ("grpc" in found or not grpc)):
            try:
                line = lines.get(timeout=0.1)
            except queue.Empty:
                line = ""
            if line is None:  # the process ended: its log says why
                self.proc.wait()
                raise RuntimeError("".join(self.log))
            self.log.append(line)
            if match := re.match(r"alexnet serve: http://127\.0\.0\.1:(\d+)/", line):
                found["http"] = int(match[1])
            if match := re.match(r"KServe v2 over gRPC on 127\.0\.0\.1:(\d+)", line):
                found["grpc"] = int(match[1])
            if line.startswith("serving "):
                found["ready"] = True
        if "ready" not in found:
            raise RuntimeError("the server did not become ready: " + "".join(self.log))
        self.port = found["http"]
        self.url = f"http://127.0.0.1:{self.port}"
        if grpc:
            self.grpc = f"127.0.0.1:{found['grpc']}"
        while True:  # the model is ready once "serving" is logged; uvicorn listens a moment after
            try:
                if httpx.get(f"{self.url}/v2/health/ready", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.time() > deadline:
                raise RuntimeError("the server did not answer: " + "".join(self.log))
            time.sleep(0.05)

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)


def _read_lines(stream, lines: queue.Queue) -> None:
    """Every line of ``stream`` into ``lines``, then None: the pipe never fills while the server runs."""
    for line in stream:
        lines.put(line)
    lines.put(None)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    # torchvision's AlexNet at 224 px: slow enough (tens of ms per image) for a small queue to fill.
    return {
        "owt": _weights(root / "owt.safetensors", "alexnet_owt", 224),
        "root": root,
        "small": _weights(root / "small.safetensors", "alexnet_small", 32, width=0.25),
    }


@pytest.fixture(scope="module")
def server(files):
    srv = Server(files["owt"], "--max-batch", "4", "--max-queue", "4", "--max-body-mb", "1", "--name", "owt")
    yield srv
    assert srv.stop() == 0


def raw_request(port: int, request: bytes, timeout: float = 10) -> tuple[int, bytes]:
    """Send ``request`` bytes as they are; the status and body of the reply."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data or len(data) < data.index(b"\r\n\r\n") + 4 + response_length(data):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    return int(data.split(b" ", 2)[1]), data.split(b"\r\n\r\n", 1)[-1]


def response_length(data: bytes) -> int:
    for line in data.split(b"\r\n\r\n")[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":")[1])
    return 0


def bodies_held(srv: Server, until: float | None = None) -> float:
    """The bytes of request bodies ``srv`` holds (its metrics' gauge), once they reach ``until`` (within 10 s)."""
    deadline = time.time() + 10
    while True:
        metrics = httpx.get(f"{srv.url}/metrics").text
        held = float(next(line.split()[1] for line in metrics.splitlines() if line.startswith("alexnet_request_body")))
        if until is None or held == until or time.time() > deadline:
            return held
        time.sleep(0.05)


def hold_bodies(srv: Server, count: int, sent: int) -> list[socket.socket]:
    """``count`` connections each sending ``sent`` bytes of a body of ``sent`` + 100,000, and holding them."""
    held, head = [], "POST /v1/classify HTTP/1.1\r\nHost: localhost\r\nContent-Type: image/png\r\n"
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
        s.sendall(f"{head}Content-Length: {sent + 100_000}\r\n\r\n".encode() + b"\x89PNG" + b"\0" * (sent - 4))
        held.append(s)
    bodies_held(srv, until=count * sent)
    return held


def app_client(files, **settings):
    """The service in-process (Starlette's TestClient) on the small model, and its state."""
    from starlette.testclient import TestClient

    from alexnet.artifacts.loader import load_trained
    from alexnet.inference.serving.app import create_app
    from alexnet.inference.serving.settings import ServeSettings

    app = create_app(load_trained(files["small"]), "small", ServeSettings(**{"precision": "fp32", **settings}))
    return TestClient(app), app.state.service
