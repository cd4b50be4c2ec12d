"""The drawing pipeline: from a validated `Job` to its pictures, as the typed events of events.py.

Every surface draws through `draw(job, services)`, iterated in its own request: the chat adapter
(api/chat.py; chat_words.py words the events in Chinese) and the Images adapter (api/images.py,
generations and edits, in English). The pipeline never words anything: why something failed is a
`Reason`. Moderation, prompt
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

from config import Settings
from core.errors import Failure, Reason, UploadError, UpstreamError
from core.text import redact_secrets
from drawing import reasons, video_jobs
from drawing.events import (
    KEEPALIVE,
    Broken,
    Done,
    Event,
    Expansion,
    ImageFailed,
    ImageReady,
    ImageRef,
    Job,
    KeepAlive,
    Outcome,
    Preparing,
    PromptReady,
    Queued,
    Refused,
    Submitted,
    VideoFailed,
    VideoProgress,
    VideoReady,
    VideoSubmitted,
)
from drawing.metering import Spend
from parsing import find_banned, fit_prompt, image_seeds
from siliconflow.client import JsonText, expand_prompt, image_answer_bytes, payload_for, video_submit
from siliconflow.failover import generate_with_failover, submit_video
from siliconflow.families import VIDEO_SECONDS, ModelCatalog, family
from siliconflow.leases import key_id
from siliconflow.pool import KeyPool
from siliconflow.upkeep import Upkeep
from storage import video_records
from storage.keeping import Keeping
from storage.pictures import Keeper
from storage.user_keys import Day, Keys
from uploaders import NO_PUBLIC_BASE, input_picture, lasting_links

log = logging.getLogger("siliconflow_proxy.pipeline")

EXPANSION_INPUT_CHARS = 2000  # what the chat model is given of the user's text
QUEUE_CHECK_SECONDS = 1.0  # how often a waiting answer looks at where its images stand in line
INLINE_ONLY = Reason.of("inline_only")
CANCELLED = Reason.of("cancelled")


@dataclass(frozen=True)
class Services:
    """What routes hand to generators and worker threads: plain values, no Flask."""

    settings: Settings
    pool: KeyPool
    http: urllib3.PoolManager  # SiliconFlow's JSON API
    session: requests.Session  # fetching and re-hosting images
    executor: ThreadPoolExecutor
    upkeep: Upkeep
    store: Keeper | None  # keeps the pictures (storage/pictures.py), None: nobody
    catalog: ModelCatalog
    videos: video_jobs.VideoWorker | None = None  # video jobs: their record and the background poller
    users: Keys | None = None  # user keys and their quotas (storage/user_keys.py), None without ADMIN_KEY
    day: Day | None = None  # the quota day
    spend: Spend | None = None  # what pictures cost, recorded in the ledger, None without ADMIN_KEY
    keeping: Keeping | None = None  # pictures being kept behind links already shown (storage/keeping.py)

    def secrets(self) -> tuple[str, ...]:
        """Every secret configured, the upstream keys added on the operator's page included:
        what must never be repeated to anyone."""
        return (*self.settings.secret_values(), *self.pool.keys)

    def close(self) -> None:
        """Stop this process's background threads (each waited for) and its executor: a test's
        end, a worker's exit. Nothing of them logs or writes after this returns."""
        self.upkeep.stop()
        self.pool.queue.stop()
        self.catalog.stop()
        if self.videos is not None:
            self.videos.stop()
        self.executor.shutdown(wait=False, cancel_futures=True)
        if self.keeping is not None:
            self.keeping.close()


@dataclass(frozen=True)
class Inputs:
    """The input pictures as the model takes them: its fields filled, and what was left out."""

    fields: dict[str, JsonText] = field(default_factory=dict)  # `image`, `image2`, … -> data URIs
    notes: tuple[Reason, ...] = ()
    missing: Reason | None = None  # an edit model got no usable picture: why


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
    The job's meter is closed when the drawing ends, before the answer's last words are written:
    the quota is settled by then (or as soon as the pictures still being drawn have ended).
    """
    try:
        yield from _draw(job, services, cancelled)
    finally:
        if job.meter is not None:
            job.meter.close()


def _draw(job: Job, services: Services, cancelled: threading.Event | None) -> Iterator[Event]:
    settings = services.settings
    # What this turn asks for, as far as the chat model is given it, and the earlier prompt it
    # changes: a forged earlier answer is text from the client like any other, and it reaches the
    # chat model and the image model. Only what is sent is read (a megabyte of text costs a
    # worker's loop seconds to fold); the prompt that reaches the image model is read again below.
    asked_for = job.draw.prompt[:EXPANSION_INPUT_CHARS]
    if banned := find_banned(asked_for, settings.banned_keywords) or find_banned(job.previous or "", settings.banned_keywords):
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
        if steps:  # said at once: a chat model's rewrite takes seconds
            yield Preparing(expanding=asked is not None, pictures=len(job.inputs))
        for step in steps:
            yield from _heartbeats_until_done(step, settings.heartbeat_seconds, deadline)
        if not all(step.done() for step in steps):  # a restart came first
            yield from _unfinished(job, settings, range(1, job.draw.count + 1))
            return
        expansion = asked.result() if asked else None
        if expansion and (banned := find_banned(expansion.prompt, settings.banned_keywords)):
            yield Refused(banned, "expanded")
            return
        inputs = (
            inputs_asked.result()
            if inputs_asked
            else Inputs(missing=_needs_a_picture(job.model) if family(job.model).needs_input else None)
        )
        draw_request = job.draw
        prompt, cut = fit_prompt(expansion.prompt if expansion else _plain(job))
        seeds = image_seeds(draw_request.seed, draw_request.count)
        notes = draw_request.notes + inputs.notes + ((cut,) if cut else ())
        if banned := find_banned(prompt, settings.banned_keywords):  # what is sent, whatever it was made from
            yield Refused(banned, "expanded" if expansion else "request")
            return
        yield PromptReady(job, prompt, seeds, notes, expansion)
        if not inputs.missing and family(job.model).needs_input and not _INSTRUCTION.sub("", prompt):
            inputs = Inputs(inputs.fields, inputs.notes, NOTHING_TO_CHANGE)  # "改成 16:9": an edit keeps the size
        if inputs.missing:
            for index in range(1, draw_request.count + 1):
                yield ImageFailed(index, inputs.missing, Failure.INPUT)
            yield Done(0, draw_request.count)
            return
        payload = (
            payload_for(job.model, prompt, draw_request.size, None, draw_request.negative_prompt) | job.fields | inputs.fields
        )
        if family(job.model).video:
            yield from make_videos(job, payload, services, cancelled, seeds, deadline)
            return
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
            beat = max(quiet_since + settings.heartbeat_seconds - time.monotonic(), 0.0)  # the next keep-alive is due
            done, pending = wait(pending, timeout=min(QUEUE_CHECK_SECONDS, beat, left), return_when=FIRST_COMPLETED)
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
        return ImageFailed(outcome.index, Reason.of("link_withheld", why=links.unsafe), Failure.BAD_RESPONSE, outcome)
    if links is not None and (links.picture is not None if job.want_bytes else links.showable):
        return ImageReady(outcome)
    if links is not None:
        reason = links.notes[0] if job.want_bytes and links.notes else INLINE_ONLY
        return ImageFailed(outcome.index, reason, Failure.BAD_RESPONSE, outcome)
    return ImageFailed(outcome.index, outcome.reason or Reason.of("internal"), outcome.kind, outcome)


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


def _unfinished_reason(settings: Settings) -> Reason:
    if SHUTDOWN.deadline is not None and SHUTDOWN.deadline <= time.monotonic():
        return Reason.of("shutting_down")
    return Reason.of("request_timeout", seconds=settings.request_timeout)


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
        return Expansion(_plain(job), skipped=Reason.of("no_key_for_expansion"))
    timeout = max(min(settings.expansion_timeout, until - time.monotonic()), 0.5)
    try:
        with pool.using(lease):  # a chat call: only a dead or broke key is news for the images
            expanded = expand_prompt(
                services.http,
                settings.api_base_url,
                lease.key,
                settings.image_prompt_model,
                job.draw.prompt[:EXPANSION_INPUT_CHARS],
                timeout,
                previous=job.previous,
                video=family(job.model).video,
            )
    except UpstreamError as exc:
        log.warning("req=%s prompt expansion failed (%s); using the user's text", job.request_id, exc.kind)
        return Expansion(_plain(job), failed=exc.reason)
    if job.previous and ("Previous prompt:" in expanded or "Change:" in expanded):
        # The chat model repeated what it was given instead of rewriting it: join the two plainly.
        return Expansion(_plain(job), failed=Reason.of("expansion_echoed"))
    # The chat model may have been told a key, or say one it was never told: it is not repeated.
    return Expansion(redact_secrets(expanded, services.secrets()))


def load_inputs(job: Job, services: Services, until: float, cancelled: threading.Event | None = None) -> Inputs:
    """Runs on a worker thread: the job's pictures, in order, in the fields its model takes
    (`image`, `image2`, `image3`; Kolors' `image` for image-to-image), and a note for each that
    is not used and why. Never raises.

    At most two pictures more than the model takes are tried (a message with a thousand links
    does not make a thousand fetches), and none once the client has left."""
    takes, settings = family(job.model), services.settings
    if not takes.inputs:
        return Inputs(notes=(Reason.of("inputs_not_taken", model=job.model, pictures=job.inputs),))
    fields: dict[str, JsonText] = {}
    used: list[ImageRef] = []
    notes: list[Reason] = []
    tries = len(takes.inputs) + 2
    for number, ref in enumerate(job.inputs):
        if len(fields) == len(takes.inputs):
            notes.append(Reason.of("inputs_over", pictures=job.inputs[number:], model=job.model, most=len(takes.inputs)))
            break
        if number == tries or (cancelled is not None and cancelled.is_set()):
            notes.append(Reason.of("inputs_tried", pictures=job.inputs[number:], tried=number))
            break
        try:
            picture = input_picture(services.session, settings, services.store, ref.url, ref.data, until, services.keeping)
        except UploadError as exc:
            notes.append(Reason.of("input_unusable", pictures=(ref,), why=exc.reason))
            continue
        except Exception:  # a host that answers in ways nothing expects: this picture only
            log.exception("req=%s reading %s %d failed", job.request_id, ref.source, ref.number)
            notes.append(Reason.of("input_error", pictures=(ref,)))
            continue
        fields[takes.inputs[len(fields)]] = JsonText.data_uri(picture.mimetype, picture.data)
        used.append(ref)
    if used:
        notes.insert(0, Reason.of("edit_from" if takes.needs_input else "drawn_from", pictures=tuple(used)))
    return Inputs(fields, tuple(notes), _needs_a_picture(job.model) if takes.needs_input and not fields else None)


# What is left of an edit's instruction once its verbs and punctuation go: nothing means no change.
_INSTRUCTION = re.compile(r"(?i)\b(?:make it|change it to|change to|turn it into|to)\b|改成|改为|换成|变成|调成|[\W_]")
NOTHING_TO_CHANGE = Reason.of("nothing_to_change")


def _needs_a_picture(model: str) -> Reason:
    return Reason.of("needs_picture", model=model)


def _plain(job: Job) -> str:
    """The prompt without a chat model: the change after the last picture's prompt, plainly."""
    if job.previous and job.draw.prompt:
        return f"{job.previous}, {job.draw.prompt}"
    return job.previous or job.draw.prompt


def make_image(
    index: int,
    payload: dict[str, Any],
    services: Services,
    deadline: float,
    cancelled: threading.Event,
    job: Job,
    seed: int | None = None,
) -> Outcome:
    """Runs on a worker thread: one image with failover over keys, then re-hosted; failures become reasons.

    Re-hosting happens here, right after this image is made, while the other images are still
    being drawn.
    """
    settings = services.settings
    if cancelled.is_set():
        return Outcome(index, reason=CANCELLED)
    if seed is not None:
        payload = payload | {"seed": seed}
    try:
        image = generate_with_failover(
            services.http,
            settings.api_base_url,
            services.pool,
            payload,
            timeout=settings.upstream_timeout,
            deadline=deadline,
            max_attempts=settings.max_key_attempts,
            max_bytes=image_answer_bytes(settings.max_image_mb),
            cancelled=cancelled,
            request_id=job.request_id,
            label=f"req={job.request_id} image {index}",
            turn=job.owner,
            maybe_drawn=(lambda kid: job.meter.drawn(kid, job.model)) if job.meter is not None else None,
        )
        if job.meter is not None:  # drawn and paid for, whatever happens to the answer now
            job.meter.drawn(image.key_id, job.model)
        if cancelled.is_set():  # the person left: nobody would see it, so it is not kept either
            return Outcome(index, reason=CANCELLED)
        if any(key in image.url for key in services.pool.keys):
            raise UpstreamError(Failure.BAD_RESPONSE, Reason.of("key_in_link"))
        links = lasting_links(
            services.session, settings, services.store, image.url, job.public_base, deadline, job.want_bytes, services.keeping
        )
    except UpstreamError as exc:
        if exc.kind is not Failure.CANCELLED:
            log.warning("req=%s image %d failed: %s", job.request_id, index, exc.kind)
        return Outcome(index, reason=exc.reason, kind=exc.kind)
    except Exception:  # a bug must cost one image, not the whole answer
        log.exception("req=%s image %d: unexpected error", job.request_id, index)
        return Outcome(index, reason=Reason.of("internal"), kind=Failure.INTERNAL)
    for note in links.notes:
        log.warning("req=%s image %d: %s", job.request_id, index, reasons.en(note))
    return Outcome(index, links=links, seed=seed if seed is not None else image.seed)


def make_videos(
    job: Job,
    payload: dict[str, Any],
    services: Services,
    cancelled: threading.Event,
    seeds: list[int] | None,
    deadline: float,
) -> Iterator[Event]:
    """A video model's turn: each video submitted once through the pool and recorded (the
    process's VideoWorker polls and keeps it in the background), then, when the job follows them
    (chat), what each job is doing, at least every HEARTBEAT_SECONDS, until it is ready or failed.
    A client that leaves, or a job still running at VIDEO_TIMEOUT, leaves the job to go on: it
    answers at /v1/videos/{id}. The Videos API stops once they are taken (`Job.follow`)."""
    settings, worker, count = services.settings, services.videos, job.draw.count
    if worker is None:
        for index in range(1, count + 1):
            yield VideoFailed(index, Reason.of("videos_off"))
        yield Done(0, count, videos=True)
        return
    started = time.monotonic()
    waiting: dict[int, str] = {}
    failed: list[VideoFailed] = []
    for index in range(1, count + 1):
        sent = payload | ({"seed": seeds[index - 1]} if seeds else {})
        try:
            key, upstream_id = submit_video(
                services.pool,
                lambda key, body: video_submit(services.http, settings.api_base_url, key, body, settings.upstream_timeout),
                sent,
                deadline=deadline,
                max_attempts=settings.max_key_attempts,
                request_id=job.request_id,
                label=f"req={job.request_id} video {index}",
                maybe_taken=(lambda kid: job.meter.drawn(kid, job.model)) if job.meter is not None else None,
            )
        except UpstreamError as exc:
            log.warning("req=%s video %d not submitted: %s", job.request_id, index, exc.kind)
            failed.append(VideoFailed(index, exc.reason, exc.kind))
            continue
        if job.meter is not None:  # taken and billed by SiliconFlow: counted now, not when a line is read
            job.meter.drawn(key_id(key), job.model)
        record = video_records.submitted(job.model, sent, VIDEO_SECONDS, key_id(key), upstream_id, job.owner, job.record_notes)
        worker.jobs.save(record)
        waiting[index] = record.id
        log.info("req=%s video %d submitted as %s", job.request_id, index, record.id)
    worker.wake()
    yield Submitted()
    for index, video_id in waiting.items():
        yield VideoSubmitted(index, video_id, f"{job.public_base}/videos/{video_id}" if job.public_base else None)
    yield from failed
    if not job.follow:
        yield Done(len(waiting), count, videos=True)
        return
    poster = next((ref.url for ref in job.inputs if ref.url and ref.url.startswith(("http://", "https://"))), None)
    deadline = started + settings.video_timeout
    said: dict[int, tuple[str, int | None, float]] = {}
    delivered = 0
    while waiting and not cancelled.is_set():
        left = min(deadline, _stop_at(deadline)) - time.monotonic()
        if left <= 0:
            for index, video_id in waiting.items():
                yield VideoFailed(index, Reason.of("video_still_running", video_id=video_id))
            break
        worker.wait_for_change(min(settings.heartbeat_seconds, left, 1.0))
        for index, video_id in list(waiting.items()):
            record = worker.jobs.get(video_id)
            if record is None:  # deleted through the Videos API meanwhile
                del waiting[index]
                yield VideoFailed(index, Reason.of("video_still_running", video_id=video_id))
            elif record.status == video_records.COMPLETED:
                del waiting[index]
                delivered += 1
                yield _video_ready(index, record, job, services, poster)
            elif record.status == video_records.FAILED:
                del waiting[index]
                reason = record.reason or {"code": "video_refused", "params": [["why", "-"]]}
                yield VideoFailed(index, Reason.of(reason["code"], **dict(reason["params"])))
            else:
                now = time.monotonic()
                last = said.get(index)
                if last is None or last[:2] != (record.status, record.position) or now - last[2] >= settings.heartbeat_seconds:
                    said[index] = (record.status, record.position, now)
                    yield VideoProgress(index, record.status, record.position, now - started)
    yield Done(delivered, count, videos=True)


def _video_ready(index: int, record: video_records.VideoJob, job: Job, services: Services, poster: str | None) -> VideoReady:
    store = services.store
    kept = store.link(record.kept, job.public_base) if store is not None and record.kept else None
    notes: tuple[Reason, ...] = ()
    if kept is None and store is not None:
        why = Reason.of(record.not_kept) if record.not_kept else NO_PUBLIC_BASE
        notes = (Reason.of("video_not_kept", why=why),)
    return VideoReady(index, record.id, kept or record.url or "", poster, record.seed, notes)


def submit_images(
    job: Job,
    payload: dict[str, Any],
    services: Services,
    deadline: float,
    cancelled: threading.Event,
    seeds: list[int] | None = None,
) -> list[Future[Outcome]]:
    """Start every image of `job` on the shared executor; setting `cancelled` stops those not begun.
    The job's meter tracks each: it settles only after the last has ended."""
    futures = [
        services.executor.submit(
            make_image, index, payload, services, deadline, cancelled, job, seeds[index - 1] if seeds else None
        )
        for index in range(1, job.draw.count + 1)
    ]
    if job.meter is not None:
        for future in futures:
            job.meter.track(future)
    return futures


def guarded(events: Iterator[Event], request_id: str) -> Iterator[Event]:
    """`events`, with a bug turned into a `Broken` event instead of a broken response."""
    try:
        yield from events
    except Exception:
        log.exception("req=%s unexpected error while answering", request_id)
        yield Broken()
    finally:
        events.close()  # type: ignore[attr-defined]
