"""The Flask app: OpenAI-compatible chat completions that draw pictures with SiliconFlow.

`create_app(settings)` builds an app; tests build their own. The module-level `app` that
`gunicorn siliconflow_proxy:app` asks for is made on first access (see `__getattr__` below), so
importing this module never reads `.env` or the environment.
"""

from __future__ import annotations

import atexit
import base64
import hmac
import io
import ipaddress
import json
import logging
import os
import re
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import replace
from pathlib import Path
from typing import Any

from flask import Blueprint, Flask, Response, after_this_request, current_app, g, request, send_file
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge
from werkzeug.formparser import FormDataParser
from werkzeug.wsgi import wrap_file

import conversation
import pipeline
import wording
from bodies import BodyBudget, Busy, Hold, picture_bytes
from config import ConfigError, Settings
from keypool import KeyPool, Upkeep
from keystores import FallbackStore, Limit, LocalStore, MemoryStore, RedisStore, Store
from models import DEFAULT_MODELS, ModelCatalog, family
from openai_wire import ApiError, chat_answer, dumps, error_body, error_response, images_answer, json_response, model_list
from outbound import deadline, make_http, make_session
from parsing import SEED_MAX, DrawRequest, find_banned, parse, pick_size
from pipeline import Job, Services
from uploaders import MIMETYPES, ImageStore, UploadError, input_picture
from upstream import Failure, UpstreamError, account_info, complete, image_models, mask_key

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
HOUSEKEEPING_SECONDS = 8.0  # most a chat UI's background task waits for the chat model's answer


# --- request handling ---------------------------------------------------------------------------

bp = Blueprint("api", __name__)


def _services() -> Services:
    return current_app.extensions["siliconflow"]


@bp.before_app_request
def _authenticate() -> Response | None:
    g.request_id = uuid.uuid4().hex[:12]
    services = _services()
    services.upkeep.ensure_running()
    settings = services.settings
    if not settings.api_key or not request.path.startswith("/v1/") or request.method == "OPTIONS":
        return None  # a CORS preflight carries no credentials
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), settings.api_key.encode()):
        return None
    return error_response(
        401,
        "Incorrect API key provided. Send the service key as 'Authorization: Bearer <API_KEY>'.",
        code="invalid_api_key",
    )


@bp.after_app_request
def _cors(response: Response) -> Response:
    """CORS for browser clients (the OpenAI JS SDK, web chat UIs) as CORS_ORIGINS allows."""
    allowed = _services().settings.cors_origins
    origin = request.headers.get("Origin")
    if not allowed or not origin:
        return response
    if "*" in allowed:
        response.headers["Access-Control-Allow-Origin"] = "*"
    elif origin in allowed:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.vary.add("Origin")
    else:
        return response
    if request.method == "OPTIONS":
        response.headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
        # The JS SDK sends Authorization, Content-Type and a dozen x-stainless-* headers: allow
        # what the preflight asks for rather than a list that drifts with SDK versions.
        response.headers["Access-Control-Allow-Headers"] = request.headers.get(
            "Access-Control-Request-Headers", "Authorization, Content-Type"
        )
        response.headers["Access-Control-Max-Age"] = "86400"
    return response


PLAYGROUND = Path(__file__).with_name("static") / "playground.html"


@bp.get("/")
def playground() -> Response:
    """A page to try the service in a browser: what people landing on a HuggingFace Space expect."""
    return send_file(PLAYGROUND, mimetype="text/html", max_age=300)


@bp.get("/health")
def health() -> Response:
    """The pool without key material: keys and accounts by state, the store shared, the line."""
    services = _services()
    pool = services.pool
    store = pool.store.describe()
    body = {
        # degraded: the shared key state failed and this process draws on from its own (see "store")
        "status": "ok" if store.get("reachable", True) else "degraded",
        **pool.summary(),
        "rate_limit": ",".join(str(limit) for limit in pool.configured_limits) or "learned from 429s",
        "store": store,
        "queue": {"waiting_in_this_worker": pool.queue.waiting()},
    }
    return json_response(body)


@bp.get("/v1/models")
def list_models() -> Response:
    return json_response(model_list(_services().catalog.models()))


@bp.post("/v1/chat/completions")
def chat_completions() -> Response:
    services = _services()
    settings = services.settings
    body = _json_object(_with_pictures_limit(settings))
    stream = body.get("stream", False)
    if stream is not None and not isinstance(stream, bool):
        raise ApiError(400, "'stream' must be true or false.", param="stream")
    messages = conversation.read_messages(body.get("messages"))
    task = conversation.housekeeping(messages, request.headers.get("X-OpenWebUI-Task"))
    if task is not None:
        return _housekeeping(task, body.get("model"), bool(stream), services)
    model = _model(body.get("model"), services)
    text = conversation.current_turn(messages)
    if not settings.api_keys:
        raise ApiError(503, "This service has no upstream keys: its operator must set API_KEYS.", code="no_upstream_keys")

    draw = parse(text, model, settings.max_images_per_request)
    inputs, part_notes = conversation.turn_images(body["messages"])
    picture = conversation.last_picture(messages)
    change, previous, expand = None, None, settings.prompt_expansion
    if family(model).needs_input:
        # An edit model changes a picture: the one attached, else the last one drawn here. Its
        # instruction is used as typed: a 100-word scene would not be an edit.
        expand = False
        if not inputs and picture is not None and picture.url:
            inputs = (conversation.ImageRef("上一张图片", picture.url),)
    elif not inputs and (change := conversation.refinement(draw, picture)) is not None:
        draw = conversation.carried_over(draw, change, model, settings.max_images_per_request)
        previous = change.picture.prompt
        expand = expand and bool(change.change)  # the same picture again needs no new prompt
    if part_notes:
        draw = replace(draw, notes=draw.notes + part_notes)
    job = Job(g.request_id, model, text, draw, _public_base(settings), expand=expand, previous=previous,
              inputs=inputs)
    log.info("req=%s chat model=%s images=%d size=%s stream=%s inputs=%d%s", job.request_id, model, draw.count,
             draw.size, bool(stream), len(inputs), " (changes the last picture)" if change else "")
    events = pipeline.guarded(pipeline.draw(job, services), job.request_id)
    return chat_answer(wording.chat(events), stream=bool(stream), model=model, prompt=text)


def _housekeeping(task: conversation.Task, model: Any, stream: bool, services: Services) -> Response:
    """A chat UI's background task: answered in its shape, with no picture drawn. Any model name
    is taken: UIs send these to a model of their own choosing (LobeChat: gpt-5-mini)."""
    settings = services.settings

    def ask(system: str, user: str) -> str:
        lease = services.pool.any_key()
        if lease is None:
            raise LookupError("no key")
        try:
            text = complete(services.http, settings.api_base_url, lease.key, settings.image_prompt_model, system,
                            user, min(settings.expansion_timeout, HOUSEKEEPING_SECONDS), max_tokens=200)
        except UpstreamError as exc:
            services.pool.report(lease, exc)
            raise
        except BaseException:
            services.pool.release(lease)
            raise
        services.pool.report(lease, None)
        return wording.redact_secrets(text, settings.secret_values())

    named = model if isinstance(model, str) and model else services.catalog.default()
    answer = conversation.answer(task, ask if settings.api_keys and settings.prompt_expansion else None, model=named)
    log.info("req=%s %s %s task answered without drawing", g.request_id, task.ui, task.kind)
    return chat_answer([answer], stream=stream, model=named[:100], prompt="")


_IMAGE_EXTRAS: dict[str, tuple[type | tuple[type, ...], float, float]] = {
    # SiliconFlow fields passed through when given: (type, lowest, highest)
    "seed": (int, 0, SEED_MAX),
    "num_inference_steps": (int, 1, 100),
    "guidance_scale": ((int, float), 0, 20),
    "cfg": ((int, float), 0.1, 20),
}


@bp.post("/v1/images/generations")
def images_generations() -> Response:
    """The OpenAI Images API, for Open WebUI, Cherry Studio and one-api/new-api channels."""
    services = _services()
    body = _json_object()
    return _images(body, _model(body.get("model"), services), (), services)


_NUMBER_FIELDS = ("n", "seed", "num_inference_steps", "guidance_scale", "cfg")


@bp.post("/v1/images/edits")
def images_edits() -> Response:
    """OpenAI image edits, multipart as `client.images.edit(...)` and Open WebUI send them: the
    picture(s) in `image` or repeated `image[]`, the instruction in `prompt`, then as generations."""
    services = _services()
    settings = services.settings
    limit = _with_pictures_limit(settings)
    if request.mimetype != "multipart/form-data":
        raise ApiError(400, "Send an edit as multipart/form-data: the picture in 'image' (or 'image[]'), the "
                            "instruction in 'prompt'.")
    if not request.mimetype_params.get("boundary"):
        raise ApiError(400, "The Content-Type multipart/form-data has no boundary: let the HTTP client build the "
                            "multipart body (files=… in requests, -F in curl) rather than setting the header by hand.")
    raw = _body(limit)
    try:
        # Text fields (the prompt, the options) are held to MAX_BODY_BYTES together; only files are large.
        _, form, files = FormDataParser(max_form_memory_size=MAX_BODY_BYTES, max_content_length=limit,
                                        max_form_parts=EDIT_FORM_PARTS).parse(
            io.BytesIO(raw), request.mimetype, len(raw), request.mimetype_params)
    except RequestEntityTooLarge:
        raise ApiError(413, f"The edit has more than {EDIT_FORM_PARTS} parts or a text field larger than "
                            f"{MAX_BODY_BYTES // 1024} KB: send the picture(s), the prompt and the options only.") from None
    except (ValueError, HTTPException):
        raise ApiError(400, "The multipart body could not be read: check its boundary and parts.") from None
    del raw  # the parser holds the parts now
    if not form and not files:
        raise ApiError(400, "The multipart body could not be read: no part matched its boundary. Check that the "
                            "body is complete and uses the boundary its Content-Type names.")
    body: dict[str, Any] = {}
    for name, value in form.items():
        body[name] = _number(value) if name in _NUMBER_FIELDS else value
    model = _model(body.get("model"), services, default=services.catalog.default_editor())
    takes = family(model)
    editors = [m for m in services.catalog.models() if family(m).edits][:4]
    if not takes.edits:
        raise ApiError(400, f"'{model}' does not take an input picture. Use a model that edits, such as "
                            f"{', '.join(editors) or 'Qwen/Qwen-Image-Edit-2509'}.", param="model")
    if "mask" in files or "mask" in form:
        raise ApiError(400, f"'mask' is not taken: {model} edits from the prompt alone. Say in the prompt which "
                            "part to change (\"make the sky blue\").", param="mask")
    uploads = files.getlist("image") + files.getlist("image[]")
    if not uploads:
        raise ApiError(400, "'image' is required: the picture to edit, as a file part named image (or image[] for "
                            "several).", param="image")
    if len(uploads) > len(takes.inputs):
        raise ApiError(400, f"'image' holds {len(uploads)} pictures; {model} takes at most {len(takes.inputs)}.",
                       param="image")
    inputs = []
    for number, upload in enumerate(uploads, 1):
        data = upload.read()
        try:
            input_picture(services.session, settings, None, None, data)
        except UploadError:
            name = (upload.filename or "unnamed")[:60]
            if len(data) > settings.max_image_mb * 2**20:
                raise ApiError(413, f"'image' file {number} ({name}) is larger than {settings.max_image_mb:g} MB.",
                               param="image") from None
            raise ApiError(400, f"'image' file {number} ({name}) is not a PNG, JPEG, WebP or GIF picture.",
                           param="image") from None
        inputs.append(conversation.ImageRef(f"image {number}", data=data))
    return _images(body, model, tuple(inputs), services)


def _number(value: str) -> Any:
    """A multipart field's text as the number it spells (the form carries only text)."""
    try:
        return int(value)
    except ValueError:
        try:
            return float(value)
        except ValueError:
            return value


def _images(body: dict[str, Any], model: str, inputs: tuple[conversation.ImageRef, ...], services: Services) -> Response:
    """Generations and edits, once validated: the pictures, as JSON (spaces first when slow)."""
    settings = services.settings
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ApiError(400, "'prompt' is required: a description of the picture.", param="prompt")
    n = body.get("n", 1)
    if n is None:
        n = 1
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= settings.max_images_per_request:
        raise ApiError(400, f"'n' must be a whole number from 1 to {settings.max_images_per_request}.", param="n")
    response_format = body.get("response_format") or "url"
    if response_format not in ("url", "b64_json"):
        raise ApiError(400, "'response_format' must be 'url' or 'b64_json'.", param="response_format")
    wants_expansion = body.get("prompt_expansion", False)
    if not isinstance(wants_expansion, bool):
        raise ApiError(400, "'prompt_expansion' must be true or false.", param="prompt_expansion")
    size = _images_size(body.get("size"), model)
    extras = _images_extras(body)
    negative = body.get("negative_prompt")
    if negative is not None and not isinstance(negative, str):
        raise ApiError(400, "'negative_prompt' must be a string.", param="negative_prompt")
    if banned := find_banned(prompt, settings.banned_keywords):
        raise ApiError(400, f"The prompt contains a word this service does not draw: '{banned}'.",
                       param="prompt", code="content_policy_violation")
    if not settings.api_keys:
        raise ApiError(503, "This service has no upstream keys: its operator must set API_KEYS.", code="no_upstream_keys")
    draw = DrawRequest(prompt=prompt.strip(), count=n, size=size, seed=extras.pop("seed", None),
                       negative_prompt=negative or None)
    job = Job(g.request_id, model, prompt, draw, _public_base(settings), expand=wants_expansion, fields=extras,
              want_bytes=response_format == "b64_json", inputs=inputs)
    log.info("req=%s images model=%s n=%d size=%s format=%s inputs=%d", job.request_id, model, n, size,
             response_format, len(inputs))
    cancelled = threading.Event()
    drawing = services.executor.submit(pipeline.collect, pipeline.draw(job, services, cancelled))

    def result() -> str:
        return dumps(_images_body(drawing.result(), response_format))

    try:
        # Quick answers keep their status codes (400, 429, 503, 502 when no image was made)...
        wait([drawing], timeout=settings.heartbeat_seconds)
        if drawing.done():
            return Response(result(), mimetype="application/json")
    except BaseException:
        cancelled.set()
        raise
    # ...a slow one starts its 200 now and keeps the connection alive until the JSON is ready.
    return Response(_keep_alive_json(drawing, result, settings.heartbeat_seconds, cancelled),
                    mimetype="application/json")


def _keep_alive_json(work: Future, result: Callable[[], str], every: float, cancelled: threading.Event) -> Iterator[str]:
    """A JSON answer that takes long: a space every `every` seconds until it is ready, then the JSON.

    JSON parsers skip leading white space, and the bytes keep reverse proxies (nginx's 60 s,
    Cloudflare's 100 s) from giving up on a quiet connection. The status is 200 by then, so a late
    failure is an OpenAI-shaped `{"error": ...}` body after the spaces.
    """
    try:
        while not wait([work], timeout=every).done:
            yield " "
        try:
            yield result()
        except ApiError as exc:
            yield dumps(error_body(exc.status, exc.message, param=exc.param, code=exc.code))
    finally:
        cancelled.set()


def _images_body(drawn: pipeline.Drawn, response_format: str) -> dict[str, Any]:
    """The Images API answer. Raises ApiError when no image was made, or the expanded prompt was refused."""
    if drawn.refused:
        raise ApiError(400, f"The expanded prompt contains a word this service does not draw: '{drawn.refused}'.",
                       param="prompt", code="content_policy_violation")
    if not drawn.ready:
        raise _images_failure(drawn.failed)
    return images_answer([_image_item(outcome, response_format, drawn.revised) for outcome in drawn.ready])


def _images_size(value: Any, model: str) -> str | None:
    if value in (None, "", "auto"):
        return pick_size(model, None)
    match = re.fullmatch(r"(\d{2,5})x(\d{2,5})", value) if isinstance(value, str) else None
    if not match:
        raise ApiError(400, "'size' must be 'auto' or WIDTHxHEIGHT, like '1024x1024' or '1024x1792'.", param="size")
    return pick_size(model, (int(match[1]), int(match[2])), explicit=True)


def _images_extras(body: dict[str, Any]) -> dict[str, Any]:
    extras = {}
    for name, (kind, low, high) in _IMAGE_EXTRAS.items():
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, kind) or not low <= value <= high:
            raise ApiError(400, f"'{name}' must be a number from {low:g} to {high:g}.", param=name)
        extras[name] = value
    return extras


def _images_failure(failed: list[pipeline.ImageFailed]) -> ApiError:
    """No image was made: one error with a status that says whose problem it is."""
    kinds = {f.kind for f in failed}
    reasons = "; ".join(dict.fromkeys(f.reason or "unknown error" for f in failed))
    if Failure.BAD_REQUEST in kinds:
        return ApiError(400, f"SiliconFlow refused the request: {reasons}", code="upstream_bad_request")
    if kinds == {Failure.RATE_LIMIT}:
        return ApiError(429, f"Every upstream key is rate limited: {reasons}", code="rate_limited")
    if kinds <= {Failure.NO_KEYS, Failure.AUTH, Failure.BALANCE}:
        return ApiError(503, f"No upstream key can draw right now: {reasons}", code="no_usable_keys")
    return ApiError(502, f"SiliconFlow did not deliver an image: {reasons}", code="upstream_error")


def _image_item(outcome: pipeline.Outcome, response_format: str, revised: str | None) -> dict[str, Any]:
    links = outcome.links
    assert links is not None
    if response_format == "url":
        return {"url": links.image, "revised_prompt": revised}
    assert links.picture is not None  # fetched by the image's own worker (Job.want_bytes)
    return {"b64_json": base64.b64encode(links.picture.data).decode(), "revised_prompt": revised}


def _public_base(settings: Settings) -> str | None:
    """Where clients reach this service: PUBLIC_BASE_URL, else what the request (and a proxy) says."""
    if settings.public_base_url:
        return settings.public_base_url
    proto = request.headers.get("X-Forwarded-Proto", request.scheme).split(",")[0].strip() or request.scheme
    # The raw header: werkzeug's request.host is empty for a name with an underscore.
    host = (request.headers.get("X-Forwarded-Host") or request.headers.get("Host") or "").split(",")[0].strip()
    if proto not in ("http", "https") or not _valid_host(host):
        return None
    return f"{proto}://{host}"


_HOST_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_HOST = re.compile(rf"({_HOST_LABEL}(?:\.{_HOST_LABEL})*|\[([0-9a-fA-F:.]+)\])(?::(\d{{1,5}}))?")


def _valid_host(host: str) -> bool:
    """A host[:port] a link can be built from. Underscores are not valid in DNS names, but Docker
    Compose service names have them; a name must have a letter or digit, a port must exist."""
    match = _HOST.fullmatch(host)
    if not match or not any(ch.isalnum() for ch in match[1]):
        return False
    if match[3] and not 0 < int(match[3]) <= 65535:
        return False
    if match[2]:
        try:
            ipaddress.IPv6Address(match[2])
        except ValueError:
            return False
    return True


@bp.get("/images/<path:name>")
def stored_image(name: str) -> Response:
    store = _services().store
    handle = store.open(name) if store else None
    if handle is None:
        raise ApiError(404, "No such image.", code="not_found")
    stem, ext = name.split(".")
    info = os.fstat(handle.fileno())  # of the file opened, not of whatever the path names now
    response = Response(wrap_file(request.environ, handle), mimetype=MIMETYPES[ext], direct_passthrough=True)
    response.content_length = info.st_size
    response.last_modified = info.st_mtime
    response.set_etag(stem)
    response.headers["Cache-Control"] = "public, max-age=31536000, immutable"  # names are content hashes
    return response.make_conditional(request, accept_ranges=True, complete_length=info.st_size)


def _with_pictures_limit(settings: Settings) -> int:
    """Bodies that may carry pictures (chat with image parts, edits): room for three inputs of
    MAX_IMAGE_MB each, base64-encoded, besides the text."""
    return MAX_BODY_BYTES + int(4 * settings.max_image_mb * 2**20)


def _too_large(limit: int) -> ApiError:
    size = f"{limit // 2**20} MB" if limit >= 2**20 else f"{limit // 1024} KB"
    return ApiError(413, f"The request body is larger than {size}.")


def _body(limit: int = MAX_BODY_BYTES) -> bytes | bytearray:
    """The request body, at most `limit` bytes whatever its transfer encoding, within CLIENT_BODY_TIMEOUT.

    A client that sends half a body and waits has its socket dropped then, instead of holding a
    worker's connection for ever. A body over MAX_BODY_BYTES takes its size from the worker's
    PICTURE_BODIES_MB until its answer is closed (ApiError 503 when there is no room); broken
    framing (chunk sizes, extensions, terminators, a body that ends early) is a 400.
    """
    seconds = _services().settings.client_body_timeout
    declared = request.content_length
    if (declared or 0) > limit:
        raise _too_large(limit)
    hold = _hold()
    sock = request.environ.get("gunicorn.socket") or request.environ.get("werkzeug.socket")
    stream = request.stream
    late = ApiError(408, f"The request body did not arrive within {seconds:g} seconds.")
    with deadline(time.monotonic() + seconds) as scope:
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
            raise ApiError(400, "The request body's framing is broken: a chunk size, chunk extension or chunk "
                                "terminator of its chunked encoding is malformed, or the body ended before its "
                                "Content-Length or its last chunk. Send the whole body, with a correct "
                                "Content-Length or valid chunked encoding.") from None
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
        log.warning("req=%s refused: %d MB of large bodies held by this worker (PICTURE_BODIES_MB=%g)",
                    g.request_id, busy.held // 2**20, busy.budget / 2**20)
        raise ApiError(503, f"This worker is busy with other requests carrying large pictures: retry in "
                            f"{RETRY_AFTER_SECONDS} seconds (or send smaller pictures).", code="server_busy",
                       retry_after=RETRY_AFTER_SECONDS) from None


def _json_object(limit: int = MAX_BODY_BYTES) -> dict[str, Any]:
    """The request's JSON object. Past MAX_BODY_BYTES (chat with pictures may go up to `limit`),
    only pictures' data: URIs (bodies.picture_bytes) may make up the difference: the rest (text,
    structure) is what costs memory and time to parse, and stays within MAX_BODY_BYTES."""
    raw = _body(limit)
    if len(raw) > MAX_BODY_BYTES and len(raw) - picture_bytes(raw) > MAX_BODY_BYTES:
        raise ApiError(413, f"The request body is larger than {MAX_BODY_BYTES // 1024} KB besides its pictures' "
                            "data: URIs. Send less text or history.")
    try:
        body = json.loads(raw)
        del raw  # tens of MB with pictures: not held while they are drawn
        # Lone surrogates ("\ud800") parse, but no text with one can be encoded: find them here,
        # not in an upstream call or a log line.
        _check_encodable(body)
    except RecursionError:
        raise ApiError(400, "The request body is nested too deeply to be a chat or image request.") from None
    except UnicodeEncodeError:
        raise ApiError(400, "The request body holds invalid Unicode (an unpaired surrogate escape like "
                            "\\ud800). Send text as valid UTF-8.") from None
    except ValueError as exc:
        if "digits" in str(exc):  # Python refuses integers of more than 4300 digits
            raise ApiError(400, "A number in the request body has too many digits.") from None
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


def _model(value: Any, services: Services, *, default: str | None = None) -> str:
    """The model a request names, or the default. Raises ApiError for one this service does not know.

    Offered: MODELS, else what SiliconFlow lists now. Also taken when MODELS is not set: the
    built-in list, so that a withdrawn model asked for by name reaches SiliconFlow and its answer
    (20012) is said in plain words.
    """
    catalog = services.catalog
    if value is None or value == "":
        return default or catalog.default()
    if not isinstance(value, str):
        raise ApiError(400, "'model' must be a string: one of the ids from GET /v1/models.", param="model")
    offered = catalog.models()
    if value not in offered and (services.settings.models or value not in DEFAULT_MODELS):
        shown = ", ".join(offered[:6]) + (", …" if len(offered) > 6 else "")
        raise ApiError(
            400,
            f"Unknown model '{value[:100]}'. Use one of the ids listed by GET /v1/models ({shown}).",
            param="model",
            code="model_not_found",
        )
    return value


# --- the app ------------------------------------------------------------------------------------


def create_app(settings: Settings | None = None) -> Flask:
    """Build the app. Without `settings`, they are read from the environment (ConfigError if bad)."""
    settings = settings or Settings.from_env()
    _configure_logging(settings.log_level)
    app = Flask(__name__)
    # No MAX_CONTENT_LENGTH: werkzeug's limit silently cuts a chunked body short, so _body() counts.
    app.json.ensure_ascii = False  # type: ignore[attr-defined]
    pool = KeyPool(settings.api_keys, _key_store(settings),
                   limits=[Limit(count, seconds) for count, seconds in settings.image_rate_limit],
                   rest_seconds=settings.rate_limit_rest)
    http = make_http(settings.upstream_workers)
    session = make_session(settings.upstream_workers)
    try:
        store = (ImageStore(settings.image_store_dir, int(settings.image_store_max_mb * 2**20))
                 if settings.image_store_dir else None)
    except OSError as exc:
        raise ConfigError(
            f"invalid configuration:\n  IMAGE_STORE_DIR: cannot create or write to {settings.image_store_dir} "
            f"({exc.strerror or 'error'}); give this service's user write access, or mount a writable volume there"
        ) from None
    app.extensions["siliconflow"] = Services(
        settings=settings,
        pool=pool,
        http=http,
        session=session,
        executor=ThreadPoolExecutor(settings.upstream_workers, thread_name_prefix="upstream"),
        upkeep=Upkeep(
            pool,
            lambda key: account_info(http, settings.api_base_url, key, settings.expansion_timeout),
            settings.key_recheck_seconds,
        ),
        store=store,
        catalog=ModelCatalog(settings.models, lambda: _fetch_models(pool, http, settings),
                             refresh=settings.models_refresh_seconds),
    )
    # Per worker process: gunicorn forks after this, and each worker counts its own.
    app.extensions["siliconflow.bodies"] = BodyBudget(int(settings.picture_bodies_mb * 2**20))
    app.register_blueprint(bp)
    app.register_error_handler(ApiError, _api_error)
    app.teardown_request(_release_unanswered)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected_error)
    _startup_notes(settings)
    return app


def _fetch_models(pool: KeyPool, http: Any, settings: Settings) -> list[str]:
    """SiliconFlow's image models now, asked with any usable key (raises when none, or no answer)."""
    key = pool.peek_key()
    if key is None:
        raise LookupError("no usable key")
    return image_models(http, settings.api_base_url, key, min(settings.expansion_timeout, 10.0))


def _key_store(settings: Settings) -> Store:
    """Redis when REDIS_URL is set (with this instance's local store while it cannot be reached),
    else a local store; a local store's file failing (full, damaged), each process's own memory.
    Made here, before gunicorn forks, so that every worker shares it."""
    local = FallbackStore(LocalStore(), MemoryStore())
    atexit.register(local.remove)
    if not settings.redis_url:
        return local
    return FallbackStore(RedisStore(settings.redis_url), local)


def _api_error(exc: ApiError) -> Response:
    response = error_response(exc.status, exc.message, param=exc.param, code=exc.code)
    if exc.retry_after is not None:
        response.headers["Retry-After"] = str(exc.retry_after)
    return response


def _release_unanswered(_: BaseException | None) -> None:
    """A request whose answer never reached the server (a bug after the body was read) gives its
    hold back here; one that was answered gives it back when the answer is closed."""
    hold = g.get("body_hold")
    if hold is not None and not g.get("body_hold_closes"):
        hold.release()


def _http_error(exc: HTTPException) -> Response:
    messages = {
        404: f"No such endpoint: {request.method} {request.path[:200]}. This service offers "
        "POST /v1/chat/completions, POST /v1/images/generations, GET /v1/models, GET /health and a playground at /.",
        405: f"{request.method} is not allowed on {request.path[:200]}.",
        413: f"The request body is larger than {MAX_BODY_BYTES // 1024} KB.",
    }
    status = exc.code or 400
    return error_response(status, messages.get(status, exc.description or "Bad request."))


def _unexpected_error(exc: Exception) -> Response:
    log.exception("req=%s unexpected error", g.get("request_id", "-"))
    return error_response(500, "Internal error in the image service. It has been logged; please try again.")


def _configure_logging(level: str) -> None:
    log.setLevel(level)
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"))
        log.addHandler(handler)
        log.propagate = False


def _startup_notes(settings: Settings) -> None:
    if not settings.api_key:
        log.warning("API_KEY is not set: this service is open to anyone who can reach it.")
    if not settings.api_keys:
        log.warning("API_KEYS is empty: /health answers, but drawing answers 503 until keys are set.")
    else:
        log.info("%d upstream key(s): %s", len(settings.api_keys), ", ".join(mask_key(k) for k in settings.api_keys))
    limits = ", ".join(f"{count}/{seconds:g}s" for count, seconds in settings.image_rate_limit)
    log.info("Image calls per account and model: %s; keys are shared by %s.",
             limits or f"learned from 429s (an account rests {settings.rate_limit_rest:g}s after one)",
             "Redis" if settings.redis_url else "this instance's workers")
    hosts = [name for on, name in ((settings.use_lsky_pro, "Lsky Pro"), (settings.image_store_dir, "the built-in store"))
             if on]
    log.info("Images are kept by: %s.", " then ".join(hosts) if hosts else "nobody (upstream links expire in 1 hour)")


def _app_from_environment() -> Flask:
    from dotenv import find_dotenv, load_dotenv

    # A .env in the working directory (or above it) first, then the one beside this file.
    # Variables already set in the environment win over both.
    load_dotenv(find_dotenv(usecwd=True) or Path(__file__).with_name(".env"))
    try:
        return create_app()
    except ConfigError as exc:
        # One clear message instead of a traceback; gunicorn then stops with "Worker failed to boot".
        print(f"siliconflow_proxy: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


_app: Flask | None = None


def __getattr__(name: str) -> Any:
    """`siliconflow_proxy.app`, built on first access, for `gunicorn siliconflow_proxy:app`."""
    global _app
    if name != "app":
        raise AttributeError(name)
    if _app is None:
        _app = _app_from_environment()
    return _app


if __name__ == "__main__":
    application = _app_from_environment()
    # Development server; deployments run gunicorn as the Procfile does.
    application.run(host="0.0.0.0", port=application.extensions["siliconflow"].settings.port, threaded=True)
