"""The service's background threads: one per process for each job, started on first use, stopped
by `Services.close()` (tests, shutdown).

gunicorn forks its workers after the app is built, and a thread started before the fork does not
exist in the children; so each loop starts in the process that first needs it (a request, a
poll), once per process, and knows which process started it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable


class Background:
    """One loop on a daemon thread of its own, per process. `target(stopping)` runs until the
    event `stopping` is set; it must look at it at least as often as it can afford to be late."""

    def __init__(self, name: str, target: Callable[[threading.Event], None], *, wake: Callable[[], None] | None = None):
        self.name = name
        self._target = target
        self._wake = wake  # what wakes the loop from its own waits (a condition, an event), to see `stopping`
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._thread: threading.Thread | None = None
        self.stopping = threading.Event()

    def start(self, before: Callable[[], None] | None = None) -> None:
        """Start the loop in this process unless it runs here already; `before` runs first, once."""
        if self._pid == os.getpid():
            return
        with self._lock:
            if self._pid == os.getpid():
                return
            self._pid = os.getpid()
            self.stopping.clear()
            if before is not None:
                before()
            self._thread = threading.Thread(target=self._target, args=(self.stopping,), name=self.name, daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the loop to end and wait (at most `timeout`) until it has, when it runs in this process."""
        self.stopping.set()
        if self._wake is not None:
            self._wake()
        thread = self._thread
        if thread is not None and self._pid == os.getpid() and thread is not threading.current_thread():
            thread.join(timeout)
            if not thread.is_alive():  # ended: a later start() runs the loop again (one still ending is left be)
                with self._lock:
                    if self._thread is thread:
                        self._pid, self._thread = None, None
