"""The key state in a SQLite file (stdlib) shared by one instance's worker processes, or in one
process's memory: the `Store` of keystate.py, its choice of a key and its budgets in SQL, and the
clean-up of state directories left by processes that are gone."""

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
from typing import Any

from siliconflow.keystate import (
    _CHOICE_GLOB,
    CAP_SECONDS,
    NOT_SERVED_YET,
    TURN_GRACE,
    WAVE_HOLD,
    WAVE_SECONDS,
    YIELD_SECONDS,
    Answer,
    Ask,
    Fact,
    Known,
    Limit,
    Store,
)
from storage.sqlite_file import connect

log = logging.getLogger("siliconflow_proxy.keystate")

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
            connection = connect(self.path, timeout=0, durable=False)
            try:
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
            self._connection = connect(":memory:")
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
