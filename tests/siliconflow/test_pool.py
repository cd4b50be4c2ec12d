"""The key pool: which key is handed out, how failures take keys and accounts out and back, the
budgets per account and model, the stores behind it (SQLite and a real Redis), and the line."""

from __future__ import annotations

import threading
import time

import pytest

from core.errors import Failure, Reason, UpstreamError
from drawing.reasons import zh
from siliconflow.client import AccountInfo
from siliconflow.keystate import FallbackStore, Limit
from siliconflow.keystate_redis import RedisStore
from siliconflow.keystate_sqlite import LocalStore
from siliconflow.leases import Acquired, Lease, Taken, key_id
from siliconflow.pool import KeyPool, _with_slack
from tests.helpers import wait_until

KOLORS, QWEN = "Kwai-Kolors/Kolors", "Qwen/Qwen-Image"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def pool_of(keys, clock=None, accounts=None, **kwargs) -> KeyPool:
    store = LocalStore(clock=clock) if clock else LocalStore()
    pool = KeyPool(keys, store, clock=clock or time.monotonic, **kwargs)
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


# --- the stores behind one interface: SQLite across processes' connections, and a real Redis --------


@pytest.fixture(params=["local", "redis"])
def store(request):
    if request.param == "local":
        store = LocalStore()
        yield store
        store.remove()
    else:
        server = request.getfixturevalue("redis_server")
        yield RedisStore(server.url, prefix="test:")


def test_a_budget_slot_is_reserved_once_under_a_race(store):
    pool = KeyPool([f"k{i}" for i in range(8)], store, limits=[Limit(3, 30)])
    for key in pool.keys:
        pool.learn(key, AccountInfo("shared", True))
    barrier = threading.Barrier(16)
    granted = []

    def race():
        barrier.wait()
        lease = pool.try_acquire(KOLORS).lease
        granted.append(lease.key if lease else None)

    threads = [threading.Thread(target=race) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len([key for key in granted if key]) == 3


def test_facts_expire_and_a_claim_is_won_once(store):
    store.put("cool:x", "1", 0.3)
    store.put("acct:x", "A", None)
    assert set(store.get(["cool:x", "acct:x", "dead:x"])) == {"cool:x", "acct:x"}
    assert store.get(["acct:x"])["acct:x"] == ("A", None)
    assert store.claim("lock:job", 0.3) and not store.claim("lock:job", 0.3)
    time.sleep(0.35)
    assert set(store.get(["cool:x", "acct:x"])) == {"acct:x"}
    assert store.claim("lock:job", 0.3)
    store.drop("acct:x")
    assert store.get(["acct:x"]) == {}


def test_the_window_frees_in_real_time(store):
    pool = KeyPool(["a"], store, limits=[Limit(1, 0.4)])
    assert take(pool) == "a"
    acquired = pool.try_acquire(KOLORS)
    lease, wait = acquired.lease, acquired.wait
    assert lease is None and 0.2 < wait <= _with_slack(0.4)
    time.sleep(wait + 0.02)
    assert take(pool) == "a"


def test_two_pools_on_one_store_share_dead_keys_and_budgets(store):
    first, second = KeyPool(["a", "b"], store, limits=[Limit(1, 30)]), KeyPool(["a", "b"], store, limits=[Limit(1, 30)])
    fail(first, "a", Failure.AUTH, None)
    assert second.summary()["keys"]["dead"] == 1
    assert second.try_acquire(KOLORS).lease.key == "b"
    assert first.try_acquire(KOLORS).lease is None  # b's budget went to the other pool


def test_a_request_that_waited_longer_has_the_turn_across_pools(store):
    """Two processes' lines share one store: a free key goes to the request served longest ago."""
    first, second = KeyPool(["a"], store, limits=[Limit(1, 0.3)]), KeyPool(["a"], store, limits=[Limit(1, 0.3)])
    assert first.try_acquire(KOLORS, request="big").lease is not None  # "big" is served now
    assert second.try_acquire(KOLORS, request="small").lease is None  # "small" waits, from now on
    time.sleep(0.4)
    acquired = first.try_acquire(KOLORS, request="big")
    lease, yielded = acquired.lease, acquired.yielded
    assert lease is None and yielded  # the key is free, but "small" has waited longer
    assert second.try_acquire(KOLORS, request="small").lease is not None
    time.sleep(0.4)
    assert first.try_acquire(KOLORS, request="big", force=True).lease is not None


def test_a_refused_burst_is_not_retried_on_an_account_whose_answers_are_on_the_way(store):
    """Without a budget set, four calls go to each of two accounts at once; A's two refusals come
    back first. Their retries wait for B's own answers instead of going to B and being refused too."""
    pool = KeyPool(["a", "b"], store, rest_seconds=60)
    pool.learn("a", AccountInfo("A", True))
    pool.learn("b", AccountInfo("B", True))
    leases = [pool.try_acquire(KOLORS).lease for _ in range(8)]
    on = {key: [lease for lease in leases if lease.key == key] for key in ("a", "b")}
    assert len(on["a"]) == len(on["b"]) == 4
    for lease in on["a"][2:]:
        pool.report(lease, error(Failure.RATE_LIMIT))
    held = pool.try_acquire(KOLORS)
    assert held.lease is None and held.wait < 1  # looked at again in a moment, not after A's minute
    for lease in on["b"][2:]:
        pool.report(lease, error(Failure.RATE_LIMIT))
    for lease in on["a"][:2] + on["b"][:2]:
        pool.report(lease, None)
    assert pool.try_acquire(KOLORS).wait > 50  # both accounts rest now: the retry waits, unrefused


def test_an_idle_account_is_not_held_to_another_accounts_limit(store):
    """A refusal says nothing of an account that is not busy: it is still chosen, as often as it answers."""
    pool = KeyPool(["a", "b"], store, rest_seconds=60)
    pool.learn("a", AccountInfo("A", True))
    pool.learn("b", AccountInfo("B", True))
    pool.report(pool.try_acquire(KOLORS).lease, error(Failure.RATE_LIMIT))  # A: cap 1
    assert [draw(pool) for _ in range(4)] == ["b"] * 4


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


# --- the line --------------------------------------------------------------------------------------


def test_waiting_images_take_turns_by_request():
    pool = pool_of(("a",), limits=[Limit(1, 0.25)])
    deadline = time.monotonic() + 10
    assert pool.queue.take("first", KOLORS, (), deadline).lease.key == "a"  # the window is used now
    order: list[str] = []

    def image(request_id: str) -> None:
        lease = pool.queue.take(request_id, KOLORS, (), deadline).lease
        order.append(request_id)
        pool.release(lease)

    threads = [threading.Thread(target=image, args=("big",)) for _ in range(4)]
    for thread in threads:
        thread.start()
    assert wait_until(lambda: pool.queue.waiting() + len(order) == 4)  # all of "big" is in line (or served) first
    late = threading.Thread(target=image, args=("small",))
    late.start()
    for thread in [*threads, late]:
        thread.join()
    assert order.index("small") <= 1, order  # not behind all four of "big"


def test_waiting_images_take_turns_by_person_not_by_request():
    """One person's four requests of two pictures each do not get four turns to another's one."""
    pool = pool_of(("a",), limits=[Limit(1, 0.2)])
    deadline = time.monotonic() + 20
    assert pool.queue.take("first", KOLORS, (), deadline).lease.key == "a"  # the window is used now
    order: list[str] = []

    def image(request_id: str, person: str) -> None:
        lease = pool.queue.take(request_id, KOLORS, (), deadline, turn=person).lease
        order.append(person)
        pool.release(lease)

    threads = [threading.Thread(target=image, args=(f"burst{i // 2}", "uk_busy")) for i in range(8)]
    for thread in threads:
        thread.start()
    assert wait_until(lambda: pool.queue.waiting() + len(order) == 8)
    late = threading.Thread(target=image, args=("one", "uk_other"))
    late.start()
    for thread in [*threads, late]:
        thread.join()
    assert order.index("uk_other") <= 1, order  # served at the next turn, not after the other requests
    # A request that leaves takes only its own pictures out of its person's line.
    pool2 = pool_of(("a",), limits=[Limit(1, 3)])
    assert pool2.queue.take("x", KOLORS, (), deadline).lease
    results: dict[str, object] = {}
    waiting = [
        threading.Thread(
            target=lambda r=r: results.__setitem__(r, pool2.queue.take(r, KOLORS, (), time.monotonic() + 10, turn="p"))
        )
        for r in ("stay", "leave")
    ]
    for thread in waiting:
        thread.start()
    assert wait_until(lambda: pool2.queue.waiting() == 2)
    pool2.queue.cancel("leave")
    assert wait_until(lambda: pool2.queue.waiting() == 1) and pool2.queue.status("stay").waiting == 1
    for thread in waiting:
        thread.join()
    assert results["leave"].why_not.code == "cancelled" and results["stay"].lease is not None


def test_a_waiting_image_gives_up_at_its_deadline_and_says_why():
    pool = pool_of(("a",), limits=[Limit(1, 30)])
    assert pool.queue.take("r", KOLORS, (), time.monotonic() + 5).lease.key == "a"
    started = time.monotonic()
    taken = pool.queue.take("r", KOLORS, (), time.monotonic() + 0.3)
    lease, why = taken.lease, taken.why_not
    assert lease is None and "REQUEST_TIMEOUT" in zh(why) and time.monotonic() - started < 1


def test_a_cancelled_request_leaves_the_line():
    pool = pool_of(("a",), limits=[Limit(1, 30)])
    pool.queue.take("r", KOLORS, (), time.monotonic() + 5)
    pool.queue.take("x", KOLORS, (), time.monotonic() + 0.01)  # someone is in line already
    result = []
    waiting = threading.Thread(target=lambda: result.append(pool.queue.take("r", KOLORS, (), time.monotonic() + 60)))
    waiting.start()
    assert wait_until(lambda: pool.queue.status("r") is not None)
    assert pool.queue.status("r").waiting == 1
    pool.queue.cancel("r")
    waiting.join(timeout=2)
    assert result == [Taken(None, Reason.of("cancelled"))] and pool.queue.waiting() == 0


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


def test_only_one_call_probes_a_resting_key_across_processes_and_instances(store):
    """Sixteen racing choices, two pools (processes) on one store: one probe, no more."""
    first, second = (KeyPool(["a"], store, recheck_seconds=0.2) for _ in range(2))
    fail(first, "a", Failure.BALANCE)
    assert first.try_acquire(KOLORS).lease is None
    time.sleep(0.3)  # the rest is over (the stores' clocks are the real ones here)
    barrier, granted = threading.Barrier(16), []

    def race(pool: KeyPool) -> None:
        barrier.wait()
        granted.append(pool.try_acquire(KOLORS).lease)

    threads = [threading.Thread(target=race, args=(pool,)) for pool in (first, second) * 8]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    probes = [lease for lease in granted if lease is not None]
    assert len(probes) == 1 and probes[0].probing


def test_keys_declared_with_one_name_share_one_account_and_its_budget(clock):
    pool = pool_of(("A/k1", "A/k2", "k3"), clock, limits=[Limit(1, 60)])
    assert pool.account_of(key_id("k1")) == pool.account_of(key_id("k2")) == "A"
    assert pool.account_of(key_id("k3")) == f"key-{key_id('k3')}"  # its own account
    assert {take(pool), take(pool), take(pool)} == {"k1", "k3", None}  # A's one call, k3's one call
    assert pool.summary()["accounts"]["declared"] == 1 and pool.summary()["accounts"]["total"] == 2
