"""Fixtures of the key pool's tests: a clock the test moves, and the two stores behind one interface."""

from __future__ import annotations

import pytest

from siliconflow.keystate_redis import RedisStore
from siliconflow.keystate_sqlite import LocalStore
from tests.siliconflow.pools import MADE, Clock


@pytest.fixture(autouse=True)
def stop_the_pools_lines():
    """A pool's line serves waiting calls on a thread of its own: stopped when the test ends."""
    yield
    while MADE:
        MADE.pop().queue.stop()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(params=["local", "redis"])
def store(request):
    """A SQLite file (shared by one instance's processes) or a real Redis (shared by every instance)."""
    if request.param == "local":
        store = LocalStore()
        yield store
        store.remove()
    else:
        server = request.getfixturevalue("redis_server")
        yield RedisStore(server.url, prefix="test:")
