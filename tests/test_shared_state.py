"""One view of the keys for every worker and instance: gunicorn processes as the Procfile runs them,
alone (workers share a SQLite file) and in pairs sharing a real Redis; Redis going away and back."""

from __future__ import annotations

import re
import threading
import time

import pytest
import requests

from tests.helpers import answer_text, images_in
from tests.servers import Gunicorn

SERVED_BY = re.compile(r"\[(\d+)\] siliconflow_proxy: req=\w+ chat")


def _start(fake, production_bin, **env: str) -> Gunicorn:
    server = Gunicorn({"API_BASE_URL": fake.url, "PROMPT_EXPANSION": "false", **env}, production_bin)
    if not server.wait_until_up():
        pytest.fail("gunicorn did not start: " + server.stop()[-2000:])
    return server


def _workers(*servers: Gunicorn) -> set[str]:
    return {pid for server in servers for pid in SERVED_BY.findall(server.log())}


def _draw_at_once(server: Gunicorn, texts: list[str]) -> list[str]:
    answers: list[str] = []
    threads = [threading.Thread(target=lambda t=t: answers.append(answer_text(server.url, t, stream=False))) for t in texts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return answers


def test_the_procfiles_workers_share_dead_keys_without_redis(fake, production_bin):
    server = _start(fake, production_bin, API_KEYS="sk-revoked-w1,sk-good-w2")
    revoked = lambda: [c for c in fake.state.image_calls() if c.key == "sk-revoked-w1"]  # noqa: E731
    try:
        for i in range(10):  # one at a time until a worker has found the revoked key dead
            assert images_in(answer_text(server.url, f"画一只猫 {i}", stream=False))
            if revoked():
                break
        for round_ in range(10):  # then several at once, so that the kernel hands some to the other worker
            answers = _draw_at_once(server, [f"画一只狗 {round_} {i}" for i in range(4)])
            assert len(answers) == 4 and all(images_in(a) for a in answers)
            if len(_workers(server)) >= 2:
                break
        workers = _workers(server)
    finally:
        server.stop()
    assert len(workers) == 2, "the requests should have reached both workers"
    assert len(revoked()) == 1  # found dead by one worker, never tried by the other


def test_the_procfiles_workers_share_one_budget_without_redis(fake, production_bin):
    fake.state.rate_limit = (2, 1.0)
    server = _start(fake, production_bin, API_KEYS="sk-good-acctW-1", IMAGE_RATE_LIMIT="2/1s")
    answers: list[str] = []
    try:
        for round_ in range(6):  # rounds of four at once, until both workers have drawn
            answers += _draw_at_once(server, [f"画一只猫 {round_} {i}" for i in range(4)])
            if len(_workers(server)) == 2:
                break
        workers = _workers(server)
    finally:
        server.stop()
    assert answers and all(len(images_in(a)) == 1 for a in answers)
    assert len(workers) == 2, "the requests should have reached both workers"
    assert fake.state.refused == 0  # two workers, one account, one budget


@pytest.fixture
def two_instances(fake, production_bin, redis_server):
    started = []

    def start(**env: str) -> tuple[Gunicorn, Gunicorn]:
        for _ in range(2):
            started.append(_start(fake, production_bin, REDIS_URL=redis_server.url, **env))
        return started[0], started[1]

    yield start
    for server in started:
        server.stop()


def test_two_instances_share_dead_keys_through_redis(two_instances, fake):
    first, second = two_instances(API_KEYS="sk-revoked-acctC-1,sk-good-acctA-1")
    for i in range(3):  # until the first instance has met the revoked key
        assert images_in(answer_text(first.url, f"画一只猫 {i} pic:2", stream=False))
    assert len([c for c in fake.state.image_calls() if c.key == "sk-revoked-acctC-1"]) == 1
    assert requests.get(f"{second.url}/health", timeout=5).json()["keys"]["dead"] == 1
    for i in range(3):
        assert images_in(answer_text(second.url, f"画一只狗 {i} pic:2", stream=False))
    assert len([c for c in fake.state.image_calls() if c.key == "sk-revoked-acctC-1"]) == 1


def test_two_instances_share_budgets_through_redis(two_instances, fake):
    fake.state.rate_limit = (2, 2.0)
    first, second = two_instances(API_KEYS="A/sk-good-acctA-1,A/sk-good-acctA-2,B/sk-good-acctB-1", IMAGE_RATE_LIMIT="2/2s")
    answers: list[str] = []

    def ask(url: str, i: int) -> None:
        answers.append(answer_text(url, f"画一只狗 {i} pic:2", stream=False))

    started = time.monotonic()
    threads = [threading.Thread(target=ask, args=(server.url, i)) for i, server in enumerate([first, second] * 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.monotonic() - started
    assert sorted(len(images_in(a)) for a in answers) == [2, 2, 2, 2]
    assert fake.state.refused == 0
    # Accounts A and B at 2 per 2 s: 4 images a window, so 8 take two, the second starting at 2 s.
    assert seconds >= 2.0, seconds
    assert _workers(first) and _workers(second)
    health = requests.get(f"{second.url}/health", timeout=5).json()
    assert health["store"]["kind"] == "redis" and health["store"]["reachable"] is True
    assert health["accounts"]["total"] == 2 and health["rate_limit"] == "2/2s"


def test_without_redis_drawing_goes_on_and_health_says_so(two_instances, fake, redis_server):
    first, _ = two_instances(API_KEYS="sk-good-r1,sk-good-r2")
    assert images_in(answer_text(first.url, "画一只猫", stream=True))
    redis_server.stop()
    assert images_in(answer_text(first.url, "画一只狗", stream=True))
    store = requests.get(f"{first.url}/health", timeout=10).json()["store"]
    assert store["reachable"] is False and "local" in store["using"]
    redis_server.start()
    # A worker that found Redis gone tries it again 5 s later, with its next call.
    deadline = time.monotonic() + 20
    while "Redis is reachable again" not in first.log():
        assert time.monotonic() < deadline, "Redis is back but the service does not use it: " + first.log()[-2000:]
        assert images_in(answer_text(first.url, "画一只鸟", stream=True))
        time.sleep(0.5)
    assert requests.get(f"{first.url}/health", timeout=10).json()["store"]["reachable"] is True
    assert "Redis cannot be reached" in first.log()


@pytest.mark.parametrize("name, value", [("IMAGE_RATE_LIMIT", "2 per minute"), ("REDIS_URL", "localhost:6379")])
def test_a_malformed_setting_stops_start_up_naming_it(fake, production_bin, name, value):
    server = Gunicorn({"API_BASE_URL": fake.url, name: value}, production_bin)
    try:
        server.process.wait(timeout=30)
    finally:
        out = server.stop()
    assert server.process.returncode != 0 and f"{name}:" in out


def _redis(redis_server, *command: str) -> bytes:
    import socket

    with socket.create_connection(("127.0.0.1", redis_server.port), timeout=5) as sock:
        sock.sendall((f"*{len(command)}\r\n" + "".join(f"${len(c)}\r\n{c}\r\n" for c in command)).encode())
        return sock.recv(256)


def test_a_redis_out_of_memory_is_degraded_at_health_not_ok(serve, fake, redis_server):
    """PING and reads still work on a Redis out of memory; every write fails. /health read ok."""
    service = serve(redis_url=redis_server.url)
    assert images_in(answer_text(service.url, "画一只猫", stream=False))
    assert _redis(redis_server, "CONFIG", "SET", "maxmemory", "1").startswith(b"+OK")
    try:
        health = requests.get(f"{service.url}/health", timeout=10).json()
        assert health["status"] == "degraded" and "maxmemory" in health["store"]["problem"]
        assert images_in(answer_text(service.url, "画一只狗", stream=False))  # drawn from local state
    finally:
        _redis(redis_server, "CONFIG", "SET", "maxmemory", "0")
