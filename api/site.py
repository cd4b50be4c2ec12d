"""The service's own small routes and what every surface asks of a request.

Authentication (the service key), CORS, the playground page, `/health`, `/v1/models`, the stored
images; and, for the surfaces (chat_api.py, images_api.py): the services, the model a request
names, where this service is reached, and the JSON and error answers.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import re
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, current_app, g, request
from werkzeug.wsgi import wrap_file

from api.wire import dumps, error_body, model_list
from config import Settings
from core import metrics
from core.errors import ApiError, Reason, UploadError
from drawing.pipeline import Services
from drawing.wording import IMAGE_MARK, VIDEO_MARK, en
from parsing import find_banned
from siliconflow.families import DEFAULT_MODELS, DEFAULT_VIDEO_MODELS
from storage import user_keys
from storage.pictures import CACHE_FOREVER, STORED_NAME

bp = Blueprint("web", __name__)


def json_response(obj: Any, status: int = 200) -> Response:
    return Response(dumps(obj), status=status, mimetype="application/json")


def spaces_before_json(work: Iterator[None], answer: Callable[[], str]) -> Iterator[str]:
    """A JSON answer that may take long: a space for each keep-alive `work` yields while it runs,
    then `answer()`, the JSON. The one such streamer, for chat and the Images API alike.

    JSON parsers skip leading white space, and the bytes keep reverse proxies (nginx's 60 s,
    Cloudflare's 100 s) from giving up on a quiet connection. The status is 200 by then, so a late
    failure is an OpenAI-shaped `{"error": ...}` body after the spaces.
    """
    try:
        for _ in work:
            yield " "
        try:
            yield answer()
        except ApiError as exc:
            yield dumps(error_body(exc.status, exc.message, param=exc.param, code=exc.code))
    finally:
        work.close()  # type: ignore[attr-defined]  # the client left: the drawing stops


def error_response(status: int, message: str, *, param: str | None = None, code: str | None = None) -> Response:
    """The one OpenAI-shaped error answer (openai_wire.error_body) every 4xx/5xx gets."""
    return json_response(error_body(status, message, param=param, code=code), status)


def current() -> Services:
    return current_app.extensions["siliconflow"]


@bp.before_app_request
def _authenticate() -> Response | None:
    g.request_id = uuid.uuid4().hex[:12]
    services = current()
    services.upkeep.ensure_running()
    if services.videos is not None:
        services.videos.ensure_running()
    settings = services.settings
    g.user = None  # a user key's record (quotas), None for the operator's shared API_KEY
    if not request.path.startswith("/v1/") or request.method == "OPTIONS":
        return None  # a CORS preflight carries no credentials; /admin checks ADMIN_KEY itself
    if not settings.api_key and services.users is None:
        return None  # no key configured: open (the start-up log says so)
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip() if scheme.lower() == "bearer" else ""
    if settings.api_key and hmac.compare_digest(token.encode(), settings.api_key.encode()):
        return None
    if services.users is not None and token.startswith(user_keys.PREFIX):
        key = services.users.by_hash(user_keys.secret_hash(token))
        if key is not None and not key.disabled:
            g.user = key
            services.users.touch(key)
            return None
        if key is not None:
            return error_response(401, "This key has been disabled by the service's operator.", code="key_disabled")
        message = "This key has been revoked, or never existed. Ask the service's operator for a key."
        return error_response(401, message, code="invalid_api_key")
    return error_response(
        401,
        "Incorrect API key provided. Send your key as 'Authorization: Bearer <key>'.",
        code="invalid_api_key",
    )


def is_admin(admin_key: str) -> bool:
    """The request carries the operator's key as a bearer header (compared in constant time)."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), admin_key.encode())


def on_drawn() -> Callable[[str, str], None] | None:
    """The Meter's `on_drawn` for this request: what each picture costs, recorded for the caller's
    user key (None: the operator's key, an open service). None without ADMIN_KEY (no ledger)."""
    spend, user = current().spend, g.get("user")
    return spend.for_user(user.id if user is not None else None) if spend is not None else None


def take_quota(kind: str, wanted: int, *, partial: bool) -> user_keys.Reservation | None:
    """Reserve `wanted` pictures (or videos) of the caller's daily quota before anything is drawn
    (with no cap too: the use is counted). None for the operator's key. Past the quota, or for a
    key whose cap is 0: 429 `insufficient_quota` saying why. With `partial` (chat), fewer than asked
    may be granted; else all or a 429."""
    services, user = current(), g.get("user")
    if user is None or services.users is None:
        return None
    cap = user.cap(kind)
    day, today = services.day, services.day.today()  # once: a refund goes to the day it was taken from
    granted = services.users.reserve(user.id, today, kind, wanted, cap)
    reservation = user_keys.Reservation(services.users, user.id, today, kind, granted)
    if granted == wanted or (partial and granted > 0):
        return reservation
    reservation.settle(0)
    what = "pictures" if kind == "images" else "videos"
    if not cap:  # 0: none allowed (None never gets here: no cap grants all)
        raise ApiError(
            429,
            f"This key may not make {what}: its daily cap for {what} is 0. Ask the service's operator.",
            code="insufficient_quota",
        )
    left = max(0, cap - services.users.used(user.id, today).get(kind, 0))
    said = f"{wanted} asked, only {left} left today" if left else "it is used up"
    raise ApiError(
        429,
        f"This key's daily quota is {cap} {what}, and {said}. It resets at {day.label()}, "
        f"in {_hours(day.resets_at() - time.time())}.",
        code="insufficient_quota",
    )


def _hours(seconds: float) -> str:
    hours, minutes = divmod(max(0, int(seconds)) // 60, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min"


@bp.after_app_request
def _count(response: Response) -> Response:
    rule = request.url_rule.rule if request.url_rule is not None else "unmatched"
    metrics.request(rule, response.status_code)
    return response


@bp.after_app_request
def _cors(response: Response) -> Response:
    """CORS for browser clients (the OpenAI JS SDK, web chat UIs) as CORS_ORIGINS allows."""
    allowed = current().settings.cors_origins
    origin = request.headers.get("Origin")
    if not allowed or not origin or request.path.startswith("/admin") or request.path == "/metrics":
        return response  # the operator's routes are for the operator's page, on this origin
    if "*" in allowed:
        response.headers["Access-Control-Allow-Origin"] = "*"
    elif origin in allowed:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.vary.add("Origin")
    else:
        return response
    if request.method == "OPTIONS":
        response.headers["Access-Control-Allow-Methods"] = "GET, POST, DELETE, OPTIONS"
        # The JS SDK sends Authorization, Content-Type and a dozen x-stainless-* headers: allow
        # what the preflight asks for rather than a list that drifts with SDK versions.
        response.headers["Access-Control-Allow-Headers"] = request.headers.get(
            "Access-Control-Request-Headers", "Authorization, Content-Type"
        )
        response.headers["Access-Control-Max-Age"] = "86400"
    return response


PLAYGROUND = Path(__file__).resolve().parent.parent / "static" / "playground.html"


@bp.get("/")
def playground() -> Response:
    """A page to try the service in a browser: what people landing on a HuggingFace Space expect.

    The page finds the pictures in an answer by the answer's own image marker, given to it here
    from the wording layer, so the two cannot drift apart."""
    page = (
        PLAYGROUND.read_text(encoding="utf-8")
        .replace('"__IMAGE_MARK__"', json.dumps(IMAGE_MARK))
        .replace('"__VIDEO_MARK__"', json.dumps(VIDEO_MARK))
    )
    response = Response(page, mimetype="text/html")
    response.cache_control.max_age = 300
    return response


@bp.get("/health")
def health() -> Response:
    """The pool without key material: keys and accounts by state, the store shared, the line.

    With an operator (ADMIN_KEY), a stranger is told the status alone, which is what a load
    balancer or a platform's health check reads (200 and "ok" or "degraded"); where the data
    lives, the bucket, the keys' counts and why a store fails are for the admin key."""
    services = current()
    pool = services.pool
    store = pool.store.describe()
    pictures = health_of_pictures(services)
    # degraded: the shared key state failed and this process draws on from its own (see "store"),
    # or pictures cannot be kept now (see "pictures")
    status = "ok" if store.get("reachable", True) and pictures["state"] != "failing" else "degraded"
    if services.settings.admin_key and not is_admin(services.settings.admin_key):
        return json_response({"status": status})
    body = {
        "status": status,
        **pool.summary(),
        "balances": balances_words(services),
        "rate_limit": ",".join(str(limit) for limit in pool.configured_limits) or "learned from 429s",
        "store": store,
        "pictures": pictures,
        "queue": {"waiting_in_this_worker": pool.queue.waiting()},
    }
    return json_response(body)


def balances_words(services: Services) -> str:
    """What SiliconFlow tells of accounts and balances, in words for /health and the page."""
    if services.upkeep.gone:
        return (
            "SiliconFlow no longer tells accounts or balances (/v1/user/info is gone): accounts are the ones declared "
            "as NAME/key in API_KEYS or on the operator's page, and a key refused for balance rests, "
            "then is tried again by a real call"
        )
    return "learned from SiliconFlow's /v1/user/info, where it answers; accounts declared as NAME/key come first"


def health_of_pictures(services: Services) -> dict[str, Any]:
    """Who keeps the pictures, and whether it works now (its reason in English)."""
    pictures = services.store.describe() if services.store else {"kind": "none", "state": "off"}
    if isinstance(pictures.get("why"), Reason):
        pictures = {**pictures, "why": en(pictures["why"])}
    return pictures


@bp.get("/v1/models")
def list_models() -> Response:
    return json_response(model_list(current().catalog.models()))


def public_base(settings: Settings) -> str | None:
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
    """A kept picture, from whichever keeper holds them (the disk, or the bucket: any instance
    answers for any picture). Names are content hashes: a client that has it is answered 304
    without asking the keeper."""
    store = current().store
    if store is None or not STORED_NAME.fullmatch(name):
        raise ApiError(404, "No such image.", code="not_found")
    stem = name.split(".")[0]
    if stem in request.if_none_match:
        response = Response(status=304)
        response.set_etag(stem)
        response.headers["Cache-Control"] = CACHE_FOREVER
        return response
    try:
        kept = store.open(name)
    except UploadError as exc:
        message = f"The image store cannot be reached now ({en(exc.reason)}). Try again shortly."
        raise ApiError(503, message, code="store_unavailable", retry_after=10) from None
    if kept is None:
        raise ApiError(404, "No such image.", code="not_found")
    response = Response(wrap_file(request.environ, kept.body), mimetype=kept.content_type, direct_passthrough=True)
    response.content_length = kept.size
    if kept.modified is not None:
        response.last_modified = kept.modified
    response.set_etag(stem)
    response.headers["Cache-Control"] = CACHE_FOREVER
    return response.make_conditional(request, accept_ranges=kept.seekable, complete_length=kept.size if kept.seekable else None)


def has_keys(services: Services) -> None:
    """A 503 when no upstream key may draw (none configured, or every one disabled)."""
    if not len(services.pool):
        raise ApiError(
            503,
            "This service has no upstream keys: its operator must add some (API_KEYS, or the operator's page).",
            code="no_upstream_keys",
        )


def can_draw(prompt: str, services: Services) -> None:
    """The checks every drawing surface makes before anything is sent (English 400 / 503)."""
    settings = services.settings
    if banned := find_banned(prompt, settings.banned_keywords):
        raise ApiError(
            400,
            f"The prompt contains a word this service does not draw: '{banned}'.",
            param="prompt",
            code="content_policy_violation",
        )
    has_keys(services)


def resolve_model(value: Any, services: Services, *, default: str | None = None) -> str:
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
    if value not in offered and (services.settings.models or value not in (*DEFAULT_MODELS, *DEFAULT_VIDEO_MODELS)):
        shown = ", ".join(offered[:6]) + (", …" if len(offered) > 6 else "")
        raise ApiError(
            400,
            f"Unknown model '{value[:100]}'. Use one of the ids listed by GET /v1/models ({shown}).",
            param="model",
            code="model_not_found",
        )
    return value
