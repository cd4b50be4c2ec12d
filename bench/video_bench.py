"""Video benchmark: what video jobs cost the service, started as the Procfile does.

    .venv/bin/python bench/video_bench.py      # about a minute

The fake SiliconFlow (tests/) runs in its own process with its video contract: each job waits 1 s
in the queue, then 4 s in progress, then links a clip. The service is gunicorn from the Procfile
(default workers, VIDEO_POLL_SECONDS=1 so the run is short; the default is 5) keeping clips in
the built-in store under a temporary DATA_DIR. Two cases:

- 20 jobs at once through `POST /v1/videos` (the fake's 9 KB clip): the service tree's CPU per
  job, the upstream status calls per job, the time from the clip's readiness to its being kept;
- one job whose clip is 200 MB (the fake pads it): the tree's peak resident memory while it is
  downloaded and kept (streamed through a temporary file: it should not grow by the clip's size).

Everything listens on 127.0.0.1 and stops by itself.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import ROOT, Peak, cpu_seconds, free_port, tree, wait_for, web_command  # noqa: E402

QUEUE, RUNNING = 1.0, 4.0


def call(url: str, payload: dict | None = None, method: str | None = None) -> dict:
    data = json.dumps(payload).encode() if payload is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def jobs_done(base: str, ids: list[str], seconds: float) -> dict[str, dict]:
    deadline, done = time.monotonic() + seconds, {}
    while time.monotonic() < deadline and len(done) < len(ids):
        for video_id in ids:
            if video_id not in done:
                video = call(f"{base}/v1/videos/{video_id}")
                if video["status"] in ("completed", "failed"):
                    done[video_id] = video
        time.sleep(0.2)
    return done


def main() -> None:
    fake_port, port = free_port(), free_port()
    data = tempfile.mkdtemp(prefix="video-bench-")
    fake = subprocess.Popen(
        [sys.executable, "-m", "tests.fake_siliconflow", "--port", str(fake_port)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )
    env = {
        **os.environ,
        "PORT": str(port),
        "API_BASE_URL": f"http://127.0.0.1:{fake_port}",
        "API_KEYS": ",".join(f"sk-good-video-{i:02d}" for i in range(8)),
        "PROMPT_EXPANSION": "false",
        "VIDEO_POLL_SECONDS": "1",
        "MAX_VIDEO_MB": "300",
        "DATA_DIR": data,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    env.pop("API_KEY", None)
    service = subprocess.Popen(
        ["bash", "-c", f"exec {web_command()}"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    base, fake_url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{fake_port}"
    rows = []
    try:
        wait_for(f"{base}/health")
        wait_for(f"{fake_url}/fake/stats")
        call(f"{fake_url}/fake/video", {"queue": QUEUE, "seconds": RUNNING, "bytes": 0})
        pids = tree(service.pid)
        before = cpu_seconds(pids)
        started = time.monotonic()
        ids = [
            call(f"{base}/v1/videos", {"prompt": f"a cat, take {i}", "model": "Wan-AI/Wan2.2-T2V-A14B"})["id"] for i in range(20)
        ]
        done = jobs_done(base, ids, 60)
        wall = time.monotonic() - started
        cpu = cpu_seconds(tree(service.pid)) - before
        stats = call(f"{fake_url}/fake/stats")
        completed = [v for v in done.values() if v["status"] == "completed"]
        lag = [v["completed_at"] - v["created_at"] - (QUEUE + RUNNING) for v in completed]
        rows.append(("20 jobs at once", f"{len(completed)}/20 completed in {wall:.1f} s (each {QUEUE + RUNNING:g} s upstream)"))
        rows.append(("service CPU per job", f"{cpu / 20 * 1000:.1f} ms (submit, polls, download, keep, the client's reads)"))
        rows.append(
            ("status calls per job", f"{stats['video_polls'] / 20:.1f} (VIDEO_POLL_SECONDS=1 over {QUEUE + RUNNING:g} s)")
        )
        rows.append(("ready to kept, max", f"{max(lag):.1f} s (whole seconds: created_at and completed_at)"))

        call(f"{fake_url}/fake/video", {"queue": 0.2, "seconds": 0.5, "bytes": 200 * 2**20})
        idle = Peak(service.pid)
        with idle:
            time.sleep(0.5)
        with Peak(service.pid) as peak:
            video_id = call(f"{base}/v1/videos", {"prompt": "a long cat", "model": "Wan-AI/Wan2.2-T2V-A14B"})["id"]
            [big] = jobs_done(base, [video_id], 120).values()
        size = len(list(Path(data, "images").glob("*.mp4")))
        rows.append(
            (
                "one 200 MB clip",
                f"{big['status']}; tree peak RSS {peak.peak:.0f} MB against {idle.peak:.0f} MB idle; {size} clips on disk",
            )
        )
    finally:
        for process in (service, fake):
            try:
                os.killpg(process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            process.wait(timeout=30)
        shutil.rmtree(data, ignore_errors=True)
    print(f"\nservice: {web_command()}, {os.cpu_count()} cores")
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


if __name__ == "__main__":
    main()
