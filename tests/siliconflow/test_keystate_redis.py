"""The key state in a real Redis (keystate_redis.py): keys named by a hash, never by their secret,
and what drawing does when Redis goes away: local state behind the fallback, shared again later."""

from __future__ import annotations

import time

import pytest

from core.errors import Failure
from siliconflow.client import AccountInfo
from siliconflow.keystate import FallbackStore, Limit
from siliconflow.keystate_redis import RedisStore
from siliconflow.keystate_sqlite import LocalStore
from siliconflow.leases import key_id
from siliconflow.pool import KeyPool
from tests.siliconflow.pools import KOLORS, Clock, draw, error, fail, take


def test_keys_are_stored_by_hash_never_by_secret(redis_server):
    store = RedisStore(redis_server.url, prefix="test:")
    pool = KeyPool(["sk-secretsecret-1"], store, limits=[Limit(1, 30)])
    pool.learn("sk-secretsecret-1", AccountInfo("A", True))
    fail(pool, "sk-secretsecret-1", Failure.AUTH, None)
    names = [name.decode() for name in store.client.keys("*")]
    assert names and not any("secret" in name for name in names)
    assert f"test:dead:{key_id('sk-secretsecret-1')}" in names


def test_without_redis_the_fallback_draws_on_local_state_and_shares_again_later(redis_server):
    store = FallbackStore(RedisStore(redis_server.url, prefix="test:"), LocalStore(), retry_seconds=0.2)
    pool = KeyPool(["a"], store)
    assert take(pool) == "a" and store.describe()["reachable"] is True
    redis_server.stop()
    started = time.monotonic()
    assert take(pool) == "a"  # no failure, just local state
    assert time.monotonic() - started < 2.5
    assert store.describe()["reachable"] is False
    redis_server.start()
    time.sleep(0.25)
    assert store.describe()["reachable"] is True
    fail(pool, "a", Failure.AUTH, None)
    assert store.primary.get([f"dead:{key_id('a')}"])  # written to Redis again


def test_redis_going_away_while_a_call_is_out_loses_nothing_the_call_learned(redis_server, logged):
    """A key is handed out from Redis, Redis dies before the call answers 401: the answer is still
    learned (locally), the next pictures go to the other key, and the operator reads one line."""
    moment = Clock()
    store = FallbackStore(RedisStore(redis_server.url, prefix="test:"), LocalStore(), retry_seconds=30, clock=moment)
    pool = KeyPool(["a", "b"], store)
    lease = pool.try_acquire(KOLORS).lease
    assert lease.key == "a" and store.reachable
    redis_server.stop()
    with pytest.raises(store.primary.failures):  # the Redis store alone raises; the fallback takes over
        store.primary.get(["dead:x"])
    pool.report(lease, error(Failure.AUTH))  # no exception: the call's picture is not failed for it
    assert [draw(pool) for _ in range(3)] == ["b"] * 3 and pool.summary()["keys"]["dead"] == 1
    assert not store.reachable and "Redis cannot be reached" in store.describe()["problem"]
    assert len(logged.lines("Redis cannot be reached")) == 1  # one line for the outage, not one per call
    redis_server.start()
    assert not store.describe()["reachable"]  # left alone for retry_seconds: no call pays for a look
    moment.now += 30
    assert store.describe()["reachable"] and logged.lines("Redis is reachable again")
    # Redis's view is the shared one again: what was learned meanwhile stayed local, and "a" will be
    # learned again by its next call.
    assert pool.summary()["keys"]["dead"] == 0
