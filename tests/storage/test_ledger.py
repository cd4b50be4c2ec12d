"""The ledger (ledger.py) on its own, in a SQLite file and in a real Redis: what was drawn per day,
user key, upstream key, account and model; totals per user key for ever; calls per key and day;
30 days of daily rows, pruned at most once an hour; writes that never raise."""

from __future__ import annotations

import socket
import stat

import pytest
import redis

from storage.ledger import DAYS, KeyDay, RedisLedger, Row, SqliteLedger, first_day

TODAY = "2026-12-07"


class Calendar:
    """The ledger's day and clock, moved by the test."""

    def __init__(self) -> None:
        self.day, self.now = TODAY, 1000.0

    def today(self) -> str:
        return self.day

    def clock(self) -> float:
        return self.now


@pytest.fixture(params=["sqlite", "redis"])
def made(request, tmp_path):
    """A way to make a ledger in one store, twice on the same data (as after a restart)."""

    def make(calendar: Calendar):
        if request.param == "sqlite":
            return SqliteLedger(str(tmp_path / "ledger.sqlite3"), calendar.today, calendar.clock)
        return RedisLedger(request.getfixturevalue("redis_server").url, calendar.today, calendar.clock)

    return make


def _qwen(ledger, user: str | None, key_id: str = "k1", account: str = "acct-a") -> None:
    ledger.drawn(user, key_id, account, "Qwen/Qwen-Image", video=False, micro=300_000, priced=True)


def test_what_was_drawn_is_counted_per_day_user_key_account_and_model(made):
    calendar = Calendar()
    ledger = made(calendar)
    for key_id in ("k1", "k2", "k2"):
        _qwen(ledger, "uk_a", key_id)
    _qwen(ledger, None, "k1")  # the operator's own key
    ledger.drawn("uk_a", "k1", "acct-a", "Kwai-Kolors/Kolors", video=False, micro=0, priced=True)
    ledger.drawn("uk_b", "k3", "acct-b", "Wan-AI/Wan2.2-T2V-A14B", video=True, micro=2_000_000, priced=True)
    ledger.drawn("uk_b", "k3", "acct-b", "some/new-model", video=False, micro=0, priced=False)
    assert ledger.users(TODAY) == {"uk_a": (900_000, 900_000), "": (300_000, 300_000), "uk_b": (2_000_000, 2_000_000)}
    assert ledger.rows(TODAY, TODAY) == [
        Row(TODAY, "acct-a", "k1", "Kwai-Kolors/Kolors", pictures=1),
        Row(TODAY, "acct-a", "k1", "Qwen/Qwen-Image", pictures=2, micro=600_000),  # two users, one row
        Row(TODAY, "acct-a", "k2", "Qwen/Qwen-Image", pictures=2, micro=600_000),
        Row(TODAY, "acct-b", "k3", "Wan-AI/Wan2.2-T2V-A14B", videos=1, micro=2_000_000),
        Row(TODAY, "acct-b", "k3", "some/new-model", pictures=1, unpriced=1),
    ]
    keys = ledger.keys(TODAY)
    assert keys["k1"] == KeyDay(pictures=3, micro=600_000) and keys["k3"] == KeyDay(pictures=1, videos=1, micro=2_000_000)


def test_calls_are_counted_per_key_and_day(made):
    calendar = Calendar()
    ledger = made(calendar)
    for ok in (True, True, False):
        ledger.call("k1", ok)
    ledger.call("k2", False)
    _qwen(ledger, "uk_a", "k1")
    assert ledger.keys(TODAY) == {"k1": KeyDay(calls=3, failed=1, pictures=1, micro=300_000), "k2": KeyDay(calls=1, failed=1)}
    calendar.day = "2026-12-08"
    ledger.call("k1", True)
    assert ledger.keys("2026-12-08") == {"k1": KeyDay(calls=1)}


def test_totals_last_for_ever_and_survive_a_restart(made):
    calendar = Calendar()
    ledger = made(calendar)
    _qwen(ledger, "uk_a")
    calendar.day = "2026-12-08"
    _qwen(ledger, "uk_a")
    again = made(calendar)  # another process on the same store
    assert again.users("2026-12-08") == {"uk_a": (300_000, 600_000)}
    assert [row.day for row in again.rows("2026-12-01", "2026-12-08")] == ["2026-12-08", "2026-12-07"]  # newest first
    assert again.rows("2026-12-08", "2026-12-08")[0].pictures == 1


def test_sqlite_keeps_30_days_and_prunes_at_most_once_an_hour(tmp_path):
    calendar = Calendar()
    ledger = SqliteLedger(str(tmp_path / "ledger.sqlite3"), calendar.today, calendar.clock)
    _qwen(ledger, "uk_a")  # the first write prunes
    old = first_day(TODAY, DAYS + 1)  # the day before the oldest kept
    calendar.day = old
    _qwen(ledger, "uk_a")  # written on an old day: not pruned within the hour
    assert [row.day for row in ledger.rows(old, TODAY)] == [TODAY, old]
    calendar.now += 3599
    calendar.day = TODAY
    _qwen(ledger, "uk_a")
    assert [row.day for row in ledger.rows(old, TODAY)] == [TODAY, old]
    calendar.now += 1  # an hour since the last pruning
    _qwen(ledger, "uk_a")
    assert [row.day for row in ledger.rows(old, TODAY)] == [TODAY]
    assert first_day(TODAY, DAYS) == "2026-11-08"
    assert ledger.users(TODAY) == {"uk_a": (900_000, 1_200_000)}  # the total keeps what was pruned


def test_redis_days_expire_by_themselves_and_totals_never(redis_server):
    calendar = Calendar()
    ledger = RedisLedger(redis_server.url, calendar.today, calendar.clock)
    _qwen(ledger, "uk_a")
    ledger.call("k1", True)
    client = redis.Redis.from_url(redis_server.url)
    for name in (f"siliconflow:ledger:drawn:{TODAY}", f"siliconflow:ledger:calls:{TODAY}"):
        assert DAYS * 86400 < client.ttl(name) <= (DAYS + 2) * 86400, name
    assert client.ttl("siliconflow:ledger:totals") == -1


def test_the_sqlite_file_is_the_operators_alone(tmp_path):
    SqliteLedger(str(tmp_path / "data" / "ledger.sqlite3"), Calendar().today)
    assert stat.S_IMODE((tmp_path / "data" / "ledger.sqlite3").stat().st_mode) == 0o600


def test_a_store_that_fails_never_fails_the_writer_and_is_logged_once(logged):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ledger = RedisLedger(f"redis://127.0.0.1:{port}/0", Calendar().today)
    for _ in range(3):
        _qwen(ledger, "uk_a")
        ledger.call("k1", False)
    lines = logged.lines("the ledger cannot record")
    assert len(lines) == 1 and "drawing goes on" in lines[0], lines
