"""The chat surface: `POST /v1/chat/completions` that draws, and the chat adapter.

The route reads the conversation (conversation.py), answers a chat UI's background task without
drawing (chat_tasks.py), carries the last picture over when the turn changes it
(followups.py), and otherwise makes a `Job` (`take_turn`, which the Responses API shares). The
adapter iterates the pipeline's events in this request, has them worded in Chinese
(chat_words.chat), and frames the words as one `chat.completion` or as a stream of chunks
(api/wire.py).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from flask import Blueprint, Response, g, request

from api import context
from api.bodies import json_object, with_pictures_limit
from api.wire import KEEP_ALIVE, chunk, completion, dumps, sse, usage_chunk
from core.errors import ApiError, Reason
from core.text import redact_secrets
from drawing import chat_tasks, chat_words, conversation, followups, metering, pipeline, ui_words
from drawing.events import Event, ImageRef, Job, close
from drawing.metering import Meter
from drawing.pipeline import Services
from parsing import parse, pick_size
from siliconflow.client import complete
from siliconflow.families import family

log = logging.getLogger("siliconflow_proxy")

HOUSEKEEPING_SECONDS = 8.0  # most a chat UI's background task waits for the chat model's answer

bp = Blueprint("chat", __name__)


@bp.post("/v1/chat/completions")
def chat_completions() -> Response:
    services = context.current()
    body = json_object(with_pictures_limit(services.settings))
    stream = body.get("stream", False)
    if stream is not None and not isinstance(stream, bool):
        raise ApiError(400, "'stream' must be true or false.", param="stream")
    usage = _include_usage(body.get("stream_options"))
    turn = take_turn(body.get("messages"), body.get("model"), services, stream=bool(stream))
    response = chat_response(turn.pieces(), stream=bool(stream), model=turn.model, prompt=turn.prompt, usage=usage)
    if turn.meter is not None:
        response.call_on_close(turn.meter.close)  # answered or hung up: the quota settles once the drawing has ended
    return response


@dataclass
class Turn:
    """What a chat-shaped request asks, read and checked before any answer starts: words already
    known (a chat UI's task, a "continue"), or a drawing's events. Each surface frames it: chat as
    chunks or a completion, the Responses API as its items (api/responses.py)."""

    model: str  # the model the answer names
    prompt: str  # the text the usage counts as asked
    words: list[str] = field(default_factory=list)
    events: Iterator[Event] | None = None  # the drawing, counted; closing it closes the drawing
    meter: Meter | None = None  # closed when the answer is (the quota settles then)

    def pieces(self, events: Iterator[Event] | None = None) -> Iterable[str | None]:
        """The answer's words (None: a keep-alive), from `events` (this turn's, or the same
        passed through a surface's own reader) when it draws."""
        if self.events is None:
            return self.words
        return chat_words.chat(events if events is not None else self.events)


def take_turn(
    raw_messages: Any,
    model_value: Any,
    services: Services,
    *,
    stream: bool,
    size: tuple[int, int] | None = None,
    want_bytes: bool = False,
    surface: str = "chat",
) -> Turn:
    """A chat conversation (`messages` as the chat API has them) read into its answer: a chat UI's
    task answered, a "continue", or a `Job` drawn (its quota taken, a follow-up carried over).
    Raises ApiError for what cannot be answered, before anything is sent. `size` is a size the
    request's fields ask (the Responses API's image tool), used when the text types none;
    `want_bytes` fetches each picture's bytes for the answer to carry."""
    settings = services.settings
    messages = conversation.read_messages(raw_messages)
    task = chat_tasks.housekeeping(messages, request.headers.get("X-OpenWebUI-Task"))
    if task is not None:
        return _housekeeping(task, model_value, services)
    model = context.resolve_model(model_value, services)
    if messages and messages[-1][0] == "assistant":
        # "Continue" (Open WebUI's 继续回答): the history ends with our answer, which is whole.
        zh = chat_tasks.is_chinese([t for role, t in messages if role == "user"])
        log.info("req=%s %s continue asked: answered without drawing", g.request_id, surface)
        # On a line of its own: the UI appends it to the answer it continues.
        return Turn(model, "", ["\n\n" + ui_words.task_words("continued", zh)])
    text = conversation.current_turn(messages)
    context.has_keys(services)

    draw = parse(text, model, settings.max_images_per_request)
    if size is not None and draw.asked_shape is None:  # what the text types wins, as in the Images API
        asked = f"{size[0]}x{size[1]}"
        draw = replace(draw, size=pick_size(model, size, explicit=True), asked_size=asked, asked_shape=size)
    inputs, part_notes = conversation.turn_images(raw_messages)
    picture = followups.last_picture(messages)
    change, previous, expand = None, None, settings.prompt_expansion
    if family(model).needs_input:
        # An edit model changes a picture: the one attached, else the last one drawn here. Its
        # instruction is used as typed: a 100-word scene would not be an edit.
        expand = False
        draw = followups.instruction(draw, settings.max_images_per_request)
        if not inputs and picture is not None and picture.url:
            inputs = (ImageRef("last", url=picture.url),)
    elif not inputs and (change := followups.refinement(draw, picture)) is not None:
        draw = followups.carried_over(draw, change, model, settings.max_images_per_request)
        previous = change.picture.prompt
        expand = expand and bool(change.change)  # the same picture again needs no new prompt
    if part_notes:
        draw = replace(draw, notes=draw.notes + part_notes)
    # A key's daily quota is taken before anything is drawn: a stream past it is refused before it starts;
    # a pic:N larger than what is left draws what is left, and says so.
    kind = "videos" if family(model).video else "images"
    reservation = context.take_quota(kind, draw.count, partial=True)
    if reservation is not None and reservation.taken < draw.count:
        left = Reason.of("quota_left", asked=draw.count, left=reservation.taken, resets=services.day.label())
        draw = replace(draw, count=reservation.taken, notes=draw.notes + (left,))
    owner = g.user.id if g.get("user") else None
    meter = Meter(reservation, context.on_drawn())
    job = Job(
        g.request_id,
        model,
        text,
        draw,
        context.public_base(settings),
        expand=expand,
        previous=previous,
        want_bytes=want_bytes,
        inputs=inputs,
        owner=owner,
        meter=meter,
    )
    log.info(
        "req=%s %s model=%s images=%d size=%s stream=%s inputs=%d%s",
        job.request_id,
        surface,
        model,
        draw.count,
        draw.size,
        stream,
        len(inputs),
        " (changes the last picture)" if change else "",
    )
    events = pipeline.guarded(pipeline.draw(job, services), job.request_id)
    return Turn(model, text, events=metering.counted(events, model, services.users), meter=meter)


def _include_usage(options: Any) -> bool:
    """`stream_options.include_usage`: a stream that ends with a usage chunk."""
    if options is None:
        return False
    if not isinstance(options, dict):
        raise ApiError(400, "'stream_options' must be an object, like {\"include_usage\": true}.", param="stream_options")
    include = options.get("include_usage", False)
    if include is not None and not isinstance(include, bool):
        raise ApiError(400, "'stream_options.include_usage' must be true or false.", param="stream_options")
    return bool(include)


def _housekeeping(task: chat_tasks.Task, model: Any, services: Services) -> Turn:
    """A chat UI's background task: answered in its shape, with no picture drawn. Any model name
    is taken: UIs send these to a model of their own choosing (LobeChat: gpt-5-mini)."""
    settings = services.settings

    def ask(system: str, user: str) -> str:
        lease = services.pool.any_key()
        if lease is None:
            raise LookupError("no key")
        with services.pool.using(lease):
            text = complete(
                services.http,
                settings.api_base_url,
                lease.key,
                settings.image_prompt_model,
                system,
                user,
                min(settings.expansion_timeout, HOUSEKEEPING_SECONDS),
                max_tokens=200,
            )
        return redact_secrets(text, services.secrets())

    named = model if isinstance(model, str) and model else services.catalog.default()
    # A key allowed no pictures gets its UI's tasks answered without the chat model: they are not
    # counted, and must not spend the pool for someone who may not draw.
    user = g.get("user")
    may_ask = len(services.pool) and settings.prompt_expansion and (user is None or user.daily_images != 0)
    answer = chat_tasks.answer(task, ask if may_ask else None, model=named)
    log.info("req=%s %s %s task answered without drawing", g.request_id, task.ui, task.kind)
    return Turn(named[:100], "", [answer])


def chat_response(pieces: Iterable[str | None], *, stream: bool, model: str, prompt: str, usage: bool = False) -> Response:
    """The assistant's answer, from its pieces (None: keep-alive), as one `chat.completion` or as
    a stream of chunks.

    A stream sends the role at once and each piece as it comes; a keep-alive becomes an SSE
    comment (ignored by the clients, it keeps nginx and Cloudflare from cutting a quiet stream).
    A whole answer waits for its pieces; a keep-alive becomes a space before the JSON, which JSON
    parsers skip, for the same proxies.
    """
    completion_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

    def streamed() -> Iterator[str]:
        try:
            yield from _stream(pieces)
        finally:
            close(pieces)  # the client left (or the answer ended): the drawing stops now

    def _stream(pieces: Iterable[str | None]) -> Iterator[str]:
        said: list[str] = []
        yield sse(chunk(completion_id, created, model, {"role": "assistant", "content": ""}))
        for piece in pieces:
            if piece is KEEP_ALIVE:
                yield ": keep-alive\n\n"
            else:
                said.append(piece)
                yield sse(chunk(completion_id, created, model, {"content": piece}))
        yield sse(chunk(completion_id, created, model, {}, "stop"))
        if usage:
            yield sse(usage_chunk(completion_id, created, model, prompt, "".join(said)))
        yield sse("[DONE]")

    if stream:
        return Response(
            streamed(), mimetype="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )
    parts: list[str] = []

    def work() -> Iterator[None]:
        try:
            for piece in pieces:
                if piece is KEEP_ALIVE:
                    yield None
                else:
                    parts.append(piece)
        finally:
            close(pieces)

    answer = lambda: dumps(completion(completion_id, created, model, prompt, "".join(parts)))  # noqa: E731
    return Response(context.spaces_before_json(work(), answer), mimetype="application/json")
