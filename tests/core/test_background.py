"""The background threads: one loop per process for each job, started by whoever first needs it,
stopped by `close()` with nothing of it left running; a process forked after a start (gunicorn's
workers) runs its own."""

from __future__ import annotations

import os
import threading

import pytest

from core.background import Background
from tests.helpers import child_exited, wait_until


class Loop:
    """A loop that counts its starts and waits on `stopping` (or on its own event, woken by `wake`)."""

    def __init__(self, own_wait: bool = False):
        self.starts, self.own = 0, threading.Event() if own_wait else None
        self.running = threading.Event()

    def __call__(self, stopping: threading.Event) -> None:
        self.starts += 1
        self.running.set()
        while not stopping.is_set():
            (self.own or stopping).wait()


def _alive(name: str) -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == name]


def test_a_loop_starts_once_however_many_ask_and_its_before_runs_once():
    loop, befores = Loop(), []
    background = Background("bg-once", loop)
    askers = [threading.Thread(target=background.start, args=(lambda: befores.append(1),)) for _ in range(8)]
    for asker in askers:
        asker.start()
    for asker in askers:
        asker.join()
    assert loop.running.wait(5)
    background.start()
    assert loop.starts == 1 and befores == [1] and len(_alive("bg-once")) == 1
    background.stop()


def test_stop_ends_the_loop_before_it_returns():
    loop = Loop()
    background = Background("bg-stop", loop)
    background.start()
    assert loop.running.wait(5) and _alive("bg-stop")[0].daemon  # never holds the process open
    background.stop()
    assert _alive("bg-stop") == []


def test_stop_wakes_a_loop_waiting_on_its_own_event():
    loop = Loop(own_wait=True)
    background = Background("bg-wake", loop, wake=lambda: loop.own.set())
    background.start()
    assert loop.running.wait(5)
    background.stop()
    assert _alive("bg-wake") == []


def test_stop_before_any_start_and_from_inside_the_loop_are_harmless():
    Background("bg-never", Loop()).stop()
    stopped = threading.Event()

    def quits(stopping: threading.Event) -> None:
        background.stop()  # from its own thread: not joined with itself
        stopped.set()

    background = Background("bg-inside", quits)
    background.start()
    assert stopped.wait(5) and wait_until(lambda: _alive("bg-inside") == [])


def test_a_second_start_after_stop_runs_the_loop_again():
    loop = Loop()
    background = Background("bg-again", loop)
    background.start()
    assert loop.running.wait(5)
    background.stop()
    background.start()
    try:
        assert len(_alive("bg-again")) == 1  # Thread.start() returns once the thread runs
    finally:
        background.stop()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="gunicorn's workers are forked")
def test_a_process_forked_after_the_start_runs_a_loop_of_its_own():
    loop = Loop()
    background = Background("bg-fork", loop)
    background.start()
    assert loop.running.wait(5)
    loop.running.clear()
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # the worker: the parent's thread did not come along; asking starts one here
        ok = False
        try:
            ran_before = loop.running.is_set()
            background.start()
            ok = not ran_before and loop.running.wait(5)
            background.stop()
        finally:
            os.write(write, b"1" if ok else b"0")
            os._exit(0)
    os.close(write)
    try:
        assert child_exited(child) == 0 and os.read(read, 1) == b"1"
    finally:
        os.close(read)
        background.stop()
    assert loop.starts == 1  # the parent's loop was not started again
