"""The key pool (pool.py): which key is handed out, how failures take keys and accounts out and back,
the budgets per account and model, keys healing by use, and accounts the operator declares. The
stores behind it are tested in test_keystate.py and test_keystate_redis.py, the line in test_queue.py."""

from __future__ import annotations

import time

import pytest

from core.errors import Failure
from drawing.reasons import zh
from siliconflow.client import AccountInfo
from siliconflow.keystate import Limit
from siliconflow.leases import Acquired, Lease, key_id
from siliconflow.pool import _with_slack
from tests.siliconflow.pools import KOLORS, QWEN, draw, error, fail, pool_of, take

# --- which key, and failures (a clock that the test moves) -----------------------------------------


def test_least_recently_used_key_first(clock):
    pool = pool_of(("a", "b", "c"), clock)
    handed = []
    for _ in range(6):
        clock.now += 1
        handed.append(take(pool))
        pool.release(Lease(handed[-1]))
    assert handed == ["a", "b", "c", "a", "b", "c"]


def test_untried_keys_come_first_then_tried_ones(clock):
    pool = pool_of(("a", "b"), clock)
    assert take(pool, exclude={"a"}) == "b"
    assert take(pool, exclude={"a", "b"}) in ("a", "b")  # nothing untried: a tried key still draws


def test_duplicates_are_one_key():
    assert len(pool_of(("a", "a", "b"))) == 2


@pytest.mark.parametrize("kind, status", [(Failure.AUTH, "dead"), (Failure.BALANCE, "resting")])
def test_dead_and_broke_keys_leave_the_rotation(clock, kind, status):
    pool = pool_of(("a", "b"), clock)
    fail(pool, "a", kind, None)
    assert {take(pool) for _ in range(4)} == {"b"}
    summary = pool.summary()["keys"]
    assert summary[status] == 1 and summary["healthy"] == 1
    fail(pool, "b", kind, None)
    assert pool.try_acquire(KOLORS) == Acquired(None, None)  # none will come back by waiting


def test_a_broke_key_comes_back_when_its_account_has_money(clock):
    pool = pool_of(("a",), clock)
    fail(pool, "a", Failure.BALANCE, None)
    assert take(pool) is None and pool.broke_keys() == ["a"]
    pool.learn("a", AccountInfo("acct-1", True))
    assert take(pool) == "a"


def test_a_429_rests_the_whole_account_for_that_model_only(clock):
    pool = pool_of(("a1", "a2", "b1"), clock, accounts={"a1": "A", "a2": "A", "b1": "B"}, rest_seconds=60)
    fail(pool, "a1", Failure.RATE_LIMIT)
    assert {draw(pool) for _ in range(3)} == {"b1"}  # a2 shares a1's account
    assert take(pool, QWEN) in ("a1", "a2")  # another model has its own budget
    fail(pool, "b1", Failure.RATE_LIMIT)
    assert pool.try_acquire(KOLORS) == Acquired(None, 60)
    clock.now += 60
    assert take(pool) in ("a1", "a2")


def test_retry_after_is_honoured(clock):
    pool = pool_of(("a",), clock, rest_seconds=60)
    fail(pool, "a", Failure.RATE_LIMIT, retry_after=7)
    assert pool.try_acquire(KOLORS) == Acquired(None, 7)


def test_a_chat_429_says_nothing_of_image_budgets(clock):
    pool = pool_of(("a",), clock)
    fail(pool, "a", Failure.RATE_LIMIT, None)  # no model: a chat call
    assert take(pool) == "a"


def test_a_key_that_keeps_failing_cools_down(clock):
    pool = pool_of(("a", "b"), clock)
    fail(pool, "a", Failure.SERVER)
    assert pool.summary()["keys"]["cooling"] == 0  # one failure is bad luck
    fail(pool, "a", Failure.TIMEOUT)
    assert pool.summary()["keys"]["cooling"] == 1
    fail(pool, "b", Failure.SERVER)
    fail(pool, "b", Failure.SERVER)
    assert pool.try_acquire(KOLORS) == Acquired(None, 10)


def test_a_bad_request_says_nothing_about_the_key(clock):
    pool = pool_of(("a",), clock)
    for _ in range(5):
        fail(pool, "a", Failure.BAD_REQUEST)
    assert pool.summary()["keys"] == {
        "total": 1,
        "healthy": 1,
        "cooling": 0,
        "dead": 0,
        "resting": 0,
        "disabled": 0,
        "calls_in_flight": 0,
    }


def test_outage_says_how_many_keys_and_why(clock):
    pool = pool_of(("a", "b", "c", "d"), clock)
    fail(pool, "a", Failure.AUTH, None)
    fail(pool, "b", Failure.BALANCE, None)
    fail(pool, "c", Failure.SERVER)
    fail(pool, "c", Failure.SERVER)
    fail(pool, "d", Failure.RATE_LIMIT, retry_after=30)
    assert zh(pool.outage(30)) == (
        "全部 4 个上游密钥暂不可用：1 个无效（401）、1 个余额不足、1 个连续出错后冷却中（上游服务出错）、"
        "1 个所在账户已用完本时段的限额或限流冷却中，最早约 30 秒后恢复"
    )


def test_keys_cooling_after_timeouts_are_not_blamed_on_quotas(clock):
    """After 504s and timeouts cool every key, an image that waits out its deadline is told that,
    not that the accounts' quotas are used up."""
    pool = pool_of(("a", "b"), clock)
    for key, kind in (("a", Failure.TIMEOUT), ("b", Failure.SERVER)):
        fail(pool, key, kind)
        fail(pool, key, kind)
    taken = pool.queue.take("r1", KOLORS, (), time.monotonic() + 0.2)
    lease, why = taken.lease, taken.why_not
    assert lease is None
    why = zh(why)
    assert "2 个连续出错后冷却中（" in why and "上游超时" in why and "上游服务出错" in why
    assert "限额已用完" not in why


# --- budgets ----------------------------------------------------------------------------------------


def test_a_budget_is_per_account_and_model_and_slides(clock):
    pool = pool_of(("a1", "a2", "b1"), clock, accounts={"a1": "A", "a2": "A", "b1": "B"}, limits=[Limit(2, 6)])
    granted = [take(pool) for _ in range(5)]
    assert sorted(granted[:4]) == ["a1", "a2", "b1", "b1"]
    assert granted[4] is None  # A has made 2 calls, B 2: the 5th in 6 s is not sent
    # Six seconds, and a little slack: SiliconFlow counts a call when it arrives.
    assert pool.try_acquire(KOLORS) == Acquired(None, pytest.approx(_with_slack(6)))
    assert take(pool, QWEN) is not None  # another model, another budget
    clock.now += 3
    assert pool.try_acquire(KOLORS) == Acquired(None, pytest.approx(_with_slack(6) - 3))
    clock.now = 1000 + _with_slack(6)
    assert take(pool) is not None


def test_a_429_teaches_the_account_its_cap(clock):
    """Four calls go out at once, two get through: the account is now kept at two per window."""
    pool = pool_of(("a",), clock, rest_seconds=60)
    leases = [pool.try_acquire(KOLORS).lease for _ in range(4)]
    for lease in leases[2:]:
        pool.report(lease, error(Failure.RATE_LIMIT))
    for lease in leases[:2]:
        pool.report(lease, None)
    assert pool.try_acquire(KOLORS) == Acquired(None, pytest.approx(_with_slack(60)))
    clock.now += _with_slack(60)
    assert take(pool) == "a" and take(pool) == "a"
    assert pool.try_acquire(KOLORS).lease is None  # a third in the window would be refused


def test_two_limits_are_kept_together(clock):
    pool = pool_of(("a",), clock, limits=[Limit(2, 6), Limit(3, 100)])
    for _ in range(2):
        assert take(pool) == "a"
    clock.now += 7
    assert take(pool) == "a"
    clock.now += 7
    # The short window is free again, the long one not: it frees 100 s (and slack) after the first.
    assert pool.try_acquire(KOLORS) == Acquired(None, pytest.approx(_with_slack(100) - 14))


def test_a_key_whose_account_is_unknown_is_its_own_account(clock):
    pool = pool_of(("a", "b"), clock, limits=[Limit(1, 6)])
    assert {take(pool), take(pool)} == {"a", "b"}
    assert pool.summary()["accounts"] == {"total": 2, "declared": 0, "keys_with_unknown_account": 2, "resting": []}


# --- keys heal by use (SiliconFlow no longer tells balances), accounts the operator declares --------


def test_a_key_refused_for_balance_rests_then_one_call_probes_it_and_a_success_brings_it_back(clock):
    pool = pool_of(("a", "b"), clock, recheck_seconds=10)
    fail(pool, "a", Failure.BALANCE)
    assert {draw(pool) for _ in range(4)} == {"b"}
    [shown] = [k for k in pool.key_states() if k["key_id"] == key_id("a")]
    assert shown["state"] == "resting" and shown["next_try"] == 10 and shown["rest_seconds"] == 10
    clock.now += 10.5
    probe = pool.try_acquire(KOLORS).lease
    assert probe is not None and probe.key == "a" and probe.probing
    assert {take(pool) for _ in range(3)} == {"b"}  # while the probe is out, nobody else tries "a"
    pool.report(probe, error(Failure.BALANCE))  # still no money: the rest doubles
    [shown] = [k for k in pool.key_states() if k["key_id"] == key_id("a")]
    assert shown["rest_seconds"] == 20 and shown["next_try"] == 20
    clock.now += 20.5
    probe = pool.try_acquire(KOLORS).lease
    assert probe is not None and probe.key == "a" and probe.probing
    pool.report(probe, None)  # topped up: it drew
    assert pool.summary()["keys"]["resting"] == 0
    lease = pool.try_acquire(KOLORS, exclude=["b"]).lease
    assert lease is not None and lease.key == "a" and not lease.probing


def test_a_resting_keys_wait_doubles_up_to_six_hours(clock):
    pool = pool_of(("a",), clock, recheck_seconds=600)
    rests = []
    for _ in range(8):
        fail(pool, "a", Failure.BALANCE)
        rests.append(pool.key_states()[0]["rest_seconds"])
    assert rests == [600, 1200, 2400, 4800, 9600, 19200, 21600, 21600]


def test_a_key_refused_401_is_dead_until_the_operator_says_otherwise(clock):
    pool = pool_of(("a", "b"), clock)
    fail(pool, "a", Failure.AUTH)
    clock.now += 7 * 86400
    assert {draw(pool) for _ in range(4)} == {"b"} and pool.key_states()[0]["state"] == "dead"
    pool.revive(key_id("a"))
    assert "a" in {draw(pool) for _ in range(4)}


def test_keys_declared_with_one_name_share_one_account_and_its_budget(clock):
    pool = pool_of(("A/k1", "A/k2", "k3"), clock, limits=[Limit(1, 60)])
    assert pool.account_of(key_id("k1")) == pool.account_of(key_id("k2")) == "A"
    assert pool.account_of(key_id("k3")) == f"key-{key_id('k3')}"  # its own account
    assert {take(pool), take(pool), take(pool)} == {"k1", "k3", None}  # A's one call, k3's one call
    assert pool.summary()["accounts"]["declared"] == 1 and pool.summary()["accounts"]["total"] == 2
