"""Rate-limit benchmark: how close the service comes to what SiliconFlow's budgets allow.

    .venv/bin/python bench/rate_bench.py       # about four minutes

The fake SiliconFlow (tests/) meters every account per model: 2 image calls in any 6 seconds, a
minute scaled down tenfold; each image takes 0.3 s; its /v1/user/info answers 410 as SiliconFlow's
does, so the keys' accounts are the ones declared (`NAME/sk-…`). The service runs exactly as the Procfile does
(gunicorn, default workers), alone or as two instances sharing a Redis (Debian's redis-server,
started here on a free port). For each situation: the wall time, the ideal the budget allows, their
ratio, and the calls refused with 429. Everything listens on 127.0.0.1 and stops by itself.

| situation | requests |
|---|---|
| 4 keys on 4 accounts | 4 requests of pic:4 at once: 16 images, 8 a window: ideal 6 s + 0.3 s |
| 4 keys on 2 accounts | the same 16 images, 4 a window: ideal 18 s + 0.3 s |
| 1 key, pic:6 then pic:1 0.5 s later | pic:1's own wait: ideal one window (5.5 s after it starts) |
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import ROOT, free_port, wait_for, web_command  # noqa: E402

WINDOW, PER_WINDOW, LATENCY = 6.0, 2, 0.3


def call(url: str, payload: dict | None = None, timeout: float = 120) -> dict:
    data = json.dumps(payload).encode() if payload is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def start(command: list[str], env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )


def stop(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    process.wait(timeout=30)


def flush_redis(url: str | None) -> None:
    """Each case starts with accounts that have made no calls: Redis remembers budgets across restarts."""
    if not url:
        return
    host, port = url.removeprefix("redis://").split("/")[0].split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(b"FLUSHALL\r\n")
        sock.recv(64)


def services(fake_url: str, keys: list[str], instances: int, env_extra: dict) -> list[tuple[subprocess.Popen, str]]:
    flush_redis(env_extra.get("REDIS_URL"))
    started = []
    for _ in range(instances):
        port = free_port()
        env = {
            **os.environ,
            "PORT": str(port),
            "API_BASE_URL": fake_url,
            "API_KEYS": ",".join(keys),
            "PROMPT_EXPANSION": "false",
            "MAX_IMAGES_PER_REQUEST": "8",
            "IMAGE_STORE_DIR": "off",  # budgets only: keeping the pictures is bench.py's question
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            **env_extra,
        }
        if "API_KEY" not in env_extra:
            env.pop("API_KEY", None)
        process = start(["bash", "-c", f"exec {web_command()}"], env)
        started.append((process, f"http://127.0.0.1:{port}"))
    for _, url in started:
        wait_for(f"{url}/health")
    return started


def draw(url: str, text: str) -> tuple[int, float]:
    started = time.monotonic()
    body = {"model": "Kwai-Kolors/Kolors", "stream": False, "messages": [{"role": "user", "content": text}]}
    content = call(f"{url}/v1/chat/completions", body)["choices"][0]["message"]["content"]
    return content.count("![image"), time.monotonic() - started


def at_once(jobs: list[tuple[str, str, float]]) -> dict[str, tuple[int, float]]:
    """Run (name, url + text, delay) jobs in parallel; {name: (images, seconds from its own start)}."""
    results: dict[str, tuple[int, float]] = {}

    def run(name: str, url: str, text: str, delay: float) -> None:
        time.sleep(delay)
        results[name] = draw(url, text)

    threads = [threading.Thread(target=run, args=job) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def situation(fake_url: str, name: str, instances: int, env_extra: dict) -> list[str]:
    rows = []
    cases = [
        # Accounts as the operator declares them (NAME/key): /v1/user/info answers 410, as SiliconFlow's does.
        ("4 keys on 4 accounts, 4 x pic:4", [f"{a}/sk-good-acct{a}-1" for a in "ABCD"], WINDOW + LATENCY),
        ("4 keys on 2 accounts, 4 x pic:4", [f"{a}/sk-good-acct{a}-{i}" for a in "AB" for i in (1, 2)], 3 * WINDOW + LATENCY),
    ]
    for label, keys, ideal in cases:
        call(f"{fake_url}/fake/rate", {"count": PER_WINDOW, "seconds": WINDOW})
        running = services(fake_url, keys, instances, env_extra)
        try:
            urls = [url for _, url in running]
            started = time.monotonic()
            results = at_once([(f"r{i}", urls[i % len(urls)], f"画一只猫 {i} pic:4", 0.0) for i in range(4)])
            wall = time.monotonic() - started
        finally:
            for process, _ in running:
                stop(process)
        images = sum(n for n, _ in results.values())
        refused = call(f"{fake_url}/fake/stats")["refused"]
        rows.append(
            f"{name:<34} {label:<34} {images}/16 images, {wall:5.1f} s, ideal {ideal:4.1f} s, "
            f"ratio {wall / ideal:.2f}, refused {refused}"
        )
    call(f"{fake_url}/fake/rate", {"count": PER_WINDOW, "seconds": WINDOW})
    running = services(fake_url, ["sk-good-solo-1"], instances, env_extra)
    try:
        urls = [url for _, url in running]
        results = at_once([("big", urls[0], "画一只猫 pic:6", 0.0), ("small", urls[-1], "画一只狗", 0.5)])
    finally:
        for process, _ in running:
            stop(process)
    refused = call(f"{fake_url}/fake/stats")["refused"]
    ideal = WINDOW - 0.5 + LATENCY
    rows.append(
        f"{name:<34} {'1 key, pic:6 then pic:1':<34} pic:1 waited {results['small'][1]:4.1f} s "
        f"(ideal {ideal:.1f} s, ratio {results['small'][1] / ideal:.2f}); pic:6 took "
        f"{results['big'][1]:4.1f} s; refused {refused}"
    )
    return rows


def main() -> None:
    fake_port = free_port()
    fake = start([sys.executable, "-m", "tests.fake_siliconflow", "--port", str(fake_port), "--image-latency", str(LATENCY)])
    fake_url = f"http://127.0.0.1:{fake_port}"
    redis_home = Path(tempfile.mkdtemp(prefix="bench-redis-"))
    redis_port = free_port()
    redis_server = shutil.which("redis-server")
    redis = (
        start(
            [
                redis_server,
                "--port",
                str(redis_port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(redis_home),
            ]
        )
        if redis_server
        else None
    )
    rows: list[str] = []
    try:
        wait_for(f"{fake_url}/fake/stats")
        budget = {"IMAGE_RATE_LIMIT": f"{PER_WINDOW}/{WINDOW:g}s"}
        rows += situation(fake_url, "one instance, budget set", 1, budget)
        rows += situation(fake_url, "one instance, learned (no budget)", 1, {"RATE_LIMIT_REST": f"{WINDOW:g}"})
        if redis:
            shared = {"REDIS_URL": f"redis://127.0.0.1:{redis_port}/0"}
            rows += situation(fake_url, "two instances + Redis, budget set", 2, {**budget, **shared})
            rows += situation(fake_url, "two instances + Redis, learned", 2, {"RATE_LIMIT_REST": f"{WINDOW:g}", **shared})
        else:
            rows.append("two instances + Redis: skipped, no redis-server on this machine")
    finally:
        stop(fake)
        if redis:
            stop(redis)
        shutil.rmtree(redis_home, ignore_errors=True)
    print(
        f"\nfake SiliconFlow: {PER_WINDOW} image calls per account and model in any {WINDOW:g} s, "
        f"{LATENCY} s per image; service: {web_command()} (default workers)"
    )
    for row in rows:
        print(row)


if __name__ == "__main__":
    main()
