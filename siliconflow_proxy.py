"""The Flask app: OpenAI-compatible chat completions that draw pictures with SiliconFlow.

`create_app(settings)` builds an app; tests build their own. The module-level `app` that
`gunicorn siliconflow_proxy:app` asks for is made on first access (see `__getattr__` below), so
importing this module never reads `.env` or the environment.
"""

from __future__ import annotations

import atexit
import base64
import hmac
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
from pathlib import Path
from typing import Any

from flask import Blueprint, Flask, Response, current_app, g, request, send_file
from werkzeug.exceptions import HTTPException
from werkzeug.wsgi import wrap_file

from config import ConfigError, Settings
from drawing import INLINE_ONLY, Drawn, Job, KeepAlive, Outcome, Services, answer, draw_for_api, guarded
from keypool import KeyPool, Upkeep
from keystores import FallbackStore, Limit, LocalStore, RedisStore, Store
from outbound import deadline, make_http, make_session
from parsing import SEED_MAX, DrawRequest, find_banned, parse, pick_size
from uploaders import MIMETYPES, ImageStore
from upstream import Failure, account_info, mask_key

log = logging.getLogger("siliconflow_proxy")

MAX_BODY_BYTES = 1 << 20
MODEL_CREATED = 1_700_000_000  # the typed clients need an int; SiliconFlow itself answers 0


class ApiError(Exception):
    """An error answered as OpenAI-shaped JSON by `error_response`."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


_ERROR_TYPES = {401: "invalid_request_error", 403: "permission_error", 429: "rate_limit_error"}


def _error_body(status: int, message: str, *, param: str | None = None, code: str | None = None) -> dict:
    """The one shape of every error this service answers, as the OpenAI clients parse it."""
    kind = _ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def error_response(status: int, message: str, *, param: str | None = None, code: str | None = None) -> Response:
    return Response(_dumps(_error_body(status, message, param=param, code=code)), status=status,
                    mimetype="application/json")


# --- wire format -------------------------------------------------------------------------------


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def chunk(completion_id: str, created: int, model: str, delta: dict[str, Any], finish: str | None = None) -> dict:
    """One `chat.completion.chunk`."""
    return {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
    }


def sse(payload: dict | str) -> str:
    """One server-sent event. Modern clients dispatch an event only on the blank line."""
    return f"data: {payload if isinstance(payload, str) else _dumps(payload)}\n\n"


def completion(completion_id: str, created: int, model: str, prompt: str, content: str) -> dict:
    """A whole non-stream `chat.completion`."""
    prompt_tokens, completion_tokens = _tokens(prompt), _tokens(content)
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def _tokens(text: str) -> int:
    """A rough token count for `usage`: a CJK character or about four other bytes per token."""
    cjk = sum(1 for ch in text if ord(ch) > 0x2E80)
    return cjk + (len(text) - cjk + 3) // 4


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
    body = {
        "status": "ok",
        **pool.summary(),
        "rate_limit": ",".join(str(limit) for limit in pool.configured_limits) or "learned from 429s",
        "store": pool.store.describe(),
        "queue": {"waiting_in_this_worker": pool.queue.waiting()},
    }
    return Response(_dumps(body), mimetype="application/json")


@bp.get("/v1/models")
def list_models() -> Response:
    models = [
        {"id": m, "object": "model", "created": MODEL_CREATED, "owned_by": m.split("/")[0] if "/" in m else "siliconflow"}
        for m in _services().settings.models
    ]
    return Response(_dumps({"object": "list", "data": models}), mimetype="application/json")


@bp.post("/v1/chat/completions")
def chat_completions() -> Response:
    services = _services()
    settings = services.settings
    body = _json_object()
    stream = body.get("stream", False)
    if stream is not None and not isinstance(stream, bool):
        raise ApiError(400, "'stream' must be true or false.", param="stream")
    model = _model(body.get("model"), settings)
    text = drawing_text(body.get("messages"))
    if not settings.api_keys:
        raise ApiError(503, "This service has no upstream keys: its operator must set API_KEYS.", code="no_upstream_keys")

    job = Job(g.request_id, model, text, parse(text, model, settings.max_images_per_request), _public_base(settings))
    log.info(
        "req=%s chat model=%s images=%d size=%s stream=%s",
        job.request_id, model, job.draw.count, job.draw.size, bool(stream),
    )
    completion_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    if not stream:

        def whole() -> Iterator[str]:
            parts = []
            for event in guarded(answer(job, services), job.request_id):
                if isinstance(event, KeepAlive):
                    yield " "  # see _keep_alive_json
                else:
                    parts.append(event)
            yield _dumps(completion(completion_id, created, model, text, "".join(parts)))

        return Response(whole(), mimetype="application/json")

    def events() -> Iterator[str]:
        yield sse(chunk(completion_id, created, model, {"role": "assistant", "content": ""}))
        for event in guarded(answer(job, services), job.request_id):
            if isinstance(event, KeepAlive):
                # A comment line: ignored by the clients, but it keeps proxies (nginx 60 s,
                # Cloudflare 100 s) from cutting a quiet stream, and shows us a client that left.
                yield ": keep-alive\n\n"
            else:
                yield sse(chunk(completion_id, created, model, {"content": event}))
        yield sse(chunk(completion_id, created, model, {}, "stop"))
        yield sse("[DONE]")

    return Response(
        events(),
        mimetype="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


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
    settings = services.settings
    body = _json_object()
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ApiError(400, "'prompt' is required: a description of the picture.", param="prompt")
    model = _model(body.get("model"), settings)
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
    job = Job(g.request_id, model, prompt, draw, _public_base(settings), want_bytes=response_format == "b64_json")
    log.info("req=%s images model=%s n=%d size=%s format=%s", job.request_id, model, n, size, response_format)
    cancelled = threading.Event()
    drawing = services.executor.submit(draw_for_api, job, extras, services, expand_first=wants_expansion,
                                       cancelled=cancelled)

    def result() -> str:
        return _dumps(_images_body(drawing.result(), response_format, services))

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
            yield _dumps(_error_body(exc.status, exc.message, param=exc.param, code=exc.code))
    finally:
        cancelled.set()


def _images_body(drawn: Drawn, response_format: str, services: Services) -> dict[str, Any]:
    """The Images API answer. Raises ApiError when no image was made, or the expanded prompt was refused."""
    if drawn.refused:
        raise ApiError(400, f"The expanded prompt contains a word this service does not draw: '{drawn.refused}'.",
                       param="prompt", code="content_policy_violation")
    made = [o for o in drawn.outcomes
            if o.links and (o.links.picture if response_format == "b64_json" else o.links.showable)]
    if not made:
        raise _images_failure(drawn.outcomes, response_format)
    return {"created": int(time.time()), "data": [_image_item(o, response_format, drawn.revised) for o in made]}


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


def _images_failure(outcomes: list[Outcome], response_format: str) -> ApiError:
    """No image was made: one error with a status that says whose problem it is."""
    kinds = {o.kind for o in outcomes}  # Failure values
    reasons = "; ".join(dict.fromkeys(
        o.error or ("; ".join(o.links.notes) if o.links and o.links.notes else
                    INLINE_ONLY + " (or ask for response_format b64_json)" if o.links else "unknown error")
        for o in outcomes
    ))
    if Failure.BAD_REQUEST in kinds:
        return ApiError(400, f"SiliconFlow refused the request: {reasons}", code="upstream_bad_request")
    if kinds == {Failure.RATE_LIMIT}:
        return ApiError(429, f"Every upstream key is rate limited: {reasons}", code="rate_limited")
    if kinds <= {Failure.NO_KEYS, Failure.AUTH, Failure.BALANCE}:
        return ApiError(503, f"No upstream key can draw right now: {reasons}", code="no_usable_keys")
    return ApiError(502, f"SiliconFlow did not deliver an image: {reasons}", code="upstream_error")


def _image_item(outcome: Outcome, response_format: str, revised: str | None) -> dict[str, Any]:
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


def _body() -> bytes:
    """The request body, at most MAX_BODY_BYTES whatever its transfer encoding, within CLIENT_BODY_TIMEOUT.

    A client that sends half a body and waits has its socket dropped then, instead of holding a
    worker's connection for ever.
    """
    seconds = _services().settings.client_body_timeout
    if (request.content_length or 0) > MAX_BODY_BYTES:
        raise ApiError(413, f"The request body is larger than {MAX_BODY_BYTES // 1024} KB.")
    sock = request.environ.get("gunicorn.socket") or request.environ.get("werkzeug.socket")
    with deadline(time.monotonic() + seconds) as scope:
        if sock is not None:
            scope.watch(sock)
        try:
            raw = request.stream.read(MAX_BODY_BYTES + 1)
        except (OSError, ValueError):
            raw = None
        if scope.expired or raw is None:
            raise ApiError(408, f"The request body did not arrive within {seconds:g} seconds.")
    if len(raw) > MAX_BODY_BYTES:
        raise ApiError(413, f"The request body is larger than {MAX_BODY_BYTES // 1024} KB.")
    return raw


def _json_object() -> dict[str, Any]:
    raw = _body()
    try:
        body = json.loads(raw)
        # Lone surrogates ("\ud800") parse, but no text with one can be encoded: find them here,
        # not in an upstream call or a log line.
        json.dumps(body, ensure_ascii=False).encode()
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


def _model(value: Any, settings: Settings) -> str:
    if value is None or value == "":
        return settings.models[0]
    if not isinstance(value, str):
        raise ApiError(400, "'model' must be a string: one of the ids from GET /v1/models.", param="model")
    if value not in settings.models:
        shown = ", ".join(settings.models[:6]) + (", …" if len(settings.models) > 6 else "")
        raise ApiError(
            400,
            f"Unknown model '{value[:100]}'. Use one of the ids listed by GET /v1/models ({shown}).",
            param="model",
            code="model_not_found",
        )
    return value


def drawing_text(messages: Any) -> str:
    """The text to draw from: the current turn's user messages.

    Chat UIs resend the whole history; earlier turns were already answered, so only the
    messages after the last assistant reply count. User messages are preferred over system
    ones (a UI's system prompt is not something to draw). Raises ApiError for bad shapes.
    """
    if messages is None:
        example = '[{"role": "user", "content": "画一只猫"}]'
        raise ApiError(400, f"'messages' is required: a list like {example}.", param="messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty list of {\"role\", \"content\"} objects.", param="messages")
    turn: list[tuple[str, str]] = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise ApiError(400, f"messages[{i}] must be an object with a 'role' string and a 'content'.", param="messages")
        role = message["role"]
        if role == "assistant":
            turn = []
            continue
        turn.append((role, _message_text(message.get("content"), i)))
    user_texts = [text for role, text in turn if role == "user" and text.strip()]
    texts = user_texts or [text for _, text in turn if text.strip()]
    text = "\n".join(texts).strip()
    if not text:
        raise ApiError(
            400,
            "Nothing to draw: the last user message has no text. Describe the picture, e.g. '画一只可爱的猫咪，9:16比例 pic:2'.",
            param="messages",
        )
    return text


def _message_text(content: Any, index: int) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):
        return "\n".join(
            part["text"] for part in content
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
        )
    raise ApiError(400, f"messages[{index}].content must be a string or a list of content parts.", param="messages")


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
    )
    app.register_blueprint(bp)
    app.register_error_handler(ApiError, lambda e: error_response(e.status, e.message, param=e.param, code=e.code))
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected_error)
    _startup_notes(settings)
    return app


def _key_store(settings: Settings) -> Store:
    """Redis when REDIS_URL is set (with this instance's local store while it cannot be reached),
    else a local store. Made here, before gunicorn forks, so that every worker shares it."""
    local = LocalStore()
    atexit.register(local.remove)
    if not settings.redis_url:
        return local
    return FallbackStore(RedisStore(settings.redis_url), local)


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
