"""The drawing pipeline: from a validated request to its pictures, as typed events.

Every route draws through `draw(job, services)`: chat (stream or not, `wording` words the events
in Chinese), the Images API (`collect` keeps what it needs), and image edits. Moderation, prompt
expansion, the fan-out of `pic:N` over the shared executor with keys from the pool's line, and
re-hosting of each picture the moment it is made all happen here, bounded by REQUEST_TIMEOUT and a
restart's grace period. Nothing here touches Flask: routes pass plain values in (STYLE habit 6).
"""

from __future__ import annotations

import logging
import re
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
from conversation import ImageRef
from keypool import KeyPool, Upkeep
from models import ModelCatalog, family
from parsing import DrawRequest, find_banned, fit_prompt, image_seeds
from uploaders import ImageStore, Links, UploadError, input_picture, lasting_links
from upstream import Failure, JsonText, UpstreamError, expand_prompt, generate_with_failover, image_answer_bytes, payload_for

log = logging.getLogger("siliconflow_proxy.pipeline")

EXPANSION_INPUT_CHARS = 2000  # what the chat model is given of the user's text
QUEUE_CHECK_SECONDS = 1.0  # how often a waiting answer looks at where its images stand in line
INLINE_ONLY = "上游以内联数据（data:）返回了图片，聊天中无法显示；请设置 IMAGE_STORE_DIR 或蓝空图床来保存它"


@dataclass(frozen=True)
class Services:
    """What routes hand to generators and worker threads: plain values, no Flask."""

    settings: Settings
    pool: KeyPool
    http: urllib3.PoolManager  # SiliconFlow's JSON API
    session: requests.Session  # fetching and re-hosting images
    executor: ThreadPoolExecutor
    upkeep: Upkeep
    store: ImageStore | None
    catalog: ModelCatalog


@dataclass(frozen=True)
class Job:
    """One drawing: what to draw and how the answer wants it."""

    request_id: str
    model: str
    text: str  # what the user typed, tokens included: moderated
    draw: DrawRequest
    public_base: str | None = None  # where this service is reached, for links to stored images
    expand: bool = False  # rewrite the prompt with the chat model first
    previous: str | None = None  # the last picture's prompt, when this turn changes that picture
    fields: dict[str, Any] = field(default_factory=dict)  # more SiliconFlow fields the client gave
    want_bytes: bool = False  # the answer carries the pictures themselves (Images API b64_json)
    inputs: tuple[ImageRef, ...] = ()  # pictures to draw from (an edit, or image-to-image)


@dataclass(frozen=True)
class Outcome:
    index: int
    links: Links | None = None
    error: str | None = None
    kind: Failure | None = None  # the UpstreamError kind when it failed
    seed: int | None = None  # the seed sent, else the one the upstream says it used


@dataclass(frozen=True)
class Inputs:
    """The input pictures as the model takes them: its fields filled, and what was left out."""

    fields: dict[str, JsonText] = field(default_factory=dict)  # `image`, `image2`, … -> data URIs
    notes: tuple[str, ...] = ()
    missing: str | None = None  # an edit model got no usable picture: why


@dataclass(frozen=True)
class Expansion:
    prompt: str  # what will be drawn
    failed: str | None = None  # why the chat model's rewrite was not used (the user's text is)
    skipped: str | None = None  # why it was not asked at all


# --- events ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Refused:
    keyword: str  # a banned word, in the user's text or the expanded prompt


@dataclass(frozen=True)
class PromptReady:
    """What will be drawn: the prompt after expansion, and the request as parsed."""

    job: Job
    prompt: str
    seeds: list[int] | None
    notes: tuple[str, ...]
    expansion: Expansion | None


@dataclass(frozen=True)
class Submitted:
    """Every picture is on its way upstream (or in line for a key)."""


@dataclass(frozen=True)
class Queued:
    waiting: int  # this request's pictures waiting for an account with budget
    ahead: int  # requests served before this one's next picture
    next_in: float | None  # seconds until a key is expected to be free
    cooling: int = 0  # keys out (cooling after errors, dead, broke): then not only budgets are the cause


@dataclass(frozen=True)
class ImageReady:
    outcome: Outcome


@dataclass(frozen=True)
class ImageFailed:
    index: int
    reason: str
    kind: Failure | None = None
    outcome: Outcome | None = None


@dataclass(frozen=True)
class Done:
    delivered: int
    count: int


@dataclass(frozen=True)
class KeepAlive:
    """Still working: an SSE comment on the wire, a space before JSON."""


@dataclass(frozen=True)
class Broken:
    """A bug cut the answer short (logged); the client gets a plain line, not a broken response."""


KEEPALIVE = KeepAlive()
Event = Refused | PromptReady | Submitted | Queued | ImageReady | ImageFailed | Done | KeepAlive | Broken


class Shutdown:
    """When this worker process must have answered everything: set when gunicorn asks it to stop.

    Answers still waiting then end on their own, with a line for each picture not finished,
    a few seconds before gunicorn's graceful timeout would cut them mid-answer.
    """

    MARGIN = 3.0  # seconds to write the last lines and close

    def __init__(self) -> None:
        self.deadline: float | None = None

    def begin(self, grace_seconds: float) -> None:
        self.deadline = time.monotonic() + max(grace_seconds - self.MARGIN, 0.5)


SHUTDOWN = Shutdown()


# --- the pipeline -----------------------------------------------------------------------------------


def draw(job: Job, services: Services, cancelled: threading.Event | None = None) -> Iterator[Event]:
    """The drawing of `job`, event by event, in the order a user should hear of it.

    Setting `cancelled` (or closing the generator: the client left) stops the pictures not begun.
    """
    settings = services.settings
    # What this turn typed, and the earlier prompt it changes: a forged earlier answer is text
    # from the client like any other, and it reaches the chat model and the image model.
    if banned := find_banned(job.text, settings.banned_keywords) or find_banned(job.previous or "",
                                                                                 settings.banned_keywords):
        yield Refused(banned)
        return
    deadline = time.monotonic() + settings.request_timeout
    cancelled = cancelled or threading.Event()
    futures: list[Future] = []
    try:
        # The input pictures are fetched while the chat model rewrites the prompt.
        inputs_asked = services.executor.submit(load_inputs, job, services, deadline, cancelled) if job.inputs else None
        asked = services.executor.submit(expand, job, services, deadline) if job.expand else None
        steps = [step for step in (inputs_asked, asked) if step is not None]
        futures.extend(steps)
        for step in steps:
            yield from _heartbeats_until_done(step, settings.heartbeat_seconds, deadline)
        if not all(step.done() for step in steps):  # a restart came first
            yield from _unfinished(job, settings, range(1, job.draw.count + 1))
            return
        expansion = asked.result() if asked else None
        if expansion and (banned := find_banned(expansion.prompt, settings.banned_keywords)):
            yield Refused(banned)
            return
        inputs = inputs_asked.result() if inputs_asked else Inputs(
            missing=_needs_a_picture(job.model) if family(job.model).needs_input else None)
        draw_request = job.draw
        prompt, cut = fit_prompt(expansion.prompt if expansion else _plain(job))
        seeds = image_seeds(draw_request.seed, draw_request.count)
        notes = draw_request.notes + inputs.notes + ((cut,) if cut else ())
        if banned := find_banned(prompt, settings.banned_keywords):  # what is sent, whatever it was made from
            yield Refused(banned)
            return
        yield PromptReady(job, prompt, seeds, notes, expansion)
        if not inputs.missing and family(job.model).needs_input and not _INSTRUCTION.sub("", prompt):
            inputs = Inputs(inputs.fields, inputs.notes, NOTHING_TO_CHANGE)  # "改成 16:9": an edit keeps the size
        if inputs.missing:
            for index in range(1, draw_request.count + 1):
                yield ImageFailed(index, inputs.missing, Failure.BAD_REQUEST)
            yield Done(0, draw_request.count)
            return
        payload = (payload_for(job.model, prompt, draw_request.size, None, draw_request.negative_prompt)
                   | job.fields | inputs.fields)
        images = submit_images(job, payload, services, deadline, cancelled, seeds)
        futures.extend(images)
        yield Submitted()
        delivered = 0
        pending = set(images)
        quiet_since, queued = time.monotonic(), None
        while pending:
            # Each picture goes out as soon as it is ready, not after the slowest one; none is waited
            # for past the request's deadline (or past a shutdown's).
            left = _stop_at(deadline) - time.monotonic()
            if left <= 0:
                break
            done, pending = wait(pending, timeout=min(QUEUE_CHECK_SECONDS, settings.heartbeat_seconds, left),
                                 return_when=FIRST_COMPLETED)
            for future in sorted(done, key=images.index):
                event = _settled(future.result(), job)
                delivered += isinstance(event, ImageReady)
                yield event
                quiet_since = time.monotonic()
            status = services.pool.queue.status(job.request_id) if pending else None
            if status and (status.waiting, status.ahead, status.next_in is None) != queued:
                queued = (status.waiting, status.ahead, status.next_in is None)
                yield Queued(status.waiting, status.ahead, status.next_in, cooling=services.pool.keys_out())
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= settings.heartbeat_seconds:
                yield KEEPALIVE
                quiet_since = time.monotonic()
        unfinished = sorted(images.index(future) + 1 for future in pending)
        yield from _unfinished(job, settings, unfinished, delivered)
    finally:
        stop(job, services, cancelled, futures)


def _settled(outcome: Outcome, job: Job) -> ImageReady | ImageFailed:
    """A finished picture is ready when the answer can carry it: a web link, or (b64_json) its bytes."""
    links = outcome.links
    if links is not None and links.unsafe:  # never offered: a browser or a chat UI's server would fetch it
        return ImageFailed(outcome.index, f"上游返回的图片链接没有提供：{links.unsafe}", Failure.BAD_RESPONSE, outcome)
    if links is not None and (links.picture is not None if job.want_bytes else links.showable):
        return ImageReady(outcome)
    if links is not None:
        reason = "；".join(links.notes) if job.want_bytes and links.notes else INLINE_ONLY
        return ImageFailed(outcome.index, reason, Failure.BAD_RESPONSE, outcome)
    return ImageFailed(outcome.index, outcome.error or "", outcome.kind, outcome)


def _unfinished(job: Job, settings: Settings, indexes: Any, delivered: int = 0) -> Iterator[Event]:
    for index in indexes:
        yield ImageFailed(index, _unfinished_reason(settings), Failure.TIMEOUT)
    yield Done(delivered, job.draw.count)


def stop(job: Job, services: Services, cancelled: threading.Event, futures: list[Future]) -> None:
    """The drawing is over (or its client left): pictures not begun are not begun, queued ones leave the line."""
    cancelled.set()
    for future in futures:
        future.cancel()
    services.pool.queue.cancel(job.request_id)


def _stop_at(deadline: float) -> float:
    """When to stop waiting: the request's deadline (plus a second for the pictures' own last
    steps, which end by it), or a shutdown's, whichever comes first."""
    shutdown = SHUTDOWN.deadline
    return min(deadline + 1.0, shutdown) if shutdown is not None else deadline + 1.0


def _unfinished_reason(settings: Settings) -> str:
    if SHUTDOWN.deadline is not None and SHUTDOWN.deadline <= time.monotonic():
        return "服务正在重启或关闭，这张图片没能完成，请稍后重试"
    return f"超过 {wording.seconds(settings.request_timeout)} 秒（REQUEST_TIMEOUT）仍未完成"


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


def expand(job: Job, services: Services, until: float) -> Expansion:
    """Runs on a worker thread: the prompt the chat model writes, or the user's text and why not.

    A turn that changes the last picture gives the chat model both: that picture's prompt and the
    change. The key is always handed back, whatever happens.
    """
    settings, pool = services.settings, services.pool
    lease = pool.any_key()
    if lease is None:
        return Expansion(_plain(job), skipped="暂无可用密钥")
    timeout = max(min(settings.expansion_timeout, until - time.monotonic()), 0.5)
    try:
        expanded = expand_prompt(
            services.http, settings.api_base_url, lease.key, settings.image_prompt_model,
            job.draw.prompt[:EXPANSION_INPUT_CHARS], timeout, previous=job.previous,
        )
    except UpstreamError as exc:
        pool.report(lease, exc)  # a chat call: only a dead or broke key is news for the images
        log.warning("req=%s prompt expansion failed (%s); using the user's text", job.request_id, exc.kind)
        return Expansion(_plain(job), failed=exc.message)
    except BaseException:
        pool.release(lease)
        raise
    pool.report(lease, None)
    if job.previous and ("Previous prompt:" in expanded or "Change:" in expanded):
        # The chat model repeated what it was given instead of rewriting it: join the two plainly.
        return Expansion(_plain(job), failed="对话模型没有改写提示词")
    # The chat model may have been told a key, or say one it was never told: it is not repeated.
    return Expansion(wording.redact_secrets(expanded, settings.secret_values()))


def load_inputs(job: Job, services: Services, until: float, cancelled: threading.Event | None = None) -> Inputs:
    """Runs on a worker thread: the job's pictures, in order, in the fields its model takes
    (`image`, `image2`, `image3`; Kolors' `image` for image-to-image), and a note for each that
    is not used and why. Never raises.

    At most two pictures more than the model takes are tried (a message with a thousand links
    does not make a thousand fetches), and none once the client has left."""
    takes, settings = family(job.model), services.settings
    if not takes.inputs:
        return Inputs(notes=(f"{job.model} 不接受输入图片，{_labels(job.inputs)}没有使用",))
    fields: dict[str, JsonText] = {}
    used: list[ImageRef] = []
    notes: list[str] = []
    tries = len(takes.inputs) + 2
    for number, ref in enumerate(job.inputs):
        if len(fields) == len(takes.inputs):
            notes.append(f"{_labels(job.inputs[number:])}没有使用：{job.model} 最多接受 {len(takes.inputs)} 张图片")
            break
        if number == tries or (cancelled is not None and cancelled.is_set()):
            notes.append(f"{_labels(job.inputs[number:])}没有使用：前面的图片已试过 {number} 张")
            break
        try:
            picture = input_picture(services.session, settings, services.store, ref.url, ref.data, until)
        except UploadError as exc:
            notes.append(f"{_labels([ref])}没有使用：{exc.message}")
            continue
        except Exception:  # a host that answers in ways nothing expects: this picture only
            log.exception("req=%s reading %s failed", job.request_id, ref.label)
            notes.append(f"{_labels([ref])}没有使用：读取图片时出错")
            continue
        fields[takes.inputs[len(fields)]] = JsonText.data_uri(picture.mimetype, picture.data)
        used.append(ref)
    if used:
        notes.insert(0, f"按{_labels(used)}修改" if takes.needs_input else f"以{_labels(used)}为底图")
    return Inputs(fields, tuple(notes), _needs_a_picture(job.model) if takes.needs_input and not fields else None)


def _labels(refs: Any) -> str:
    """「附图 1、附图 2 」: the pictures' names, spaced from the Chinese that follows when they end in a digit."""
    labels = [ref.label for ref in refs]
    if len(labels) > 3:
        labels = [*labels[:2], f"…{labels[-1]}（共 {len(labels)} 张）"]
    text = "、".join(labels)
    return f"{text} " if text[-1:].isascii() else text


# What is left of an edit's instruction once its verbs and punctuation go: nothing means no change.
_INSTRUCTION = re.compile(r"(?i)\b(?:make it|change it to|change to|turn it into|to)\b|改成|改为|换成|变成|调成|[\W_]")
NOTHING_TO_CHANGE = "没有要修改的内容：请说明要怎样改（例如“换成蓝色”）；要改比例请换用文生图模型"


def _needs_a_picture(model: str) -> str:
    return f"{model} 需要一张输入图片：请在消息里附上图片，或先画一张再让它修改"


def _plain(job: Job) -> str:
    """The prompt without a chat model: the change after the last picture's prompt, plainly."""
    if job.previous and job.draw.prompt:
        return f"{job.previous}, {job.draw.prompt}"
    return job.previous or job.draw.prompt


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
    except Exception:  # a bug must cost one image, not the whole answer
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
    """What an Images API answer is made from: the events that matter to it, kept."""

    revised: str | None = None  # the prompt drawn, when the chat model wrote it
    ready: list[Outcome] = field(default_factory=list)
    failed: list[ImageFailed] = field(default_factory=list)
    refused: str | None = None


def collect(events: Iterator[Event]) -> Drawn:
    """Run a drawing to its end and keep what a JSON answer needs."""
    drawn = Drawn()
    for event in events:
        if isinstance(event, Refused):
            drawn.refused = event.keyword
        elif isinstance(event, PromptReady) and event.expansion and not event.expansion.failed:
            drawn.revised = event.prompt
        elif isinstance(event, ImageReady):
            drawn.ready.append(event.outcome)
        elif isinstance(event, ImageFailed):
            drawn.failed.append(event)
    drawn.ready.sort(key=lambda outcome: outcome.index)
    return drawn


def guarded(events: Iterator[Event], request_id: str) -> Iterator[Event]:
    """`events`, with a bug turned into a `Broken` event instead of a broken response."""
    try:
        yield from events
    except Exception:
        log.exception("req=%s unexpected error while answering", request_id)
        yield Broken()
    finally:
        events.close()  # type: ignore[attr-defined]
