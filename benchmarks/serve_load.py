"""Load test of `alexnet serve` against the same model's offline batched `predict`, measured in one run.

    python benchmarks/serve_load.py [--weights W] [--clients 32] [--seconds 20] [--requests 10000]

Starts the server on a loopback port, then:
1. offline: `Predictor.predict` over the same JPEGs in batches of ``--max-batch`` (decode included), images/s;
2. load: ``--clients`` concurrent keep-alive clients POST JPEGs to /v1/classify for ``--seconds`` (at most
   ``--requests``): requests/s, p50/p95/p99 latency, errors by code, mean batch (from /metrics), server RSS;
3. overload: 2 × the queue's capacity in clients at once, one request each: every one answered (200 or 503 with
   Retry-After), none lost, how fast the 503s came;
4. with ``--requests`` ≥ 2,000: the server's RSS after the first 1,000 requests and at the end (memory flat).

The clients are asyncio tasks of one process on the same machine as the server: on a 2-core CPU they take CPU
time from it, which this measures honestly rather than hiding. Without ``--weights`` an untrained alexnet_owt
(1,000 classes, 224 px) is served.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def rss_mb(pid: int, field: str = "VmHWM") -> float:
    return int(re.search(rf"{field}:\s+(\d+)", Path(f"/proc/{pid}/status").read_text()).group(1)) / 1024


def make_images(folder: Path, n: int) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        # Photo-like: smooth colour fields plus noise, 500×375 (ImageNet's typical size), JPEG quality 90.
        base = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        img = Image.fromarray(base).resize((500, 375), Image.BICUBIC)
        noisy = np.clip(np.asarray(img, np.int16) + rng.integers(-20, 21, (375, 500, 3)), 0, 255).astype(np.uint8)
        path = folder / f"{i}.jpg"
        Image.fromarray(noisy).save(path, quality=90)
        paths.append(path)
    return paths


class Connection:
    """A minimal keep-alive HTTP/1.1 client on asyncio streams: it costs the shared CPU far less per request than
    a full client library, so the figures are the server's."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes, ctype: str) -> int:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        head = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        self.writer.write(head.encode() + body)
        await self.writer.drain()
        status = int((await self.reader.readline()).split()[1])
        length, close = 0, False
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            length = int(value) if name.lower() == "content-length" else length
            close = close or (name.lower() == "connection" and "close" in value.lower())
        await self.reader.readexactly(length)
        if close:
            self.writer.close()
            self.writer = None
        return status


async def load(url: str, bodies: list[bytes], clients: int, seconds: float, limit: int, rss_pid: int) -> dict:
    latencies, codes, marks = [], collections.Counter(), {}
    sent = 0
    deadline = time.perf_counter() + seconds
    port = int(url.rsplit(":", 1)[1])

    async def client(i: int) -> None:
        nonlocal sent
        conn = Connection(port)
        while time.perf_counter() < deadline and sent < limit:
            sent += 1
            body = bodies[sent % len(bodies)]
            began = time.perf_counter()
            try:
                codes[await conn.post("/v1/classify?topk=5", body, "image/jpeg")] += 1
            except (OSError, ValueError, IndexError, asyncio.IncompleteReadError) as err:
                codes[type(err).__name__] += 1
                conn = Connection(port)
                continue
            latencies.append(time.perf_counter() - began)
            if len(latencies) == 1000:
                marks["rss_after_1000_mb"] = rss_mb(rss_pid, "VmRSS")
        if conn.writer is not None:
            conn.writer.close()

    began = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(clients)))
    wall = time.perf_counter() - began
    lat = np.array(latencies) * 1000
    return {
        "requests": len(latencies),
        "seconds": wall,
        "rps": len(latencies) / wall,
        "codes": dict(codes),
        "p50_ms": float(np.percentile(lat, 50)),
        "p95_ms": float(np.percentile(lat, 95)),
        "p99_ms": float(np.percentile(lat, 99)),
        **marks,
    }


async def overload(url: str, body: bytes, clients: int) -> dict:
    import httpx

    async def one(http: httpx.AsyncClient) -> tuple[object, str | None, float]:
        began = time.perf_counter()
        try:
            r = await http.post(f"{url}/v1/classify", content=body, headers={"Content-Type": "image/jpeg"})
            return r.status_code, r.headers.get("retry-after"), time.perf_counter() - began
        except httpx.HTTPError as err:
            return type(err).__name__, None, time.perf_counter() - began

    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(timeout=60, limits=limits) as http:
        results = await asyncio.gather(*(one(http) for _ in range(clients)))
    codes = collections.Counter(c for c, _, _ in results)
    refused = [t * 1000 for c, _, t in results if c == 503]
    return {
        "clients": clients,
        "codes": dict(codes),
        "answered": sum(isinstance(c, int) for c, _, _ in results),
        "503_with_retry_after": sum(c == 503 and ra is not None for c, ra, _ in results),
        "503_median_ms": float(np.median(refused)) if refused else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", help="published weights or a .safetensors (default: untrained alexnet_owt)")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--requests", type=int, default=10_000, help="at most this many in the load phase")
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--max-queue", type=int, default=64)
    parser.add_argument("--max-wait-ms", type=float, default=10)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--server-threads", type=int, help="OMP_NUM_THREADS of the server (default: torch's)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import torch

    from alexnet.inference.predictor import Predictor

    sys.path.insert(0, str(Path(__file__).parent))
    from predict_memory import make_weights

    scratch = tempfile.TemporaryDirectory(prefix="alexnet-serve-load-")  # removed at exit: the weights are 244 MB
    tmp = Path(scratch.name)
    weights = args.weights or str(make_weights(tmp / "owt.safetensors"))
    images = make_images(tmp, 64)
    bodies = [p.read_bytes() for p in images]

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    cmd = [
        sys.executable,
        "-m",
        "alexnet.cli",
        "serve",
        "--checkpoint",
        weights,
        "--port",
        str(port),
        "--max-batch",
        str(args.max_batch),
        "--max-queue",
        str(args.max_queue),
        "--max-wait-ms",
        str(args.max_wait_ms),
        "--precision",
        args.precision,
    ]
    env = {**os.environ, **({"OMP_NUM_THREADS": str(args.server_threads)} if args.server_threads else {})}
    server = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env)
    try:
        import httpx

        for _ in range(600):
            try:
                if httpx.get(f"{url}/v2/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        # Offline, in this process while the server idles: the same precision, batches of max-batch, decode included.
        predictor = Predictor.from_path(weights, precision=args.precision)
        torch.set_num_threads(torch.get_num_threads())
        predictor.predict([str(p) for p in images[: args.max_batch]], batch_size=args.max_batch)  # warm-up
        began = time.perf_counter()
        for _ in range(2):
            predictor.predict([str(p) for p in images], batch_size=args.max_batch)
        offline = 2 * len(images) / (time.perf_counter() - began)
        del predictor

        asyncio.run(load(url, bodies, args.clients, 3, 10**9, server.pid))  # warm-up: first batches, allocator
        served = asyncio.run(load(url, bodies, args.clients, args.seconds, args.requests, server.pid))
        served["rss_end_mb"] = rss_mb(server.pid, "VmRSS")
        metrics = httpx.get(f"{url}/metrics").text
        total = float(re.search(r"alexnet_batch_size_sum (\S+)", metrics).group(1))
        count = float(re.search(r"alexnet_batch_size_count (\S+)", metrics).group(1))
        served["mean_batch"] = total / count
        over = asyncio.run(overload(url, bodies[0], 2 * args.max_queue))
        peak = rss_mb(server.pid)
    finally:
        server.terminate()
        code = server.wait(60)
        scratch.cleanup()
    result = {
        "offline_img_s": offline,
        "served": served,
        "overload": over,
        "server_peak_rss_mb": peak,
        "served_over_offline": served["rps"] / offline,
        "p99_over_p50": served["p99_ms"] / served["p50_ms"],
        "sigterm_exit": code,
        "clients": args.clients,
        "precision": args.precision,
        "threads": torch.get_num_threads(),
    }
    if args.json:
        print(json.dumps(result, indent=1))
        return
    s = served
    print(f"offline predict (batches of {args.max_batch}, decode included): {offline:.1f} img/s")
    print(
        f"served, {args.clients} clients, {s['seconds']:.0f} s: {s['rps']:.1f} req/s "
        f"({100 * result['served_over_offline']:.0f}% of offline); p50 {s['p50_ms']:.0f} ms, "
        f"p95 {s['p95_ms']:.0f} ms, p99 {s['p99_ms']:.0f} ms (p99/p50 {result['p99_over_p50']:.2f}); "
        f"codes {s['codes']}; mean batch {s['mean_batch']:.1f}"
    )
    if "rss_after_1000_mb" in s:
        print(
            f"server RSS after 1,000 requests {s['rss_after_1000_mb']:.0f} MB, after {s['requests']:,}: "
            f"{s['rss_end_mb']:.0f} MB; peak {peak:.0f} MB"
        )
    o = over
    print(
        f"overload, {o['clients']} clients at once (queue {args.max_queue}): codes {o['codes']}, answered "
        f"{o['answered']}/{o['clients']}, 503 with Retry-After {o['503_with_retry_after']}, median 503 in "
        f"{o['503_median_ms'] or 0:.0f} ms; SIGTERM exit {code}"
    )


if __name__ == "__main__":
    main()
