"""What keeping a picture costs the answer: time to the first picture line with the built-in store
and without it, when SiliconFlow's storage is far away; and the memory of many streams keeping.

    .venv/bin/python bench/keep_bench.py            # about a minute
    .venv/bin/python bench/keep_bench.py --streams 200

The fake SiliconFlow answers a picture at once (L = 1 s here, as bench.py) and serves its 1.5 MB
PNG (a 1024x1024 picture) at 2 MB/s after a 0.2 s first byte: a server abroad fetching from
SiliconFlow's storage in China. The service runs as the Procfile says. Rows: the first picture
line in a chat stream and the Images API's JSON (url), median of `--samples`, keeping off and on;
fetching the link shown at once (served while it is kept); and the peak RSS of the gunicorn tree
under N concurrent streams with keeping on (each picture spooled to disk as it arrives, never
held whole in memory).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import ROOT, Peak, body, concurrent, free_port, pct, wait_for, web_command  # noqa: E402

L = 1.0
PICTURE = {"first_byte": 0.2, "bytes_per_second": 2 * 2**20, "bytes": 1_500_000}
LINK = re.compile(r"!\[image1\|[^\]]*\]\((\S+?)\)")


def _post(url: str, data: dict) -> None:
    request = urllib.request.Request(url, json.dumps(data).encode(), {"Content-Type": "application/json"})
    urllib.request.urlopen(request, timeout=10).read()


async def first_line(url: str) -> tuple[float, str]:
    """Seconds to the first picture line of a chat stream, and the link it shows."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        started = time.perf_counter()
        async with session.post(url + "/v1/chat/completions", data=body("画一只猫", True)) as response:
            buffer, content, seen = b"", "", None
            async for piece in response.content.iter_any():
                buffer += piece
                while b"\n\n" in buffer:
                    event, buffer = buffer.split(b"\n\n", 1)
                    for line in event.decode().splitlines():
                        if line.startswith("data: {"):
                            for choice in json.loads(line[6:]).get("choices", []):
                                content += choice.get("delta", {}).get("content") or ""
                if seen is None and (found := LINK.search(content)):
                    seen = (time.perf_counter() - started, found[1])
            if seen is None:
                raise SystemExit("no picture line in the stream")
            return seen


async def images_api(url: str) -> tuple[float, str]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        started = time.perf_counter()
        async with session.post(url + "/v1/images/generations", json={"prompt": "a cat"}) as response:
            answer = await response.json(content_type=None)
        return time.perf_counter() - started, answer["data"][0]["url"]


async def fetch(link: str) -> tuple[float, int]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        started = time.perf_counter()
        async with session.get(link) as response:
            data = await response.read()
        return time.perf_counter() - started, len(data)


def start(fake_port: int, env_extra: dict[str, str]) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {
        **os.environ,
        "PORT": str(port),
        "API_BASE_URL": f"http://127.0.0.1:{fake_port}",
        "API_KEYS": ",".join(f"sk-good-keep-{i:03d}" for i in range(64)),
        "PROMPT_EXPANSION": "false",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        **env_extra,
    }
    env.pop("API_KEY", None)
    service = subprocess.Popen(
        ["bash", "-c", f"exec {web_command()}"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    wait_for(f"http://127.0.0.1:{port}/health")
    return service, f"http://127.0.0.1:{port}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=6)
    parser.add_argument("--streams", type=int, default=500, help="concurrent streams for the memory row")
    args = parser.parse_args()
    fake_port = free_port()
    fake = subprocess.Popen(
        [sys.executable, "-m", "tests.fake_siliconflow", "--port", str(fake_port), "--image-latency", str(L)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
    )
    rows: list[tuple[str, str]] = []
    try:
        wait_for(f"http://127.0.0.1:{fake_port}/fake/stats")
        _post(f"http://127.0.0.1:{fake_port}/fake/pictures", PICTURE)
        for label, extra in (("off (IMAGE_STORE_DIR=off)", {"IMAGE_STORE_DIR": "off"}), ("on (the default)", {})):
            data = tempfile.mkdtemp(prefix="keep-bench-")
            service, url = start(fake_port, {"DATA_DIR": data, **extra})
            try:
                asyncio.run(first_line(url))  # warm up
                lines, links = zip(*(asyncio.run(first_line(url)) for _ in range(args.samples)), strict=True)
                apis = [asyncio.run(images_api(url))[0] for _ in range(args.samples)]
                rows.append((f"first picture line, keeping {label}", f"median {statistics.median(lines):.2f} s"))
                rows.append((f"Images API JSON (url), keeping {label}", f"median {statistics.median(apis):.2f} s"))
                if label.startswith("on"):
                    seconds, size = asyncio.run(fetch(asyncio.run(first_line(url))[1]))
                    rows.append(("the link shown, fetched at once", f"{size} bytes in {seconds:.2f} s (one download)"))
                    _post(f"http://127.0.0.1:{fake_port}/fake/pictures", {**PICTURE, "first_byte": 0, "bytes_per_second": 0})
                    time.sleep(1.0)
                    with Peak(service.pid) as peak:
                        results = asyncio.run(concurrent(url + "/v1/chat/completions", body("画一只猫", True), args.streams))
                    totals = [t for ok, _, t in results if ok]
                    rows.append(
                        (
                            f"{args.streams} concurrent streams keeping 1.5 MB pictures",
                            f"{100 * len(totals) / args.streams:.0f} % ok, p99 {pct(totals, 99):.2f} s, "
                            f"peak RSS {peak.peak:.0f} MB",
                        )
                    )
                    _post(f"http://127.0.0.1:{fake_port}/fake/pictures", PICTURE)
            finally:
                service.terminate()
                service.wait(30)
    finally:
        fake.terminate()
        fake.wait(10)
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"{label:<{width}}  {value}")


if __name__ == "__main__":
    main()
