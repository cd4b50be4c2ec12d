"""User keys: one key per person, each with an optional daily quota, made and revoked by the operator.

Stored durably, never the key itself: a key is `sfk-` and 32 random characters, kept as its SHA-256
(a long random secret needs no slow hash), shown whole once when it is made and masked after.
A SQLite file in the service's data directory by default (every worker of this instance, and the
next process after a restart), or Redis with REDIS_URL (every instance sees a key made or revoked
on another at its next request: nothing is cached).

Quotas count pictures and videos apart, per key and day; the day starts at 00:00 in
`QUOTA_UTC_OFFSET` (UTC+8 by default, China's time). A daily cap is None (no cap), 0 (none
allowed) or N. Records stored before caps had a version (`caps` 1) used 0 for "no cap": they are
read as None, so that a key keeps meaning what it meant when it was made. A request reserves what it
asks for before anything is drawn (`reserve`) and gives back what did not arrive (`settle`): failed
pictures do not count, and two requests at once cannot both take the last picture.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Protocol

from storage.redis_client import redis_client
from storage.sqlite_file import SqliteFile

PREFIX = "sfk-"
KINDS = ("images", "videos")
CAPS = 2  # what a stored cap means: 1 (records without `caps`): 0 is no cap; 2: None is no cap, 0 none allowed


def new_secret() -> str:
    return PREFIX + secrets.token_urlsafe(24)


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def masked(secret: str) -> str:
    return f"{secret[:6]}…{secret[-4:]}"


@dataclass
class UserKey:
    id: str
    name: str
    hash: str
    shown: str  # the key masked: sfk-ab…wxyz
    daily_images: int | None = None  # None: no cap; 0: none allowed
    daily_videos: int | None = None
    disabled: bool = False
    created_at: int = 0
    last_used: int | None = None
    images_total: int = 0
    videos_total: int = 0
    caps: int = 1  # absent from the records made before 0 meant "none allowed"; `make` writes CAPS

    @classmethod
    def stored(cls, body: str | bytes) -> UserKey:
        """A key from its stored record, its caps in today's meaning: an old record's 0 was no cap."""
        fields = json.loads(body)
        if fields.get("caps", 1) < CAPS:
            for kind in KINDS:
                fields[f"daily_{kind}"] = fields.get(f"daily_{kind}") or None
            fields["caps"] = CAPS
        return cls(**fields)

    def cap(self, kind: str) -> int | None:
        return self.daily_images if kind == "images" else self.daily_videos

    def public(self, used_today: dict[str, int], resets_at: int) -> dict[str, Any]:
        """What the admin API shows: never the hash, never the key."""
        return {
            "id": self.id,
            "name": self.name,
            "key": self.shown,
            "daily_images": self.daily_images,
            "daily_videos": self.daily_videos,
            "disabled": self.disabled,
            "created_at": self.created_at,
            "last_used": self.last_used,
            "images_today": used_today.get("images", 0),
            "videos_today": used_today.get("videos", 0),
            "images_total": self.images_total,
            "videos_total": self.videos_total,
            "resets_at": resets_at,
        }


class Day:
    """The quota day: from 00:00 at a fixed UTC offset."""

    def __init__(self, offset_minutes: int):
        self.zone = timezone(timedelta(minutes=offset_minutes))

    def today(self, now: float | None = None) -> str:
        return datetime.fromtimestamp(now if now is not None else time.time(), self.zone).strftime("%Y-%m-%d")

    def resets_at(self, now: float | None = None) -> int:
        moment = datetime.fromtimestamp(now if now is not None else time.time(), self.zone)
        start = moment.replace(hour=0, minute=0, second=0, microsecond=0)
        return int((start + timedelta(days=1)).timestamp())

    def label(self) -> str:
        offset = self.zone.utcoffset(None) or timedelta()
        hours, minutes = divmod(abs(int(offset.total_seconds()) // 60), 60)  # -03:30 is 3 h 30 min west
        return f"00:00 UTC{'+' if offset >= timedelta() else '-'}{hours}" + (f":{minutes:02d}" if minutes else "")


class SqliteKeys:
    def __init__(self, path: str):
        self.path = path
        self._file = SqliteFile(path)
        self._db = self._file.db
        db = self._db()
        db.execute("CREATE TABLE IF NOT EXISTS keys (id TEXT PRIMARY KEY, hash TEXT UNIQUE, body TEXT)")
        db.execute("CREATE TABLE IF NOT EXISTS usage (id TEXT, day TEXT, kind TEXT, used INTEGER, PRIMARY KEY (id, day, kind))")
        db.execute("CREATE TABLE IF NOT EXISTS hours (hour TEXT PRIMARY KEY, pictures INTEGER)")

    def count_hour(self, hour: str, n: int) -> None:
        self._db().execute(
            "INSERT INTO hours VALUES (?, ?) ON CONFLICT (hour) DO UPDATE SET pictures = pictures + excluded.pictures", (hour, n)
        )

    def hours(self, hours: list[str]) -> dict[str, int]:
        marks = ",".join("?" * len(hours))
        return dict(self._db().execute(f"SELECT hour, pictures FROM hours WHERE hour IN ({marks})", hours).fetchall())

    def save(self, key: UserKey) -> None:
        self._db().execute("INSERT OR REPLACE INTO keys VALUES (?, ?, ?)", (key.id, key.hash, json.dumps(asdict(key))))

    def get(self, key_id: str) -> UserKey | None:
        row = self._db().execute("SELECT body FROM keys WHERE id = ?", (key_id,)).fetchone()
        return UserKey.stored(row[0]) if row else None

    def by_hash(self, digest: str) -> UserKey | None:
        row = self._db().execute("SELECT body FROM keys WHERE hash = ?", (digest,)).fetchone()
        return UserKey.stored(row[0]) if row else None

    def all(self) -> list[UserKey]:
        return [UserKey.stored(r[0]) for r in self._db().execute("SELECT body FROM keys")]

    def delete(self, key_id: str) -> bool:
        db = self._db()
        db.execute("DELETE FROM usage WHERE id = ?", (key_id,))
        return db.execute("DELETE FROM keys WHERE id = ?", (key_id,)).rowcount > 0

    def used(self, key_id: str, day: str) -> dict[str, int]:
        rows = self._db().execute("SELECT kind, used FROM usage WHERE id = ? AND day = ?", (key_id, day))
        return {kind: used for kind, used in rows}

    def reserve(self, key_id: str, day: str, kind: str, wanted: int, cap: int | None) -> int:
        """Take up to `wanted` of today's `cap` (None: no cap; 0: none) at once; how many were taken."""
        with self._file.transaction() as db:
            row = db.execute("SELECT used FROM usage WHERE id = ? AND day = ? AND kind = ?", (key_id, day, kind)).fetchone()
            used = row[0] if row else 0
            granted = wanted if cap is None else max(0, min(wanted, cap - used))
            if granted:
                db.execute("INSERT OR REPLACE INTO usage VALUES (?, ?, ?, ?)", (key_id, day, kind, used + granted))
            return granted

    def settle(self, key_id: str, day: str, kind: str, unused: int, delivered: int) -> None:
        with self._file.transaction() as db:
            if unused:
                db.execute(
                    "UPDATE usage SET used = MAX(0, used - ?) WHERE id = ? AND day = ? AND kind = ?", (unused, key_id, day, kind)
                )
            if delivered:
                field = f"$.{kind}_total"
                db.execute(
                    f"UPDATE keys SET body = json_set(body, '{field}', json_extract(body, '{field}') + ?, '$.last_used', ?) "
                    "WHERE id = ?",
                    (delivered, int(time.time()), key_id),
                )

    def touch(self, key: UserKey) -> None:
        """Note the key's use: that one field, in place (a whole record written back could undo a
        revoke or a disable made meanwhile)."""
        if key.last_used is None or time.time() - key.last_used > 60:
            key.last_used = int(time.time())
            self._db().execute("UPDATE keys SET body = json_set(body, '$.last_used', ?) WHERE id = ?", (key.last_used, key.id))

    def change(self, key: UserKey, fields: dict[str, Any]) -> bool:
        """The operator's change to some fields: False when the key is gone. Read and written in one
        transaction (nothing written meanwhile, a use or a revoke, is undone), and an old record is
        written back with its caps in today's meaning (a 0 set now must not read as "no cap")."""
        with self._file.transaction() as db:
            row = db.execute("SELECT body FROM keys WHERE id = ?", (key.id,)).fetchone()
            if row is None:
                return False
            db.execute("UPDATE keys SET body = ? WHERE id = ?", (json.dumps(asdict(UserKey.stored(row[0])) | fields), key.id))
            return True


class RedisKeys:
    """The same in Redis: a key's record under its id, its hash pointing to the id, usage per day."""

    _RESERVE = """
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
local wanted, cap = tonumber(ARGV[1]), tonumber(ARGV[2])  -- cap 'none': nil, no cap
local granted = wanted
if cap then granted = math.max(0, math.min(wanted, cap - used)) end
if granted > 0 then redis.call('INCRBY', KEYS[1], granted); redis.call('EXPIRE', KEYS[1], 259200) end
return granted
"""

    def __init__(self, url: str, prefix: str = "siliconflow:users:"):
        self._redis = redis_client(url)
        self._prefix = prefix
        self._reserve = self._redis.register_script(self._RESERVE)

    def _k(self, *parts: str) -> str:
        return self._prefix + ":".join(parts)

    def save(self, key: UserKey) -> None:
        pipe = self._redis.pipeline()
        pipe.set(self._k("key", key.id), json.dumps(asdict(key)))
        pipe.set(self._k("hash", key.hash), key.id)
        pipe.sadd(self._k("all"), key.id)
        pipe.execute()

    def count_hour(self, hour: str, n: int) -> None:
        self._redis.hincrby(self._k("hours"), hour, n)

    def hours(self, hours: list[str]) -> dict[str, int]:
        values = self._redis.hmget(self._k("hours"), hours)
        return {hour: int(value) for hour, value in zip(hours, values, strict=True) if value}

    def get(self, key_id: str) -> UserKey | None:
        raw, stats = self._redis.get(self._k("key", key_id)), self._redis.hgetall(self._k("stats", key_id))
        if not raw:
            return None
        key = UserKey.stored(raw)
        for name, value in stats.items():  # counted apart, so that no write of the record undoes another
            setattr(key, name.decode(), int(value))
        return key

    def by_hash(self, digest: str) -> UserKey | None:
        key_id = self._redis.get(self._k("hash", digest))
        return self.get(key_id.decode()) if key_id else None

    def all(self) -> list[UserKey]:
        return [key for key in (self.get(i.decode()) for i in self._redis.smembers(self._k("all"))) if key]

    def delete(self, key_id: str) -> bool:
        key = self.get(key_id)
        if key is None:
            return False
        self._redis.delete(self._k("key", key_id), self._k("hash", key.hash), self._k("stats", key_id))
        self._redis.srem(self._k("all"), key_id)
        return True

    def used(self, key_id: str, day: str) -> dict[str, int]:
        values = self._redis.mget([self._k("used", key_id, day, kind) for kind in KINDS])
        return {kind: int(value) for kind, value in zip(KINDS, values, strict=True) if value}

    def reserve(self, key_id: str, day: str, kind: str, wanted: int, cap: int | None) -> int:
        cap_arg = "none" if cap is None else cap
        return int(self._reserve(keys=[self._k("used", key_id, day, kind)], args=[wanted, cap_arg]))

    def settle(self, key_id: str, day: str, kind: str, unused: int, delivered: int) -> None:
        if unused:
            self._redis.decrby(self._k("used", key_id, day, kind), unused)
        if delivered and self._redis.exists(self._k("key", key_id)):
            self._redis.hincrby(self._k("stats", key_id), f"{kind}_total", delivered)
            self._redis.hset(self._k("stats", key_id), "last_used", int(time.time()))

    def touch(self, key: UserKey) -> None:
        if key.last_used is None or time.time() - key.last_used > 60:
            key.last_used = int(time.time())
            self._redis.hset(self._k("stats", key.id), "last_used", key.last_used)

    def change(self, key: UserKey, fields: dict[str, Any]) -> bool:
        """The operator's change; an old record is written back with its caps in today's meaning."""
        current = self.get(key.id)
        if current is None:
            return False
        for name, value in fields.items():
            setattr(current, name, value)
        return bool(self._redis.set(self._k("key", key.id), json.dumps(asdict(current)), xx=True))


class Keys(Protocol):
    """What the surfaces and the operator's API ask of a user-key store (SqliteKeys, RedisKeys)."""

    def save(self, key: UserKey) -> None: ...

    def get(self, key_id: str) -> UserKey | None: ...

    def by_hash(self, digest: str) -> UserKey | None: ...

    def all(self) -> list[UserKey]: ...

    def delete(self, key_id: str) -> bool: ...

    def used(self, key_id: str, day: str) -> dict[str, int]: ...

    def reserve(self, key_id: str, day: str, kind: str, wanted: int, cap: int | None) -> int: ...

    def settle(self, key_id: str, day: str, kind: str, unused: int, delivered: int) -> None: ...

    def touch(self, key: UserKey) -> None: ...

    def change(self, key: UserKey, fields: dict[str, Any]) -> bool: ...

    def count_hour(self, hour: str, n: int) -> None: ...

    def hours(self, hours: list[str]) -> dict[str, int]: ...


@dataclass
class Reservation:
    """What one request took of its key's quota today; `settle` gives back what did not arrive."""

    keys: Keys
    key_id: str
    day: str
    kind: str
    taken: int

    def settle(self, delivered: int) -> None:
        self.keys.settle(self.key_id, self.day, self.kind, max(0, self.taken - delivered), min(delivered, self.taken))
        self.taken = 0  # once


def make(name: str, daily_images: int | None, daily_videos: int | None) -> tuple[UserKey, str]:
    secret = new_secret()
    key = UserKey(
        id=f"uk_{secrets.token_hex(6)}",
        name=name,
        hash=secret_hash(secret),
        shown=masked(secret),
        daily_images=daily_images,
        daily_videos=daily_videos,
        created_at=int(time.time()),
        caps=CAPS,
    )
    return key, secret
