"""Memory of one large edit: how much a gunicorn worker grows for three big pictures and `n` images.

    .venv/bin/python bench/edit_memory.py        # about twenty seconds

The service runs as the Procfile does, with WEB_CONCURRENCY=1 so that the one worker takes every
request; the fake SiliconFlow (tests/) runs in its own process. Each row is a fresh service: one
POST /v1/images/edits with three pictures of MB megabytes each, and the worker's peak resident
set (VmHWM) before and after. Everything listens on 127.0.0.1 and stops by itself.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.fake_siliconflow import png  # noqa: E402
from tests.servers import Gunicorn, free_port  # noqa: E402


def peak_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


def one(n: int, mb: float, fake_url: str) -> tuple[float, float, int]:
    service = Gunicorn({"API_BASE_URL": fake_url, "API_KEYS": "sk-good-a1,sk-good-b2", "WEB_CONCURRENCY": "1",
                        "PROMPT_EXPANSION": "false"}, Path(sys.executable).parent)
    try:
        assert service.wait_until_up(), service.log()
        worker = service.worker_pid()
        requests.get(f"{service.url}/v1/models", timeout=30)  # the model list, asked once
        before = peak_mb(worker)
        picture = png(32, 32, b"x") + bytes(int(mb * 2**20))
        files = [("image[]", (f"{i}.png", picture, "image/png")) for i in range(3)]
        response = requests.post(f"{service.url}/v1/images/edits", files=files, timeout=300,
                                 data={"prompt": "合成一张", "model": "Qwen/Qwen-Image-Edit-2509", "n": str(n)})
        return before, peak_mb(worker), response.status_code
    finally:
        service.stop()


def main() -> None:
    port = free_port()
    fake = subprocess.Popen([sys.executable, "-m", "tests.fake_siliconflow", "--port", str(port)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):  # the fake answers /v1/models once it listens
            try:
                requests.get(f"http://127.0.0.1:{port}/v1/models", timeout=1)
                break
            except requests.ConnectionError:
                time.sleep(0.1)
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
