"""The Images adapter: a drawing's events, kept as an images answer needs them, and said in English
as one of three answers:

- OpenAI's JSON, `{"created", "data": [...]}`, each picture as `url`, `b64_json` or both;
- the same with SiliconFlow's own fields beside it (`images: [{url}]`, `seed`, `timings`) for a
  request in SiliconFlow's shape (api/images.py recognises it);
- OpenAI's image stream (`stream: true`): `text/event-stream` with one `image_generation.completed`
  (`image_edit.completed`) event per picture the moment it is ready, `: keep-alive` comments while
  waiting, and an `error` event for each picture not made, after the pictures that were (the
  openai SDKs stop reading at the first error: a picture still on its way would be paid and lost).

The drawing is iterated in this request (never on the shared executor, whose threads draw the
pictures). A quick answer keeps its status: one whose drawing ends, made nothing, before the first
keep-alive is an error with its own HTTP status. A slow JSON answer starts a 200 and sends spaces
until the JSON is ready (context.spaces_before_json); a stream starts at its first picture or
keep-alive. Every picture asked for arrives or is said not to have been made, and why: the JSON's
`errors`, or the stream's `error` events.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

from flask import Response

from api import context, errors
from api.wire import dumps, error_body, images_answer, tokens
from core.errors import ApiError, Failure, Reason
from drawing import metering, pipeline, reasons
from drawing.events import (
    Broken,
    ImageFailed,
    ImageReady,
    Job,
    KeepAlive,
    Outcome,
    PromptReady,
    Queued,
    Refused,
    Submitted,
    close,
)
from drawing.pipeline import Services
from storage.pictures import dimensions

log = logging.getLogger("siliconflow_proxy")

# What an input picture asked for can meet in the pipeline: not used, and why. The Images API says
# so with a 400 instead of drawing from the words alone.
UNUSED_INPUT = ("input_unusable", "input_error", "inputs_over", "inputs_tried", "inputs_not_taken")


@dataclass(frozen=True)
class Form:
    """How the answer is wanted."""

    response_format: str = "url"  # url | b64_json | both (each item carries the link and the bytes)
    stream: str | None = None  # the events' prefix when streamed: image_generation | image_edit
    native: bool = False  # SiliconFlow's own fields beside OpenAI's

    @property
    def wants_bytes(self) -> bool:
        return self.stream is not None or self.response_format != "url"


@dataclass
class Drawn:
    """What an images answer is made from: the events that matter to it, kept."""

    revised: str | None = None  # the prompt drawn, when the chat model wrote it
    ready: list[Outcome] = field(default_factory=list)
    failed: list[ImageFailed] = field(default_factory=list)
    refused: Refused | None = None
    problem: ApiError | None = None  # found before anything was sent upstream (an input picture not usable)
    broken: bool = False  # a bug cut the drawing short (logged)
    finished: bool = False
    submitted_at: float | None = None  # time.monotonic() when the pictures went upstream
    ended_at: float | None = None


def answer(job: Job, form: Form, services: Services) -> Response:
    """Draw `job` in this request and answer as `form` says (JSON or a stream)."""
    drawn = Drawn()
    events = metering.counted(pipeline.guarded(pipeline.draw(job, services), job.request_id), job.model, services.users)
    work = _follow(events, drawn)
    first: list[Outcome | None] = []
    try:
        for item in work:  # the first keep-alive (or, streamed, the first picture) ends the wait
            first.append(item)
            if item is None or form.stream:
                break
    except BaseException:
        work.close()
        raise
    if form.stream:
        if not first:  # over before anything could be said: nothing was made, or it was refused
            work.close()
            raise _nothing_made(drawn)
        return Response(
            _streamed(first, work, drawn, job, form),
            mimetype="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    if drawn.finished:
        return Response(dumps(json_body(drawn, job, form)), mimetype="application/json")
    beats = (item for item in chain([None], work) if item is None)  # the keep-alive that ended the wait, said
    return Response(
        context.spaces_before_json(_closing(beats, work), lambda: dumps(json_body(drawn, job, form))),
        mimetype="application/json",
    )


def _closing(items: Iterator[None], work: Iterator[Any]) -> Iterator[None]:
    try:
        yield from items
    finally:
        work.close()  # type: ignore[attr-defined]


def _follow(events: Iterator[Any], drawn: Drawn) -> Iterator[Outcome | None]:
    """The drawing's events kept in `drawn`, yielding None for each keep-alive and each picture
    the moment it is ready. Closing it closes the drawing (the pictures not begun are not begun)."""
    try:
        for event in events:
            if isinstance(event, KeepAlive | Queued):
                yield None
            elif isinstance(event, Refused):
                drawn.refused = event
            elif isinstance(event, PromptReady):
                unused = [note for note in event.notes if note.code in UNUSED_INPUT]
                if unused:  # said before any picture is sent upstream: closing stops the drawing here
                    words = "; ".join(reasons.en(note) for note in unused)
                    drawn.problem = ApiError(400, f"An input picture cannot be used: {words}.", param="image")
                    break
                if event.expansion and not event.expansion.failed:
                    drawn.revised = event.prompt
            elif isinstance(event, Submitted):
                drawn.submitted_at = time.monotonic()
            elif isinstance(event, ImageReady):
                drawn.ready.append(event.outcome)
                yield event.outcome
            elif isinstance(event, ImageFailed):
                drawn.failed.append(event)
            elif isinstance(event, Broken):
                drawn.broken = True
        drawn.ready.sort(key=lambda outcome: outcome.index)
        drawn.finished = True
        drawn.ended_at = time.monotonic()
    finally:
        close(events)


# --- what was not made -------------------------------------------------------------------------------


def _nothing_made(drawn: Drawn) -> ApiError:
    """The error for an answer with no picture: a refusal, an input that cannot be used, a bug, or
    the pictures' failures mapped to one status (api/errors.py)."""
    if drawn.problem is not None:
        return drawn.problem
    if drawn.refused:
        where = {"expanded": "The expanded prompt", "request": "The prompt"}.get(drawn.refused.where, "The prompt")
        return ApiError(
            400,
            f"{where} contains a word this service does not draw: '{drawn.refused.keyword}'.",
            param="prompt",
            code="content_policy_violation",
        )
    if drawn.broken and not drawn.failed:
        return ApiError(500, "The image service failed. It has been logged; please try again.", code="internal_error")
    return errors.failed([(f.kind, f.reason) for f in drawn.failed], what="an image")


def missing(drawn: Drawn, count: int) -> list[tuple[int, ApiError]]:
    """Each picture asked for and not made, with the error that says why, in order."""
    said = {f.index: f for f in drawn.failed}
    made = {outcome.index for outcome in drawn.ready}
    out = []
    for index in range(1, count + 1):
        if index in made:
            continue
        failure = said.get(index)
        if failure is not None:
            error = errors.failed([(failure.kind, failure.reason)], what="this image")
        elif drawn.problem is not None or drawn.refused is not None:
            error = _nothing_made(drawn)
        else:  # cut short by a bug before this picture's end was known
            error = errors.failed([(Failure.INTERNAL, Reason.of("internal"))], what="this image")
        out.append((index, error))
    return out


# --- JSON --------------------------------------------------------------------------------------------


def json_body(drawn: Drawn, job: Job, form: Form) -> dict[str, Any]:
    """The Images API answer (SiliconFlow's fields beside it when `form.native`). Raises ApiError
    when no picture was made."""
    if not drawn.ready or drawn.problem is not None:
        raise _nothing_made(drawn)
    body = images_answer([item(outcome, form.response_format, drawn.revised) for outcome in drawn.ready])
    if form.native:
        body |= native_fields(drawn)
    count = job.draw.count
    if not_made := missing(drawn, count):
        body["errors"] = [
            {"index": index, "code": error.code, "message": f"Picture {index} of {count} was not made: {error.message}"}
            for index, error in not_made
        ]
    return body


def item(outcome: Outcome, response_format: str, revised: str | None) -> dict[str, Any]:
    """One picture of `data`: its link, its bytes, or both."""
    links = outcome.links
    assert links is not None
    entry: dict[str, Any] = {}
    if response_format in ("url", "both") and links.showable:
        entry["url"] = links.image
    if response_format in ("b64_json", "both"):
        assert links.picture is not None  # fetched by the picture's own worker (Job.want_bytes)
        entry["b64_json"] = base64.b64encode(links.picture.data).decode()
    entry["revised_prompt"] = revised
    return entry


def native_fields(drawn: Drawn) -> dict[str, Any]:
    """SiliconFlow's own answer fields (CONTRACTS.md section 1): `images` with the lasting links,
    the seed of the first picture, and how long the drawing took upstream."""
    began = drawn.submitted_at or drawn.ended_at or 0.0
    return {
        "images": [{"url": outcome.links.image, "seed": outcome.seed} for outcome in drawn.ready if outcome.links is not None],
        "seed": drawn.ready[0].seed if drawn.ready else None,
        "timings": {"inference": round(max((drawn.ended_at or began) - began, 0.0), 3)},
    }


# --- the stream --------------------------------------------------------------------------------------


def _streamed(first: list[Outcome | None], work: Iterator[Outcome | None], drawn: Drawn, job: Job, form: Form) -> Iterator[str]:
    """The SSE body: each picture as it is ready, keep-alives while waiting, then an `error` event
    for each picture not made."""
    try:
        for outcome in chain(first, work):
            if outcome is None:
                yield ": keep-alive\n\n"
            else:
                kind = f"{form.stream}.completed"
                yield event(kind, completed(outcome, job, kind))
        for index, error in missing(drawn, job.draw.count):
            message = f"Picture {index} of {job.draw.count} was not made: {error.message}"
            log.info("req=%s images stream: picture %d not made (%s)", job.request_id, index, error.code)
            yield event("error", {"type": "error", "error": error_body(error.status, message, code=error.code)["error"]})
    except Exception:  # a bug after the stream started: said as an error event, not a cut connection
        log.exception("req=%s images stream failed", job.request_id)
        message = "The image service failed. It has been logged; please try again."
        yield event("error", {"type": "error", "error": error_body(500, message, code="internal_error")["error"]})
    finally:
        work.close()  # type: ignore[attr-defined]  # the client left: the drawing stops


def event(kind: str, payload: dict[str, Any]) -> str:
    return f"event: {kind}\ndata: {dumps(payload)}\n\n"


def completed(outcome: Outcome, job: Job, kind: str) -> dict[str, Any]:
    """An `image_generation.completed` (`image_edit.completed`) event's fields, as openai-python's
    ImageGenCompletedEvent types them; no partial images are made (SiliconFlow has none)."""
    links = outcome.links
    assert links is not None and links.picture is not None
    picture = links.picture
    found = dimensions(picture.data)
    size = f"{found[0]}x{found[1]}" if found else (job.draw.size if job.draw.size and "x" in job.draw.size else "auto")
    words = tokens(job.draw.prompt)
    return {
        "type": kind,
        "b64_json": base64.b64encode(picture.data).decode(),
        "created_at": int(time.time()),
        "size": size,
        "quality": "auto",
        "background": "opaque",  # SiliconFlow's pictures have no transparency
        "output_format": {"image/jpeg": "jpeg", "image/webp": "webp"}.get(picture.mimetype, "png"),
        "usage": {
            "input_tokens": words,
            "input_tokens_details": {"image_tokens": 0, "text_tokens": words},
            "output_tokens": 0,
            "total_tokens": words,
        },
    }
