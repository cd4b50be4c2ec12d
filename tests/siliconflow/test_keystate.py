"""The key state's stores behind one interface (keystate.py), each test on the SQLite file and on a
real Redis: facts that expire, locks won once, budgets reserved atomically under a race and freed
in time, dead keys, turns and probes shared by pools (processes) on one store, and how a burst of
429s is spread over accounts."""

from __future__ import annotations

import threading
import time

from core.errors import Failure
from siliconflow.client import AccountInfo
from siliconflow.keystate import Limit
from siliconflow.pool import KeyPool, _with_slack
from tests.siliconflow.pools import KOLORS, draw, error, fail, take


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
