"""What a drawing cost: every picture SiliconFlow drew and every video it took, counted the moment
it answered, whatever happens to the person's connection afterwards.

A surface makes one `Meter` per request (with the caller's quota reservation, if any) and puts it
in the `Job`; the pipeline calls `drawn()` from the worker thread that got SiliconFlow's answer,
and `track()`s every piece of work it starts. The quota is settled once, when both have ended:
the surface's answer is closed (`close()`: answered, or the person hung up) and no tracked work is
still running. So a picture still being drawn when the person hangs up is counted when it is
drawn, and a reservation is given back only for what SiliconFlow never drew (a refused call, a
picture not begun, a failure). A person cannot spend the pool's money by hanging up.

`on_drawn(key_id, model)`, when given, hears of each picture and video as it is counted (the
surfaces pass one that records what it cost: metering.Spend); it runs on the same worker thread, and
its failure never fails the drawing.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any

from core import metrics
from drawing import events as ev
from siliconflow import prices
from siliconflow.families import family
from storage.ledger import Ledger

log = logging.getLogger("siliconflow_proxy.metering")


class Meter:
    """One request's count of what SiliconFlow drew. Thread-safe; settles its reservation once."""

    def __init__(self, reservation: Any = None, on_drawn: Callable[[str, str], None] | None = None):
        self._reservation = reservation  # user_keys.Reservation, or None (the operator's key, no cap)
        self._on_drawn = on_drawn
        self._lock = threading.Lock()
        self._running = 0
        self._closed = False
        self._settled = False
        self.count = 0  # pictures drawn and videos taken

    def drawn(self, key_id: str, model: str) -> None:
        """SiliconFlow drew a picture (or took a video job) with the key `key_id`: it is paid for."""
        with self._lock:
            self.count += 1
        if self._on_drawn is not None:
            try:
                self._on_drawn(key_id, model)
            except Exception:  # what it cost is told apart; the picture is drawn and counted all the same
                log.exception("recording what a picture cost failed; the picture is counted all the same")

    def track(self, future: Future) -> None:
        """Work that may still call `drawn()`: the meter settles only after it has ended."""
        with self._lock:
            self._running += 1
        future.add_done_callback(self._ended)

    def close(self) -> None:
        """The answer is over (sent, or the person left): settle once the tracked work has ended."""
        with self._lock:
            self._closed = True
        self._settle_if_over()

    def _ended(self, _future: Future) -> None:
        with self._lock:
            self._running -= 1
        self._settle_if_over()

    def _settle_if_over(self) -> None:
        with self._lock:
            if self._settled or not self._closed or self._running:
                return
            self._settled = True
            count = self.count
        if self._reservation is not None:
            try:
                self._reservation.settle(count)
            except Exception:  # the store failing must not break the answer; the reservation stays taken
                log.exception("settling a quota reservation failed; what it reserved stays counted")


# --- counting what was drawn: the metrics and the page's chart, what it cost ---------------------


def counted(events: Iterator[ev.Event], model: str, users: Any) -> Iterator[ev.Event]:
    """The drawing's events, passed on as they come, counted for the metrics and the page's hourly
    chart. (What the caller's quota keeps is counted where SiliconFlow answers: metering.py.)
    Closing it closes the drawing."""
    try:
        yield from _counted(events, model, users)
    finally:
        ev.close(events)


def _counted(events: Iterator[ev.Event], model: str, users: Any) -> Iterator[ev.Event]:
    for event in events:
        if isinstance(event, ev.ImageReady | ev.VideoReady):
            metrics.outcome("videos" if isinstance(event, ev.VideoReady) else "images", model, True)
            if users is not None and isinstance(event, ev.ImageReady):
                users.count_hour(metrics.hour(), 1)
        elif isinstance(event, ev.ImageFailed | ev.VideoFailed):
            kind = getattr(event, "kind", None)
            failure = str(kind) if kind else event.reason.code
            metrics.outcome("videos" if isinstance(event, ev.VideoFailed) else "images", model, False, failure)
        yield event


class Spend:
    """What the surfaces call the moment SiliconFlow drew a picture or took a video job: priced by
    the price table, its key's account found, recorded in the ledger and counted for /metrics.
    Never raises: what a picture cost must not fail the picture."""

    def __init__(self, ledger: Ledger, table: prices.Prices, pool: Any):
        self.ledger = ledger
        self.prices = table
        self._pool = pool  # pool.KeyPool: the account of a key, by its id

    def drawn(self, user: str | None, key_id: str, model: str) -> None:
        price = self.prices.of(model)
        try:
            self.ledger.drawn(  # never raises: a failing store is logged once there
                user,
                key_id,
                self._pool.account_of(key_id),  # "key-<id>" while the account is not known
                model,
                video=family(model).video,
                micro=prices.micro(price or 0.0),
                priced=price is not None,
            )
            metrics.spent(model, price or 0.0)
        except Exception:  # a bug here must not cost the person their picture or video
            log.exception("counting what a %s cost failed", model)

    def for_user(self, user: str | None) -> Callable[[str, str], None]:
        """A Meter's `on_drawn` for a request by `user` (None: the operator's key, an open service)."""
        return functools.partial(self.drawn, user)
