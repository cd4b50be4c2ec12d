"""The key-state SQLite file failing: full, deleted, corrupted. Drawing goes on from memory, /health
says so, and it recovers; the state directories of dead processes are cleaned up at start."""

from __future__ import annotations

import errno
import os
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import requests

from siliconflow import keystate_sqlite as keystate
from tests.conftest import ROOT
from tests.helpers import answer_text, images_in
from tests.servers import Gunicorn


class Clock:
    def __init__(self) -> None:
        self.now = time.monotonic()

    def __call__(self) -> float:
        return self.now


def _draws(url: str, text: str) -> None:
    assert images_in(answer_text(url, text, stream=False))
    response = requests.post(f"{url}/v1/images/generations", json={"prompt": text}, timeout=30)
    assert response.status_code == 200, response.text
    assert response.json()["data"][0]["url"]


def _health(url: str) -> dict:
    response = requests.get(f"{url}/health", timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def _file_store(service):
    store = service.services.pool.store
    return getattr(store, "primary", store)  # the file behind the fallback


def _lines(logged, pattern: str) -> list[str]:
    return [r.getMessage() for r in logged.records if re.search(pattern, r.getMessage())]


@pytest.fixture
def tiny_disk(monkeypatch):
    """A 1 MB tmpfs where the service keeps its key state (root only: mount)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    home = Path(tempfile.mkdtemp(prefix="tiny-disk-"))
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(home)], capture_output=True).returncode:
        os.rmdir(home)
        pytest.skip("cannot mount a tmpfs here")
    monkeypatch.setattr(keystate, "_fast_temp_dir", lambda: str(home))
    yield home
    subprocess.run(["umount", "-l", str(home)], check=True)
    os.rmdir(home)


def _fill(disk: Path) -> Path:
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as out:
        try:
            while True:
                out.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


def test_a_full_disk_draws_on_from_memory_and_recovers(serve, fake, tiny_disk, logged):
    service = serve()
    clock = Clock()
    service.services.pool.store.clock = clock
    _draws(service.url, "画一只猫")
    assert _health(service.url)["status"] == "ok"
    filler = _fill(tiny_disk)

    for i in range(3):
        _draws(service.url, f"画一只狗 {i}")
    health = _health(service.url)
    assert health["status"] == "degraded"
    store = health["store"]
    assert store["kind"] == "local" and store["reachable"] is False
    assert "full" in store["problem"] and "memory" in store["using"]
    assert len(_lines(logged, "key-state file failed")) == 1

    filler.unlink()
    clock.now += 4  # not tried again yet: still from memory
    assert _health(service.url)["status"] == "degraded"
    clock.now += 2
    _draws(service.url, "画一只鸟")
    assert _health(service.url)["status"] == "ok"
    assert len(_lines(logged, "key-state file works again")) == 1
    assert len(_lines(logged, "key-state file failed")) == 1


def test_a_file_that_could_not_be_opened_once_is_opened_again_when_it_is_back(serve, fake, tiny_disk, logged):
    """A full disk mounted over the state directory hides the file; when it goes, the same file
    (the same inode) is at the path again. The failed opening must not leave the store stuck: it
    stayed at `/health` 500 and 服务内部错误 on every answer until restart."""
    service = serve()
    clock = Clock()
    service.services.pool.store.clock = clock
    _draws(service.url, "画一只猫")
    directory = os.path.dirname(_file_store(service).path)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32k", "tmpfs", directory], check=True)
    try:
        _fill(Path(directory))
        _draws(service.url, "画一只狗")
        assert _health(service.url)["status"] == "degraded"
    finally:
        subprocess.run(["umount", "-l", directory], check=True)

    clock.now += 6
    _draws(service.url, "画一只鸟")
    assert _health(service.url)["status"] == "ok"
    assert len(_lines(logged, "key-state file works again")) == 1


def test_a_corrupted_file_draws_on_from_memory_and_is_made_anew(serve, fake, logged):
    service = serve()
    clock = Clock()
    service.services.pool.store.clock = clock
    _draws(service.url, "画一只猫")
    path = _file_store(service).path
    with sqlite3.connect(path) as other:  # what is in the WAL goes into the file, which then breaks
        other.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    with open(path, "r+b") as file:
        file.write(b"garbage!" * 4096)

    _draws(service.url, "画一只狗")
    health = _health(service.url)
    assert health["status"] == "degraded" and "not a database" in health["store"]["problem"]

    clock.now += 6
    _draws(service.url, "画一只鸟")
    assert _health(service.url)["status"] == "ok"
    with sqlite3.connect(path) as other:  # a good file again, at the same place
        assert other.execute("SELECT COUNT(*) FROM facts").fetchone()[0] >= 0
    assert len(_lines(logged, "key-state file failed")) == 1


SERVED_BY = re.compile(r"\[(\d+)\] siliconflow_proxy: req=\w+ chat")


def _children(pid: int) -> set[int]:
    return {int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}


def _wait_for(condition, what: str, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)  # polling another process's state, not in the service


def test_a_deleted_file_is_made_anew_and_the_workers_share_it_again(fake, production_bin):
    server = Gunicorn(
        {"API_BASE_URL": fake.url, "PROMPT_EXPANSION": "false", "WEB_CONCURRENCY": "2", "API_KEYS": "sk-revoked-d1,sk-good-d2"},
        production_bin,
    )
    try:
        assert server.wait_until_up(), server.stop()[-2000:]
        master = server.process.pid
        _wait_for(lambda: len(_children(master)) == 2, "two workers")
        [path] = {
            os.readlink(f"/proc/{master}/fd/{fd}")
            for fd in os.listdir(f"/proc/{master}/fd")
            if os.readlink(f"/proc/{master}/fd/{fd}").endswith("keys.sqlite3")
        }
        os.remove(path)
        killed = min(_children(master))
        os.kill(killed, signal.SIGKILL)  # a worker restarts, and opens the path anew
        _wait_for(lambda: len(_children(master)) == 2 and killed not in _children(master), "a new worker")
        workers = _children(master)

        # Whichever worker answers: the one still holding the deleted file finds it gone and opens it anew.
        _wait_for(lambda: all(_health(server.url)["status"] == "ok" for _ in range(6)), "both workers healthy")
        # One worker meets the revoked key (each worker tries the keys in the same order)...
        assert images_in(answer_text(server.url, "画一只猫", stream=False))
        # ...and the other, drawing next, knows it from the file.
        answers: list[str] = []
        for round_ in range(15):  # rounds of four at once, until both workers have drawn
            threads = [
                threading.Thread(
                    target=lambda text=f"画一只猫 {round_} {i}": answers.append(answer_text(server.url, text, stream=False))
                )
                for i in range(4)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            if {int(pid) for pid in SERVED_BY.findall(server.log())} >= workers:
                break
        else:
            pytest.fail("every request went to one worker")
        assert len(answers) == 4 * (round_ + 1) and all(images_in(a) for a in answers)
        assert os.path.exists(path)
    finally:
        log = server.stop()
    revoked = [c for c in fake.state.image_calls() if c.key == "sk-revoked-d1"]
    assert len(revoked) == 1, log[-3000:]  # found dead by one worker, never tried by the other
    assert "no such table" not in log


LIVE_STORE = """
import os, sys
sys.path.insert(0, {root!r})
from siliconflow import keystate_sqlite as keystate
keystate._fast_temp_dir = lambda: {home!r}
store = keystate.LocalStore()
print(os.path.dirname(store.path), flush=True)
if sys.argv[1] == "killed":
    os.kill(os.getpid(), 9)
sys.stdin.read()
"""


def _owner(home: Path, how: str) -> tuple[subprocess.Popen, Path]:
    process = subprocess.Popen(
        [sys.executable, "-c", LIVE_STORE.format(root=str(ROOT), home=str(home)), how],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    return process, Path(process.stdout.readline().strip())


def test_state_dirs_of_dead_processes_are_removed_at_start(tmp_path, monkeypatch):
    monkeypatch.setattr(keystate, "_fast_temp_dir", lambda: str(tmp_path))
    live, live_dir = _owner(tmp_path, "lives")
    dead, dead_dir = _owner(tmp_path, "killed")  # as gunicorn's master is by SIGKILL: no atexit
    dead.wait(timeout=10)
    old_idle = tmp_path / "siliconflow-keys-ab12cd"  # named before names had a pid
    old_idle.mkdir()
    (old_idle / "keys.sqlite3").write_bytes(b"x")
    two_days_ago = time.time() - 2 * 86400
    for item in (old_idle / "keys.sqlite3", old_idle):
        os.utime(item, (two_days_ago, two_days_ago))
    old_recent = tmp_path / "siliconflow-keys-ef34gh"
    old_recent.mkdir()
    (old_recent / "keys.sqlite3").write_bytes(b"x")
    other = tmp_path / "something-else"
    other.mkdir()
    try:
        assert dead_dir.is_dir() and live_dir.is_dir()
        assert re.fullmatch(rf"siliconflow-keys-{live.pid}-\w+", live_dir.name)
        store = keystate.LocalStore()
        assert not dead_dir.exists() and not old_idle.exists()
        assert live_dir.is_dir() and old_recent.is_dir() and other.is_dir()
        assert Path(store.path).parent.is_dir() and str(os.getpid()) in Path(store.path).parent.name
        store.remove()
    finally:
        live.communicate("", timeout=10)
