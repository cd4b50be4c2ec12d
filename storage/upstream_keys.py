"""The operator's upstream keys, changed while the service runs (with ADMIN_KEY): the roster.

`API_KEYS` seeds it at start; keys pasted on the operator's page, disabled, renamed to another
account or removed there are kept here, durably, and win over `API_KEYS` after a restart (a key
removed on the page stays removed, though `API_KEYS` still lists it; a key that came from
`API_KEYS` and is no longer listed there goes). Every worker of every instance sharing the store
reads the roster's version every few seconds (siliconflow/pool.KeyPool.sync) and takes up a change.

Keys are stored as they must be to be used: they are the operator's own secrets. The SQLite file
(`upstream_keys.sqlite3` in DATA_DIR) is made readable by this service's user alone (0600); in
Redis they are as safe as Redis is (set a password: the start-up log says so when there is none).
A record is named by a random id, never derived from the key; no answer or log line carries a key
whole (`text.mask_key`).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

from storage.sqlite_file import SqliteFile

log = logging.getLogger("siliconflow_proxy.upstream_keys")

ENV, PAGE = "env", "page"  # where a key came from: API_KEYS, or the operator's page (or a change made there)


@dataclass
class UpstreamKey:
    id: str
    key: str = field(repr=False)
    account: str | None = None  # the SiliconFlow account NAME the operator declared; None: its own account
    disabled: bool = False
    source: str = ENV
    added_at: int = 0


def new_id() -> str:
    return f"up_{secrets.token_hex(6)}"


class Roster(Protocol):
    def version(self) -> int: ...

    def all(self) -> list[UpstreamKey]: ...

    def add(self, entries: list[tuple[str | None, str]], source: str) -> tuple[list[UpstreamKey], list[UpstreamKey]]: ...

    def change(self, key_id: str, fields: dict[str, Any]) -> UpstreamKey | None: ...

    def remove(self, key_id: str) -> UpstreamKey | None: ...

    def seed(self, entries: list[tuple[str | None, str]]) -> None: ...


def _record(text: str | bytes) -> UpstreamKey:
    data = json.loads(text)
    return UpstreamKey(**{k: v for k, v in data.items() if k in UpstreamKey.__dataclass_fields__})


def _removal_mark(key: str) -> str:
    """How a removed key is remembered: a hash, so the tombstone holds no secret."""
    import hashlib

    return hashlib.sha256(key.encode()).hexdigest()


class SqliteRoster:
    """The roster in a SQLite file: this instance's workers, and the next process after a restart."""

    def __init__(self, path: str):
        self.path = path
        # Readable by this user alone, a file made before this rule too (its -wal and -shm follow).
        self._file = SqliteFile(path, mode=0o600)
        self._db = self._file.db
        os.chmod(path, 0o600)
        db = self._db()
        db.execute("CREATE TABLE IF NOT EXISTS keys (id TEXT PRIMARY KEY, key TEXT UNIQUE, body TEXT)")
        db.execute("CREATE TABLE IF NOT EXISTS removed (mark TEXT PRIMARY KEY, at INTEGER)")
        db.execute("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER)")

    def version(self) -> int:
        row = self._db().execute("SELECT value FROM meta WHERE name = 'version'").fetchone()
        return row[0] if row else 0

    def all(self) -> list[UpstreamKey]:
        return [_record(body) for (body,) in self._db().execute("SELECT body FROM keys ORDER BY rowid")]

    def _bump(self, db: Any) -> None:
        db.execute("INSERT INTO meta VALUES ('version', 1) ON CONFLICT (name) DO UPDATE SET value = value + 1")

    def add(self, entries: list[tuple[str | None, str]], source: str) -> tuple[list[UpstreamKey], list[UpstreamKey]]:
        """Add what is not there yet (a key removed before may come back this way). (added, already there)."""
        added, there = [], []
        with self._file.transaction() as db:
            for account, key in entries:
                row = db.execute("SELECT body FROM keys WHERE key = ?", (key,)).fetchone()
                if row:
                    there.append(_record(row[0]))
                    continue
                record = UpstreamKey(new_id(), key, account, source=source, added_at=int(time.time()))
                db.execute("INSERT INTO keys VALUES (?, ?, ?)", (record.id, key, json.dumps(asdict(record))))
                db.execute("DELETE FROM removed WHERE mark = ?", (_removal_mark(key),))
                added.append(record)
            if added:
                self._bump(db)
        return added, there

    def change(self, key_id: str, fields: dict[str, Any]) -> UpstreamKey | None:
        with self._file.transaction() as db:
            row = db.execute("SELECT body FROM keys WHERE id = ?", (key_id,)).fetchone()
            if row is None:
                return None
            record = _record(row[0])
            for name, value in fields.items():
                setattr(record, name, value)
            record.source = PAGE  # the operator's word now wins over API_KEYS
            db.execute("UPDATE keys SET body = ? WHERE id = ?", (json.dumps(asdict(record)), key_id))
            self._bump(db)
            return record

    def remove(self, key_id: str) -> UpstreamKey | None:
        with self._file.transaction() as db:
            row = db.execute("SELECT body FROM keys WHERE id = ?", (key_id,)).fetchone()
            if row is None:
                return None
            record = _record(row[0])
            db.execute("DELETE FROM keys WHERE id = ?", (key_id,))
            db.execute("INSERT OR REPLACE INTO removed VALUES (?, ?)", (_removal_mark(record.key), int(time.time())))
            self._bump(db)
            return record

    def seed(self, entries: list[tuple[str | None, str]]) -> None:
        """API_KEYS at start: its keys added unless the operator removed them on the page; keys that
        came from API_KEYS and are no longer in it removed (those the operator changed stay)."""
        keys = {key for _, key in entries}
        with self._file.transaction() as db:
            changed = False
            removed = {mark for (mark,) in db.execute("SELECT mark FROM removed")}
            present = {key: _record(body) for key, body in db.execute("SELECT key, body FROM keys")}
            for account, key in entries:
                if key in present or _removal_mark(key) in removed:
                    continue
                record = UpstreamKey(new_id(), key, account, source=ENV, added_at=int(time.time()))
                db.execute("INSERT INTO keys VALUES (?, ?, ?)", (record.id, key, json.dumps(asdict(record))))
                changed = True
            for key, record in present.items():
                if record.source == ENV and key not in keys:
                    db.execute("DELETE FROM keys WHERE id = ?", (record.id,))
                    changed = True
                elif record.source == ENV and key in keys:  # API_KEYS's account name may have changed
                    account = next(a for a, k in entries if k == key)
                    if account != record.account:
                        record.account = account
                        db.execute("UPDATE keys SET body = ? WHERE id = ?", (json.dumps(asdict(record)), record.id))
                        changed = True
            if changed:
                self._bump(db)

    def describe(self) -> dict[str, Any]:
        return {"kind": "sqlite", "where": self.path}


class RedisRoster:
    """The roster in Redis: every instance sharing it."""

    def __init__(self, url: str, prefix: str = "siliconflow:upstream:"):
        from storage.redis_client import redis_client

        self._redis = redis_client(url)
        self._prefix = prefix
        if not urlsplit(url).password and not url.startswith("unix:"):
            log.warning(
                "upstream keys changed on the operator's page are kept in Redis, which has no password in "
                "REDIS_URL: anyone who reaches that Redis can read them; set one (redis://:password@host:6379/0)"
            )

    def _k(self, name: str) -> str:
        return self._prefix + name

    def version(self) -> int:
        return int(self._redis.get(self._k("version")) or 0)

    def all(self) -> list[UpstreamKey]:
        records = [_record(body) for body in self._redis.hvals(self._k("keys"))]
        return sorted(records, key=lambda r: (r.added_at, r.id))

    def _find(self, key: str) -> UpstreamKey | None:
        key_id = self._redis.hget(self._k("by_key"), _removal_mark(key))
        if key_id is None:
            return None
        body = self._redis.hget(self._k("keys"), key_id)
        return _record(body) if body else None

    def add(self, entries: list[tuple[str | None, str]], source: str) -> tuple[list[UpstreamKey], list[UpstreamKey]]:
        added, there = [], []
        for account, key in entries:
            found = self._find(key)
            if found is not None:
                there.append(found)
                continue
            record = UpstreamKey(new_id(), key, account, source=source, added_at=int(time.time()))
            if not self._redis.hsetnx(self._k("by_key"), _removal_mark(key), record.id):
                there.append(self._find(key) or record)  # another instance added it meanwhile
                continue
            pipe = self._redis.pipeline()
            pipe.hset(self._k("keys"), record.id, json.dumps(asdict(record)))
            pipe.srem(self._k("removed"), _removal_mark(key))
            pipe.execute()
            added.append(record)
        if added:
            self._redis.incr(self._k("version"))
        return added, there

    def change(self, key_id: str, fields: dict[str, Any]) -> UpstreamKey | None:
        body = self._redis.hget(self._k("keys"), key_id)
        if body is None:
            return None
        record = _record(body)
        for name, value in fields.items():
            setattr(record, name, value)
        record.source = PAGE
        pipe = self._redis.pipeline()
        pipe.hset(self._k("keys"), key_id, json.dumps(asdict(record)))
        pipe.incr(self._k("version"))
        pipe.execute()
        return record

    def remove(self, key_id: str) -> UpstreamKey | None:
        body = self._redis.hget(self._k("keys"), key_id)
        if body is None:
            return None
        record = _record(body)
        mark = _removal_mark(record.key)
        pipe = self._redis.pipeline()
        pipe.hdel(self._k("keys"), key_id)
        pipe.hdel(self._k("by_key"), mark)
        pipe.sadd(self._k("removed"), mark)
        pipe.incr(self._k("version"))
        pipe.execute()
        return record

    def seed(self, entries: list[tuple[str | None, str]]) -> None:
        keys = {key for _, key in entries}
        removed = {mark.decode() for mark in self._redis.smembers(self._k("removed"))}
        present = {record.key: record for record in self.all()}
        fresh = [(a, k) for a, k in entries if k not in present and _removal_mark(k) not in removed]
        if fresh:
            self.add(fresh, ENV)
        for key, record in present.items():
            if record.source != ENV:
                continue
            if key not in keys:
                pipe = self._redis.pipeline()
                pipe.hdel(self._k("keys"), record.id)
                pipe.hdel(self._k("by_key"), _removal_mark(key))
                pipe.incr(self._k("version"))
                pipe.execute()
            else:
                account = next(a for a, k in entries if k == key)
                if account != record.account:
                    record.account = account
                    pipe = self._redis.pipeline()
                    pipe.hset(self._k("keys"), record.id, json.dumps(asdict(record)))
                    pipe.incr(self._k("version"))
                    pipe.execute()

    def describe(self) -> dict[str, Any]:
        return {"kind": "redis"}
