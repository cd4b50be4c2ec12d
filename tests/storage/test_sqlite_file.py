"""A SQLite file shared by threads and processes (sqlite_file.py): a write transaction commits as a
whole or not at all, writers in several threads lose no update, the file is made private to the
service when asked (it holds key hashes and quotas), its directory is made, and a forked worker
opens its own connection."""

from __future__ import annotations

import os
import stat
import threading

import pytest

from storage.sqlite_file import SqliteFile


def _counter(path: str) -> SqliteFile:
    file = SqliteFile(path)
    file.db().execute("CREATE TABLE IF NOT EXISTS counter (name TEXT PRIMARY KEY, n INTEGER)")
    file.db().execute("INSERT OR IGNORE INTO counter VALUES ('c', 0)")
    return file


def _count(path: str) -> int:
    return SqliteFile(path).db().execute("SELECT n FROM counter WHERE name = 'c'").fetchone()[0]


def test_a_transaction_that_fails_halfway_leaves_nothing_behind(tmp_path):
    path = str(tmp_path / "data.sqlite3")
    file = _counter(path)
    with pytest.raises(ZeroDivisionError):
        with file.transaction() as db:
            db.execute("UPDATE counter SET n = n + 5 WHERE name = 'c'")
            db.execute("INSERT INTO counter VALUES ('other', 1)")
            _ = 1 / 0
    assert _count(path) == 0 and not file.db().in_transaction
    assert file.db().execute("SELECT COUNT(*) FROM counter").fetchone()[0] == 1
    with file.transaction() as db:  # the file is usable again, and a whole transaction is kept
        db.execute("UPDATE counter SET n = n + 5 WHERE name = 'c'")
    assert _count(path) == 5  # seen from another connection: committed


def test_writers_in_many_threads_lose_no_update(tmp_path):
    """Read, then write, in one transaction each (as a quota is reserved): no two see the same value."""
    path = str(tmp_path / "data.sqlite3")
    file = _counter(path)
    barrier = threading.Barrier(8)

    def add() -> None:
        barrier.wait()
        for _ in range(25):
            with file.transaction() as db:
                [n] = db.execute("SELECT n FROM counter WHERE name = 'c'").fetchone()
                db.execute("UPDATE counter SET n = ? WHERE name = 'c'", (n + 1,))

    threads = [threading.Thread(target=add) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert _count(path) == 200


def test_a_file_made_with_a_mode_is_private_and_so_are_its_journals(tmp_path):
    path = str(tmp_path / "users.sqlite3")
    file = SqliteFile(path, mode=0o600)
    with file.transaction() as db:
        db.execute("CREATE TABLE secrets (hash TEXT)")
        db.execute("INSERT INTO secrets VALUES ('x')")
    for name in ("users.sqlite3", "users.sqlite3-wal", "users.sqlite3-shm"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o600, name


def test_an_existing_file_keeps_the_mode_the_operator_gave_it(tmp_path):
    path = tmp_path / "users.sqlite3"
    path.touch(mode=0o640)
    os.chmod(path, 0o640)
    SqliteFile(str(path), mode=0o600).db().execute("CREATE TABLE t (x)")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640


def test_the_data_directory_is_made_when_missing(tmp_path):
    path = tmp_path / "not" / "there" / "yet.sqlite3"
    SqliteFile(str(path)).db().execute("CREATE TABLE t (x)")
    assert path.exists()


def test_each_thread_has_its_own_connection_and_a_forked_worker_opens_its_own(tmp_path):
    path = str(tmp_path / "data.sqlite3")
    file = _counter(path)
    mine, theirs = file.db(), []
    thread = threading.Thread(target=lambda: theirs.append(file.db()))
    thread.start()
    thread.join()
    assert file.db() is mine and theirs[0] is not mine
    pid = os.fork()
    if pid == 0:  # the worker: its own connection, and its writes reach the file
        try:
            connection = file.db()
            with file.transaction() as db:
                db.execute("UPDATE counter SET n = n + 1 WHERE name = 'c'")
            os._exit(0 if connection is not mine else 3)
        except BaseException:
            os._exit(4)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0 and _count(path) == 1
