"""Peak memory of `alexnet serve` under many concurrent uploads of a decompression-heavy image (issue 21 §3).

Starts a real server process, measures its resident memory at idle, sends N concurrent uploads of a PNG that
decodes to many megapixels (a solid colour: a few hundred KB on the wire), samples the server's RSS every 10 ms
while they run, and again a few seconds after. Prints the figures; the target is a peak under 2 GB above idle that
returns near idle.

    python benchmarks/serve_memory.py                    # 32 uploads of 9000×9000 (81 MP) against the default budget
    python benchmarks/serve_memory.py --budget-mp 1000   # what it would cost without a budget worth the name
"""

from __future__ import annotations

import argparse
import io
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.inference.test_serving import Server, _weights


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--uploads", type=int, default=32)
    parser.add_argument("--side", type=int, default=9000)
    parser.add_argument("--budget-mp", type=float, default=100.0)
    args = parser.parse_args()
    root = Path("/tmp/alexnet-serve-memory")
    root.mkdir(exist_ok=True)
    weights = _weights(root / "small.safetensors", "alexnet_small", 32, width=0.25)
    buf = io.BytesIO()
    Image.new("RGB", (args.side, args.side), (30, 140, 200)).save(buf, format="PNG")
    png = buf.getvalue()
    srv = Server(weights, "--decode-budget-mp", str(args.budget_mp), "--max-body-mb", "16", "--timeout", "300")
    try:
        idle = rss_mb(srv.proc.pid)
        peak, done = [idle], threading.Event()

        def sample() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], rss_mb(srv.proc.pid))
                time.sleep(0.01)

        sampler = threading.Thread(target=sample)
        sampler.start()
        began = time.perf_counter()

        def upload(_: int) -> int:
            r = httpx.post(f"{srv.url}/v1/classify", content=png, headers={"Content-Type": "image/png"}, timeout=600)
            return r.status_code

        with ThreadPoolExecutor(args.uploads) as pool:
            codes = list(pool.map(upload, range(args.uploads)))
        seconds = time.perf_counter() - began
        done.set()
        sampler.join()
        time.sleep(3)
        after = rss_mb(srv.proc.pid)
    finally:
        srv.stop()
    side = args.side
    print(
        f"{args.uploads} concurrent uploads of a {side}×{side} PNG ({side * side / 1e6:.0f} MP, "
        f"{len(png) / 1e3:.0f} KB), decode budget {args.budget_mp:g} MP: status codes {sorted(set(codes))}, "
        f"{seconds:.1f} s"
    )
    print(
        f"server RSS: idle {idle:.0f} MB, peak {peak[0]:.0f} MB (+{peak[0] - idle:.0f} MB), 3 s after "
        f"{after:.0f} MB (+{after - idle:.0f} MB)"
    )


if __name__ == "__main__":
    main()
