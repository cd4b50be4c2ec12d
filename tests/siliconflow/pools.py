"""Small tools for the key pool's tests (test_pool, test_keystate, test_keystate_redis, test_queue,
test_failover): a clock the test moves, a pool on a fresh store, a call handed a key, a call that
failed."""

from __future__ import annotations

import time

from core.errors import Failure, Reason, UpstreamError
from siliconflow.client import AccountInfo
from siliconflow.keystate_sqlite import LocalStore
from siliconflow.leases import Lease
from siliconflow.pool import KeyPool

KOLORS, QWEN = "Kwai-Kolors/Kolors", "Qwen/Qwen-Image"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


MADE: list[KeyPool] = []  # stopped after each test (conftest.py): a pool's line runs a thread


def pool_of(keys, clock=None, accounts=None, **kwargs) -> KeyPool:
    store = LocalStore(clock=clock) if clock else LocalStore()
    pool = KeyPool(keys, store, clock=clock or time.monotonic, **kwargs)
    MADE.append(pool)
    for key, account in (accounts or {}).items():
        pool.learn(key, AccountInfo(account, True))
    return pool


def error(kind: Failure, retry_after: float | None = None) -> UpstreamError:
    return UpstreamError(kind, Reason.of(str(kind)), retry_after=retry_after)


def take(pool: KeyPool, model: str = KOLORS, exclude=()) -> str | None:
    lease = pool.try_acquire(model, exclude).lease
    return lease.key if lease else None


def draw(pool: KeyPool, model: str = KOLORS) -> str | None:
    """A call that is handed a key and answers at once (the key is not busy afterwards)."""
    lease = pool.try_acquire(model).lease
    if lease:
        pool.report(lease, None)
    return lease.key if lease else None


def fail(
    pool: KeyPool,
    key: str,
    kind: Failure,
    model: str | None = KOLORS,
    retry_after: float | None = None,
    ticket: str | None = None,
) -> None:
    pool.report(Lease(key, model, ticket), error(kind, retry_after))
