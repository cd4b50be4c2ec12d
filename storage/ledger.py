"""The ledger: what SiliconFlow drew, kept durably, so that the operator sees what the community spends.

SiliconFlow no longer reports balances, so the spending is counted here, priced by the price table
(prices.py). Per day (the quota day, `user_keys.Day`), user key (`NOBODY` for the operator's own key
or an open service), upstream key id, its account and model: pictures, videos and their cost, in
millionths of a yuan so that sums stay exact. Per user key, the same totals for ever. Per upstream
key and day, the calls made and how many failed (`call()`, which the key pool makes after each).
Daily rows are kept `DAYS` days: the SQLite file prunes older ones lazily, at most once an hour per
process; Redis lets them expire.

A SQLite file `ledger.sqlite3` in DATA_DIR (made 0600; every worker of this instance, and the next
process after a restart), or Redis with REDIS_URL (every instance). It exists only with ADMIN_KEY.
Writing never raises: a store that fails is logged once (until it works again) and what it missed
is lost, since counting must never fail a drawing or a call. Reading raises the store's error.

`Spend` is what the surfaces call the moment SiliconFlow drew a picture or took a video job.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta

from storage.redis_client import redis_client
from storage.sqlite_file import SqliteFile

log = logging.getLogger("siliconflow_proxy.ledger")

DAYS = 30  # daily rows kept: today and the 29 days before
NOBODY = ""  # the user of a drawing made with the operator's key, or on an open service
PRUNE_SECONDS = 3600.0


@dataclass(frozen=True)
class Row:
    """One day's drawing on one upstream key (its account) with one model, all users together."""

    day: str
    account: str
    key_id: str
    model: str
    pictures: int = 0
    videos: int = 0
    micro: int = 0  # millionths of a yuan
    unpriced: int = 0  # pictures and videos counted 0 because their model had no price


@dataclass(frozen=True)
class KeyDay:
    """One upstream key's day: its calls, and what it drew."""

    calls: int = 0
    failed: int = 0
    pictures: int = 0
    videos: int = 0
    micro: int = 0


def first_day(today: str, days: int) -> str:
    """The oldest of the `days` days that end with `today` (YYYY-MM-DD)."""
    return (date.fromisoformat(today) - timedelta(days=days - 1)).isoformat()


class Ledger:
    """What both stores share: the day, writes that never raise, pruning at most once an hour."""

    def __init__(self, today: Callable[[], str], clock: Callable[[], float] = time.monotonic):
        self.today = today
        self._clock = clock
        self._pruned_at: float | None = None
        self._lock = threading.Lock()
        self._failing = False

    def drawn(self, user: str | None, key_id: str, account: str, model: str, *, video: bool, micro: int, priced: bool) -> None:
        """SiliconFlow drew a picture (took a video job, `video`) costing `micro` millionths of a yuan."""

        def write(day: str) -> None:
            counts = {"videos" if video else "pictures": 1, "micro": micro, "unpriced": 0 if priced else 1}
            self._add_drawn(user or NOBODY, Row(day, account, key_id, model, **counts))

        self._write("a picture", write)

    def call(self, key_id: str, ok: bool) -> None:
        """An upstream call was made with the key `key_id`; `ok`: it succeeded."""
        self._write("a call", lambda day: self._add_call(day, key_id, ok))

    def _write(self, what: str, write: Callable[[str], None]) -> None:
        try:
            day = self.today()
            write(day)
            self._prune_if_due(day)
        except Exception as exc:
            with self._lock:
                first, self._failing = not self._failing, True
            if first:
                log.warning(
                    "the ledger cannot record %s (%s: %s); drawing goes on, and what it misses is not counted "
                    "until it works again",
                    what,
                    type(exc).__name__,
                    str(exc)[:200],
                )
            return
        if self._failing:
            with self._lock:
                again, self._failing = self._failing, False
            if again:
                log.info("the ledger records again")

    def _prune_if_due(self, day: str) -> None:
        now = self._clock()
        with self._lock:
            if self._pruned_at is not None and now - self._pruned_at < PRUNE_SECONDS:
                return
            self._pruned_at = now
        self._prune(first_day(day, DAYS))

    # --- what each store does -------------------------------------------------------------------

    def _add_drawn(self, user: str, drawing: Row) -> None:
        raise NotImplementedError

    def _add_call(self, day: str, key_id: str, ok: bool) -> None:
        raise NotImplementedError

    def _prune(self, oldest: str) -> None:
        raise NotImplementedError

    def users(self, day: str) -> dict[str, tuple[int, int]]:
        """User key id -> (millionths of a yuan spent on `day`, spent in all)."""
        raise NotImplementedError

    def keys(self, day: str) -> dict[str, KeyDay]:
        """Upstream key id -> its calls and drawing on `day`."""
        raise NotImplementedError

    def rows(self, oldest: str, newest: str) -> list[Row]:
        """Rows from `oldest` to `newest` (days, both kept), newest first."""
        raise NotImplementedError


class SqliteLedger(Ledger):
    def __init__(self, path: str, today: Callable[[], str], clock: Callable[[], float] = time.monotonic):
        super().__init__(today, clock)
        self.path = path
        self._file = SqliteFile(path, mode=0o600)
        self._db = self._file.db
        db = self._db()
        db.execute(
            "CREATE TABLE IF NOT EXISTS drawn (day TEXT, user TEXT, key_id TEXT, account TEXT, model TEXT, pictures INTEGER, "
            "videos INTEGER, micro INTEGER, unpriced INTEGER, PRIMARY KEY (day, user, key_id, account, model))"
        )
        db.execute(
            "CREATE TABLE IF NOT EXISTS calls (day TEXT, key_id TEXT, calls INTEGER, failed INTEGER, PRIMARY KEY (day, key_id))"
        )
        db.execute("CREATE TABLE IF NOT EXISTS totals (user TEXT PRIMARY KEY, pictures INTEGER, videos INTEGER, micro INTEGER)")

    def _add_drawn(self, user: str, drawing: Row) -> None:
        d = drawing
        with self._file.transaction() as db:
            db.execute(
                "INSERT INTO drawn VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (day, user, key_id, account, model) "
                "DO UPDATE SET pictures = pictures + excluded.pictures, videos = videos + excluded.videos, "
                "micro = micro + excluded.micro, unpriced = unpriced + excluded.unpriced",
                (d.day, user, d.key_id, d.account, d.model, d.pictures, d.videos, d.micro, d.unpriced),
            )
            db.execute(
                "INSERT INTO totals VALUES (?, ?, ?, ?) ON CONFLICT (user) DO UPDATE SET "
                "pictures = pictures + excluded.pictures, videos = videos + excluded.videos, micro = micro + excluded.micro",
                (user, d.pictures, d.videos, d.micro),
            )

    def _add_call(self, day: str, key_id: str, ok: bool) -> None:
        self._db().execute(
            "INSERT INTO calls VALUES (?, ?, 1, ?) ON CONFLICT (day, key_id) DO UPDATE SET calls = calls + 1, "
            "failed = failed + excluded.failed",
            (day, key_id, 0 if ok else 1),
        )

    def _prune(self, oldest: str) -> None:
        db = self._db()
        db.execute("DELETE FROM drawn WHERE day < ?", (oldest,))
        db.execute("DELETE FROM calls WHERE day < ?", (oldest,))

    def users(self, day: str) -> dict[str, tuple[int, int]]:
        db = self._db()
        today = dict(db.execute("SELECT user, SUM(micro) FROM drawn WHERE day = ? GROUP BY user", (day,)).fetchall())
        totals = dict(db.execute("SELECT user, micro FROM totals").fetchall())
        return {user: (today.get(user, 0), total) for user, total in totals.items()}

    def keys(self, day: str) -> dict[str, KeyDay]:
        db = self._db()
        drawn = {
            key_id: (pictures, videos, micro)
            for key_id, pictures, videos, micro in db.execute(
                "SELECT key_id, SUM(pictures), SUM(videos), SUM(micro) FROM drawn WHERE day = ? GROUP BY key_id", (day,)
            )
        }
        calls = {
            key_id: (n, failed)
            for key_id, n, failed in db.execute("SELECT key_id, calls, failed FROM calls WHERE day = ?", (day,))
        }
        return {key_id: KeyDay(*calls.get(key_id, (0, 0)), *drawn.get(key_id, (0, 0, 0))) for key_id in sorted({*drawn, *calls})}

    def rows(self, oldest: str, newest: str) -> list[Row]:
        found = self._db().execute(
            "SELECT day, account, key_id, model, SUM(pictures), SUM(videos), SUM(micro), SUM(unpriced) FROM drawn "
            "WHERE day >= ? AND day <= ? GROUP BY day, account, key_id, model ORDER BY day DESC, account, key_id, model",
            (oldest, newest),
        )
        return [Row(*row) for row in found]


class RedisLedger(Ledger):
    """The same in Redis: a hash per day of drawing and of calls (each expiring after DAYS days and
    a margin), and one hash of totals per user key that never expires. Field names are JSON lists."""

    KEEP_SECONDS = (DAYS + 2) * 86400
    _DRAWN = ("pictures", "videos", "micro", "unpriced")

    def __init__(self, url: str, today: Callable[[], str], clock: Callable[[], float] = time.monotonic):
        super().__init__(today, clock)
        self._redis = redis_client(url)
        self._prefix = "siliconflow:ledger:"

    def _k(self, *parts: str) -> str:
        return self._prefix + ":".join(parts)

    def _add_drawn(self, user: str, drawing: Row) -> None:
        d, pipe = drawing, self._redis.pipeline(transaction=True)
        for measure in self._DRAWN:
            n = getattr(d, measure)
            if n:
                pipe.hincrby(self._k("drawn", d.day), json.dumps([user, d.key_id, d.account, d.model, measure]), n)
                if measure != "unpriced":
                    pipe.hincrby(self._k("totals"), json.dumps([user, measure]), n)
        pipe.expire(self._k("drawn", d.day), self.KEEP_SECONDS)
        pipe.execute()

    def _add_call(self, day: str, key_id: str, ok: bool) -> None:
        pipe = self._redis.pipeline(transaction=True)
        pipe.hincrby(self._k("calls", day), json.dumps([key_id, "calls"]), 1)
        if not ok:
            pipe.hincrby(self._k("calls", day), json.dumps([key_id, "failed"]), 1)
        pipe.expire(self._k("calls", day), self.KEEP_SECONDS)
        pipe.execute()

    def _prune(self, oldest: str) -> None:
        """Nothing to do: each day's hashes expire by themselves."""

    def _day(self, day: str) -> list[tuple[list[str], int]]:
        return [(json.loads(field), int(n)) for field, n in self._redis.hgetall(self._k("drawn", day)).items()]

    def users(self, day: str) -> dict[str, tuple[int, int]]:
        today: dict[str, int] = {}
        for (user, _, _, _, measure), n in self._day(day):
            if measure == "micro":
                today[user] = today.get(user, 0) + n
        found: dict[str, tuple[int, int]] = {}
        for field, n in self._redis.hgetall(self._k("totals")).items():
            user, measure = json.loads(field)
            found.setdefault(user, (today.get(user, 0), 0))
            if measure == "micro":
                found[user] = (today.get(user, 0), int(n))
        return found

    def keys(self, day: str) -> dict[str, KeyDay]:
        found: dict[str, dict[str, int]] = {}
        for (_, key_id, _, _, measure), n in self._day(day):
            counts = found.setdefault(key_id, {})
            counts[measure] = counts.get(measure, 0) + n
        for field, n in self._redis.hgetall(self._k("calls", day)).items():
            key_id, measure = json.loads(field)
            found.setdefault(key_id, {})[measure] = int(n)
        return {key_id: KeyDay(**{k: v for k, v in found[key_id].items() if k != "unpriced"}) for key_id in sorted(found)}

    def rows(self, oldest: str, newest: str) -> list[Row]:
        days, day = [], date.fromisoformat(newest)
        while day.isoformat() >= oldest:
            days.append(day.isoformat())
            day -= timedelta(days=1)
        pipe = self._redis.pipeline(transaction=False)
        for each in days:
            pipe.hgetall(self._k("drawn", each))
        rows: list[Row] = []
        for each, fields in zip(days, pipe.execute(), strict=True):
            summed: dict[tuple[str, str, str], dict[str, int]] = {}
            for field, n in fields.items():
                _, key_id, account, model, measure = json.loads(field)
                counts = summed.setdefault((account, key_id, model), {})
                counts[measure] = counts.get(measure, 0) + int(n)
            rows += [Row(each, *where, **counts) for where, counts in sorted(summed.items())]
        return rows
