"""Keys as SiliconFlow is now: how soon a topped-up key draws again, and how soon a key pasted on
one instance draws on another.

    .venv/bin/python bench/keys_bench.py       # about half a minute

The fake SiliconFlow (tests/) answers /v1/user/info with 410, as SiliconFlow's does. The service
runs exactly as the Procfile does (gunicorn, default workers); Debian's redis-server is started
here on a free port for the second measurement. Everything listens on 127.0.0.1 and stops by itself.

| measurement | what |
|---|---|
| a topped-up key | a key refused for balance (`sk-broke-…`) is topped up; pic:2 every 0.2 s: |
| | seconds until one draws with it, against KEY_RECHECK_SECONDS (2 s here) |
| a key pasted on one instance | two instances share Redis; two keys added on the first's admin API; |
| | pic:3 to the second every 0.1 s: seconds until both new keys have drawn there |
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rate_bench import call, services, start, stop  # noqa: E402

from bench import free_port, wait_for  # noqa: E402

ADMIN = "bench-operator-key-0123456789"
SERVICE = "bench-service-key-0123456789"
RECHECK = 2.0


def draw(url: str, text: str, key: str | None = None) -> str:
    body = {"model": "Kwai-Kolors/Kolors", "stream": False, "messages": [{"role": "user", "content": text}]}
    request = urllib.request.Request(
        f"{url}/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})},
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())["choices"][0]["message"]["content"]


def calls_with(fake_url: str, key_tail: str) -> int:
    """Image calls the fake answered with a key ending in `key_tail` (its log, via /fake/stats)."""
    return call(f"{fake_url}/fake/stats").get("by_key", {}).get(key_tail, 0)


def topped_up(fake_url: str) -> str:
    running = services(fake_url, ["sk-broke-topup0001", "sk-good-other0002"], 1, {"KEY_RECHECK_SECONDS": f"{RECHECK:g}"})
    try:
        url = running[0][1]
        draw(url, "画一只猫")  # the broke key is refused once and rests
        call(f"{fake_url}/fake/fund", {"key": "sk-broke-topup0001"})
        funded = time.monotonic()
        while time.monotonic() - funded < 60:
            before = calls_with(fake_url, "0001-ok")
            draw(url, "画一只猫 pic:2")
            if calls_with(fake_url, "0001-ok") > before:
                took = time.monotonic() - funded
                return f"a topped-up key draws again {took:4.1f} s after its top-up (KEY_RECHECK_SECONDS {RECHECK:g} s)"
            time.sleep(0.2)
        return "a topped-up key: did not draw again within 60 s"
    finally:
        for process, _ in running:
            stop(process)


def pasted(fake_url: str, redis_url: str) -> str:
    data = tempfile.mkdtemp(prefix="bench-keys-")
    env = {"REDIS_URL": redis_url, "ADMIN_KEY": ADMIN, "DATA_DIR": data, "API_KEY": SERVICE}
    running = services(fake_url, ["sk-good-first0001"], 2, env)
    try:
        first, second = running[0][1], running[1][1]
        request = urllib.request.Request(
            f"{first}/admin/api/upstream-keys",
            data=json.dumps({"keys": "sk-good-pasted0a0a sk-good-pasted0b0b"}).encode(),
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {ADMIN}"},
        )
        urllib.request.urlopen(request, timeout=30).read()
        added = time.monotonic()
        while time.monotonic() - added < 60:
            draw(second, "画一只猫 pic:3", SERVICE)
            if calls_with(fake_url, "0a0a-ok") and calls_with(fake_url, "0b0b-ok"):
                return f"two keys pasted on one instance both draw on the other {time.monotonic() - added:4.1f} s later"
            time.sleep(0.1)
        return "keys pasted on one instance: not used by the other within 60 s"
    finally:
        for process, _ in running:
            stop(process)
        shutil.rmtree(data, ignore_errors=True)


def main() -> None:
    fake_port = free_port()
    fake = start([sys.executable, "-m", "tests.fake_siliconflow", "--port", str(fake_port), "--image-latency", "0.1"])
    fake_url = f"http://127.0.0.1:{fake_port}"
    redis_home, redis_port = Path(tempfile.mkdtemp(prefix="bench-redis-")), free_port()
    redis_server = shutil.which("redis-server")
    redis = (
        start([redis_server, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--dir", str(redis_home)])
        if redis_server
        else None
    )
    rows = []
    try:
        wait_for(f"{fake_url}/fake/stats")
        rows.append(topped_up(fake_url))
        rows.append(pasted(fake_url, f"redis://127.0.0.1:{redis_port}/0") if redis else "no redis-server: skipped")
    finally:
        stop(fake)
        if redis:
            stop(redis)
        shutil.rmtree(redis_home, ignore_errors=True)
    print("\n".join(rows))
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
