"""What /v1/user/info still tells (upkeep.py), asked of the fake SiliconFlow over real HTTP: where it
answers 410 (SiliconFlow stopped it), it is asked once, by one key, and never again by this process
or another sharing the store, with one log line each; where it answers 200, the keys' accounts are
learned (and so their shared budgets), keys without money rest and come back when funded.

The loop's rounds are driven by the test: `Rounds` stands for the stop event the loop waits on, and
lets it go round a given number of times at once, instead of waiting out its interval."""

from __future__ import annotations

import logging

import pytest

from siliconflow.client import account_info
from siliconflow.keystate import Limit
from siliconflow.keystate_sqlite import LocalStore
from siliconflow.leases import key_id
from siliconflow.outbound import make_http
from siliconflow.pool import KeyPool
from siliconflow.upkeep import Upkeep
from tests.siliconflow.pools import take


class Rounds:
    """The loop's `stopping` event: each wait is one round gone by (after `between` runs), then it stops."""

    def __init__(self, rounds: int, between=lambda: None) -> None:
        self.left, self.between = rounds, between

    def wait(self, timeout: float | None = None) -> bool:
        if self.left <= 0:
            return True
        self.left -= 1
        self.between()
        return False


@pytest.fixture
def store():
    store = LocalStore()
    yield store
    store.remove()


@pytest.fixture
def upkeep_of(fake, store):
    """`upkeep_of(*keys)`: a pool of `keys` on the test's store, and its Upkeep asking the fake."""
    http = make_http(4)
    made: list[Upkeep] = []

    def make(*keys: str, **kwargs) -> tuple[KeyPool, Upkeep]:
        pool = KeyPool(keys, store, **kwargs)
        made.append(Upkeep(pool, lambda key: account_info(http, fake.url, key, 5), interval=600))
        return pool, made[-1]

    yield make
    for upkeep in made:
        upkeep.stop()


@pytest.fixture
def said(logged, caplog):
    """The service's log lines, INFO included (as the app sets its logger up)."""
    caplog.set_level(logging.INFO, logger="siliconflow_proxy")
    return logged


def _asked(fake) -> list[str]:
    with fake.state.lock:
        return [call.key for call in fake.state.calls if call.path == "/v1/user/info"]


def test_a_stopped_user_info_is_asked_once_and_never_again_by_any_process(fake, upkeep_of, store, said):
    keys = ("sk-good-ui01", "sk-good-ui02", "sk-good-ui03")
    pool, upkeep = upkeep_of(*keys)
    upkeep._run(Rounds(5))  # learning at start, then five rechecks
    assert _asked(fake) == ["sk-good-ui01"]  # one key asked alone: its 410 speaks for all
    assert upkeep.gone and pool.accounts_known.is_set()
    assert len(said.lines("no longer tells accounts")) == 1
    assert pool.summary()["keys"]["healthy"] == 3  # a 410 says nothing against the keys
    assert store.get(["gone:user_info"])["gone:user_info"][0] == "410"
    other_pool, other = upkeep_of(*keys)  # another worker, on the same key state
    other._run(Rounds(5))
    assert _asked(fake) == ["sk-good-ui01"] and other.gone
    assert len(said.lines("no longer tells accounts")) == 2  # one line per process, no more
    assert said.lines("another process found it")


def test_where_user_info_answers_the_keys_accounts_are_learned_and_share_a_budget(fake, upkeep_of, store):
    fake.state.user_info = True
    keys = ("sk-good-acctA-1", "sk-good-acctA-2", "sk-good-acctB-1")
    pool, upkeep = upkeep_of(*keys, limits=[Limit(1, 60)])
    upkeep._run(Rounds(0))
    assert sorted(_asked(fake)) == sorted(keys)
    assert [pool.account_of(key_id(key)) for key in keys] == ["A", "A", "B"]
    assert pool.summary()["accounts"] == {"total": 2, "declared": 0, "keys_with_unknown_account": 0, "resting": []}
    assert {take(pool), take(pool), take(pool)} == {"sk-good-acctA-1", "sk-good-acctB-1", None}  # A's keys: one budget
    fresh, _ = upkeep_of(*keys)  # another process takes up what was learned, without asking
    fresh.load_accounts()
    assert fresh.account_of(key_id("sk-good-acctA-2")) == "A" and len(_asked(fake)) == 3


def test_the_first_pictures_wait_for_the_accounts_to_be_known(fake, upkeep_of):
    """The thread is started by the first use in each process; until it has asked, a picture would
    be counted against the wrong account, so the line waits for it (accounts_known)."""
    fake.state.user_info = True
    pool, upkeep = upkeep_of("sk-good-acctC-1", "sk-good-acctC-2")
    upkeep.ensure_running()
    assert pool.accounts_known.wait(10)
    assert pool.account_of(key_id("sk-good-acctC-2")) == "C"


def test_a_key_without_money_rests_and_comes_back_when_its_account_is_topped_up(fake, upkeep_of, said):
    fake.state.user_info = True
    pool, upkeep = upkeep_of("sk-broke-ui04", "sk-dead-ui05", "sk-good-ui06")
    upkeep._run(Rounds(0))
    assert pool.broke_keys() == ["sk-broke-ui04"] and pool.summary()["keys"]["dead"] == 1
    upkeep._run(Rounds(1, between=lambda: fake.state.funded.add("sk-broke-ui04")))
    assert pool.broke_keys() == [] and said.lines(r"has a balance again; back in use")
    assert pool.summary()["keys"]["dead"] == 1  # a 401 is not undone by asking


def test_keys_whose_account_the_operator_declared_are_not_asked_about(fake, upkeep_of):
    fake.state.user_info = True
    pool, upkeep = upkeep_of("A/sk-good-ui07", "A/sk-good-ui08")
    upkeep._run(Rounds(3))
    assert _asked(fake) == [] and pool.account_of(key_id("sk-good-ui07")) == "A"
