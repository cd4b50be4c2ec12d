"""The service started exactly as the Procfile says, under gunicorn, streaming over real HTTP."""

from __future__ import annotations

import json
import os
import re
import socket
import struct
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.helpers import chat_body, content_of, images_in, post_chat, stream_chunks
from tests.servers import Gunicorn, web_command


@pytest.fixture
def gunicorn(fake, production_bin):
    server = Gunicorn({"API_BASE_URL": fake.url, "API_KEYS": "sk-good-gun1,sk-good-gun2"}, production_bin)
    if not server.wait_until_up():
        pytest.fail("gunicorn did not start: " + server.stop()[-2000:])
    yield server
    server.stop()


def test_a_clean_install_runs_the_procfile_with_gevent_and_draws(gunicorn, fake, production_bin):
    """requirements.txt alone, then the Procfile's command: what Docker, Heroku and a VPS run."""
    installed = subprocess.run([str(production_bin / "python"), "-m", "pip", "list", "--format=freeze"],
                               capture_output=True, text=True, check=True).stdout.lower()
    assert "pytest" not in installed and "openai" not in installed  # nothing from the dev requirements
    response = post_chat(gunicorn.url, chat_body("画一只猫 16:9 pic:2", stream=True), stream=True)
    assert response.headers["Content-Type"].startswith("text/event-stream")
    chunks, raw = stream_chunks(response)
    assert raw[-1] == "[DONE]"
    assert sorted(images_in(content_of(chunks))) == [1, 2]
    assert "Using worker: gevent" in gunicorn.stop()


def test_bad_configuration_stops_gunicorn_with_the_variable_named(fake, production_bin):
    server = Gunicorn({"MAX_IMAGES_PER_REQUEST": "abc"}, production_bin)
    try:
        server.process.wait(timeout=30)
    finally:
        out = server.stop()
    assert server.process.returncode != 0
    assert "MAX_IMAGES_PER_REQUEST" in out


def test_dockerfile_runs_the_procfile_command_as_a_non_root_user_on_7860():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^USER (?!root)\w+", dockerfile, re.M)
    assert "EXPOSE 7860" in dockerfile
    cmd = re.search(r'^CMD \["sh", "-c", "exec (.+)"\]', dockerfile, re.M).group(1)
    assert cmd == web_command()


def _threads_and_fds(pid: int) -> tuple[int, int]:
    return len(os.listdir(f"/proc/{pid}/task")), len(os.listdir(f"/proc/{pid}/fd"))


def _abort_stream(port: int) -> None:
    """Start a stream, read its first event, then hang up hard (RST), as a closed browser tab does."""
    body = json.dumps(chat_body("画一只猫 pic:4", stream=True)).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode() + body
        )
        received = b""
        while b"data: " not in received:
            piece = sock.recv(4096)
            if not piece:
                break
            received += piece
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs /proc")
@pytest.mark.parametrize("worker_class", ["gevent", "gthread"])
def test_a_thousand_aborted_streams_leave_no_threads_or_sockets_behind(fake, worker_class, production_bin):
    fake.state.image_latency = 0.5
    server = Gunicorn({
        "API_BASE_URL": fake.url, "API_KEYS": "sk-good-ab1,sk-good-ab2,sk-good-ab3,sk-good-ab4",
        "GUNICORN_WORKER_CLASS": worker_class, "WEB_CONCURRENCY": "1", "GUNICORN_THREADS": "16",
        "GUNICORN_WORKER_CONNECTIONS": "16", "UPSTREAM_WORKERS": "4",
        "HEARTBEAT_SECONDS": "0.05", "PROMPT_EXPANSION": "false",
    }, production_bin)
    url, port = server.url, server.port
    try:
        assert server.wait_until_up()
        worker = server.worker_pid()
        # Warm up: every gunicorn thread and upstream worker thread exists after 16 concurrent streams.
        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(lambda _: post_chat(url, chat_body("画一只猫", stream=True)).text, range(16)))
        assert all("1/1" in a for a in answers)
        time.sleep(1.0)
        threads_before, fds_before = _threads_and_fds(worker)
        calls_before = len(fake.state.image_calls())

        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda _: _abort_stream(port), range(1000)))

        settled = False
        for _ in range(100):  # up to 10 s for the last streams to notice their client is gone
            threads, fds = _threads_and_fds(worker)
            if threads <= threads_before and fds <= fds_before + 4:
                settled = True
                break
            time.sleep(0.1)
        assert settled, f"threads {threads_before} -> {threads}, fds {fds_before} -> {fds}"
        # Images not started when their client left never reached the upstream.
        sent = len(fake.state.image_calls()) - calls_before
        assert sent < 400, f"{sent} of 4000 images were sent upstream for aborted streams"
        # And the service still draws.
        assert "4/4" in post_chat(url, chat_body("画一只猫 pic:4")).json()["choices"][0]["message"]["content"]
    finally:
        server.stop()
