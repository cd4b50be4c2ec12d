"""The service started exactly as the Procfile says, under gunicorn, streaming over real HTTP."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from fnmatch import fnmatch
from pathlib import Path

import pytest
import requests

from tests.conftest import ROOT
from tests.helpers import answer_text, chat_body, content_of, images_in, post_chat, sse_events, stream_chunks, wait_until
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
    installed = subprocess.run(
        [str(production_bin / "python"), "-m", "pip", "list", "--format=freeze"], capture_output=True, text=True, check=True
    ).stdout.lower()
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


def _image_files(into: Path) -> Path:
    """What the Dockerfile's COPY lines put in its WORKDIR, with .dockerignore applied as Docker
    does (a path is left out when it or a folder above it matches): the image's /app, without Docker."""
    ignore = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines() if line.strip()]

    def left_out(relative: str) -> bool:
        parts = relative.split("/")
        verdict = False
        for pattern in ignore:
            keep = pattern.startswith("!")
            if any(fnmatch(("/".join(parts[:n])), pattern.removeprefix("!")) for n in range(1, len(parts) + 1)):
                verdict = not keep
        return verdict

    app = into / "app"
    for line in re.findall(r"^COPY (?!--)(.+)$", (ROOT / "Dockerfile").read_text(), re.M):
        *sources, destination = shlex.split(line)
        for source in sources:
            for found in sorted(ROOT.glob(source.rstrip("/"))):
                files = [found] if found.is_file() else sorted(p for p in found.rglob("*") if p.is_file())
                for file in files:
                    relative = file.relative_to(ROOT).as_posix()
                    if left_out(relative):
                        continue
                    inner = file.name if found.is_file() else file.relative_to(found).as_posix()
                    target = app / destination / inner
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(file, target)
    return app


def test_the_files_the_dockerfile_copies_start_the_procfiles_command_and_draw(fake, production_bin, tmp_path):
    """Every module the app imports is in the image: the Dockerfile's files alone, run as its CMD."""
    app = _image_files(tmp_path)
    assert (app / "siliconflow_proxy.py").is_file() and not (app / "tests").exists() and not (app / ".env").exists()
    assert not list(app.rglob("__pycache__")), "compiled files of the checkout would go into the image"
    env = {"API_BASE_URL": fake.url, "API_KEYS": "sk-good-img1", "DATA_DIR": str(tmp_path / "data")}
    server = Gunicorn(env, production_bin, app, checkout_on_path=False)
    try:
        assert server.wait_until_up(), server.stop()[-2000:]
        assert images_in(answer_text(server.url, "画一只猫", stream=False))
        assert requests.get(server.url + "/", timeout=10).status_code == 200  # the playground's page and files
    finally:
        log = server.stop()
    assert "ModuleNotFoundError" not in log and "Traceback" not in log, log[-2000:]


def _threads_and_fds(pid: int) -> tuple[int, int]:
    return len(os.listdir(f"/proc/{pid}/task")), len(os.listdir(f"/proc/{pid}/fd"))


def _served_connections(port: int) -> int:
    """TCP connections still open on the server's side of `port` (listening and TIME_WAIT ones aside)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not Path(table).exists():
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            if int(local.rsplit(":", 1)[1], 16) == port and state not in ("0A", "06"):  # LISTEN, TIME_WAIT
                count += 1
    return count


def _abort_stream(port: int) -> None:
    """Start a stream, read its first event, then hang up hard (RST), as a closed browser tab does."""
    body = json.dumps(chat_body("画一只猫 pic:4", stream=True)).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
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
    server = Gunicorn(
        {
            "API_BASE_URL": fake.url,
            "API_KEYS": "sk-good-ab1,sk-good-ab2,sk-good-ab3,sk-good-ab4",
            "GUNICORN_WORKER_CLASS": worker_class,
            "WEB_CONCURRENCY": "1",
            "GUNICORN_THREADS": "16",
            "GUNICORN_WORKER_CONNECTIONS": "16",
            "UPSTREAM_WORKERS": "4",
            "HEARTBEAT_SECONDS": "0.05",
            "PROMPT_EXPANSION": "false",
        },
        production_bin,
    )
    url, port = server.url, server.port
    try:
        assert server.wait_until_up()
        worker = server.worker_pid()
        # Warm up: every gunicorn thread and upstream worker thread exists after 16 concurrent streams.
        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(lambda _: post_chat(url, chat_body("画一只猫", stream=True)).text, range(16)))
        assert all("1/1" in a for a in answers)
        # Counted once the worker has closed every warm-up connection, so that they are not counted as its baseline.
        assert wait_until(lambda: _served_connections(port) == 0), "the warm-up's connections stayed open"
        threads_before, fds_before = _threads_and_fds(worker)
        calls_before = len(fake.state.image_calls())

        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda _: _abort_stream(port), range(1000)))

        def settled() -> bool:
            nonlocal threads, fds
            threads, fds = _threads_and_fds(worker)
            return threads <= threads_before and fds <= fds_before + 4

        threads, fds = threads_before, fds_before
        # Up to 10 s for the last streams to notice their client is gone.
        assert wait_until(settled, 10, interval=0.1), f"threads {threads_before} -> {threads}, fds {fds_before} -> {fds}"
        # Images not started when their client left never reached the upstream.
        sent = len(fake.state.image_calls()) - calls_before
        assert sent < 400, f"{sent} of 4000 images were sent upstream for aborted streams"
        # And the service still draws.
        assert "4/4" in post_chat(url, chat_body("画一只猫 pic:4")).json()["choices"][0]["message"]["content"]
    finally:
        server.stop()


def _started(fake, production_bin, **env: str) -> Gunicorn:
    server = Gunicorn({"API_BASE_URL": fake.url, "PROMPT_EXPANSION": "false", **env}, production_bin)
    if not server.wait_until_up():
        pytest.fail("gunicorn did not start: " + server.stop()[-2000:])
    return server


def _stream_with_sigterm(server: Gunicorn, text: str) -> tuple[str, list[str], float]:
    """Start a stream, SIGTERM the master once the images are submitted; (content, raw, seconds after)."""
    response = post_chat(server.url, chat_body(text, stream=True), stream=True, timeout=60)
    raw, content, signalled = [], "", None
    for payload in sse_events(response):
        raw.append(payload)
        if payload != "[DONE]":
            content += json.loads(payload)["choices"][0]["delta"].get("content") or ""
        if signalled is None and "✅" in content:
            server.signal(signal.SIGTERM)
            signalled = time.monotonic()
    assert signalled is not None, content
    return content, raw, time.monotonic() - signalled


# A graceful timeout as short as still leaves the streams time to end themselves before it
# (pipeline.Shutdown.MARGIN, 3 s, before it): the worker is killed when it runs out.
GRACE = 4


def _sigterm_once(server: Gunicorn, condition) -> dict[str, float]:
    """SIGTERM the master as soon as `condition()` holds; {"at": when}, empty if it never did."""
    sent: dict[str, float] = {}

    def send() -> None:
        if wait_until(condition, 10):
            sent["at"] = time.monotonic()
        server.signal(signal.SIGTERM)  # in any case: the request must not hang the test

    threading.Thread(target=send, daemon=True).start()
    return sent


def test_sigterm_ends_a_waiting_stream_with_a_line_and_done(fake, production_bin):
    fake.state.image_latency = 30
    server = _started(
        fake,
        production_bin,
        API_KEYS="sk-good-term1,sk-good-term2",
        HEARTBEAT_SECONDS="0.5",
        GUNICORN_CMD_ARGS=f"--graceful-timeout {GRACE}",
    )
    try:
        content, raw, seconds = _stream_with_sigterm(server, "画一只猫 pic:2")
    finally:
        server.stop()
    assert raw[-1] == "[DONE]"
    assert content.count("服务正在重启或关闭，这张图片没能完成") == 2 and "0/2" in content


def test_a_stream_that_finishes_within_the_grace_period_is_not_cut(fake, production_bin):
    fake.state.image_latency = 2
    server = _started(fake, production_bin, API_KEYS="sk-good-term1", HEARTBEAT_SECONDS="0.5")
    try:
        content, raw, _ = _stream_with_sigterm(server, "画一只猫")
    finally:
        server.stop()
    assert raw[-1] == "[DONE]" and len(images_in(content)) == 1 and "1/1" in content


def test_the_grace_period_fits_the_upstream_timeout(production_bin):
    script = "import runpy; print(runpy.run_path('gunicorn.conf.py')['graceful_timeout'])"
    env = {**os.environ, "UPSTREAM_TIMEOUT": "200", "GUNICORN_WORKER_CLASS": "gthread"}
    out = subprocess.run(
        [str(production_bin / "python"), "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    ).stdout
    assert int(out) > 200


def test_a_half_sent_body_is_dropped_and_the_worker_goes_on(fake, production_bin):
    server = _started(fake, production_bin, API_KEYS="sk-good-half1", CLIENT_BODY_TIMEOUT="1", WEB_CONCURRENCY="1")
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b'Content-Length: 1000\r\n\r\n{"messages"'
            )
            answer = b""
            while piece := sock.recv(4096):
                answer += piece
        # The client is told why, as the README promises, before the connection goes.
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408"), answer[:200]
        assert json.loads(body)["error"]["message"] == "The request body did not arrive within 1 seconds."
        assert requests.get(f"{server.url}/health", timeout=5).status_code == 200
    finally:
        server.stop()


@pytest.mark.parametrize("key", ["sk-drip-gev1", "sk-headdrip-gev1"])
def test_a_dripping_upstream_is_cut_at_the_deadline_under_gevent(fake, production_bin, key):
    fake.state.drip_interval = 0.2
    server = _started(fake, production_bin, API_KEYS=key, UPSTREAM_TIMEOUT="1.5", REQUEST_TIMEOUT="3", MAX_KEY_ATTEMPTS="1")
    try:
        content = answer_text(server.url, "画一只猫", stream=True)
    finally:
        server.stop()
    assert "没有响应" in content and "0/1" in content  # cut: the whole answer would take minutes to drip


def test_huge_upstream_answers_do_not_swell_the_worker(fake, production_bin):
    fake.state.huge_bytes = 200 * 2**20
    server = _started(
        fake,
        production_bin,
        API_KEYS="sk-huge-m1,sk-huge-m2,sk-huge-m3,sk-huge-m4",
        MAX_IMAGE_MB="1",
        MAX_KEY_ATTEMPTS="1",
        WEB_CONCURRENCY="1",
    )
    try:
        content = answer_text(server.url, "画一只猫 pic:4", stream=False)
        status = Path(f"/proc/{server.worker_pid()}/status").read_text()
    finally:
        server.stop()
    assert content.count("上游的回答超过") == 4
    peak_mb = int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024
    assert peak_mb < 120, f"the worker peaked at {peak_mb:.0f} MB"


def test_a_chunked_body_over_a_megabyte_is_a_413_under_gunicorn(gunicorn):
    def pieces():
        yield b'{"prompt": "'
        for _ in range(20):
            yield b"x" * 100_000
        yield b'"}'

    response = requests.post(
        f"{gunicorn.url}/v1/images/generations", data=pieces(), timeout=30, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 413 and "larger than 1 MB" in response.json()["error"]["message"]


def test_sigterm_ends_a_waiting_images_api_call_with_an_error_body(fake, production_bin):
    fake.state.image_latency = 30
    server = _started(
        fake, production_bin, API_KEYS="sk-good-term3", HEARTBEAT_SECONDS="0.5", GUNICORN_CMD_ARGS=f"--graceful-timeout {GRACE}"
    )
    try:
        sent = _sigterm_once(server, lambda: fake.state.image_calls())  # once the image is being drawn
        response = requests.post(f"{server.url}/v1/images/generations", json={"prompt": "a fox"}, timeout=30)
        ended = time.monotonic()
    finally:
        server.stop()
    assert "at" in sent, "the image call never reached the upstream"
    assert response.status_code == 200 and response.content.startswith(b" ")
    assert "the service is restarting" in json.loads(response.content)["error"]["message"]
    assert ended - sent["at"] < GRACE


def test_sigterm_ends_a_stream_still_in_prompt_expansion(fake, production_bin):
    fake.state.expansion_latency = 30
    server = _started(
        fake,
        production_bin,
        API_KEYS="sk-good-term4",
        HEARTBEAT_SECONDS="0.5",
        PROMPT_EXPANSION="true",
        EXPANSION_TIMEOUT="60",
        GUNICORN_CMD_ARGS=f"--graceful-timeout {GRACE}",
    )
    try:
        sent = _sigterm_once(server, lambda: fake.state.chat_calls())  # once the prompt is being expanded
        content = answer_text(server.url, "画一只猫 pic:2", stream=True)
        ended = time.monotonic()
    finally:
        server.stop()
    assert "at" in sent, "the expansion call never reached the upstream"
    assert not fake.state.image_calls()  # SIGTERM came during the expansion
    assert content.count("服务正在重启或关闭") == 2 and "0/2" in content and ended - sent["at"] < GRACE
