"""Drawing: what happens between a validated request and its answer.

Prompt expansion, moderation of the expanded prompt, the fan-out of `pic:N` over the shared
executor with failover and re-hosting per image, and the assistant's reply as events that
`wording` words. Nothing here touches Flask: request handlers pass plain values in (STYLE habit 6).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

import requests
import urllib3

import wording
from config import Settings
from keypool import KeyPool, Upkeep
from parsing import DrawRequest, find_banned, fit_prompt, image_seeds
from uploaders import ImageStore, Links, lasting_links
from upstream import Failure, UpstreamError, expand_prompt, generate_with_failover, image_answer_bytes, payload_for

log = logging.getLogger("siliconflow_proxy.drawing")

EXPANSION_INPUT_CHARS = 2000  # what the chat model is given of the user's text
QUEUE_CHECK_SECONDS = 1.0  # how often a waiting answer looks at where its images stand in line
INLINE_ONLY = "上游以内联数据（data:）返回了图片，聊天中无法显示；请设置 IMAGE_STORE_DIR 或蓝空图床来保存它"


@dataclass(frozen=True)
class Services:
    """What request handlers hand to generators and worker threads: plain values, no Flask."""

    settings: Settings
    pool: KeyPool
    http: urllib3.PoolManager  # SiliconFlow's JSON API
    session: requests.Session  # fetching and re-hosting images
    executor: ThreadPoolExecutor
    upkeep: Upkeep
    store: ImageStore | None


@dataclass(frozen=True)
class Job:
    request_id: str
    model: str
    text: str  # what the user typed, tokens included
    draw: DrawRequest
    public_base: str | None = None  # where this service is reached, for links to stored images
    want_bytes: bool = False  # the answer carries the pictures themselves (Images API b64_json)


@dataclass(frozen=True)
class Outcome:
    index: int
    links: Links | None = None
    error: str | None = None
    kind: Failure | None = None  # the UpstreamError kind when it failed
    seed: int | None = None  # the seed sent, else the one the upstream says it used


class KeepAlive:
    """An answer event meaning "still working": an SSE comment on the wire, a space before JSON."""


KEEPALIVE = KeepAlive()
AnswerEvent = str | KeepAlive


class Shutdown:
    """When this worker process must have answered everything: set when gunicorn asks it to stop.

    Streams still waiting then end on their own, with a line for each picture not finished and
    `[DONE]`, a few seconds before gunicorn's graceful timeout would cut them mid-answer.
    """

    MARGIN = 3.0  # seconds to write the last lines and close

    def __init__(self) -> None:
        self.deadline: float | None = None

    def begin(self, grace_seconds: float) -> None:
        self.deadline = time.monotonic() + max(grace_seconds - self.MARGIN, 0.5)


SHUTDOWN = Shutdown()


def answer(job: Job, services: Services) -> Iterator[AnswerEvent]:
    """The assistant's reply, piece by piece, in the order the user should see it."""
    settings = services.settings
    if banned := find_banned(job.text, settings.banned_keywords):
        yield wording.refusal(banned)
        return

    deadline = time.monotonic() + settings.request_timeout
    cancelled = threading.Event()
    futures: list[Future] = []
    try:
        prompt, expansion_note = job.draw.prompt, ""
        if settings.prompt_expansion:
            expansion = services.executor.submit(expand, job, services, deadline)
            futures.append(expansion)
            yield from _heartbeats_until_done(expansion, settings.heartbeat_seconds, deadline)
            if not expansion.done():  # a restart came first
                for index in range(1, job.draw.count + 1):
                    yield wording.image_failed(index, _unfinished_reason(settings))
                yield wording.summary(0, job.draw.count)
                return
            prompt, expansion_note = expansion.result()
            if banned := find_banned(prompt, settings.banned_keywords):
                yield wording.refusal(banned)
                return

        draw = job.draw
        prompt, cut = fit_prompt(prompt)
        seeds = image_seeds(draw.seed, draw.count)
        yield wording.prompt_info(
            job.model, prompt, size=draw.size, asked_size=draw.asked_size, size_adjusted=draw.size_adjusted,
            count=draw.count, seeds=seeds, negative=draw.negative_prompt,
            notes=draw.notes + ((cut,) if cut else ()), expansion_note=expansion_note,
        )
        yield "生成中"
        payload = payload_for(job.model, prompt, draw.size, None, draw.negative_prompt)
        images = submit_images(job, payload, services, deadline, cancelled, seeds)
        futures.extend(images)
        yield "✅\n\n"
        alt = wording.markdown_safe(prompt, limit=300)
        delivered = 0
        pending = set(images)
        quiet_since, queued = time.monotonic(), None
        while pending:
            # Each image goes out as soon as it is ready, not after the slowest one; none is waited
            # for past the request's deadline (or past a shutdown's).
            left = _stop_at(deadline) - time.monotonic()
            if left <= 0:
                break
            done, pending = wait(pending, timeout=min(QUEUE_CHECK_SECONDS, settings.heartbeat_seconds, left),
                                 return_when=FIRST_COMPLETED)
            for future in sorted(done, key=images.index):
                outcome = future.result()
                if outcome.links and outcome.links.showable:
                    delivered += 1
                    links = outcome.links
                    yield wording.image_markdown(
                        outcome.index, alt, links.image, links.download, links.permanent, links.notes, outcome.seed
                    )
                else:
                    yield wording.image_failed(outcome.index, INLINE_ONLY if outcome.links else outcome.error or "")
                quiet_since = time.monotonic()
            status = services.pool.queue.status(job.request_id) if pending else None
            if status and (status.waiting, status.ahead, status.next_in is None) != queued:
                queued = (status.waiting, status.ahead, status.next_in is None)
                yield wording.queued(status.waiting, status.ahead, status.next_in)
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= settings.heartbeat_seconds:
                yield KEEPALIVE
                quiet_since = time.monotonic()
        for future in sorted(pending, key=images.index):
            yield wording.image_failed(images.index(future) + 1, _unfinished_reason(settings))
        yield wording.summary(delivered, draw.count)
    finally:
        # A client that hung up does not need the images that have not started yet.
        stop(job, services, cancelled, futures)


def stop(job: Job, services: Services, cancelled: threading.Event, futures: list[Future]) -> None:
    """The answer is over (or its client left): images not begun are not begun, queued ones leave the line."""
    cancelled.set()
    for future in futures:
        future.cancel()
    services.pool.queue.cancel(job.request_id)


def _stop_at(deadline: float) -> float:
    """When to stop waiting: the request's deadline (plus a second for the images' own last
    steps, which end by it), or a shutdown's, whichever comes first."""
    shutdown = SHUTDOWN.deadline
    return min(deadline + 1.0, shutdown) if shutdown is not None else deadline + 1.0


def _unfinished_reason(settings: Settings) -> str:
    if SHUTDOWN.deadline is not None and SHUTDOWN.deadline <= time.monotonic():
        return "服务正在重启或关闭，这张图片没能完成，请稍后重试"
    return f"超过 {settings.request_timeout:g} 秒（REQUEST_TIMEOUT）仍未完成"


def _heartbeats_until_done(work: Future, every: float, deadline: float) -> Iterator[KeepAlive]:
    """Keep-alives while `work` runs; stop waiting at the request's deadline or a shutdown's."""
    beat = time.monotonic() + every
    while not work.done():
        left = _stop_at(deadline) - time.monotonic()
        if left <= 0:
            return
        wait([work], timeout=min(QUEUE_CHECK_SECONDS, left, max(beat - time.monotonic(), 0.0)))
        if not work.done() and time.monotonic() >= beat:
            yield KEEPALIVE
            beat = time.monotonic() + every


def expand(job: Job, services: Services, until: float) -> tuple[str, str]:
    """Runs on a worker thread: the expanded prompt and a note, or the user's text and why.

    The key is always handed back, whatever happens.
    """
    settings, pool = services.settings, services.pool
    lease = pool.any_key()
    if lease is None:
        return job.draw.prompt, wording.expansion_skipped("暂无可用密钥")
    timeout = max(min(settings.expansion_timeout, until - time.monotonic()), 0.5)
    try:
        expanded = expand_prompt(
            services.http, settings.api_base_url, lease.key, settings.image_prompt_model,
            job.draw.prompt[:EXPANSION_INPUT_CHARS], timeout,
        )
    except UpstreamError as exc:
        pool.report(lease, exc)  # a chat call: only a dead or broke key is news for the images
        log.warning("req=%s prompt expansion failed (%s); using the user's text", job.request_id, exc.kind)
        return job.draw.prompt, wording.expansion_failed(exc.message)
    except BaseException:
        pool.release(lease)
        raise
    pool.report(lease, None)
    # The chat model may have been told a key, or say one it was never told: it is not repeated.
    return wording.redact_secrets(expanded, settings.secret_values()), ""


def make_image(
    index: int, payload: dict[str, Any], services: Services, deadline: float, cancelled: threading.Event, job: Job,
    seed: int | None = None,
) -> Outcome:
    """Runs on a worker thread: one image with failover over keys, then re-hosted; failures become reasons.

    Re-hosting happens here, right after this image is made, while the other images are still
    being drawn.
    """
    settings = services.settings
    if cancelled.is_set():
        return Outcome(index, error="客户端已断开")
    if seed is not None:
        payload = payload | {"seed": seed}
    try:
        image = generate_with_failover(
            services.http, settings.api_base_url, services.pool, payload,
            timeout=settings.upstream_timeout, deadline=deadline, max_attempts=settings.max_key_attempts,
            max_bytes=image_answer_bytes(settings.max_image_mb), cancelled=cancelled,
            request_id=job.request_id, label=f"req={job.request_id} image {index}",
        )
        if cancelled.is_set():
            return Outcome(index, error="客户端已断开")
        if settings.api_keys and any(key in image.url for key in settings.api_keys):
            raise UpstreamError(Failure.BAD_RESPONSE, "上游返回的图片地址里含有 API 密钥，已拒绝")
        links = lasting_links(services.session, settings, services.store, image.url, job.public_base, deadline,
                              job.want_bytes)
    except UpstreamError as exc:
        if exc.kind is not Failure.CANCELLED:
            log.warning("req=%s image %d failed: %s", job.request_id, index, exc.kind)
        return Outcome(index, error=exc.message, kind=exc.kind)
    except Exception:  # a bug must cost one image, not the whole stream
        log.exception("req=%s image %d: unexpected error", job.request_id, index)
        return Outcome(index, error="服务内部错误")
    for note in links.notes:
        log.warning("req=%s image %d: %s", job.request_id, index, note)
    return Outcome(index, links=links, seed=seed if seed is not None else image.seed)


def submit_images(
    job: Job, payload: dict[str, Any], services: Services, deadline: float, cancelled: threading.Event,
    seeds: list[int] | None = None,
) -> list[Future[Outcome]]:
    """Start every image of `job` on the shared executor; setting `cancelled` stops those not begun."""
    return [
        services.executor.submit(
            make_image, index, payload, services, deadline, cancelled, job, seeds[index - 1] if seeds else None
        )
        for index in range(1, job.draw.count + 1)
    ]


@dataclass
class Drawn:
    """What the Images API answers from: the prompt used (when expanded) and each image's outcome."""

    revised: str | None = None
    outcomes: list[Outcome] = field(default_factory=list)
    refused: str | None = None  # a banned word found in the expanded prompt


def draw_for_api(
    job: Job, fields: dict[str, Any], services: Services, *, expand_first: bool, cancelled: threading.Event
) -> Drawn:
    """Every image of `job`, in parallel on the shared pool, each with failover and re-hosting.

    Runs on a worker thread; `fields` are extra SiliconFlow fields the client gave. Setting
    `cancelled` (the client left) stops the images not begun.
    """
    settings = services.settings
    deadline = time.monotonic() + settings.request_timeout
    draw = job.draw
    prompt, revised = draw.prompt, None
    if expand_first:
        revised, _ = expand(job, services, deadline)
        if banned := find_banned(revised, settings.banned_keywords):
            return Drawn(refused=banned)
        prompt = revised
    prompt, _ = fit_prompt(prompt)
    payload = payload_for(job.model, prompt, draw.size, None, draw.negative_prompt) | fields
    futures = submit_images(job, payload, services, deadline, cancelled, image_seeds(draw.seed, draw.count))
    try:
        outcomes = []
        for index, future in enumerate(futures, 1):
            # In steps: a shutdown that begins meanwhile moves the stop earlier.
            while not future.done() and (left := _stop_at(deadline) - time.monotonic()) > 0:
                wait([future], timeout=min(left, QUEUE_CHECK_SECONDS))
            outcomes.append(future.result() if future.done() else
                            Outcome(index, error=_unfinished_reason(settings), kind=Failure.TIMEOUT))
        return Drawn(revised=prompt if expand_first else None, outcomes=outcomes)
    finally:
        stop(job, services, cancelled, futures)


def guarded(pieces: Iterator[AnswerEvent], request_id: str) -> Iterator[AnswerEvent]:
    """`pieces`, with a bug turned into one plain line instead of a broken response."""
    try:
        yield from pieces
    except Exception:
        log.exception("req=%s unexpected error while answering", request_id)
        yield wording.INTERNAL_ERROR
    finally:
        pieces.close()  # type: ignore[attr-defined]
