"""User keys and their daily quotas (user_keys.py), each test in a SQLite file and in a real Redis:
a key kept as its hash, never itself; quotas reserved before drawing (no two requests take the last
picture), settled after (what did not arrive is given back, once); the quota day turning at 00:00
in its UTC offset (an injected moment); a revoked key gone for good; old records' caps read in
today's meaning."""

from __future__ import annotations

import json
import threading
from dataclasses import asdict
from datetime import UTC, datetime

import pytest

from storage.user_keys import Day, RedisKeys, Reservation, SqliteKeys, UserKey, make, secret_hash


@pytest.fixture(params=["sqlite", "redis"])
def keys(request, tmp_path):
    if request.param == "sqlite":
        return SqliteKeys(str(tmp_path / "users.sqlite3"))
    return RedisKeys(request.getfixturevalue("redis_server").url, prefix="test:users:")


def _made(keys, images: int | None = 5, videos: int | None = None) -> tuple[UserKey, str]:
    key, secret = make("alice", images, videos)
    keys.save(key)
    return key, secret


def _stored_bytes(keys, tmp_path) -> bytes:
    """Everything the store holds, as bytes: the SQLite file, or every Redis key and value."""
    if isinstance(keys, SqliteKeys):
        return b"".join(path.read_bytes() for path in tmp_path.glob("users.sqlite3*"))
    client = keys._redis
    return b"".join(name + repr(client.dump(name)).encode() for name in client.keys("*"))


def test_a_key_is_found_by_its_hash_and_never_stored_itself(keys, tmp_path):
    key, secret = _made(keys)
    assert secret.startswith("sfk-") and len(secret) > 30
    assert key.shown == f"{secret[:6]}…{secret[-4:]}"  # what the operator's page shows
    assert keys.by_hash(secret_hash(secret)).id == key.id
    assert keys.by_hash(secret_hash(secret + "x")) is None
    assert secret[4:].encode() not in _stored_bytes(keys, tmp_path)


def test_a_quota_is_reserved_before_drawing_and_what_did_not_arrive_is_given_back(keys):
    key, _ = _made(keys, images=5)
    day = "2026-12-07"
    assert keys.reserve(key.id, day, "images", 3, key.cap("images")) == 3
    assert keys.reserve(key.id, day, "images", 3, key.cap("images")) == 2  # only what is left
    assert keys.reserve(key.id, day, "images", 1, key.cap("images")) == 0
    first = Reservation(keys, key.id, day, "images", 3)
    first.settle(1)  # one of three pictures arrived: two go back
    first.settle(1)  # settled once only
    assert keys.used(key.id, day) == {"images": 3}
    assert keys.reserve(key.id, day, "images", 5, key.cap("images")) == 2
    assert keys.get(key.id).images_total == 1 and keys.get(key.id).last_used is not None
    assert keys.reserve(key.id, day, "videos", 4, key.cap("videos")) == 4  # videos counted apart, no cap
    assert keys.used(key.id, day) == {"images": 5, "videos": 4}


def test_a_cap_of_zero_allows_nothing_and_no_cap_allows_everything(keys):
    key, _ = _made(keys, images=0, videos=None)
    assert keys.reserve(key.id, "2026-12-07", "images", 1, key.cap("images")) == 0
    assert keys.reserve(key.id, "2026-12-07", "videos", 500, key.cap("videos")) == 500


def test_two_requests_at_once_cannot_both_take_the_last_pictures(keys):
    key, _ = _made(keys, images=5)
    barrier, granted = threading.Barrier(12), []

    def ask() -> None:
        barrier.wait()
        granted.append(keys.reserve(key.id, "2026-12-07", "images", 1, 5))

    threads = [threading.Thread(target=ask) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(granted) == 5 and keys.used(key.id, "2026-12-07") == {"images": 5}


def test_the_quota_day_turns_at_midnight_in_its_utc_offset(keys):
    china = Day(8 * 60)
    last_second = datetime(2026, 12, 7, 15, 59, 59, tzinfo=UTC).timestamp()  # 23:59:59 in UTC+8
    today, tomorrow = china.today(last_second), china.today(last_second + 1)
    assert (today, tomorrow) == ("2026-12-07", "2026-12-08")
    assert china.resets_at(last_second) == int(last_second) + 1 and china.label() == "00:00 UTC+8"
    key, _ = _made(keys, images=2)
    assert keys.reserve(key.id, today, "images", 2, 2) == 2 and keys.reserve(key.id, today, "images", 1, 2) == 0
    assert keys.reserve(key.id, tomorrow, "images", 2, 2) == 2  # a new day, a new quota
    late = Reservation(keys, key.id, today, "images", 2)
    late.settle(0)  # a refund after midnight goes to the day it was taken from
    assert keys.used(key.id, today).get("images", 0) == 0
    assert keys.used(key.id, tomorrow) == {"images": 2}
    assert Day(-5 * 60).today(last_second) == "2026-12-07" and Day(-5 * 60).label() == "00:00 UTC-5"
    assert Day(5 * 60 + 30).label() == "00:00 UTC+5:30" and Day(0).label() == "00:00 UTC+0"


def test_a_negative_offset_with_minutes_is_named_as_the_operator_set_it():
    assert Day(-(3 * 60 + 30)).label() == "00:00 UTC-3:30"


def test_a_revoked_key_is_gone_and_nothing_brings_it_back(keys):
    key, secret = _made(keys)
    other, _ = make("bob", 1, 1)
    keys.save(other)
    taken = Reservation(keys, key.id, "2026-12-07", "images", keys.reserve(key.id, "2026-12-07", "images", 2, 5))
    assert keys.delete(key.id) and not keys.delete(key.id)
    assert keys.get(key.id) is None and keys.by_hash(secret_hash(secret)) is None
    assert [k.id for k in keys.all()] == [other.id]
    taken.settle(2)  # a drawing that ends after the revoke
    assert not keys.change(key, {"disabled": False})  # nor an operator's edit made meanwhile
    assert keys.get(key.id) is None and keys.by_hash(secret_hash(secret)) is None


def test_disabling_a_key_keeps_what_it_drew(keys):
    key, _ = _made(keys)
    Reservation(keys, key.id, "2026-12-07", "images", keys.reserve(key.id, "2026-12-07", "images", 2, 5)).settle(2)
    assert keys.change(key, {"disabled": True})
    stored = keys.get(key.id)
    assert stored.disabled and stored.images_total == 2  # the change did not write an old total back


def test_an_old_records_zero_means_no_cap_and_keeps_meaning_it_after_a_change(keys):
    """Records made before caps had a version used 0 for "no cap"; a 0 set now means none allowed."""
    key, _ = make("old", None, None)
    body = asdict(key) | {"daily_images": 0, "daily_videos": 0}
    del body["caps"]
    assert UserKey.stored(json.dumps(body)).cap("images") is None
    keys.save(UserKey(**body))  # written as an old process would have
    assert keys.get(key.id).cap("images") is None and keys.get(key.id).cap("videos") is None
    assert keys.change(keys.get(key.id), {"daily_videos": 0})
    changed = keys.get(key.id)
    assert changed.cap("videos") == 0 and changed.cap("images") is None


def test_pictures_are_counted_per_hour(keys):
    keys.count_hour("2026-12-07T10", 2)
    keys.count_hour("2026-12-07T10", 3)
    keys.count_hour("2026-12-07T11", 1)
    assert keys.hours(["2026-12-07T09", "2026-12-07T10", "2026-12-07T11"]) == {"2026-12-07T10": 5, "2026-12-07T11": 1}
