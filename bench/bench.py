"""Benchmark of the job path on the simulator. Prints numbers; asserts nothing.

Starts the simulator and the studio as their own processes on 127.0.0.1, then measures:
- time from POST /api/tasks to its 202 `queued` answer (median, p95),
- status-poll requests per second (GET /api/tasks/{id} and the HTMX history partial),
- the studio's peak RSS (VmHWM) while ingesting 3 images of about 10 MB each.

Run: python bench/bench.py [--jobs 40] [--seconds 5]
"""

from __future__ import annotations

import argparse
import io
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_up(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def png(width: int, height: int, seed: int) -> bytes:
    img = Image.new("RGB", (width, height), (seed % 256, 80, 160))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def big_bmp(seed: int) -> bytes:
    # 1868 x 1868 x 3 bytes + header = 10,468,470 bytes, just under the 10 MB limit.
    img = Image.effect_noise((1868, 1868), 60 + seed).convert("RGB")
    buf = io.BytesIO()
    img.save(buf, "BMP")
    return buf.getvalue()


def vm_hwm_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return -1


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=40)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=4)
    args = parser.parse_args()

    sim_port, app_port = free_port(), free_port()
    data = tempfile.mkdtemp(prefix="qes-bench-")
    env = dict(
        os.environ,
        QES_DATA_DIR=data,
        QES_EVOLINK_API_KEY="bench",
        QES_EVOLINK_BASE_URL=f"http://127.0.0.1:{sim_port}",
        QES_EVOLINK_FILES_URL=f"http://127.0.0.1:{sim_port}",
        QES_JOBS_PER_MINUTE="0",
        QES_JOBS_PER_MINUTE_PER_IP="0",
        QES_MAX_RUNNING_PER_USER="1000",
        QES_POLL_INTERVAL="0.2",
        QES_HISTORY_LIMIT="1000",
    )
    sim = subprocess.Popen(
        [sys.executable, "-m", "app.upstream.simulator", "--port", str(sim_port), "--delay", "0.5"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    app = subprocess.Popen(
        [sys.executable, "-m", "app", "--port", str(app_port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{app_port}"
    try:
        wait_up(f"http://127.0.0.1:{sim_port}/_sim/stats")
        wait_up(base + "/healthz")
        client = httpx.Client(base_url=base, timeout=60)
        client.get("/")  # the session cookie

        latencies = []
        last_id = ""
        for i in range(args.jobs):
            files = [("images", ("b.png", png(512, 512, i), "image/png"))]
            t0 = time.perf_counter()
            r = client.post("/api/tasks", data={"prompt": f"bench {i}"}, files=files)
            latencies.append((time.perf_counter() - t0) * 1000)
            if r.status_code != 202:
                print("unexpected answer:", r.status_code, r.text[:200])
                return
            last_id = r.json()["id"]
        print(f"POST /api/tasks -> 202 queued ({args.jobs} jobs, one 512x512 PNG each):")
        print(f"  median {statistics.median(latencies):.1f} ms, p95 {pct(latencies, 0.95):.1f} ms")

        for path in (f"/api/tasks/{last_id}", "/partials/history"):
            count = 0
            lock = threading.Lock()
            stop = time.monotonic() + args.seconds
            cookies = dict(client.cookies)

            def hammer(path: str = path, stop: float = stop, cookies: dict = cookies) -> None:
                nonlocal count
                with httpx.Client(base_url=base, cookies=cookies, timeout=30) as c:
                    while time.monotonic() < stop:
                        c.get(path).raise_for_status()
                        with lock:  # noqa: B023 (the lock of this round, joined below)
                            count += 1

            threads = [threading.Thread(target=hammer) for _ in range(args.threads)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            rate = count / args.seconds
            print(
                f"GET {path}: {rate:.0f} requests/s ({args.threads} clients, {args.seconds:.0f} s)"
            )

        before = vm_hwm_kb(app.pid)
        images = [big_bmp(i) for i in range(3)]
        files = [("images", (f"big{i}.bmp", d, "image/bmp")) for i, d in enumerate(images)]
        t0 = time.perf_counter()
        r = client.post("/api/tasks", data={"prompt": "big ingest"}, files=files)
        took = time.perf_counter() - t0
        after = vm_hwm_kb(app.pid)
        sizes = ", ".join(f"{len(d) / 1048576:.2f}" for d in images)
        print(f"Ingest of 3 BMP images ({sizes} MB): HTTP {r.status_code} in {took:.2f} s")
        print(
            f"  studio peak RSS (VmHWM): {before / 1024:.0f} MB before, {after / 1024:.0f} MB after"
        )
    finally:
        app.terminate()
        sim.terminate()
        app.wait(20)
        sim.wait(20)


if __name__ == "__main__":
    main()
