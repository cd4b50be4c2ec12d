"""The service behind Debian's nginx with the shipped deploy/nginx.conf, as the README recommends."""

from __future__ import annotations

import base64
import socket
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
import requests

from tests.fake_siliconflow import png
from tests.helpers import answer_text, chat_body, images_in, post_chat
from tests.servers import Gunicorn, Nginx


@pytest.fixture
def stack(fake, production_bin):
    """gunicorn as the Procfile runs it, and nginx in front whose proxy_read_timeout (1 s) is
    shorter than the upstream's latency; `stack(heartbeat)` starts both."""
    started = []

    def start(heartbeat: str = "0.4", read_timeout: str = "1s") -> Nginx:
        server = Gunicorn(
            {
                "API_BASE_URL": fake.url,
                "API_KEYS": "sk-good-ngx1,sk-good-ngx2",
                "PROMPT_EXPANSION": "false",
                "HEARTBEAT_SECONDS": heartbeat,
            },
            production_bin,
        )
        started.append(server)
        if not server.wait_until_up():
            pytest.fail("gunicorn did not start: " + server.stop()[-2000:])
        proxy = Nginx(server.port, read_timeout=read_timeout)
        started.append(proxy)
        return proxy

    yield start
    for process in reversed(started):
        process.stop()


def test_slow_answers_outlast_a_short_proxy_read_timeout(stack, fake):
    fake.state.image_latency = 2.5
    proxy = stack()
    client = openai.OpenAI(base_url=f"{proxy.url}/v1", api_key="x", max_retries=0, timeout=60)

    def stream() -> None:
        content = answer_text(proxy.url, "画一只猫 pic:2", stream=True)
        assert sorted(images_in(content)) == [1, 2]

    def chat() -> None:
        answer = client.chat.completions.create(model="Kwai-Kolors/Kolors", messages=[{"role": "user", "content": "画一只狗"}])
        assert len(images_in(answer.choices[0].message.content)) == 1

    def images_api() -> None:  # what Open WebUI's image settings send: non-stream, b64_json
        images = client.images.generate(model="Kwai-Kolors/Kolors", prompt="a fox", n=1, response_format="b64_json")
        assert base64.b64decode(images.data[0].b64_json).startswith(b"\x89PNG")

    # Three independent slow answers, each longer than nginx's read timeout: side by side, not one after another.
    with ThreadPoolExecutor(3) as pool:
        for done in [pool.submit(check) for check in (stream, chat, images_api)]:
            done.result()


def test_the_images_apis_first_keep_alive_comes_within_one_heartbeat(stack, fake):
    """nginx's idle limit (2 s) is longer than one heartbeat (1.5 s) but shorter than two: a slow
    Images API answer must send its first byte at the first heartbeat, not at the second."""
    fake.state.image_latency = 4.0
    proxy = stack(heartbeat="1.5", read_timeout="2s")
    client = openai.OpenAI(base_url=f"{proxy.url}/v1", api_key="x", max_retries=0, timeout=60)
    images = client.images.generate(model="Kwai-Kolors/Kolors", prompt="a fox", n=1, response_format="b64_json")
    assert base64.b64decode(images.data[0].b64_json).startswith(b"\x89PNG")


def test_an_edit_with_large_pictures_passes_nginx(stack, fake):
    """The shipped config lets through what the service takes: three pictures of several MB."""
    proxy = stack()
    picture = png(32, 32, b"edit") + bytes(6 * 2**20)
    client = openai.OpenAI(base_url=f"{proxy.url}/v1", api_key="x", max_retries=0, timeout=120)
    result = client.images.edit(
        model="Qwen/Qwen-Image-Edit-2509",
        prompt="合成一张",
        response_format="b64_json",
        image=[(f"{i}.png", picture, "image/png") for i in range(3)],
    )
    assert base64.b64decode(result.data[0].b64_json).startswith(b"\x89PNG")
    [call] = fake.state.image_calls()
    assert all(call.body[field].startswith("data:image/png;base64,") for field in ("image", "image2", "image3"))


def test_without_keep_alive_nginx_would_cut_a_slow_answer(stack, fake):
    """The control for the test above: with heartbeats slower than nginx's timeout, it gives up."""
    fake.state.image_latency = 2.5
    proxy = stack(heartbeat="30")
    response = post_chat(proxy.url, chat_body("画一只猫"), stream=False, timeout=30)
    assert response.status_code == 504


def test_slow_clients_wait_at_nginx_not_in_the_service(stack, fake):
    proxy = stack()
    slow = []
    try:
        for _ in range(2100):  # more than the service's own connections: 2 workers x 1000
            sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")  # and then nothing more
            slow.append(sock)
        for _ in range(5):  # answered: the slow ones are held by nginx, not by the service's connections
            assert requests.get(f"{proxy.url}/health", timeout=5).status_code == 200
        assert "画一只猫" in answer_text(proxy.url, "画一只猫", stream=True)
    finally:
        for sock in slow:
            sock.close()
