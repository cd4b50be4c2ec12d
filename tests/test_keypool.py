"""The key pool's bookkeeping: which key is handed out, and how failures take keys out and back."""

from __future__ import annotations

import threading

import pytest

from upstream import KeyPool, UpstreamError


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def error(kind: str, retry_after: float | None = None) -> UpstreamError:
    return UpstreamError(kind, kind, retry_after=retry_after)


def test_least_recently_used_key_first(clock):
    pool = KeyPool(("a", "b", "c"), clock=clock)
    handed = []
    for _ in range(6):
        clock.now += 1
        handed.append(pool.acquire())
    assert handed == ["a", "b", "c", "a", "b", "c"]
    assert pool.acquire(exclude={"a", "b", "c"}) is None


def test_duplicates_are_one_key():
    assert len(KeyPool(("a", "a", "b"))) == 2


@pytest.mark.parametrize("kind, status", [("auth", "dead"), ("balance", "no_balance")])
def test_dead_and_broke_keys_leave_the_rotation(clock, kind, status):
    pool = KeyPool(("a", "b"), clock=clock)
    pool.report("a", error(kind))
    assert {pool.acquire() for _ in range(4)} == {"b"}
    assert pool.summary()[status] == 1 and pool.summary()["healthy"] == 1
    assert pool.next_ready_in(exclude={"b"}) is None  # "a" will not come back by waiting


def test_broke_key_comes_back_when_revived(clock):
    pool = KeyPool(("a",), clock=clock)
    pool.report("a", error("balance"))
    assert pool.acquire() is None and pool.broke_keys() == ["a"]
    pool.revive("a")
    assert pool.acquire() == "a"


def test_rate_limited_key_backs_off_growing_up_to_five_minutes(clock):
    pool = KeyPool(("a",), clock=clock)
    pauses = []
    for _ in range(8):
        pool.report("a", error("rate_limit"))
        pauses.append(pool.next_ready_in())
        clock.now += pauses[-1]
        assert pool.acquire() == "a"
    assert pauses == [5, 10, 20, 40, 80, 160, 300, 300]
    pool.report("a", None)  # a success resets the streak
    pool.report("a", error("rate_limit"))
    assert pool.next_ready_in() == 5


def test_retry_after_is_honoured(clock):
    pool = KeyPool(("a", "b"), clock=clock)
    pool.report("a", error("rate_limit", retry_after=42))
    assert pool.next_ready_in(exclude={"b"}) == 42
    assert pool.acquire() == "b" and pool.acquire() == "b"
    clock.now += 42
    assert pool.acquire() == "a"


def test_a_key_that_keeps_failing_cools_down(clock):
    pool = KeyPool(("a", "b"), clock=clock)
    pool.report("a", error("server"))
    assert pool.summary()["cooling"] == 0  # one failure is bad luck
    pool.report("a", error("timeout"))
    assert pool.summary()["cooling"] == 1
    assert pool.next_ready_in(exclude={"b"}) == 10


def test_a_bad_request_says_nothing_about_the_key(clock):
    pool = KeyPool(("a",), clock=clock)
    for _ in range(5):
        pool.report("a", error("bad_request"))
    assert pool.summary() == {"total": 1, "healthy": 1, "cooling": 0, "dead": 0, "no_balance": 0, "calls_in_flight": 0}


def test_outage_says_how_many_keys_and_why(clock):
    pool = KeyPool(("a", "b", "c", "d"), clock=clock)
    pool.report("a", error("auth"))
    pool.report("b", error("balance"))
    pool.report("c", error("rate_limit", retry_after=30))
    pool.report("d", error("rate_limit", retry_after=60))
    message = pool.outage()
    assert message == "全部 4 个上游密钥暂不可用：1 个无效（401）、1 个余额不足、2 个限流或出错后冷却中，最早约 30 秒后恢复"


def test_concurrent_acquires_spread_over_keys():
    keys = tuple(f"k{i}" for i in range(8))
    pool = KeyPool(keys)
    handed: list[str] = []
    barrier = threading.Barrier(8)

    def take() -> None:
        barrier.wait()
        handed.append(pool.acquire())

    threads = [threading.Thread(target=take) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(handed) == sorted(keys)


def test_keys_that_failed_lately_or_are_busy_come_last(clock):
    pool = KeyPool(("a", "b", "c"), clock=clock)
    pool.report(pool.acquire(), error("server"))  # "a" failed once: still usable, but last choice
    assert pool.acquire() == "b"  # and "b" is now busy
    assert pool.acquire() == "c"
    pool.release("c")
    assert pool.acquire() == "c"  # "b" and "c" both clean: the one not busy
    pool.release("b")
    pool.release("c")
    clock.now += 1
    assert pool.acquire(exclude={"b", "c"}) == "a"  # still handed out when nothing else will do


def test_a_success_clears_the_failure_record(clock):
    pool = KeyPool(("a", "b"), clock=clock)
    pool.report(pool.acquire(), error("server"))
    pool.report(pool.acquire(), None)  # "b"
    clock.now += 1
    assert pool.acquire() == "b"
    pool.release("b")
    pool.report(pool.acquire(exclude={"b"}), None)  # "a" works again
    clock.now += 1
    assert pool.acquire() == "a"  # least recently used once the record is clean
