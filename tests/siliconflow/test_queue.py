"""The line of pictures waiting for a key (queue.py): turns by request and by person, a deadline
that ends the wait with the reason, a request that leaves taking its own pictures out."""

from __future__ import annotations

import threading
import time

from core.errors import Reason
from drawing.reasons import zh
from siliconflow.keystate import Limit
from siliconflow.leases import Taken
from tests.helpers import wait_until
from tests.siliconflow.pools import KOLORS, pool_of


def test_waiting_images_take_turns_by_request():
    pool = pool_of(("a",), limits=[Limit(1, 0.25)])
    deadline = time.monotonic() + 10
    assert pool.queue.take("first", KOLORS, (), deadline).lease.key == "a"  # the window is used now
    order: list[str] = []

    def image(request_id: str) -> None:
        lease = pool.queue.take(request_id, KOLORS, (), deadline).lease
        order.append(request_id)
        pool.release(lease)

    threads = [threading.Thread(target=image, args=("big",)) for _ in range(4)]
    for thread in threads:
        thread.start()
    assert wait_until(lambda: pool.queue.waiting() + len(order) == 4)  # all of "big" is in line (or served) first
    late = threading.Thread(target=image, args=("small",))
    late.start()
    for thread in [*threads, late]:
        thread.join()
    assert order.index("small") <= 1, order  # not behind all four of "big"


def test_waiting_images_take_turns_by_person_not_by_request():
    """One person's four requests of two pictures each do not get four turns to another's one."""
    pool = pool_of(("a",), limits=[Limit(1, 0.2)])
    deadline = time.monotonic() + 20
    assert pool.queue.take("first", KOLORS, (), deadline).lease.key == "a"  # the window is used now
    order: list[str] = []

    def image(request_id: str, person: str) -> None:
        lease = pool.queue.take(request_id, KOLORS, (), deadline, turn=person).lease
        order.append(person)
        pool.release(lease)

    threads = [threading.Thread(target=image, args=(f"burst{i // 2}", "uk_busy")) for i in range(8)]
    for thread in threads:
        thread.start()
    assert wait_until(lambda: pool.queue.waiting() + len(order) == 8)
    late = threading.Thread(target=image, args=("one", "uk_other"))
    late.start()
    for thread in [*threads, late]:
        thread.join()
    assert order.index("uk_other") <= 1, order  # served at the next turn, not after the other requests
    # A request that leaves takes only its own pictures out of its person's line.
    pool2 = pool_of(("a",), limits=[Limit(1, 3)])
    assert pool2.queue.take("x", KOLORS, (), deadline).lease
    results: dict[str, object] = {}
    waiting = [
        threading.Thread(
            target=lambda r=r: results.__setitem__(r, pool2.queue.take(r, KOLORS, (), time.monotonic() + 10, turn="p"))
        )
        for r in ("stay", "leave")
    ]
    for thread in waiting:
        thread.start()
    assert wait_until(lambda: pool2.queue.waiting() == 2)
    pool2.queue.cancel("leave")
    assert wait_until(lambda: pool2.queue.waiting() == 1) and pool2.queue.status("stay").waiting == 1
    for thread in waiting:
        thread.join()
    assert results["leave"].why_not.code == "cancelled" and results["stay"].lease is not None


def test_a_waiting_image_gives_up_at_its_deadline_and_says_why():
    pool = pool_of(("a",), limits=[Limit(1, 30)])
    assert pool.queue.take("r", KOLORS, (), time.monotonic() + 5).lease.key == "a"
    started = time.monotonic()
    taken = pool.queue.take("r", KOLORS, (), time.monotonic() + 0.3)
    lease, why = taken.lease, taken.why_not
    assert lease is None and "REQUEST_TIMEOUT" in zh(why) and time.monotonic() - started < 1


def test_a_cancelled_request_leaves_the_line():
    pool = pool_of(("a",), limits=[Limit(1, 30)])
    pool.queue.take("r", KOLORS, (), time.monotonic() + 5)
    pool.queue.take("x", KOLORS, (), time.monotonic() + 0.01)  # someone is in line already
    result = []
    waiting = threading.Thread(target=lambda: result.append(pool.queue.take("r", KOLORS, (), time.monotonic() + 60)))
    waiting.start()
    assert wait_until(lambda: pool.queue.status("r") is not None)
    assert pool.queue.status("r").waiting == 1
    pool.queue.cancel("r")
    waiting.join(timeout=2)
    assert result == [Taken(None, Reason.of("cancelled"))] and pool.queue.waiting() == 0


def test_a_picture_that_reaches_the_line_after_its_request_left_is_sent_away_at_once():
    """Its thread was between the client's check and the line when the client left: it must not
    wait in line till its deadline (holding a worker thread and the person's quota)."""
    pool = pool_of(("a",), limits=[Limit(1, 30)])
    pool.queue.take("r", KOLORS, (), time.monotonic() + 5)  # the window is used: the next one would wait 30 s
    pool.queue.cancel("r")
    assert pool.queue.take("r", KOLORS, (), time.monotonic() + 60) == Taken(None, Reason.of("cancelled"))
    assert pool.queue.waiting() == 0
    assert pool.queue.take("other", KOLORS, (), time.monotonic() + 0.01).why_not.code == "too_late"  # others wait


def test_stopping_the_line_sends_every_waiting_picture_away():
    pool = pool_of(("a",), limits=[Limit(1, 30)])
    pool.queue.take("r", KOLORS, (), time.monotonic() + 5)
    result = []
    waiting = threading.Thread(target=lambda: result.append(pool.queue.take("w", KOLORS, (), time.monotonic() + 60)))
    waiting.start()
    assert wait_until(lambda: pool.queue.waiting() == 1)
    pool.queue.stop()  # the process ends: Services.close()
    waiting.join(timeout=5)
    assert result == [Taken(None, Reason.of("cancelled"))] and not waiting.is_alive()
    assert pool.queue.take("late", KOLORS, (), time.monotonic() + 60) == Taken(None, Reason.of("cancelled"))
