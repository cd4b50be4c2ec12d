"""A SQLite file in the data directory, shared by a process's threads and by its other processes
(gunicorn's workers, the next process after a restart): a connection per thread, made again after
a fork, in autocommit with WAL so readers never wait for a writer. With `mode`, a file made here is
made with those permissions (SQLite gives its -wal and -shm files the same)."""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager


def connect(path: str, *, timeout: float = 10.0, durable: bool = True) -> sqlite3.Connection:
    """The one way this service opens SQLite: autocommit (transactions are begun by hand), usable
    from any thread of the process that opened it, WAL so readers never wait for a writer. Not
    `durable`: a crash may lose the last writes (the key state, remade at every start anyway)."""
    connection = sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=False)
    try:
        if path != ":memory:":
            connection.execute("PRAGMA journal_mode=WAL")
        if not durable:
            connection.execute("PRAGMA synchronous=OFF")
    except BaseException:
        connection.close()
        raise
    return connection


class SqliteFile:
    """A file's connection per thread, made again after a fork (user keys, video jobs, the ledger,
    the upstream keys' roster)."""

    def __init__(self, path: str, mode: int | None = None):
        self.path = path
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        if mode is not None:
            os.close(os.open(path, os.O_CREAT | os.O_RDWR, mode))  # an existing file keeps its own
        self._local = threading.local()

    def db(self) -> sqlite3.Connection:
        pid = os.getpid()
        connection = getattr(self._local, "connection", None)
        if connection is None or self._local.pid != pid:
            connection = connect(self.path)
            self._local.connection, self._local.pid = connection, pid
        return connection

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE: a writer at a time across processes), committed
        at the end, rolled back if anything raises inside."""
        db = self.db()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
