"""Fairness between people: one person's burst does not hold another's picture behind it.

    .venv/bin/python bench/fair_bench.py       # about half a minute

The fake SiliconFlow meters its one account at 2 image calls in any 6 s (0.3 s an image); the
service runs as the Procfile does with `IMAGE_RATE_LIMIT=2/6s` and `ADMIN_KEY`. Person A sends 6
requests of pic:2 at once (12 pictures: six windows); 0.5 s later person B sends one pic:1. B's wait,
with both on the operator's shared key (turns by request: B is one line of seven) and on user keys
of their own (turns by person: B is one line of two). Everything listens on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rate_bench import start, stop  # noqa: E402

from bench import ROOT, free_port, wait_for, web_command  # noqa: E402

ADMIN = "bench-admin-key-0123456789"
SHARED = "bench-service-key-0123"


def post(url: str, body: dict, key: str, timeout: float = 180) -> dict:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def case(fake_url: str, user_keys: bool) -> float:
    post(f"{fake_url}/fake/rate", {"count": 2, "seconds": 6}, "")
    port = free_port()
    env = {
        **os.environ,
        "PORT": str(port),
        "API_BASE_URL": fake_url,
        "API_KEYS": "sk-good-fair-1",
        "API_KEY": SHARED,
        "ADMIN_KEY": ADMIN,
        "IMAGE_RATE_LIMIT": "2/6s",
        "PROMPT_EXPANSION": "false",
        "IMAGE_STORE_DIR": "off",
        "DATA_DIR": tempfile.mkdtemp(prefix="fair-bench-"),
        "REQUEST_TIMEOUT": "120",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    service = start(["bash", "-c", f"exec {web_command()}"], env)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(f"{base}/health")
        a = b = SHARED
        if user_keys:
            a = post(f"{base}/admin/api/keys", {"name": "A"}, ADMIN)["key"]
            b = post(f"{base}/admin/api/keys", {"name": "B"}, ADMIN)["key"]
        waited: dict[str, float] = {}

        def ask(name: str, key: str, text: str, delay: float) -> None:
            time.sleep(delay)
            started = time.monotonic()
            body = {"model": "Kwai-Kolors/Kolors", "messages": [{"role": "user", "content": text}]}
            post(f"{base}/v1/chat/completions", body, key)
            waited[name] = time.monotonic() - started

        jobs = [(f"a{i}", a, f"画一只猫 {i} pic:2", 0.0) for i in range(6)] + [("b", b, "画一只狗", 0.5)]
        threads = [threading.Thread(target=ask, args=job) for job in jobs]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return waited["b"]
    finally:
        stop(service)


def main() -> None:
    fake_port = free_port()
    fake = subprocess.Popen(
        [sys.executable, "-m", "tests.fake_siliconflow", "--port", str(fake_port), "--image-latency", "0.3"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )
    fake_url = f"http://127.0.0.1:{fake_port}"
    try:
        wait_for(f"{fake_url}/fake/stats")
        shared = case(fake_url, user_keys=False)
        own = case(fake_url, user_keys=True)
    finally:
        stop(fake)
    print("\nA: 6 x pic:2 at once; B: pic:1 0.5 s later; one account, 2 pictures per 6 s")
    print(f"B's wait, both on the shared key (turns by request) {shared:5.1f} s")
    print(f"B's wait, each on a user key (turns by person)      {own:5.1f} s")


if __name__ == "__main__":
    main()
