"""The service started exactly as the Procfile says, under gunicorn, streaming over real HTTP."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.conftest import ROOT
from tests.helpers import chat_body, content_of, images_in, post_chat, stream_chunks


def _web_command() -> str:
    line = next(line for line in (ROOT / "Procfile").read_text().splitlines() if line.startswith("web:"))
    return line.removeprefix("web:").strip()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(env_extra: dict[str, str]) -> tuple[subprocess.Popen, int]:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("API_", "MAX_IMAGES"))}
    env.update(PORT=str(port), PATH=f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}", **env_extra)
    process = subprocess.Popen(
        ["bash", "-c", f"exec {_web_command()}"], cwd=ROOT, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    return process, port


def _stop(process: subprocess.Popen) -> str:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
    out, _ = process.communicate(timeout=30)
    return out


@pytest.fixture
def gunicorn(fake):
    process, port = _start({"API_BASE_URL": fake.url, "API_KEYS": "sk-good-gun1,sk-good-gun2"})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{url}/health", timeout=1).status_code == 200:
                break
        except requests.ConnectionError:
            time.sleep(0.1)
    else:
        pytest.fail("gunicorn did not start: " + _stop(process)[-2000:])
    yield url, process
    _stop(process)


def test_procfile_runs_gunicorn_gthread_and_streams(gunicorn, fake):
    url, process = gunicorn
    response = post_chat(url, chat_body("画一只猫 16:9 pic:2", stream=True), stream=True)
    assert response.headers["Content-Type"].startswith("text/event-stream")
    chunks, raw = stream_chunks(response)
    assert raw[-1] == "[DONE]"
    assert sorted(images_in(content_of(chunks))) == [1, 2]
    log = _stop(process)
    assert "gthread" in log


def test_bad_configuration_stops_gunicorn_with_the_variable_named(fake):
    process, _ = _start({"MAX_IMAGES_PER_REQUEST": "abc"})
    try:
        process.wait(timeout=30)
    finally:
        out = _stop(process)
    assert process.returncode != 0
    assert "MAX_IMAGES_PER_REQUEST" in out


def test_dockerfile_runs_the_procfile_command_as_a_non_root_user_on_7860():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^USER (?!root)\w+", dockerfile, re.M)
    assert "EXPOSE 7860" in dockerfile
    cmd = re.search(r'^CMD \["sh", "-c", "exec (.+)"\]', dockerfile, re.M).group(1)
    assert cmd == _web_command()
