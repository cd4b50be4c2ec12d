"""Memory of large edits: how much gunicorn grows for three big pictures and `n` images.

    .venv/bin/python bench/edit_memory.py               # one edit at a time, about twenty seconds
    .venv/bin/python bench/edit_memory.py --concurrent  # 8 chat edits at once, then 6 /v1/images/edits

One at a time: the service runs as the Procfile does, with WEB_CONCURRENCY=1 so that the one worker
takes every request; the fake SiliconFlow (tests/) runs in its own process. Each row is a fresh
service: one POST /v1/images/edits with three pictures of MB megabytes each, and the worker's peak
resident set (VmHWM) before and after.

--concurrent: the service exactly as the Procfile runs it (default settings: 2 gevent workers),
the fake answering each image after 1 s; 8 chat edits (three 18 MB pictures as data: URIs in one
message) sent at once, then 6 edits (three 19 MB uploads, n=4) at once. Each row gives the whole
gunicorn tree's peak resident set (master + workers, sampled every 20 ms), what the tree still
holds once every answer is in, and the statuses. Everything listens on 127.0.0.1 and stops by itself.
"""

from __future__ import annotations

import argparse
import base64
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import Peak, rss_mb, tree  # noqa: E402  (bench/bench.py, beside this file)
from tests.fake_siliconflow import png  # noqa: E402
from tests.servers import Gunicorn, free_port  # noqa: E402

BIN = Path(os.environ["PRODUCTION_VENV"]) / "bin" if os.environ.get("PRODUCTION_VENV") else Path(sys.executable).parent


def peak_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


def one(n: int, mb: float, fake_url: str) -> tuple[float, float, int]:
    service = Gunicorn(
        {"API_BASE_URL": fake_url, "API_KEYS": "sk-good-a1,sk-good-b2", "WEB_CONCURRENCY": "1", "PROMPT_EXPANSION": "false"}, BIN
    )
    try:
        assert service.wait_until_up(), service.log()
        worker = service.worker_pid()
        requests.get(f"{service.url}/v1/models", timeout=30)  # the model list, asked once
        before = peak_mb(worker)
        picture = png(32, 32, b"x") + bytes(int(mb * 2**20))
        files = [("image[]", (f"{i}.png", picture, "image/png")) for i in range(3)]
        response = requests.post(
            f"{service.url}/v1/images/edits",
            files=files,
            timeout=300,
            data={"prompt": "合成一张", "model": "Qwen/Qwen-Image-Edit-2509", "n": str(n)},
        )
        return before, peak_mb(worker), response.status_code
    finally:
        service.stop()


def at_once(service: Gunicorn, count: int, send) -> tuple[float, float, Counter]:
    """`count` requests made by `send` at the same moment: the tree's peak, what it holds after, statuses."""
    requests.get(f"{service.url}/v1/models", timeout=30)
    go = threading.Barrier(count)

    def one(_: int) -> str:
        go.wait()
        try:
            response = send()
        except requests.RequestException as exc:
            return f"dropped ({type(exc).__name__})"
        if response.status_code == 200:
            return "200"
        message = response.json()["error"]["message"][:60]
        return f"{response.status_code} Retry-After {response.headers.get('Retry-After')} ({message}…)"

    with Peak(service.process.pid) as peak, ThreadPoolExecutor(count) as pool:
        statuses = Counter(pool.map(one, range(count)))
    return peak.peak, rss_mb(tree(service.process.pid)), statuses


def concurrent(fake_url: str) -> None:
    service = Gunicorn(
        {"API_BASE_URL": fake_url, "API_KEYS": ",".join(f"sk-good-{i:04d}" for i in range(32)), "PROMPT_EXPANSION": "false"}, BIN
    )
    try:
        assert service.wait_until_up(), service.log()
        idle = rss_mb(tree(service.process.pid))
        print(f"idle tree: {idle:.0f} MB")
        print("| load | tree peak | tree after | answers |")
        print("|---|---|---|---|")
        uri = "data:image/png;base64," + base64.b64encode(png(32, 32, b"x") + bytes(18 * 2**20)).decode()
        chat = {
            "model": "Qwen/Qwen-Image-Edit-2509",
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "把它们合成一张"},
                        *({"type": "image_url", "image_url": {"url": uri}},) * 3,
                    ],
                }
            ],
        }
        peak, after, statuses = at_once(
            service, 8, lambda: requests.post(f"{service.url}/v1/chat/completions", json=chat, timeout=600)
        )
        print(f"| 8 chat edits at once, 3 × 18 MB | {peak:.0f} MB | {after:.0f} MB | {dict(statuses)} |")

        picture = png(32, 32, b"x") + bytes(19 * 2**20)
        files = [("image[]", (f"{i}.png", picture, "image/png")) for i in range(3)]
        peak, after, statuses = at_once(
            service,
            6,
            lambda: requests.post(
                f"{service.url}/v1/images/edits",
                files=files,
                timeout=600,
                data={"prompt": "合成一张", "model": "Qwen/Qwen-Image-Edit-2509", "n": "4"},
            ),
        )
        print(f"| 6 /v1/images/edits at once, 3 × 19 MB, n=4 | {peak:.0f} MB | {after:.0f} MB | {dict(statuses)} |")
    finally:
        service.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--concurrent", action="store_true", help="8 chat edits at once, then 6 image edits")
    args = parser.parse_args()
    port = free_port()
    fake = subprocess.Popen(
        [sys.executable, "-m", "tests.fake_siliconflow", "--port", str(port), "--image-latency", "1" if args.concurrent else "0"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):  # the fake answers /v1/models once it listens
            try:
                requests.get(f"http://127.0.0.1:{port}/v1/models", timeout=1)
                break
            except requests.ConnectionError:
                time.sleep(0.1)
        if args.concurrent:
            concurrent(f"http://127.0.0.1:{port}")
            return
        print("| pictures | n | worker peak before | after | growth | status |")
        print("|---|---|---|---|---|---|")
        for n, mb in ((1, 19), (4, 19), (4, 5)):
            before, after, status = one(n, mb, f"http://127.0.0.1:{port}")
            print(f"| 3 × {mb:g} MB | {n} | {before:.0f} MB | {after:.0f} MB | {after - before:.0f} MB | {status} |")
            time.sleep(0.2)
    finally:
        fake.terminate()
        fake.wait(10)


if __name__ == "__main__":
    main()
