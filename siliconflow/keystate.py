"""Where the key pool keeps what every worker must agree on: a SQLite file, or Redis.

Facts, each with an expiry, named like Redis keys:

| fact | value | lives |
|---|---|---|
| `dead:<key id>` | why | until the operator enables or tests the key (a 401 key) |
| `broke:<key id>` | "1", or "probe" while one call tries it | the key's rest after a refusal for balance; a probe's time |
| `backoff:<key id>` | the last rest, seconds | until a call with the key succeeds (its next rest doubles) |
| `cool:<key id>` | "1" | the cool-down after failures in a row |
| `rest:<account>:<model>` | "1" | after a 429: until the account's window frees |
| `cap:<account>:<model>` | calls per window that got through before a 429 | an hour, then learned again |
| `wave:<model>` | the least cap learned in the current wave of 429s | `WAVE_SECONDS` (or the rest, if shorter) |
| `acct:<key id>` | the SiliconFlow account (`/v1/user/info` data.id, where it still answers) | a week |
| `gone:user_info` | its status (410) | a day: nobody asks `/v1/user/info` again meanwhile |
| `lock:<name>` | "1" | who does a periodic job next |

and, per account and model, the calls made within the budget's window (refused calls are taken
out again, so that what is left when a 429 comes is what the account really gets). Keys are
named by a hash (`key_id`), never by their secret. Two stores, one interface:

- `LocalStore`: a SQLite file (stdlib). The gunicorn master creates it before forking, so the
  Procfile's workers share one view without Redis; also the single process of the development
  server and the tests. Transactions make a budget reservation atomic across processes.
- `RedisStore` (REDIS_URL): every worker of every instance. One Lua script checks a key's facts
  and reserves its account's budget in one round trip, atomically.
- `MemoryStore`: the same tables in one process's memory, shared with nobody.

`FallbackStore` puts a store in front of another that takes over while the first fails, and hands
back when it works again: Redis in front of the LocalStore (Redis unreachable), the LocalStore in
front of a MemoryStore (its file full or damaged). So a local fault never fails a request, and is
never reported as SiliconFlow's.

Why not the `limits` package (moving windows over memory or Redis): it checks one limit per call
and knows nothing of keys, accounts or cool-downs, so choosing a key would take a round trip per
candidate and two limits (2/60s with 400/1d) could not be reserved together; it also has no store
that forked workers share. The sliding log below is a few lines in SQL and in Lua.
"""

from __future__ import annotations

import fcntl
import logging
import math
import os
import shutil
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

log = logging.getLogger("siliconflow_proxy.keystores")

CAP_SECONDS = 3600.0  # a learned cap is forgotten after this, so that a bigger allowance is found again
WAVE_SECONDS = 5.0  # how long after a 429 a burst's other refusals are still on the way
WAVE_HOLD = 0.05  # how soon a choice that passed over a busy account in a wave looks again


@dataclass(frozen=True)
class Limit:
    """At most `count` image calls per account and model in any `seconds`."""

    count: int
    seconds: float

    def __str__(self) -> str:
        return f"{self.count}/{self.seconds:g}s"


@dataclass(frozen=True)
class Candidate:
    key_id: str
    account: str
    busy: bool = False  # a call on this key has not answered yet (in this process)


class Fact(StrEnum):
    """The kinds of fact a store keeps, each named `<fact>:<who>` (the table above)."""

    DEAD = "dead"
    BROKE = "broke"
    COOL = "cool"
    REST = "rest"
    CAP = "cap"
    WAVE = "wave"  # wave:<model>: an account was just refused this model; the least cap learned
    ACCOUNT = "acct"
    LOCK = "lock"
    BACKOFF = "backoff"  # backoff:<key id>: a key refused for balance; its next try is a probe
    GONE = "gone"  # gone:user_info: SiliconFlow no longer answers /v1/user/info


# The facts a key choice reads (LocalStore selects them in one query by their first letters).
_CHOICE_FACTS = (Fact.DEAD, Fact.BROKE, Fact.COOL, Fact.REST, Fact.CAP, Fact.WAVE, Fact.BACKOFF)
_CHOICE_GLOB = "[" + "".join(sorted({fact[0] for fact in _CHOICE_FACTS})) + "]*"

Known = tuple[str, float | None]  # (value, seconds left; None: no expiry)

TURN_GRACE = 2.0  # a waiting request's turn is kept this long past when it said it would ask again
YIELD_SECONDS = 0.01  # how soon a request that gave way asks again
# A request not served yet ranks before every request served already (round-robin: each waiting
# request one image a round), and among the not yet served by when they came.
NOT_SERVED_YET = 1e9


@dataclass(frozen=True)
class Ask:
    """One question to the store: may one of `candidates` draw `model` now?"""

    candidates: Sequence[Candidate]
    model: str
    limits: Sequence[Limit] = ()  # the configured budgets
    learn_seconds: float = 60.0  # the window of an account's learned cap, and of the call log
    request: str | None = None  # who asks, for turns between requests (None: no turn-taking)
    force: bool = False  # take a free slot even when a request served longer ago is waiting
    probe_seconds: float = 150.0  # a key whose rest for balance is over goes to one call at a time, for this long


@dataclass(frozen=True)
class Answer:
    key_id: str | None = None  # the key granted
    ticket: str | None = None  # its call's place in its account's window
    wait: float | None = None  # without a key: seconds until one may be free; None: never
    yielded: bool = False  # a key was free, but another request waiting longer had the turn
    probing: bool = False  # the key granted rested for balance: this call tries it, and no other may meanwhile


class Store:
    """The interface both stores offer. Durations are seconds; None means "never expires"."""

    kind = "store"

    def acquire(self, ask: Ask) -> Answer:
        """The first candidate that may draw the model now, its call logged in its account's window.

        An account's learned cap (see `refused`) counts as one more budget, over `learn_seconds`.
        Just after a refusal (the `wave` fact, `WAVE_SECONDS`), an account with no cap of its own
        that has a call in flight (`Candidate.busy`) and as many calls in its window as the least
        cap learned is passed over until that call answers: it was most likely sent in the same
        burst, and its own refusal is on the way, so a refused picture retried there would be
        refused again. Nothing is capped by another account's limit: an idle account, or one
        whose calls answered, is chosen as before, so a bigger allowance is still found.
        A key refused for balance (`backoff`) whose rest (`broke`) is over is granted to this one
        call as a probe: `broke` is set again for `probe_seconds` in the same step, so that no
        other call, of any process, tries it before this one answers.
        Turns: a request that has to wait is kept with the time it was last served (a request not
        served yet ranks first). While as many requests that have waited longer as there are free
        calls are waiting, a free key is left to them (`yielded`) unless `force`; the caller forces
        after a moment, so a request that cannot use that key starves no one.
        """
        raise NotImplementedError

    def refused(self, account: str, model: str, ticket: str, rest: float, learn_seconds: float) -> int:
        """A call was refused with 429: take it out of the window, rest the account for `rest`
        seconds, and keep as its cap the calls left in the last `learn_seconds` (the lowest such
        count, at least one). Returns the cap."""
        raise NotImplementedError

    def get(self, names: Sequence[str]) -> dict[str, Known]:
        """The live facts among `names`."""
        raise NotImplementedError

    def live(self, prefix: str) -> dict[str, Known]:
        """Every live fact whose name starts with `prefix`."""
        raise NotImplementedError

    def put(self, name: str, value: str, seconds: float | None) -> None:
        raise NotImplementedError

    def drop(self, name: str) -> None:
        raise NotImplementedError

    def claim(self, name: str, seconds: float) -> bool:
        """True for the one caller that sets `name` while it is not set (a lock that expires)."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        raise NotImplementedError

    def ping(self) -> None:
        """Raises when the store cannot be reached."""


# --- SQLite ---------------------------------------------------------------------------------------

STATE_PREFIX = "siliconflow-keys-"
OWNER_LOCK = "owner.lock"  # held (flock, shared) by every live process using the directory's file
IDLE_DAYS = 1.0  # a directory without an owner lock (from before there was one) goes after a day untouched
SCHEMA = (
    "CREATE TABLE IF NOT EXISTS facts (name TEXT PRIMARY KEY, value TEXT, until REAL)",
    "CREATE TABLE IF NOT EXISTS calls (window TEXT, at REAL)",
    "CREATE INDEX IF NOT EXISTS calls_by_window ON calls (window, at)",
    "CREATE TABLE IF NOT EXISTS turns (model TEXT, request TEXT, served REAL, expires REAL, PRIMARY KEY (model, request))",
)
BUSY_SECONDS = 4.0  # how long a choice waits for the file while another process holds it
BUSY_RETRY = 0.0003  # seconds between two looks (a sleep: other greenlets run meanwhile)
# A file SQLite cannot read as a database: replaced with a new one (the facts are lost, not shared wrongly).
DAMAGED = {"SQLITE_CORRUPT", "SQLITE_NOTADB"}


def _fast_temp_dir() -> str | None:
    """/dev/shm when there is one: the file then never touches a disk."""
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


def _inode(path: str) -> int | None:
    try:
        return os.stat(path).st_ino
    except FileNotFoundError:
        return None


def _hold(path: str) -> int:
    """An fd of `path` holding a shared flock; the file made already locked (renamed into place),
    so that no other process ever sees it unheld."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        temporary = f"{path}.{os.getpid()}.{threading.get_ident()}"
        fd = os.open(temporary, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_SH)
        os.rename(temporary, path)
        return fd
    fcntl.flock(fd, fcntl.LOCK_SH)
    return fd


def remove_stale_dirs(parent: str) -> list[str]:
    """Remove the state directories of processes that are gone (killed: atexit never ran).

    One is gone when nobody holds its owner lock: a lock, unlike a pid, is not reused by another
    process and is seen across PID namespaces (containers sharing /dev/shm). A directory without
    an owner lock (made by a version before it) goes when nothing in it changed for IDLE_DAYS.
    Directories of other users, and anything not named like ours, are left alone.
    """
    removed = []
    try:
        names = [name for name in os.listdir(parent) if name.startswith(STATE_PREFIX)]
    except OSError:
        return removed
    for name in names:
        directory = os.path.join(parent, name)
        try:
            if not os.path.isdir(directory) or os.path.islink(directory) or os.stat(directory).st_uid != os.getuid():
                continue
            lock = os.path.join(directory, OWNER_LOCK)
            if os.path.exists(lock):
                fd = os.open(lock, os.O_RDWR)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    continue  # a live process holds it
                try:
                    shutil.rmtree(directory)
                finally:
                    fcntl.flock(fd, fcntl.LOCK_UN)
                    os.close(fd)
            else:
                paths = [directory] + [os.path.join(directory, entry) for entry in os.listdir(directory)]
                newest = max(os.lstat(path).st_mtime for path in paths)
                if time.time() - newest < IDLE_DAYS * 86400:
                    continue
                shutil.rmtree(directory)
            removed.append(name)
        except OSError:
            continue
    if removed:
        log.info(
            "removed %d key-state director%s of processes that are gone from %s",
            len(removed),
            "y" if len(removed) == 1 else "ies",
            parent,
        )
    return removed


class LocalStore(Store):
    """Facts in a SQLite file shared by the processes forked from the one that made it.

    Each process opens its own connection (a connection must not cross a fork). The clock is
    time.monotonic, which all processes on one machine share.

    The file can go wrong under the service. Deleted (a tmp cleaner, a person): the next call of any
    process sees another file, or none, at the path, makes it anew (one process, under a flock on
    the directory) and uses it, so the workers share again. Damaged (SQLite cannot read it): the
    call raises, and the next one replaces the file with a new one. Full: the call raises. Callers
    that must not fail put a `FallbackStore` in front (see `_key_store`).
    """

    kind = "local"
    name = "the key-state file"
    CLEAN_EVERY = 200  # acquisitions between two sweeps of expired rows

    def __init__(self, path: str | None = None, *, clock: Callable[[], float] = time.monotonic):
        self._owner = os.getpid()
        if path is None:
            parent = _fast_temp_dir() or tempfile.gettempdir()
            remove_stale_dirs(parent)
            directory = tempfile.mkdtemp(prefix=f"{STATE_PREFIX}{os.getpid()}-", dir=parent)
            path = os.path.join(directory, "keys.sqlite3")
        self.path = path
        self._clock = clock
        self._lock = threading.Lock()
        self._connection: sqlite3.Connection | None = None
        self._pid: int | None = None
        self._inode: int | None = None  # of the file this process's connection has open
        self._held: int | None = None  # this process's fd of the owner lock
        self._damaged = False
        self._count = 0
        with self._transaction():
            pass  # the file and its tables exist from here on

    @property
    def failures(self) -> tuple[type[Exception], ...]:
        return (sqlite3.Error, OSError)

    def failure(self, exc: Exception) -> str:
        if isinstance(exc, sqlite3.Error):
            return f"{self.name} failed ({str(exc)[:200]})"
        return f"{self.name} failed ({exc.strerror or type(exc).__name__})" if isinstance(exc, OSError) else self.name

    def _db(self) -> sqlite3.Connection:
        # No connection: the last opening failed (a full disk) and this call tries again.
        if self._connection is None or self._pid != os.getpid() or self._damaged or _inode(self.path) != self._inode:
            self._open()
        if self._connection is None:  # cannot be: _open() connects or raises
            raise sqlite3.OperationalError("the key-state file could not be opened")
        return self._connection

    def _open(self) -> None:
        """Connect to the file at the path, making it (and its tables) when there is none, or a new
        one when this process found it damaged and no other process has replaced it yet."""
        directory = os.path.dirname(self.path)
        os.makedirs(directory, mode=0o700, exist_ok=True)
        guard = os.open(directory, os.O_RDONLY)
        try:
            fcntl.flock(guard, fcntl.LOCK_EX)  # one process at a time decides what is at the path
            found = _inode(self.path)
            if found is None or (self._damaged and found == self._inode):
                if found is not None or (self._pid is not None and self._inode is not None):
                    log.warning(
                        "%s %s: made anew; the dead keys, budgets and accounts it held are forgotten",
                        self.name,
                        "was damaged" if found is not None else "was deleted",
                    )
                for suffix in ("", "-wal", "-shm"):  # a WAL left by the file that went would be read into the new one
                    try:
                        os.unlink(self.path + suffix)
                    except FileNotFoundError:
                        pass
            if self._pid == os.getpid() and self._connection is not None:
                self._connection.close()
            self._connection = None
            # timeout=0: a busy database is retried below with sleeps that let other greenlets run,
            # not inside SQLite, which would block a gevent worker's whole loop.
            connection = sqlite3.connect(self.path, timeout=0, isolation_level=None, check_same_thread=False)
            try:
                connection.execute("PRAGMA journal_mode=WAL")
                connection.execute("PRAGMA synchronous=OFF")
                for statement in SCHEMA:
                    connection.execute(statement)
            except BaseException:
                connection.close()
                raise
            held = _hold(os.path.join(directory, OWNER_LOCK))
            if self._pid == os.getpid() and self._held is not None:
                os.close(self._held)  # this process's own; one inherited from the master is the master's
            self._connection, self._pid, self._held = connection, os.getpid(), held
            self._inode, self._damaged = _inode(self.path), False
        finally:
            # Unlocked before closed: under gevent's monkey patching the close may wait for the hub's
            # loop, and a master that forks meanwhile hands the lock to a worker that never lets go.
            fcntl.flock(guard, fcntl.LOCK_UN)
            os.close(guard)

    @contextmanager
    def _transaction(self, write: bool = True) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                db = self._db()
                # The other workers hold the file for a fraction of a millisecond at a time: look again
                # soon. A wait that grew to 10 ms (it did) left this worker's choices queued behind
                # one sleeping greenlet while the other worker took the file back-to-back in a burst.
                give_up = time.monotonic() + BUSY_SECONDS
                while True:
                    try:
                        db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                        break
                    except sqlite3.OperationalError as exc:
                        if "locked" not in str(exc) and "busy" not in str(exc):
                            raise
                        if time.monotonic() > give_up:
                            raise sqlite3.OperationalError("key store stayed busy") from None
                        time.sleep(BUSY_RETRY)
                try:
                    yield db
                    db.execute("COMMIT")
                except BaseException:
                    if db.in_transaction:  # a failed COMMIT (a full disk) leaves it open
                        try:
                            db.execute("ROLLBACK")
                        except sqlite3.Error:
                            pass
                    raise
            except sqlite3.DatabaseError as exc:
                if getattr(exc, "sqlite_errorname", None) in DAMAGED:
                    self._damaged = True
                raise

    def acquire(self, ask: Ask) -> Answer:
        now, model = self._clock(), ask.model
        with self._transaction() as db:
            live = {
                name: (value, until)
                for name, value, until in db.execute(
                    "SELECT name, value, until FROM facts WHERE (until IS NULL OR until > ?) AND name GLOB ?", (now, _CHOICE_GLOB)
                )
            }
            wave = int(live[f"{Fact.WAVE}:{model}"][0]) if f"{Fact.WAVE}:{model}" in live else None
            held = False  # a busy account passed over in a wave
            soonest: float | None = None
            chosen: tuple[str, str, float] | None = None  # key id, window, longest
            room: dict[str, float] = {}  # calls each account with a free key may still make now
            # The free room is counted only when turns matter: with nobody waiting, the first free key will do.
            turns_matter = bool(
                ask.request
                and not ask.force
                and db.execute("SELECT 1 FROM turns WHERE model = ? AND expires > ? LIMIT 1", (model, now)).fetchone()
            )
            for candidate in ask.candidates:
                if chosen is not None and not turns_matter:
                    break
                kid = candidate.key_id
                if f"{Fact.DEAD}:{kid}" in live or f"{Fact.BROKE}:{kid}" in live:
                    continue
                window = f"{candidate.account}:{model}"
                free_at = max(
                    [now] + [live[name][1] or now for name in (f"{Fact.COOL}:{kid}", f"{Fact.REST}:{window}") if name in live]
                )
                budget = list(ask.limits)
                capped = f"{Fact.CAP}:{window}" in live
                if capped:
                    budget.append(Limit(int(live[f"{Fact.CAP}:{window}"][0]), ask.learn_seconds))
                hold = wave is not None and candidate.busy and not capped
                longest = max([ask.learn_seconds] + [limit.seconds for limit in budget])
                # Without a budget (none set, none learned yet) the account's calls do not decide:
                # reading them was most of a choice's time in a burst (hundreds of rows a choice).
                times = (
                    [
                        at
                        for (at,) in db.execute(
                            "SELECT at FROM calls WHERE window = ? AND at > ? ORDER BY at", (window, now - longest)
                        )
                    ]
                    if budget or hold
                    else []
                )
                free_at = max(free_at, _window_frees(times, budget, now))
                if hold and free_at <= now and sum(1 for at in times if at > now - ask.learn_seconds) >= wave:
                    held = True
                    continue
                if free_at <= now:
                    chosen = chosen or (kid, window, longest)
                    room[window] = min(
                        [math.inf] + [limit.count - sum(1 for at in times if at > now - limit.seconds) for limit in budget]
                    )
                else:
                    soonest = free_at if soonest is None else min(soonest, free_at)
            if chosen is not None:
                if turns_matter and self._waited_longer(db, ask, now) >= sum(room.values()):
                    return Answer(wait=YIELD_SECONDS, yielded=True)
                kid, window, longest = chosen
                ticket = db.execute("INSERT INTO calls (window, at) VALUES (?, ?)", (window, now)).lastrowid
                if ask.request:
                    db.execute(
                        "UPDATE turns SET served = ?, expires = ? WHERE model = ? AND request = ?",
                        (now, now + TURN_GRACE, model, ask.request),
                    )
                self._sweep(db, now, longest)
                probing = f"{Fact.BACKOFF}:{kid}" in live
                if probing:
                    db.execute(
                        "INSERT OR REPLACE INTO facts (name, value, until) VALUES (?, 'probe', ?)",
                        (f"{Fact.BROKE}:{kid}", now + ask.probe_seconds),
                    )
                return Answer(kid, str(ticket), probing=probing)
            if held:
                soonest = min(soonest or math.inf, now + WAVE_HOLD)
            wait = None if soonest is None else soonest - now
            if wait is not None and ask.request:
                db.execute(
                    "INSERT INTO turns VALUES (?, ?, ?, ?) ON CONFLICT (model, request) DO UPDATE SET expires = excluded.expires",
                    (model, ask.request, now - NOT_SERVED_YET, now + wait + TURN_GRACE),
                )
        return Answer(wait=wait)

    def _waited_longer(self, db: sqlite3.Connection, ask: Ask, now: float) -> int:
        """How many other waiting requests rank before this one."""
        db.execute("DELETE FROM turns WHERE model = ? AND expires <= ?", (ask.model, now))
        row = db.execute("SELECT served FROM turns WHERE model = ? AND request = ?", (ask.model, ask.request)).fetchone()
        mine = row[0] if row else now - NOT_SERVED_YET
        (before,) = db.execute(
            "SELECT COUNT(*) FROM turns WHERE model = ? AND request != ? AND served < ?", (ask.model, ask.request, mine)
        ).fetchone()
        if before and row is None:  # it gave way: it waits from now on, and keeps its place
            db.execute("INSERT INTO turns VALUES (?, ?, ?, ?)", (ask.model, ask.request, mine, now + TURN_GRACE))
        return before

    def refused(self, account: str, model: str, ticket: str, rest: float, learn_seconds: float) -> int:
        now = self._clock()
        window = f"{account}:{model}"
        with self._transaction() as db:
            if ticket.isdigit():  # not one of Redis's, from before Redis went away
                db.execute("DELETE FROM calls WHERE rowid = ?", (int(ticket),))
            (left,) = db.execute(
                "SELECT COUNT(*) FROM calls WHERE window = ? AND at > ?", (window, now - learn_seconds)
            ).fetchone()
            row = db.execute("SELECT value FROM facts WHERE name = ? AND until > ?", (f"{Fact.CAP}:{window}", now)).fetchone()
            cap = max(1, min(left, int(row[0])) if row else left)
            db.execute(
                "INSERT OR REPLACE INTO facts (name, value, until) VALUES (?, ?, ?)",
                (f"{Fact.CAP}:{window}", str(cap), now + CAP_SECONDS),
            )
            db.execute(
                "INSERT OR REPLACE INTO facts (name, value, until) VALUES (?, '1', ?)", (f"{Fact.REST}:{window}", now + rest)
            )
            row = db.execute("SELECT value FROM facts WHERE name = ? AND until > ?", (f"{Fact.WAVE}:{model}", now)).fetchone()
            db.execute(
                "INSERT OR REPLACE INTO facts (name, value, until) VALUES (?, ?, ?)",
                (f"{Fact.WAVE}:{model}", str(min(cap, int(row[0])) if row else cap), now + min(rest, WAVE_SECONDS)),
            )
        return cap

    def _sweep(self, db: sqlite3.Connection, now: float, longest: float) -> None:
        self._count += 1
        if self._count % self.CLEAN_EVERY == 0:
            db.execute("DELETE FROM calls WHERE at <= ?", (now - longest,))
            db.execute("DELETE FROM facts WHERE until IS NOT NULL AND until <= ?", (now,))
            db.execute("DELETE FROM turns WHERE expires <= ?", (now,))

    def get(self, names: Sequence[str]) -> dict[str, Known]:
        if not names:
            return {}
        now = self._clock()
        with self._transaction(write=False) as db:
            rows = db.execute(
                f"SELECT name, value, until FROM facts WHERE name IN ({','.join('?' * len(names))}) "
                "AND (until IS NULL OR until > ?)",
                (*names, now),
            ).fetchall()
        return {name: (value, None if until is None else until - now) for name, value, until in rows}

    def live(self, prefix: str) -> dict[str, Known]:
        now = self._clock()
        with self._transaction(write=False) as db:
            rows = db.execute(
                "SELECT name, value, until FROM facts WHERE substr(name, 1, ?) = ? AND (until IS NULL OR until > ?)",
                (len(prefix), prefix, now),
            ).fetchall()
        return {name: (value, None if until is None else until - now) for name, value, until in rows}

    def put(self, name: str, value: str, seconds: float | None) -> None:
        until = None if seconds is None else self._clock() + seconds
        with self._transaction() as db:
            db.execute("INSERT OR REPLACE INTO facts (name, value, until) VALUES (?, ?, ?)", (name, value, until))

    def drop(self, name: str) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM facts WHERE name = ?", (name,))

    def claim(self, name: str, seconds: float) -> bool:
        now = self._clock()
        with self._transaction() as db:
            row = db.execute("SELECT until FROM facts WHERE name = ?", (name,)).fetchone()
            if row is not None and (row[0] is None or row[0] > now):
                return False
            db.execute("INSERT OR REPLACE INTO facts (name, value, until) VALUES (?, '1', ?)", (name, now + seconds))
            return True

    def ping(self) -> None:
        """A write, as drawing does: a full disk still reads."""
        with self._transaction() as db:
            db.execute("INSERT OR REPLACE INTO facts (name, value, until) VALUES ('ping', '1', ?)", (self._clock() + 60,))

    def describe(self) -> dict[str, Any]:
        return {"kind": "local", "shared_by": "this instance's worker processes"}

    def remove(self) -> None:
        """Delete the file, from the process that made it (forked workers inherit this object)."""
        if os.getpid() == self._owner:
            directory = os.path.dirname(self.path)
            for name in (self.path + suffix for suffix in ("", "-wal", "-shm")):
                try:
                    os.unlink(name)
                except OSError:
                    pass
            try:
                os.unlink(os.path.join(directory, OWNER_LOCK))
                os.rmdir(directory)
            except OSError:
                pass


class MemoryStore(LocalStore):
    """The same tables in this process's memory: what a process draws on while its file fails.
    Each process that uses it (a forked worker too) has its own, empty at first."""

    kind = "memory"
    name = "the in-memory key state"

    def __init__(self, *, clock: Callable[[], float] = time.monotonic):
        super().__init__(":memory:", clock=clock)

    def _db(self) -> sqlite3.Connection:
        if self._pid != os.getpid():
            self._connection = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
            for statement in SCHEMA:
                self._connection.execute(statement)
            self._pid = os.getpid()
        assert self._connection is not None
        return self._connection

    def describe(self) -> dict[str, Any]:
        return {"kind": "memory", "shared_by": "nobody: this process only"}

    def remove(self) -> None:
        pass


def _window_frees(times: Sequence[float], limits: Sequence[Limit], now: float) -> float:
    """When the sliding windows of `limits` admit one more call, given the calls at `times` (sorted)."""
    free_at = now
    for limit in limits:
        inside = [at for at in times if at > now - limit.seconds]
        if len(inside) >= limit.count:
            free_at = max(free_at, inside[len(inside) - limit.count] + limit.seconds)
    return free_at


# --- Redis ----------------------------------------------------------------------------------------

# KEYS: none (names are built inside: this needs one Redis, not a cluster).
# ARGV: prefix, model, number of limits, then count and milliseconds for each limit, then key id and
# account for each candidate in order. Returns {key id, 0} or {"", milliseconds until one may, -1: never}.
# ARGV: prefix, model, learn ms, request ("" for none), force (0/1), turn grace ms, yield ms, the number
# of limits, then count and milliseconds for each limit, then the candidates in one argument, a line
# "key id<TAB>account<TAB>busy (0/1)" each (one argument packs in a fraction of the time of a hundred),
# then the milliseconds a probe of a key resting for balance holds it.
# Returns {key id, ticket} or {"", milliseconds until a key may be free (-1: never), 1 if it yielded}.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local prefix, model, learn = ARGV[1], ARGV[2], tonumber(ARGV[3])
local request, force, grace, yield = ARGV[4], ARGV[5] == '1', tonumber(ARGV[6]), tonumber(ARGV[7])
local nlimits = tonumber(ARGV[8])
local limits = {}
for i = 1, nlimits do
  limits[i] = {tonumber(ARGV[7 + 2 * i]), tonumber(ARGV[8 + 2 * i])}
end
local turns, expiries = prefix .. 'turns:' .. model, prefix .. 'turnexp:' .. model
local not_served_yet = NOT_SERVED_YET_MS
local function waiting(expires)
  redis.call('ZADD', turns, 'NX', now - not_served_yet, request)
  redis.call('ZADD', expiries, expires, request)
  redis.call('PEXPIRE', turns, expires - now + grace)
  redis.call('PEXPIRE', expiries, expires - now + grace)
end
local function waited_longer()
  for _, gone in ipairs(redis.call('ZRANGEBYSCORE', expiries, '-inf', now)) do
    redis.call('ZREM', turns, gone)
    redis.call('ZREM', expiries, gone)
  end
  local mine = redis.call('ZSCORE', turns, request)
  local before = redis.call('ZCOUNT', turns, '-inf', '(' .. (mine or (now - not_served_yet)))
  if before > 0 and not mine then waiting(now + grace) end
  return before
end
local wave = redis.call('GET', prefix .. 'wave:' .. model)
local held = false
local soonest, chosen, room, inf = -1, nil, 0, 1e18
local rooms = {}
-- The free room is counted only when turns matter: with nobody else waiting, the first free key will do.
local turns_matter = request ~= '' and not force and redis.call('EXISTS', turns) == 1
for kid, account, busy in string.gmatch(ARGV[9 + 2 * nlimits], '([^\\t\\n]+)\\t([^\\t\\n]+)\\t([01])') do
  if chosen and not turns_matter then break end
  if redis.call('EXISTS', prefix .. 'dead:' .. kid, prefix .. 'broke:' .. kid) == 0 then
    local window = account .. ':' .. model
    local free_at = now
    local cool = redis.call('PTTL', prefix .. 'cool:' .. kid)
    if cool > 0 then free_at = math.max(free_at, now + cool) end
    local rest = redis.call('PTTL', prefix .. 'rest:' .. window)
    if rest > 0 then free_at = math.max(free_at, now + rest) end
    local budget, longest = {}, learn
    for j, limit in ipairs(limits) do
      budget[j] = limit
      if limit[2] > longest then longest = limit[2] end
    end
    local cap = redis.call('GET', prefix .. 'cap:' .. window)
    if cap then budget[#budget + 1] = {tonumber(cap), learn} end
    local hold = wave and busy == '1' and not cap
    local calls = prefix .. 'win:' .. window
    redis.call('ZREMRANGEBYSCORE', calls, '-inf', now - longest)
    local left = inf
    for _, limit in ipairs(budget) do
      local inside = redis.call('ZRANGEBYSCORE', calls, '(' .. (now - limit[2]), '+inf', 'WITHSCORES')
      local count = #inside / 2
      if count >= limit[1] then
        free_at = math.max(free_at, tonumber(inside[2 * (count - limit[1] + 1)]) + limit[2])
      end
      left = math.min(left, limit[1] - count)
    end
    if hold and free_at <= now and redis.call('ZCOUNT', calls, '(' .. (now - learn), '+inf') >= tonumber(wave) then
      held = true
    elseif free_at <= now then
      if not chosen then chosen = {kid, calls, longest} end
      if not rooms[window] then
        rooms[window] = true
        room = math.min(room + left, inf)
      end
    elseif soonest < 0 or free_at - now < soonest then
      soonest = free_at - now
    end
  end
end
if chosen then
  if request ~= '' and not force and waited_longer() >= room then
    return {'', yield, 1}
  end
  local ticket = now .. ':' .. redis.call('INCR', prefix .. 'seq')
  redis.call('ZADD', chosen[2], now, ticket)
  redis.call('PEXPIRE', chosen[2], chosen[3])
  if request ~= '' and redis.call('ZSCORE', turns, request) then
    redis.call('ZADD', turns, now, request)
    redis.call('ZADD', expiries, now + grace, request)
  end
  local probing = 0
  if redis.call('EXISTS', prefix .. 'backoff:' .. chosen[1]) == 1 then
    redis.call('SET', prefix .. 'broke:' .. chosen[1], 'probe', 'PX', tonumber(ARGV[10 + 2 * nlimits]))
    probing = 1
  end
  return {chosen[1], ticket, probing}
end
if held and (soonest < 0 or soonest > HOLD_MS) then soonest = HOLD_MS end
if soonest >= 0 and request ~= '' then waiting(now + soonest + grace) end
return {'', soonest, 0}
"""
_ACQUIRE = _ACQUIRE.replace("NOT_SERVED_YET_MS", str(int(NOT_SERVED_YET * 1000))).replace("HOLD_MS", str(int(WAVE_HOLD * 1000)))

# ARGV: prefix, account:model, ticket, rest ms, learn ms, cap ms. Returns the cap.
_REFUSED = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local prefix, window, ticket = ARGV[1], ARGV[2], ARGV[3]
local rest, learn, keep = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
redis.call('ZREM', prefix .. 'win:' .. window, ticket)
local left = redis.call('ZCOUNT', prefix .. 'win:' .. window, '(' .. (now - learn), '+inf')
local cap = redis.call('GET', prefix .. 'cap:' .. window)
if cap and tonumber(cap) < left then left = tonumber(cap) end
if left < 1 then left = 1 end
redis.call('SET', prefix .. 'cap:' .. window, left, 'PX', keep)
redis.call('SET', prefix .. 'rest:' .. window, '1', 'PX', math.max(rest, 1))
local wave = redis.call('GET', prefix .. 'wave:' .. ARGV[7])
local least = left
if wave and tonumber(wave) < least then least = tonumber(wave) end
redis.call('SET', prefix .. 'wave:' .. ARGV[7], least, 'PX', math.max(math.min(rest, WAVE_MS), 1))
return left
"""
_REFUSED = _REFUSED.replace("WAVE_MS", str(int(WAVE_SECONDS * 1000)))


class RedisStore(Store):
    """Facts in Redis, shared by every worker of every instance; names start with `prefix`."""

    kind = "redis"

    def __init__(self, url: str, prefix: str = "sfp:"):
        import redis  # only deployments with REDIS_URL need the client loaded

        self.prefix = prefix
        # Blocking pool: a thousand greenlets must not open a thousand connections. Short socket
        # timeouts: an unreachable Redis costs a request a fraction of a second, once.
        pool = redis.BlockingConnectionPool.from_url(
            url,
            max_connections=64,
            timeout=2,
            socket_timeout=1,
            socket_connect_timeout=1,
            health_check_interval=30,
        )
        self.client = redis.Redis(connection_pool=pool, decode_responses=False)
        self._acquire = self.client.register_script(_ACQUIRE)
        self._refused = self.client.register_script(_REFUSED)

    def acquire(self, ask: Ask) -> Answer:
        args: list[Any] = [
            self.prefix,
            ask.model,
            int(ask.learn_seconds * 1000),
            ask.request or "",
            int(ask.force),
            int(TURN_GRACE * 1000),
            int(YIELD_SECONDS * 1000),
            len(ask.limits),
        ]
        for limit in ask.limits:
            args += [limit.count, int(limit.seconds * 1000)]
        args.append(
            "\n".join(
                f"{c.key_id}\t{c.account.replace(chr(9), ' ').replace(chr(10), ' ')}\t{int(c.busy)}" for c in ask.candidates
            )
        )
        args.append(max(int(ask.probe_seconds * 1000), 1))
        answer = self._acquire(args=args)
        if answer[0]:
            return Answer(answer[0].decode(), answer[1].decode(), probing=int(answer[2]) == 1)
        wait = int(answer[1])
        return Answer(wait=None if wait < 0 else wait / 1000, yielded=int(answer[2]) == 1)

    def refused(self, account: str, model: str, ticket: str, rest: float, learn_seconds: float) -> int:
        return int(
            self._refused(
                args=[
                    self.prefix,
                    f"{account}:{model}",
                    ticket,
                    int(rest * 1000),
                    int(learn_seconds * 1000),
                    int(CAP_SECONDS * 1000),
                    model,
                ]
            )
        )

    def get(self, names: Sequence[str]) -> dict[str, Known]:
        if not names:
            return {}
        pipe = self.client.pipeline(transaction=False)
        for name in names:
            pipe.get(self.prefix + name)
            pipe.pttl(self.prefix + name)
        answers = pipe.execute()
        found = {}
        for name, value, ttl in zip(names, answers[::2], answers[1::2], strict=True):
            if value is not None:
                found[name] = (value.decode(), None if ttl < 0 else ttl / 1000)
        return found

    def live(self, prefix: str) -> dict[str, Known]:
        names = [raw.decode()[len(self.prefix) :] for raw in self.client.scan_iter(match=self.prefix + prefix + "*", count=500)]
        return self.get(names)

    def put(self, name: str, value: str, seconds: float | None) -> None:
        self.client.set(self.prefix + name, value, px=None if seconds is None else max(int(seconds * 1000), 1))

    def drop(self, name: str) -> None:
        self.client.delete(self.prefix + name)

    def claim(self, name: str, seconds: float) -> bool:
        return bool(self.client.set(self.prefix + name, "1", nx=True, px=max(int(seconds * 1000), 1)))

    name = "Redis"

    @property
    def failures(self) -> tuple[type[Exception], ...]:
        import redis

        return (redis.RedisError, OSError)

    def failure(self, exc: Exception) -> str:
        import redis

        if isinstance(exc, redis.ResponseError):  # it answered, but with an error: say which
            return f"Redis answered with an error ({str(exc)[:200]})"
        return f"Redis cannot be reached ({type(exc).__name__})"

    def ping(self) -> None:
        """A write, as drawing does: a Redis out of memory still answers PING and reads."""
        self.client.set(self.prefix + "ping", "1", ex=60)

    def describe(self) -> dict[str, Any]:
        return {"kind": "redis", "shared_by": "every worker of every instance using this Redis"}


class FallbackStore(Store):
    """`primary` while it works; `fallback` while it fails. No request fails for it.

    Redis in front of this instance's LocalStore (Redis unreachable); a LocalStore in front of a
    MemoryStore (its file full or damaged). After a failure the primary is left alone for
    `retry_seconds`, then tried again with the next call, /health's included. The facts written to
    the fallback meanwhile stay there: the primary's view is the one shared again.
    """

    def __init__(
        self,
        primary: RedisStore | LocalStore,
        fallback: Store,
        *,
        retry_seconds: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.primary, self.fallback = primary, fallback
        self.kind = primary.kind
        self.clock = clock  # when to try the primary again (tests set it)
        self._retry_seconds = retry_seconds
        self._down_since: float | None = None
        self._problem = ""
        self._retry_at = 0.0
        self._lock = threading.Lock()

    def _call(self, method: str, *args: Any) -> Any:
        if self._down_since is None or self.clock() >= self._retry_at:
            try:
                result = getattr(self.primary, method)(*args)
            except self.primary.failures as exc:
                self._went_down(exc)
            else:
                if self._down_since is not None:
                    with self._lock:
                        if self._down_since is not None:
                            self._came_back(self.clock() - self._down_since)
                            self._down_since = None
                return result
        return getattr(self.fallback, method)(*args)

    def _went_down(self, exc: Exception) -> None:
        with self._lock:
            self._retry_at = self.clock() + self._retry_seconds
            if self._down_since is None:
                self._down_since = self.clock()
                self._problem = self.primary.failure(exc)
                if isinstance(self.primary, RedisStore):
                    level = logging.WARNING if "cannot be reached" in self._problem else logging.ERROR
                    log.log(
                        level,
                        "%s: drawing goes on with this instance's own key state until it %s",
                        self._problem,
                        "is back" if level == logging.WARNING else "answers properly",
                    )
                else:
                    log.error(
                        "%s: this process draws on with key state in its own memory, not shared with the "
                        "other workers, until the file works again (tried every %g s)",
                        self._problem,
                        self._retry_seconds,
                    )

    def _came_back(self, seconds: float) -> None:
        if isinstance(self.primary, RedisStore):
            log.warning("Redis is reachable again after %.0f s: keys are shared again", seconds)
        else:
            log.warning("%s works again after %.0f s: this instance's workers share keys again", self.primary.name, seconds)

    @property
    def reachable(self) -> bool:
        return self._down_since is None

    def acquire(self, ask: Ask) -> Answer:
        return self._call("acquire", ask)

    def refused(self, account: str, model: str, ticket: str, rest: float, learn_seconds: float) -> int:
        return self._call("refused", account, model, ticket, rest, learn_seconds)

    def get(self, names: Sequence[str]) -> dict[str, Known]:
        return self._call("get", names)

    def live(self, prefix: str) -> dict[str, Known]:
        return self._call("live", prefix)

    def put(self, name: str, value: str, seconds: float | None) -> None:
        self._call("put", name, value, seconds)

    def drop(self, name: str) -> None:
        self._call("drop", name)

    def claim(self, name: str, seconds: float) -> bool:
        return self._call("claim", name, seconds)

    def describe(self) -> dict[str, Any]:
        self._call("ping")  # /health asks: look (within the retry interval) rather than guess
        described = self.primary.describe()
        described["reachable"] = self.reachable
        if not self.reachable:
            described["problem"] = self._problem
            described["using"] = (
                "this instance's local state until Redis is back"
                if isinstance(self.primary, RedisStore)
                else "this process's own memory until the file works again"
            )
            inner = self.fallback.describe()
            if inner.get("reachable") is False:
                described["fallback"] = inner
        return described

    def remove(self) -> None:
        for store in (self.primary, self.fallback):
            if isinstance(store, (LocalStore, FallbackStore)):
                store.remove()
