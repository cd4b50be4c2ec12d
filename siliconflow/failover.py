"""Failover: one call (a picture, or a video job's submit) over the pool's keys, until one key
answers or the request's time is up. One loop for both.

Policy, not HTTP: which failures move the call to the next key (the key's or its account's:
dead, no balance, rate limited, forbidden), which ones count against the call (they may be the
request's: 5xx, timeouts, unreadable answers; `max_attempts` of them), and what happens when
SiliconFlow may have done the work without saying so (no answer in time): the caller is told
(`maybe_spent`, so that the person's quota counts it), and a call that must not be repeated (a
video job, which bills by the clip) is not sent again. The pool (pool.py) hands out keys, in line
(queue.py), and learns from each call's end (`with pool.using(lease)`); the client (client.py)
makes the call.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any, TypeVar

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
UNSURE = frozenset({Failure.TIMEOUT})
# A video submit whose answer cannot be read may have been taken too.
UNSURE_SUBMIT = frozenset({Failure.TIMEOUT, Failure.BAD_RESPONSE})

T = TypeVar("T")


def with_failover(
    pool: KeyPool,
    model: str,
    call: Callable[[str, float], T],
    *,
    deadline: float,
    max_attempts: int,
    request_id: str,
    label: str,
    cancelled: threading.Event | None = None,
    turn: str | None = None,
    maybe_spent: Callable[[str], None] | None = None,
    unsure: frozenset[Failure] = UNSURE,
    repeat_unsure: bool = True,
) -> tuple[T, str]:
    """`call(key, seconds left)` with a key from the pool's line, before `deadline` (monotonic),
    failing over from key to key: (its answer, the key that gave it).

    Keys not yet tried for this call come first. A failure of the key or account moves on; one
    that may be the request's counts, `max_attempts` at most. A failure in `unsure` may have been
    done and billed: `maybe_spent(key id)` is told, and with `repeat_unsure` false the call is not
    sent again (its reason says so). Raises UpstreamError with the reason to show; kind CANCELLED
    when `cancelled` was set.
    """
    cancelled = cancelled or threading.Event()
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
                answer = call(key, remaining)
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
            if exc.kind in unsure:
                if maybe_spent is not None:
                    maybe_spent(key_id(key))
                if not repeat_unsure:
                    raise UpstreamError(exc.kind, Reason.of("video_submit_unsure", why=exc.reason), exc.status) from None
            if exc.kind is Failure.BAD_REQUEST:
                raise
            if exc.kind not in KEY_ONLY:
                doubtful += 1
            continue
        metrics.upstream_call(time.monotonic() - started)
        log.info("%s ok on key %s (attempt %d) in %.2fs", label, mask_key(key), attempts, time.monotonic() - started)
        return answer, key
    if last is None:
        raise UpstreamError(Failure.NO_KEYS, why_not or pool.outage())
    reason = last.reason
    if attempts > 1 or why_not:
        reason = Reason.of("after_attempts", last=last.reason, attempts=attempts, keys=len(tried), also=why_not)
    raise UpstreamError(last.kind, reason, last.status)


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
    """One picture, failing over from key to key (see `with_failover`); a timed-out attempt may
    have been drawn, and is told to `maybe_drawn`. The image says which key drew it."""
    image, key = with_failover(
        pool,
        str(payload.get("model")),
        lambda key, left: generate_image(http, base_url, key, payload, min(timeout, left), max_bytes),
        deadline=deadline,
        max_attempts=max_attempts,
        request_id=request_id,
        label=label,
        cancelled=cancelled,
        turn=turn,
        maybe_spent=maybe_drawn,
    )
    return replace(image, key_id=key_id(key))


def submit_video(
    pool: KeyPool,
    send: Callable[[str, dict[str, Any]], str],
    payload: dict[str, Any],
    *,
    deadline: float,
    max_attempts: int,
    request_id: str,
    label: str,
    maybe_taken: Callable[[str], None] | None = None,
) -> tuple[str, str]:
    """A video job submitted once: (key, SiliconFlow's requestId). A submit that succeeded is never
    repeated, nor one SiliconFlow may have taken without saying so (no answer in time, or one that
    cannot be read): `maybe_taken(key id)` is told, since it may bill the job. Raises UpstreamError."""
    upstream_id, key = with_failover(
        pool,
        str(payload["model"]),
        lambda key, left: send(key, payload),
        deadline=deadline,
        max_attempts=max_attempts,
        request_id=request_id,
        label=label,
        maybe_spent=maybe_taken,
        unsure=UNSURE_SUBMIT,
        repeat_unsure=False,
    )
    return key, upstream_id
