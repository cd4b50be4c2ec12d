"""A SQLite file in the data directory, shared by a process's threads and by its other processes
(gunicorn's workers, the next process after a restart): a connection per thread, made again after
a fork, in autocommit with WAL so readers never wait for a writer. With `mode`, a file made here is
made with those permissions (SQLite gives its -wal and -shm files the same)."""

from __future__ import annotations

import os
import sqlite3
import threading


class SqliteFile:
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
            connection = sqlite3.connect(self.path, timeout=10, isolation_level=None, check_same_thread=False)
            connection.execute("PRAGMA journal_mode=WAL")
            self._local.connection, self._local.pid = connection, pid
        return connection
