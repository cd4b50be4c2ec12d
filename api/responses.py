"""The Responses API surface: `POST /v1/responses` that draws, and its adapter over the chat's turn.

The request's `input` (and `instructions`) is read into the chat's conversation, and the chat's
own path answers it (api/chat.take_turn): the same words, follow-ups, edits, chat UIs' tasks,
quotas. The adapter frames those words as one `message` item, and with the `image_generation`
tool in `tools` adds an `image_generation_call` item per picture carrying its bytes in base64,
as one Response object or as the Responses stream (`response.created` … `response.completed`).
The service keeps no responses: `previous_response_id` and `GET /v1/responses/{id}` are a 400
that says to send the earlier turns in `input`. The wire format, checked against openai-python,
the AI SDK and openai-node: /work/notes/responses.md (event order, required fields).
"""

from __future__ import annotations

import base64
import logging
import re
import time
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

from flask import Blueprint, Response, g

from api import context
from api.bodies import json_object, with_pictures_limit
from api.chat import Turn, take_turn
from api.wire import KEEP_ALIVE, dumps, tokens
from core.errors import ApiError
from drawing.events import Broken, Event, ImageFailed, ImageReady, PromptReady, close
from drawing.reasons import en

log = logging.getLogger("siliconflow_proxy")

bp = Blueprint("responses", __name__)

NO_CONVERSATIONS = (
    "This service keeps no conversations or responses, so {what} cannot be used. Send the earlier "
    "turns in 'input' instead: the user's messages and the assistant's answers, as "
    '[{{"role": "user", "content": "..."}}, {{"role": "assistant", "content": "..."}}, ...].'
)
FAILED_MESSAGE = "The image service failed while answering. It has been logged; please try again."


@bp.post("/v1/responses")
def create_response() -> Response:
    services = context.current()
    body = json_object(with_pictures_limit(services.settings))
    stream = body.get("stream", False)
    if stream is not None and not isinstance(stream, bool):
        raise ApiError(400, "'stream' must be true or false.", param="stream")
    for name in ("previous_response_id", "conversation"):
        if body.get(name) is not None:
            raise ApiError(400, NO_CONVERSATIONS.format(what=f"'{name}'"), param=name, code="previous_response_not_found")
    if body.get("background"):
        raise ApiError(
            400, "'background' is not offered: this service keeps no responses to poll. Leave it out.", param="background"
        )
    tool, size = _image_tool(body.get("tools"))
    items = tool and body.get("tool_choice") != "none"
    messages = conversation_of(body.get("input"), body.get("instructions"))
    try:
        turn = take_turn(
            messages, body.get("model"), services, stream=bool(stream), size=size, want_bytes=items, surface="responses"
        )
    except ApiError as exc:
        if exc.param != "messages":
            raise
        raise ApiError(exc.status, exc.message, param="input", code=exc.code) from None
    answer = Answer(turn, body, items=bool(items))
    if stream:
        response = Response(
            answer.stream(),
            mimetype="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    else:
        response = Response(context.spaces_before_json(answer.work(), answer.whole), mimetype="application/json")
    if turn.meter is not None:
        response.call_on_close(turn.meter.close)  # answered or hung up: the quota settles once the drawing has ended
    return response


@bp.route("/v1/responses/<path:response_id>", methods=["GET", "POST", "DELETE"])
def stored_response(response_id: str) -> Response:
    """Retrieve, cancel, delete, input_items: there is nothing kept to do them on."""
    raise ApiError(400, NO_CONVERSATIONS.format(what=f"'{response_id[:80]}'"), code="previous_response_not_found")


# --- the request ------------------------------------------------------------------------------------


def _image_tool(tools: Any) -> tuple[bool, tuple[int, int] | None]:
    """Whether `tools` holds the `image_generation` tool, and the size it asks (None: auto). Other
    tools (functions, web search) are ignored: this service only draws."""
    if tools is None:
        return False, None
    if not isinstance(tools, list):
        raise ApiError(400, '\'tools\' must be a list of tools, like [{"type": "image_generation"}].', param="tools")
    tool = next((t for t in tools if isinstance(t, dict) and t.get("type") == "image_generation"), None)
    if tool is None:
        return False, None
    size = tool.get("size")
    if size in (None, "", "auto"):
        return True, None
    match = re.fullmatch(r"(\d{2,5})x(\d{2,5})", size) if isinstance(size, str) else None
    if not match:
        raise ApiError(400, "The image_generation tool's 'size' must be 'auto' or WIDTHxHEIGHT, like '1024x1536'.", param="tools")
    return True, (int(match[1]), int(match[2]))


_TEXT_PARTS = ("input_text", "output_text", "text")


def conversation_of(given: Any, instructions: Any) -> list[dict[str, Any]]:
    """`input` (and `instructions`, a system message first) as the chat API's `messages`: text parts
    as `text`, `input_image` as `image_url`; other parts are kept for the chat's reader to say they
    cannot be used.

    Items that are not messages (item_reference, image_generation_call, function_call, reasoning…)
    are skipped without a word: they are what the model answered before. The AI SDK sends its
    earlier answers as item_reference (it takes the server to keep them); openai-python sends them
    whole, and the answer's message carries its pictures' links, which is what a follow-up reads."""
    messages: list[dict[str, Any]] = []
    if instructions is not None:
        if not isinstance(instructions, str):
            raise ApiError(400, "'instructions' must be a string.", param="instructions")
        if instructions.strip():
            messages.append({"role": "system", "content": instructions})
    if given is None or given == []:
        raise ApiError(
            400, "'input' is required: what to draw, as a string like '画一只猫 pic:2', or a list of messages.", param="input"
        )
    if isinstance(given, str):
        return [*messages, {"role": "user", "content": given}]
    if not isinstance(given, list):
        raise ApiError(400, "'input' must be a string or a list of messages and items.", param="input")
    answered = False  # an earlier answer's items were skipped: the next message starts a new turn
    for i, item in enumerate(given):
        if not isinstance(item, dict):
            raise ApiError(400, f"input[{i}] must be an object: a message with 'role' and 'content', or an item.", param="input")
        role = item.get("role")
        if role is None:
            if not isinstance(item.get("type"), str):
                raise ApiError(
                    400, f"input[{i}] has neither a 'role' (a message) nor a 'type' (an item): add one.", param="input"
                )
            answered = True
            continue
        if not isinstance(role, str):
            raise ApiError(400, f"input[{i}].role must be a string: user, assistant, system or developer.", param="input")
        if answered and role != "assistant":
            # The answer itself is not here (the AI SDK sends item_reference): an empty one keeps the
            # turns apart, so that only this turn is drawn.
            messages.append({"role": "assistant", "content": ""})
        answered = False
        messages.append({"role": "system" if role == "developer" else role, "content": _content(item.get("content"), i)})
    if not any(message["role"] != "system" for message in messages):
        raise ApiError(
            400,
            "'input' holds no message to answer (only items such as item_reference, which this service does not keep): "
            'send the request as {"role": "user", "content": "..."}.',
            param="input",
        )
    return messages


def _content(content: Any, index: int) -> str | list[Any]:
    if content is None or isinstance(content, str):
        return content or ""
    if not isinstance(content, list):
        raise ApiError(400, f"input[{index}].content must be a string or a list of content parts.", param="input")
    parts: list[Any] = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in _TEXT_PARTS and isinstance(part.get("text"), str):
            parts.append({"type": "text", "text": part["text"]})
        elif kind == "refusal" and isinstance(part.get("refusal"), str):
            parts.append({"type": "text", "text": part["refusal"]})
        elif kind == "input_image":
            url = part.get("image_url")
            url = url.get("url") if isinstance(url, dict) else url  # the chat API's shape, from some clients
            parts.append({"type": "image_url", "image_url": {"url": url if isinstance(url, str) else None}})
        else:
            parts.append(part)  # the chat's reader says it cannot be used (input_file, audio…)
    return parts


# --- the answer ------------------------------------------------------------------------------------


def _id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


class Answer:
    """One Response: the chat's words as the `message` item, and (with the tool) one
    `image_generation_call` item per picture, framed as a stream of events or one object."""

    def __init__(self, turn: Turn, body: dict[str, Any], *, items: bool):
        self.turn, self.body, self.items = turn, body, items
        self.request_id = g.request_id  # a stream is read after the request's context has gone
        self.id, self.created, self.message_id = _id("resp"), int(time.time()), _id("msg")
        self.text: list[str] = []
        self.pictures: list[dict[str, Any]] = []  # finished image_generation_call items, in the order they came
        self.broken = False
        self._seen: list[Event] = []  # the drawing's events worded since the last look
        self._drawn: PromptReady | None = None

    # -- reading the drawing

    def _pieces(self) -> Iterable[str | None]:
        """The chat's words; the drawing's events pass `_tap` on their way to be worded."""
        return self.turn.pieces(self._tap(self.turn.events) if self.turn.events is not None else None)

    def _tap(self, events: Iterator[Event]) -> Iterator[Event]:
        try:
            for event in events:
                self._seen.append(event)
                yield event
        finally:
            close(events)

    def _new_pictures(self) -> list[tuple[int, dict[str, Any]]]:
        """The pictures finished since the last look, as (output index, item); none without the
        tool. The message is output 0, the pictures 1, 2… in the order they were finished."""
        seen, self._seen = self._seen, []
        made = []
        for event in seen:
            if isinstance(event, Broken):
                self.broken = True
            elif isinstance(event, PromptReady):
                self._drawn = event
            elif self.items and isinstance(event, ImageReady | ImageFailed):
                self.pictures.append(self._picture(event))
                made.append((len(self.pictures), self.pictures[-1]))
        return made

    def _picture(self, event: ImageReady | ImageFailed) -> dict[str, Any]:
        drawn = self._drawn
        job = drawn.job if drawn is not None else None
        size = job.draw.size if job is not None and job.draw.size and "x" in job.draw.size else "auto"
        item: dict[str, Any] = {"type": "image_generation_call", "id": _id("ig")}
        picture = event.outcome.links.picture if isinstance(event, ImageReady) and event.outcome.links else None
        if picture is not None:
            item |= {"status": "completed", "result": base64.b64encode(picture.data).decode()}
        else:
            reason = event.reason if isinstance(event, ImageFailed) else None
            message = en(reason) if reason is not None else "the picture's bytes could not be fetched"
            code = reason.code if reason is not None else "not_fetched"
            # "" and not null: the AI SDK refuses an item whose result is not a string.
            item |= {
                "status": "failed",
                "result": "",
                "error": {"type": "image_generation_error", "code": code, "message": message, "param": None},
            }
        return item | {
            "revised_prompt": drawn.prompt if drawn is not None else None,
            "size": size,
            "output_format": picture.mimetype.split("/")[1] if picture is not None else "png",
            "quality": "auto",
            "background": "auto",
            "action": "edit" if job is not None and job.inputs else "generate",
        }

    # -- the shapes

    def _message(self, status: str) -> dict[str, Any]:
        content = (
            [{"type": "output_text", "text": "".join(self.text), "annotations": [], "logprobs": []}]
            if status == "completed"
            else []
        )
        return {"type": "message", "id": self.message_id, "status": status, "role": "assistant", "content": content}

    def response(self, status: str) -> dict[str, Any]:
        """The Response object: `in_progress` (no output yet), `completed` or `failed`."""
        body = self.body
        done = status != "in_progress"
        failed = status == "failed"
        tools = body.get("tools") if isinstance(body.get("tools"), list) else []
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created,
            "status": status,
            "completed_at": int(time.time()) if status == "completed" else None,
            "error": {"code": "server_error", "message": FAILED_MESSAGE, "type": "server_error", "param": None}
            if failed
            else None,
            "incomplete_details": None,
            "instructions": body.get("instructions") if isinstance(body.get("instructions"), str) else None,
            "max_output_tokens": None,
            "model": self.turn.model,
            "output": [self._message("completed"), *self.pictures] if done else [],
            "parallel_tool_calls": True,
            "previous_response_id": None,
            "reasoning": {"effort": None, "summary": None},
            "store": False,  # nothing is kept: GET /v1/responses/{id} says so
            "temperature": 1.0,
            "text": {"format": {"type": "text"}},
            "tool_choice": body.get("tool_choice") if isinstance(body.get("tool_choice"), str | dict) else "auto",
            "tools": tools,
            "top_p": 1.0,
            "truncation": "disabled",
            "user": None,
            "metadata": body.get("metadata") if isinstance(body.get("metadata"), dict) else {},
            "usage": self._usage() if done else None,
        }

    def _usage(self) -> dict[str, Any]:
        asked, said = tokens(self.turn.prompt), tokens("".join(self.text))
        return {
            "input_tokens": asked,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": said,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": asked + said,
        }

    # -- a whole answer

    def work(self) -> Iterator[None]:
        """The drawing, worded into `text` and `pictures`; None for each keep-alive."""
        pieces = self._pieces()
        try:
            for piece in pieces:
                if piece is KEEP_ALIVE:
                    yield None
                else:
                    self.text.append(piece)
            self._new_pictures()
        except Exception:
            log.exception("req=%s responses: unexpected error while answering", self.request_id)
            self.broken = True
        finally:
            close(pieces)

    def whole(self) -> str:
        self._new_pictures()
        return dumps(self.response("failed" if self.broken else "completed"))

    # -- a stream

    def stream(self) -> Iterator[str]:
        pieces = self._pieces()
        try:
            yield from self._stream(pieces)
        finally:
            close(pieces)  # the client left (or the answer ended): the drawing stops now

    def _stream(self, pieces: Iterable[str | None]) -> Iterator[str]:
        events = _Sequence()
        mid = self.message_id
        at = {"item_id": mid, "output_index": 0, "content_index": 0}
        yield events("response.created", response=self.response("in_progress"))
        yield events("response.in_progress", response=self.response("in_progress"))
        # The message opens at once: the AI SDK retries a request whose stream fails before any output.
        yield events("response.output_item.added", output_index=0, item=self._message("in_progress"))
        yield events(
            "response.content_part.added", **at, part={"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        )
        try:
            for piece in pieces:
                yield from self._picture_events(events)
                if piece is KEEP_ALIVE:
                    yield ": keep-alive\n\n"
                else:
                    self.text.append(piece)
                    yield events("response.output_text.delta", **at, delta=piece, logprobs=[])
            yield from self._picture_events(events)
        except Exception:
            log.exception("req=%s responses: unexpected error while streaming", self.request_id)
            self.broken = True
        message = self._message("completed")
        yield events("response.output_text.done", **at, text="".join(self.text), logprobs=[])
        yield events("response.content_part.done", **at, part=message["content"][0])
        yield events("response.output_item.done", output_index=0, item=message)
        if self.broken:
            yield events("response.failed", response=self.response("failed"))
        else:
            yield events("response.completed", response=self.response("completed"))

    def _picture_events(self, events: _Sequence) -> Iterator[str]:
        for index, item in self._new_pictures():
            at = {"output_index": index, "item_id": item["id"]}
            yield events(
                "response.output_item.added",
                output_index=index,
                item={"type": "image_generation_call", "id": item["id"], "status": "in_progress", "result": None},
            )
            yield events("response.image_generation_call.in_progress", **at)
            yield events("response.image_generation_call.generating", **at)
            if item["status"] == "completed":
                yield events("response.image_generation_call.completed", **at)
            yield events("response.output_item.done", output_index=index, item=item)


class _Sequence:
    """The stream's events, numbered 0, 1, 2… as `sequence_number`, each `event:` + `data:`."""

    def __init__(self) -> None:
        self.number = 0

    def __call__(self, kind: str, **fields: Any) -> str:
        payload = {"type": kind, "sequence_number": self.number, **fields}
        self.number += 1
        return f"event: {kind}\ndata: {dumps(payload)}\n\n"
