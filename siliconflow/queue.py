"""The line of pictures waiting for a key: served round-robin by request (or by person), one
thread per process, each picture as soon as an account has budget, none past its deadline.

A taker that finds nobody waiting asks the pool itself; otherwise it joins its line. The thread
serves the line after the one served last, one picture at a time, and sleeps until the pool says
a key will be free, a new picture joins, or a deadline passes.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Protocol

from core.background import Background
from core.errors import Reason
from siliconflow.leases import Acquired, Lease, Taken

log = logging.getLogger("siliconflow_proxy.keypool")

DISCOVERY_WAIT = 5.0  # most an image waits at start for the keys' accounts to be known
FORCE_TURN_AFTER = 0.25  # a request gives way this long at most to one that waited longer
CANCELLED_KEPT_SECONDS = 600.0  # how long a left request's images are still sent away on arrival


class Chooser(Protocol):
    """What the line asks of the key pool (siliconflow/pool.py)."""

    accounts_known: threading.Event

    def try_acquire(
        self, model: str, exclude: Collection[str] = (), request: str | None = None, force: bool = False
    ) -> Acquired: ...

    def release(self, lease: Lease) -> None: ...

    def outage(self, wait: float | None = None) -> Reason: ...

    def keys_out(self) -> int: ...


@dataclass
class _Waiter:
    request_id: str
    turn: str  # whose line it waits in: its user key's (turns by person), else its request's
    model: str
    exclude: frozenset[str]
    deadline: float
    done: threading.Event = field(default_factory=threading.Event)
    lease: Lease | None = None
    reason: Reason | None = None
    giving_way_since: float | None = None


@dataclass(frozen=True)
class QueueStatus:
    waiting: int  # this request's images waiting for a key
    ahead: int  # images of other requests served before this request's next one
    next_in: float | None  # seconds until a key is expected to be free


class KeyQueue:
    """Images waiting for a key, served round-robin by request by one thread per process.

    A taker that finds nobody waiting tries the store itself; otherwise it joins its request's
    line. The thread serves the line after the one served last, one image at a time, and sleeps
    until the store says a key will be free, a new image joins, or a deadline passes.
    """

    def __init__(self, pool: Chooser):
        self._pool = pool
        self._condition = threading.Condition()
        self._lines: OrderedDict[str, deque[_Waiter]] = OrderedDict()
        self._last_served: str | None = None
        self._changes = 0
        self._next_free: float | None = None
        # Requests whose client left, and when: an image of theirs that comes to the line only now
        # (its thread was between the check and the line) is sent away at once, not kept till its deadline.
        self._cancelled: OrderedDict[str, float] = OrderedDict()
        self._closed = False
        self._server = Background("key-queue", self._serve, wake=self._notify)

    def take(self, request_id: str, model: str, exclude: Collection[str], deadline: float, turn: str | None = None) -> Taken:
        """A lease, or why not: nothing can draw, or the deadline passed first. Lines take turns by
        `turn` (a user key's id: one person's burst does not hold another's picture behind it),
        else by request."""
        turn = turn or request_id
        self._pool.accounts_known.wait(max(min(DISCOVERY_WAIT, deadline - time.monotonic()), 0))
        with self._condition:
            if self._closed or request_id in self._cancelled:
                return Taken(None, Reason.of("cancelled"))
            alone = not self._lines
        wait: float | None = None
        if alone:
            acquired = self._pool.try_acquire(model, exclude, turn)
            wait = acquired.wait
            if acquired.lease is not None:
                with self._condition:
                    self._last_served = turn
                return Taken(acquired.lease)
            if wait is None:
                return Taken(None, self._pool.outage())
            if not acquired.yielded and time.monotonic() + wait >= deadline:
                return Taken(None, self._too_late(wait))
        waiter = _Waiter(request_id, turn, model, frozenset(exclude), deadline)
        with self._condition:
            if self._closed or request_id in self._cancelled:
                return Taken(None, Reason.of("cancelled"))
            if alone and wait is not None and (self._next_free is None or self._next_free > time.monotonic() + wait):
                self._next_free = time.monotonic() + wait  # known now, before the thread looks
            self._lines.setdefault(turn, deque()).append(waiter)
            self._changes += 1
            self._ensure_thread()
            self._condition.notify_all()
        waiter.done.wait(max(deadline - time.monotonic(), 0) + 5.0)
        with self._condition:
            if waiter.lease is None and waiter.reason is None:  # the thread never answered: leave the line
                self._remove(waiter)
                waiter.reason = self._too_late(None)
        return Taken(waiter.lease, waiter.reason)

    def cancel(self, request_id: str) -> None:
        """The client left: its images leave the line, and those still on their way to it are
        sent away when they come."""
        with self._condition:
            now = time.monotonic()
            self._cancelled[request_id] = now
            while self._cancelled and next(iter(self._cancelled.values())) < now - CANCELLED_KEPT_SECONDS:
                self._cancelled.popitem(last=False)
            for waiter in [w for line in self._lines.values() for w in line if w.request_id == request_id]:
                self._remove(waiter)
                waiter.reason = Reason.of("cancelled")
                waiter.done.set()
            self._changes += 1
            self._condition.notify_all()

    def status(self, request_id: str) -> QueueStatus | None:
        """Where this request's images stand in the line, or None when none waits."""
        with self._condition:
            turn = next((t for t, line in self._lines.items() if any(w.request_id == request_id for w in line)), None)
            if turn is None:
                return None
            line = [w for w in self._lines[turn] if w.request_id == request_id]
            order = self._order()
            ahead = 0
            for other in order:
                if other == turn:
                    break
                ahead += 1
            # Round-robin: before this request's next image, each line ahead gets one turn.
            next_free = None if self._next_free is None else max(self._next_free - time.monotonic(), 0.0)
            return QueueStatus(len(line), ahead, next_free)

    def waiting(self) -> int:
        with self._condition:
            return sum(len(line) for line in self._lines.values())

    def _order(self) -> list[str]:
        """The lines in the order they are served next: the one after the last served first."""
        names = list(self._lines)
        if self._last_served in names:
            start = names.index(self._last_served) + 1
            names = names[start:] + names[:start]
        return names

    def _remove(self, waiter: _Waiter) -> None:
        line = self._lines.get(waiter.turn)
        if line and waiter in line:
            line.remove(waiter)
            if not line:
                del self._lines[waiter.turn]

    def _too_late(self, wait: float | None) -> Reason:
        """Why an image found no key before its deadline: the keys' own states when some are out
        (cooling after errors, dead, broke), else the accounts' budgets."""
        out = self._pool.outage() if self._pool.keys_out() else None
        return Reason.of("too_late", wait=math.ceil(wait) if wait else None, out=out)

    def _ensure_thread(self) -> None:
        self._server.start()

    def stop(self) -> None:
        """Stop serving the line (the process ends): every image waiting in it is sent away."""
        self._server.stop()
        with self._condition:
            self._closed = True
            for waiter in [w for line in self._lines.values() for w in line]:
                waiter.reason = Reason.of("cancelled")
                waiter.done.set()
            self._lines.clear()

    def _notify(self) -> None:
        with self._condition:
            self._condition.notify_all()

    def _serve(self, stopping: threading.Event) -> None:
        while not stopping.is_set():
            with self._condition:
                while not self._lines and not stopping.is_set():
                    self._condition.wait()
                if stopping.is_set():
                    return
                changes = self._changes
                self._expire(time.monotonic())
                order = self._order()
            soonest, served, tried = None, False, {}
            for turn in order:
                with self._condition:
                    line = self._lines.get(turn)
                    if not line:
                        continue
                    waiter = line[0]
                wanted = (waiter.model, waiter.exclude)
                if wanted in tried:  # the store just said no to the same question
                    wait = tried[wanted]
                    soonest = wait if soonest is None or (wait is not None and wait < soonest) else soonest
                    continue
                now = time.monotonic()
                force = waiter.giving_way_since is not None and now - waiter.giving_way_since >= FORCE_TURN_AFTER
                try:
                    acquired = self._pool.try_acquire(waiter.model, waiter.exclude, turn, force)
                except Exception:  # a store failure must not stop the line for ever
                    log.exception("key queue: the store failed")
                    acquired = Acquired(None, 1.0)
                lease, wait, yielded = acquired.lease, acquired.wait, acquired.yielded
                if lease is not None:
                    served = self._hand(waiter, lease)
                    if served:
                        break
                    continue
                if yielded:  # another request (maybe another process's) has waited longer: its turn
                    waiter.giving_way_since = waiter.giving_way_since or now
                    soonest = wait if soonest is None else min(soonest, wait)
                    continue
                waiter.giving_way_since = None
                if wait is None:
                    self._answer(waiter, self._pool.outage())
                    continue
                tried[wanted] = wait
                soonest = wait if soonest is None else min(soonest, wait)
            if served:
                continue
            with self._condition:
                self._next_free = None if soonest is None else time.monotonic() + soonest
                if self._changes == changes and self._lines:
                    deadlines = [w.deadline for line in self._lines.values() for w in line]
                    sleep = min([soonest + 0.005 if soonest is not None else 1.0, 1.0, min(deadlines) - time.monotonic()])
                    self._condition.wait(max(sleep, 0.001))

    def _hand(self, waiter: _Waiter, lease: Lease) -> bool:
        with self._condition:
            line = self._lines.get(waiter.turn)
            if not line or line[0] is not waiter:  # it left while the store was asked
                self._pool.release(lease)
                return False
            line.popleft()
            if not line:
                del self._lines[waiter.turn]
            self._last_served = waiter.turn
            waiter.lease = lease
            waiter.done.set()
            return True

    def _answer(self, waiter: _Waiter, reason: Reason) -> None:
        with self._condition:
            self._remove(waiter)
            waiter.reason = reason
            waiter.done.set()

    def _expire(self, now: float) -> None:
        for line in list(self._lines.values()):
            for waiter in [w for w in line if w.deadline <= now]:
                self._remove(waiter)
                waiter.reason = self._too_late(None)
                waiter.done.set()
