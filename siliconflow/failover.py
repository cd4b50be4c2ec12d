"""Failover: one image over the pool's keys, until one draws it or the request's time is up.

Policy, not HTTP: which failures move an image to the next key (the key's or its account's),
which ones count against the image (they may be the request's), and how many tries it gets. The
pool (keypool.py) hands out keys and learns from each call's end (`with pool.using(lease)`); the
client (upstream.py) makes the call.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import urllib3

from core import metrics
from core.errors import Failure, Reason, UpstreamError
from core.text import mask_key
from siliconflow.client import Image, generate_image
from siliconflow.leases import key_id
from siliconflow.pool import KeyPool

log = logging.getLogger("siliconflow_proxy.upstream")

CANCELLED = Reason.of("cancelled")

# Failures that belong to the key or its account: the next key may well succeed.
KEY_ONLY = {Failure.AUTH, Failure.BALANCE, Failure.RATE_LIMIT, Failure.FORBIDDEN}
# Failures after which SiliconFlow may have done the work all the same: the call was sent and no
# answer came in time (our timeout, or its gateway's 504). Such a picture may be billed.
UNSURE = {Failure.TIMEOUT}


def generate_with_failover(
    http: urllib3.PoolManager,
    base_url: str,
    pool: KeyPool,
    payload: dict[str, Any],
    *,
    timeout: float,
    deadline: float,
    max_attempts: int,
    max_bytes: int,
    request_id: str,
    label: str,
    cancelled: threading.Event,
    turn: str | None = None,
    maybe_drawn: Callable[[str], None] | None = None,
) -> Image:
    """One image, before `deadline` (monotonic), failing over from key to key.

    Keys come from the pool's queue: the first whose account has budget for the model, waiting
    in line (round-robin by request) when none has. Failures that belong to a key or its account
    (dead, no balance, rate limited, forbidden) just move to the next key: they say nothing about
    the image, and the key or account leaves the rotation or rests. Failures that might be the
    request's (5xx, timeouts, unreadable answers) are allowed `max_attempts` times. Keys not yet
    tried for this image come first. An attempt that timed out may have been drawn (and billed)
    all the same: `maybe_drawn(key id)` is told, so that the person's quota counts it. Raises
    UpstreamError with the reason to show; kind CANCELLED when `cancelled` was set.
    """
    model = str(payload.get("model"))
    tried: list[str] = []
    attempts = doubtful = 0
    last: UpstreamError | None = None
    why_not: Reason | None = None
    while doubtful < max_attempts and attempts < max_attempts + len(pool):
        if cancelled.is_set():
            raise UpstreamError(Failure.CANCELLED, CANCELLED)
        asked = time.monotonic()
        taken = pool.queue.take(request_id, model, tried, deadline, turn)
        metrics.key_wait(time.monotonic() - asked)
        lease, why_not = taken.lease, taken.why_not
        if cancelled.is_set():
            if lease is not None:
                pool.release(lease)
            raise UpstreamError(Failure.CANCELLED, CANCELLED)
        if lease is None:
            if last is None:
                raise UpstreamError(Failure.NO_KEYS, why_not or pool.outage())
            break
        key = lease.key
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            pool.release(lease)
            break
        attempts += 1
        if key not in tried:
            tried.append(key)
        started = time.monotonic()
        try:
            with pool.using(lease):
                image = generate_image(http, base_url, key, payload, min(timeout, remaining), max_bytes)
        except UpstreamError as exc:
            last = exc
            log.warning(
                "%s attempt %d on key %s failed after %.2fs: %s (HTTP %s)",
                label,
                attempts,
                mask_key(key),
                time.monotonic() - started,
                exc.kind,
                exc.status,
            )
            if exc.kind in UNSURE and maybe_drawn is not None:
                maybe_drawn(key_id(key))
            if exc.kind is Failure.BAD_REQUEST:
                raise
            if exc.kind not in KEY_ONLY:
                doubtful += 1
            continue
        metrics.upstream_call(time.monotonic() - started)
        log.info("%s ok on key %s (attempt %d) in %.2fs", label, mask_key(key), attempts, time.monotonic() - started)
        return replace(image, key_id=key_id(key))
    if last is None:
        raise UpstreamError(Failure.NO_KEYS, why_not or pool.outage())
    reason = last.reason
    if attempts > 1 or why_not:
        reason = Reason.of("after_attempts", last=last.reason, attempts=attempts, keys=len(tried), also=why_not)
    raise UpstreamError(last.kind, reason, last.status)
