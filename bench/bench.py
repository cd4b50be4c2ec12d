"""End-to-end benchmark: the service started as the Procfile does, against the fake SiliconFlow.

    .venv/bin/python bench/bench.py            # the full table (about two minutes)
    .venv/bin/python bench/bench.py --quick    # smaller samples
    .venv/bin/python bench/bench.py --redis    # key state in a redis-server started here
    .venv/bin/python bench/bench.py --keep s3  # pictures kept in S3 (moto's server, started here)

The fake upstream runs in its own process with image latency L and expansion latency E; the
service is `gunicorn` from the Procfile with `gunicorn.conf.py`; the load comes from one asyncio
process (aiohttp), so the client is not the bottleneck. Memory is the peak resident set of the
whole gunicorn process tree, sampled every 20 ms; CPU is the tree's user+system time over the run
divided by the number of requests. Everything listens on 127.0.0.1 and stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
L, E = 1.0, 0.3
CLK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, seconds: float = 30) -> None:
    import urllib.request

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{url} did not come up")


S3_SERVERS: list[subprocess.Popen] = []


def keeping(keep: str, data: str) -> dict[str, str]:
    """The service's environment for who keeps the pictures; for S3, moto's server started here."""
    if keep == "none":
        return {"IMAGE_STORE_DIR": "off"}
    if keep == "local":
        return {"DATA_DIR": data}
    import boto3

    port = free_port()
    S3_SERVERS.append(
        subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
    )
    endpoint = f"http://127.0.0.1:{port}"
    wait_for(f"{endpoint}/moto-api/")
    credentials = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench-secret", "AWS_REGION": "us-east-1"}
    boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="bench",
        aws_secret_access_key="bench-secret",
    ).create_bucket(Bucket="bench")
    return {**credentials, "AWS_ENDPOINT_URL_S3": endpoint, "S3_BUCKET": "bench"}


def web_command() -> str:
    line = next(x for x in (ROOT / "Procfile").read_text().splitlines() if x.startswith("web:"))
    return line.removeprefix("web:").strip()


def tree(root: int) -> list[int]:
    """`root` and all its descendants, from /proc."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            parents.setdefault(ppid, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(parents.get(pid, []))
    return found


def rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1])
        except OSError:
            pass
    return total * PAGE_KB / 1024


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except OSError:
            pass
    return total / CLK


class Peak:
    """Samples the tree's resident memory in a thread while a load runs."""

    def __init__(self, root: int):
        self.root, self.peak, self._stop = root, 0.0, threading.Event()

    def __enter__(self) -> Peak:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        pids = tree(self.root)
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, rss_mb(pids))

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def set_latency(fake_port: int, image: float, expansion: float) -> None:
    import urllib.request

    request = urllib.request.Request(
        f"http://127.0.0.1:{fake_port}/fake/latency",
        method="POST",
        data=json.dumps({"image": image, "expansion": expansion}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=5):
        pass


def body(text: str, stream: bool) -> bytes:
    return json.dumps(
        {
            "model": "Kwai-Kolors/Kolors",
            "stream": stream,
            "messages": [{"role": "user", "content": text}],
        }
    ).encode()


async def one(session: aiohttp.ClientSession, url: str, payload: bytes, images: int) -> tuple[bool, float, float]:
    """(succeeded, time to first byte, total time) of one request."""
    started = time.perf_counter()
    first = None
    data = b""
    try:
        async with session.post(url, data=payload, headers={"Content-Type": "application/json"}) as response:
            async for piece in response.content.iter_any():
                if first is None:
                    first = time.perf_counter() - started
                data += piece
            ok = response.status == 200
    except (TimeoutError, aiohttp.ClientError):
        return False, float("nan"), time.perf_counter() - started
    total = time.perf_counter() - started
    text = data.decode(errors="replace")
    ok = ok and text.count("![image") == images and f"{images}/{images}" in text
    return ok, first if first is not None else total, total


async def sequential(url: str, payload: bytes, images: int, n: int) -> list[tuple[bool, float, float]]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        return [await one(session, url, payload, images) for _ in range(n)]


async def concurrent(url: str, payload: bytes, n: int) -> list[tuple[bool, float, float]]:
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        return await asyncio.gather(*(one(session, url, payload, 1) for _ in range(n)))


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller samples")
    parser.add_argument("--levels", default="50,200,500", help="concurrent streams to try")
    parser.add_argument("--redis", action="store_true", help="share key state through a redis-server started here")
    parser.add_argument(
        "--keep",
        choices=("local", "none", "s3"),
        default="local",
        help="who keeps the pictures: the built-in store (the default set-up), nobody, or S3 (a local moto server)",
    )
    args = parser.parse_args()
    samples = 15 if args.quick else 50

    fake_port, port = free_port(), free_port()
    fake = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.fake_siliconflow",
            "--port",
            str(fake_port),
            "--image-latency",
            str(L),
            "--expansion-latency",
            str(E),
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )
    env = {
        **os.environ,
        "PORT": str(port),
        "API_BASE_URL": f"http://127.0.0.1:{fake_port}",
        "API_KEYS": ",".join(f"sk-good-bench-{i:03d}" for i in range(64)),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    env.pop("API_KEY", None)
    data = tempfile.mkdtemp(prefix="bench-data-")
    env.update(keeping(args.keep, data))
    redis = None
    if args.redis:
        redis_port = free_port()
        redis = subprocess.Popen(
            ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            cwd="/tmp",
            stdout=subprocess.DEVNULL,
            start_new_session=True,
        )
        env["REDIS_URL"] = f"redis://127.0.0.1:{redis_port}/0"
    service = subprocess.Popen(
        ["bash", "-c", f"exec {web_command()}"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    rows: list[tuple[str, str]] = []
    try:
        wait_for(f"http://127.0.0.1:{port}/health")
        wait_for(f"http://127.0.0.1:{fake_port}/fake/stats")
        # Warm every worker (each learns the accounts of its keys on its first request), not just
        # the one that happens to accept a lone request: a cold worker is one slow sample.
        asyncio.run(sequential(url, body("warm up", True), 1, 3))
        asyncio.run(concurrent(url, body("warm up", True), 16))

        one_image = asyncio.run(sequential(url, body("画一只猫", True), 1, samples))
        assert all(ok for ok, _, _ in one_image), "single-image streams failed"
        ttfb = [first * 1000 for _, first, _ in one_image]
        added = [(total - L - E) * 1000 for _, _, total in one_image]
        rows.append(("stream time to first byte, p50 / p99", f"{pct(ttfb, 50):.1f} / {pct(ttfb, 99):.1f} ms"))
        rows.append(("added latency (total - L - E), p50 / p99", f"{pct(added, 50):.1f} / {pct(added, 99):.1f} ms"))

        # The same stream with an upstream that answers at once: what the service itself costs,
        # without the machine's wake-up latency after 0.3 s and 1 s of idling.
        set_latency(fake_port, 0.0, 0.0)
        floor = asyncio.run(sequential(url, body("画一只猫", True), 1, samples))
        set_latency(fake_port, L, E)
        totals0 = [total * 1000 for _, _, total in floor]
        rows.append(("same stream with L = E = 0, p50 / p99", f"{pct(totals0, 50):.1f} / {pct(totals0, 99):.1f} ms"))

        four = asyncio.run(sequential(url, body("画一只猫 pic:4", True), 4, max(5, samples // 3)))
        assert all(ok for ok, _, _ in four), "pic:4 streams failed"
        ratio = statistics.mean(t for _, _, t in four) / statistics.mean(t for _, _, t in one_image)
        rows.append(("pic:4 total / pic:1 total", f"{ratio:.3f}"))

        for label, stream, levels in (("stream", True, args.levels), ("non-stream", False, "200")):
            for n in (int(x) for x in levels.split(",")):
                time.sleep(1.0)
                pids = tree(service.pid)
                cpu_before = cpu_seconds(pids)
                fake_before, own_before = cpu_seconds([fake.pid]), time.process_time()
                with Peak(service.pid) as peak:
                    started = time.perf_counter()
                    results = asyncio.run(concurrent(url, body("画一只猫", stream), n))
                    wall = time.perf_counter() - started
                cpu = cpu_seconds(tree(service.pid)) - cpu_before
                others = (cpu_seconds([fake.pid]) - fake_before, time.process_time() - own_before)
                totals = [t for ok, _, t in results if ok]
                share = 100 * len(totals) / n
                p50 = pct(totals, 50) if totals else float("nan")
                p99 = pct(totals, 99) if totals else float("nan")
                rows.append(
                    (
                        f"{n} concurrent {label}",
                        f"{share:.0f} % ok, p50 {p50:.2f} s, p99 {p99:.2f} s, peak RSS {peak.peak:.0f} MB, "
                        f"CPU {cpu / n * 1000:.2f} ms/request (wall {wall:.1f} s; "
                        f"CPU of the fake upstream {others[0]:.1f} s, of the load generator {others[1]:.1f} s)",
                    )
                )
    finally:
        for process in (service, fake, *([redis] if redis else []), *S3_SERVERS):
            try:
                os.killpg(process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            process.wait(timeout=30)

        shutil.rmtree(data, ignore_errors=True)

    shared = "Redis" if args.redis else "this instance's workers (SQLite)"
    print(f"\nL = {L} s, E = {E} s, {os.cpu_count()} cores, service: {web_command()}, key state shared by {shared}")
    print(f"pictures kept by: {args.keep}")
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


if __name__ == "__main__":
    main()
