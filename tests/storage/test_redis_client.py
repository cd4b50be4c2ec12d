"""One way to reach Redis (redis_client.py), against a real redis-server: a process's store never
opens more than MAX_CONNECTIONS connections however many callers it has (the rest wait briefly for
one, then fail), and a Redis that stops answering costs a call its short timeout, not a hang."""

from __future__ import annotations

import socket
import threading

import pytest
import redis

from storage.redis_client import MAX_CONNECTIONS, redis_client
from tests.helpers import wait_until


def test_callers_beyond_the_pool_wait_for_a_connection_then_fail_instead_of_opening_more(redis_server):
    client = redis_client(redis_server.url, socket_timeout=60)  # long enough for a BLPOP to hold its connection
    watcher = redis.Redis.from_url(redis_server.url)
    held = [threading.Thread(target=lambda: client.blpop(["test:never"], timeout=0), daemon=True) for _ in range(MAX_CONNECTIONS)]
    for thread in held:
        thread.start()
    assert wait_until(lambda: watcher.info("clients")["blocked_clients"] == MAX_CONNECTIONS, timeout=20)
    with pytest.raises(redis.ConnectionError, match="No connection available"):
        client.get("test:one-more")  # waited its two seconds for a free connection; none came
    assert watcher.info("clients")["connected_clients"] == MAX_CONNECTIONS + 1  # + the watcher
    watcher.lpush("test:never", *range(MAX_CONNECTIONS))  # let them all go
    for thread in held:
        thread.join(10)
    assert client.set("test:after", "1") and client.get("test:after") == b"1"  # connections came back to the pool


@pytest.fixture
def silent():
    """A server that takes connections and never says a word; it hangs up after 30 s."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except TimeoutError:
                continue

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    timer = threading.Timer(30, lambda: [conn.close() for conn in accepted])
    timer.start()
    yield f"redis://127.0.0.1:{listener.getsockname()[1]}/0"
    stop.set()
    server.join()
    timer.cancel()
    for conn in accepted:
        conn.close()
    listener.close()


def test_a_redis_that_stops_answering_is_a_timeout_not_a_hang(silent):
    """The call fails by its own socket timeout, long before the server would hang up."""
    with pytest.raises(redis.TimeoutError):
        redis_client(silent, socket_timeout=0.3).get("anything")


def test_values_come_back_as_the_bytes_stored_for_the_stores_to_decode(redis_server):
    client = redis_client(redis_server.url)
    client.set("test:raw", "画一只猫".encode())
    assert client.get("test:raw") == "画一只猫".encode()
