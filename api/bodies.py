"""Reading request bodies, and what they may cost a worker.

`read_body`, `json_object` and `multipart_form` read a request's body within its byte limit and
CLIENT_BODY_TIMEOUT; every error is an `ApiError` saying what to fix (400, 408, 413, 503), raised
before any answer starts. Two rules decide what a body may hold:
- `picture_bytes(raw)`: how much of a JSON body is pictures: data: URIs, and the base64 `result`
  of the Responses API's `image_generation_call` items (openai-python sends earlier answers back
  whole). Only a string that is one, with a payload of plain base64 (a serializer may escape its
  slashes, nothing else) whose first bytes are a PNG, JPEG, WebP or GIF, counts; `\\uXXXX` escapes
  spell text, and text is what the 1 MB limit is for.
- `BodyBudget`: a worker process holds at most PICTURE_BODIES_MB of bodies over 1 MB at once (a
  request keeps its share until its answer is closed: its pictures live that long). Past that a
  request is refused with a 503 to retry instead of growing the worker: eight chat edits of
  three 18 MB pictures at once took the two workers to 1.4 GB.
"""

from __future__ import annotations

import binascii
import io
import json
import logging
import re
import socket
import threading
import time
from typing import Any

from flask import Response, after_this_request, current_app, g, request
from werkzeug.datastructures import FileStorage, MultiDict
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge
from werkzeug.formparser import FormDataParser

from config import Settings
from core.errors import ApiError, Busy
from siliconflow.outbound import deadline
from storage.pictures import sniff

try:  # what gunicorn raises for a body whose chunked framing is broken
    from gunicorn.http.errors import ParseException as _ServerParseError
except ImportError:  # the development server alone

    class _ServerParseError(Exception):  # type: ignore[no-redef]
        pass


log = logging.getLogger("siliconflow_proxy")

MAX_BODY_BYTES = 1 << 20
BODY_PIECE = 8 << 20  # a chunked body over MAX_BODY_BYTES is held, and read, this much at a time
RETRY_AFTER_SECONDS = 10  # a request refused for memory: about what one edit takes upstream
EDIT_FORM_PARTS = 64  # image, image[] ×3, prompt, model, n, size, response_format, …: a few dozen at most

# A JSON string that is a picture's data: URI, or the value of a "result" key (an
# image_generation_call's picture). The payload is base64 with `\/` the only escape allowed (PHP's
# json_encode escapes slashes); a `\uXXXX` ends the match, and the string with it.
_PICTURE_IN_JSON = re.compile(
    rb'(?<!\\)"(?:data:image(?:/|\\/)[A-Za-z0-9.+-]{1,40};base64,|result"[ \t\r\n]*:[ \t\r\n]*")'
    rb'([A-Za-z0-9+/=]*(?:\\/[A-Za-z0-9+/=]*)*)"'
)


def picture_bytes(raw: bytes | bytearray) -> int:
    """Bytes of `raw` that are pictures (data: URIs, `result`s): valid base64 whose first bytes are a picture."""
    counted = 0
    for match in _PICTURE_IN_JSON.finditer(raw):
        start, end = match.span(1)
        if _is_picture(raw, start, end):
            counted += match.end() - match.start()
    return counted


def _is_picture(raw: bytes | bytearray, start: int, end: int) -> bool:
    # Counted without copying the payload: its length without escapes, where its padding starts.
    escapes = raw.count(b"\\/", start, end)
    length = end - start - escapes
    padding = raw.find(b"=", start, end)
    if length % 4 or (padding >= 0 and (end - padding > 2 or raw.count(b"=", padding, end) != end - padding)):
        return False  # not base64: a length that is no multiple of 4, "=" other than at the end
    head = bytes(raw[start : start + 48]).replace(b"\\/", b"/")[:24]
    try:
        first = binascii.a2b_base64(head, strict_mode=True)
    except binascii.Error:
        return False
    return sniff(first) is not None


class BodyBudget:
    """Bytes of large request bodies one worker process holds at once, at most `budget`.

    One request is always let in when the worker holds none: a body larger than the budget on its
    own can still be served, one at a time.
    """

    def __init__(self, budget: int):
        self.budget = budget
        self.held = 0
        self._lock = threading.Lock()

    def take(self, size: int) -> Hold:
        """A hold on `size` more bytes. Raises Busy when the worker cannot take them now."""
        hold = Hold(self)
        hold.grow(size)
        return hold

    def _grow(self, own: int, size: int) -> None:
        with self._lock:
            if self.held > own and self.held + size > self.budget:
                raise Busy(self.held, self.budget)
            self.held += size

    def _shrink(self, size: int) -> None:
        with self._lock:
            self.held -= size


class Hold:
    """One request's share of a `BodyBudget`: grows as its body arrives, given back once."""

    def __init__(self, budget: BodyBudget):
        self._budget = budget
        self.size = 0

    def grow(self, size: int) -> None:
        """Raises Busy (holding what it held before) when the budget has no room for `size` more."""
        self._budget._grow(self.size, size)
        self.size += size

    def release(self) -> None:
        size, self.size = self.size, 0
        if size:
            self._budget._shrink(size)


def with_pictures_limit(settings: Settings) -> int:
    """Bodies that may carry pictures (chat with image parts, edits): room for three inputs of
    MAX_IMAGE_MB each, base64-encoded, besides the text."""
    return MAX_BODY_BYTES + int(4 * settings.max_image_mb * 2**20)


def _too_large(limit: int) -> ApiError:
    size = f"{limit // 2**20} MB" if limit >= 2**20 else f"{limit // 1024} KB"
    return ApiError(413, f"The request body is larger than {size}.")


def read_body(limit: int = MAX_BODY_BYTES) -> bytes | bytearray:
    """The request body, at most `limit` bytes whatever its transfer encoding, within CLIENT_BODY_TIMEOUT.

    A client that sends half a body and waits has its socket dropped then, instead of holding a
    worker's connection for ever. A body over MAX_BODY_BYTES takes its size from the worker's
    PICTURE_BODIES_MB until its answer is closed (ApiError 503 when there is no room); broken
    framing (chunk sizes, extensions, terminators, a body that ends early) is a 400.
    """
    seconds = current_app.extensions["siliconflow"].settings.client_body_timeout
    declared = request.content_length
    if (declared or 0) > limit:
        raise _too_large(limit)
    hold = _hold()
    sock = request.environ.get("gunicorn.socket") or request.environ.get("werkzeug.socket")
    stream = request.stream
    late = ApiError(408, f"The request body did not arrive within {seconds:g} seconds.")
    with deadline(time.monotonic() + seconds, socket.SHUT_RD) as scope:  # the 408 can still be sent
        if sock is not None:
            scope.watch(sock)
        try:
            if declared is not None and declared > MAX_BODY_BYTES:
                _grow(hold, declared, stream)
                raw: bytes | bytearray = stream.read(limit + 1)
            else:
                raw = stream.read(MAX_BODY_BYTES + 1)
                if declared is None and len(raw) > MAX_BODY_BYTES:
                    raw = _rest_of_chunked(bytearray(raw), limit, hold, stream)
        except (OSError, ValueError, HTTPException, _ServerParseError):
            if scope.expired:
                raise late from None
            raise ApiError(
                400,
                "The request body's framing is broken: a chunk size, chunk extension or chunk "
                "terminator of its chunked encoding is malformed, or the body ended before its "
                "Content-Length or its last chunk. Send the whole body, with a correct "
                "Content-Length or valid chunked encoding.",
            ) from None
        if scope.expired:
            raise late
    if len(raw) > limit:
        raise _too_large(limit)
    return raw


def _rest_of_chunked(raw: bytearray, limit: int, hold: Hold, stream: Any) -> bytearray:
    """A chunked body past its first MAX_BODY_BYTES: held a piece at a time, before each piece is read."""
    for _ in range(limit // BODY_PIECE + 2):  # each pass reads a piece, or the body has ended
        if len(raw) > limit:
            break
        want = min(BODY_PIECE, limit + 1 - len(raw))
        _grow(hold, len(raw) + want - hold.size, stream)
        piece = stream.read(want)
        if not piece:
            break
        raw += piece
    return raw


def _hold() -> Hold:
    """This request's share of the worker's PICTURE_BODIES_MB, given back when its answer is closed
    (a stream's or a slow JSON answer's pictures live that long), or when no answer was made."""
    hold = g.get("body_hold")
    if hold is None:
        hold = g.body_hold = current_app.extensions["siliconflow.bodies"].take(0)

        @after_this_request
        def release_on_close(response: Response) -> Response:
            response.call_on_close(hold.release)
            g.body_hold_closes = True
            return response

    return hold


def _grow(hold: Hold, size: int, stream: Any) -> None:
    """Hold `size` more bytes, or refuse with a 503 to retry. What the client still sends is read
    and dropped first (never kept), so that it gets the answer rather than a reset connection."""
    try:
        hold.grow(size)
    except Busy as busy:
        for _ in range(busy.budget // BODY_PIECE + 2 + (request.content_length or 0) // BODY_PIECE):
            if not stream.read(BODY_PIECE):
                break
        log.warning(
            "req=%s refused: %d MB of large bodies held by this worker (PICTURE_BODIES_MB=%g)",
            g.request_id,
            busy.held // 2**20,
            busy.budget / 2**20,
        )
        raise ApiError(
            503,
            f"This worker is busy with other requests carrying large pictures: retry in "
            f"{RETRY_AFTER_SECONDS} seconds (or send smaller pictures).",
            code="server_busy",
            retry_after=RETRY_AFTER_SECONDS,
        ) from None


class _NotANumber(ValueError):
    pass


def _not_a_number(constant: str) -> Any:
    """Python's json reads NaN, Infinity and -Infinity; JSON has no such numbers."""
    raise _NotANumber(constant)


_WHOLE = re.compile(r"-?\d{1,19}")


def whole_number(body: dict[str, Any], name: str, low: int, high: int, *, default: int | None = None) -> int | None:
    """`body[name]` as a whole number from `low` to `high` (`default` when absent or null).

    Taken: a JSON integer (a form's text is read first: `form_numbers`). Refused with a 400 naming
    the field: true/false, 12.9, 1e400, text, and anything out of range. Nothing is rounded or
    guessed: a seed of 12.9 is not a seed of 12.
    """
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ApiError(400, f"'{name}' must be a whole number from {low} to {high}.", param=name)
    return value


def form_numbers(form: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    """A multipart form's fields `names` as the numbers their text spells (a form carries only
    text): `"7"` is 7 and `"7.5"` 7.5; other text stays text, for the checks to refuse by name."""
    read = dict(form)
    for name in names:
        value = read.get(name)
        if not isinstance(value, str):
            continue
        text = value.strip()
        if _WHOLE.fullmatch(text):
            read[name] = int(text)
        elif _DECIMAL.fullmatch(text):
            read[name] = float(text)
    return read


_DECIMAL = re.compile(r"-?\d{1,19}\.\d{1,19}")


def finite_number(body: dict[str, Any], name: str, low: float, high: float) -> float | int | None:
    """`body[name]` as a finite number from `low` to `high`, None when absent or null. A 400
    naming the field otherwise (text included: a form's text is read first, `form_numbers`)."""
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:  # NaN fails too
        raise ApiError(400, f"'{name}' must be a number from {low:g} to {high:g}.", param=name)
    return value


def json_object(limit: int = MAX_BODY_BYTES) -> dict[str, Any]:
    """The request's JSON object. Past MAX_BODY_BYTES (chat with pictures may go up to `limit`),
    only pictures' data: URIs (bodies.picture_bytes) may make up the difference: the rest (text,
    structure) is what costs memory and time to parse, and stays within MAX_BODY_BYTES."""
    raw = read_body(limit)
    if len(raw) > MAX_BODY_BYTES and len(raw) - picture_bytes(raw) > MAX_BODY_BYTES:
        raise ApiError(
            413,
            f"The request body is larger than {MAX_BODY_BYTES // 2**20} MB besides its pictures' "
            "data: URIs. Send less text or history.",
        )
    try:
        body = json.loads(raw, parse_constant=_not_a_number)
        del raw  # tens of MB with pictures: not held while they are drawn
        # Lone surrogates ("\ud800") parse, but no text with one can be encoded: find them here,
        # not in an upstream call or a log line.
        _check_encodable(body)
    except RecursionError:
        raise ApiError(400, "The request body is nested too deeply to be a chat or image request.") from None
    except UnicodeEncodeError:
        raise ApiError(
            400, "The request body holds invalid Unicode (an unpaired surrogate escape like \\ud800). Send text as valid UTF-8."
        ) from None
    except ValueError as exc:
        if "digits" in str(exc):  # Python refuses integers of more than 4300 digits
            raise ApiError(400, "A number in the request body has too many digits.") from None
        if isinstance(exc, _NotANumber):
            raise ApiError(400, f"The request body holds {exc}, which is not a JSON number: send a number.") from None
        raise ApiError(400, "The request body must be valid JSON, sent with Content-Type: application/json.") from None
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object.")
    return body


def _check_encodable(value: Any) -> None:
    """Raises UnicodeEncodeError for a string (or key) holding a lone surrogate. ASCII strings (a
    picture's data URI among them) are skipped without a copy: encoding the whole body again cost
    twice its size."""
    todo = [value]
    while todo:  # bounded: each node of the parsed body is visited once
        item = todo.pop()
        if isinstance(item, str):
            if not item.isascii():
                item.encode()
        elif isinstance(item, dict):
            todo.extend(item.keys())
            todo.extend(item.values())
        elif isinstance(item, list):
            todo.extend(item)


def multipart_form(limit: int) -> tuple[MultiDict[str, str], MultiDict[str, FileStorage]]:
    """The request's multipart form (an image edit): its text fields and its files."""
    if request.mimetype != "multipart/form-data":
        raise ApiError(
            400, "Send an edit as multipart/form-data: the picture in 'image' (or 'image[]'), the instruction in 'prompt'."
        )
    if not request.mimetype_params.get("boundary"):
        raise ApiError(
            400,
            "The Content-Type multipart/form-data has no boundary: let the HTTP client build the "
            "multipart body (files=… in requests, -F in curl) rather than setting the header by hand.",
        )
    raw = read_body(limit)

    def parse(raw: bytes | bytearray, stream_factory: Any = None) -> tuple[Any, MultiDict[str, str], MultiDict[str, FileStorage]]:
        # Text fields (the prompt, the options) are held to MAX_BODY_BYTES together; only files are large.
        return FormDataParser(
            stream_factory, max_form_memory_size=MAX_BODY_BYTES, max_content_length=limit, max_form_parts=EDIT_FORM_PARTS
        ).parse(io.BytesIO(raw), request.mimetype, len(raw), request.mimetype_params)

    try:
        try:
            _, form, files = parse(raw)  # large files go to temporary files, as werkzeug does
        except OSError as exc:  # the temporary disk is full or not writable: the body is in memory anyway
            log.warning("an edit's picture could not go to a temporary file (%s); read in memory", exc.strerror or exc)
            _, form, files = parse(raw, lambda *_, **__: io.BytesIO())
    except RequestEntityTooLarge:
        raise ApiError(
            413,
            f"The edit has more than {EDIT_FORM_PARTS} parts or a text field larger than "
            f"{MAX_BODY_BYTES // 1024} KB: send the picture(s), the prompt and the options only.",
        ) from None
    except (ValueError, HTTPException):
        raise ApiError(400, "The multipart body could not be read: check its boundary and parts.") from None
    del raw  # the parser holds the parts now
    if not form and not files:
        raise ApiError(
            400,
            "The multipart body could not be read: no part matched its boundary. Check that the "
            "body is complete and uses the boundary its Content-Type names.",
        )
    return form, files


def release_unanswered(_: BaseException | None) -> None:
    """A request whose answer never reached the server (a bug after the body was read) gives its
    hold back here; one that was answered gives it back when the answer is closed."""
    hold = g.get("body_hold")
    if hold is not None and not g.get("body_hold_closes"):
        hold.release()
