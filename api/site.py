"""The service's own small routes: authentication (the service key, user keys), CORS, the
playground page, `/health`, `/v1/models` and the kept pictures at `/images/`. What every surface
asks of a request is in context.py; error answers in errors.py."""

from __future__ import annotations

import hmac
import json
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, g, request
from werkzeug.wsgi import wrap_file

from api.context import current, is_admin, json_response
from api.errors import error_response
from api.wire import model_list
from core import metrics
from core.errors import ApiError, Reason, UploadError
from drawing.chat_words import IMAGE_MARK, VIDEO_MARK
from drawing.pipeline import Services
from drawing.reasons import en
from storage import user_keys
from storage.keeping import Reading
from storage.pictures import CACHE_FOREVER, STORED_NAME, Keeper, Kept

bp = Blueprint("web", __name__)


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
    from the words (drawing/reasons.py), so the two cannot drift apart."""
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


@bp.get("/images/<path:name>")
def stored_image(name: str) -> Response:
    """A kept picture, from whichever keeper holds them (the disk, or the bucket: any instance
    answers for any picture). Names are content hashes or promised names: each always means the
    same bytes, so a client that has it is answered 304 without asking the keeper.

    A picture still being kept (its link was shown the moment SiliconFlow answered) is served as
    it arrives (storage/keeping.py); one whose keep failed sends people to SiliconFlow's link
    while it lasts; in a bucket another instance is still filling, it is waited for briefly."""
    services = current()
    store = services.store
    if store is None or not STORED_NAME.fullmatch(name):
        raise ApiError(404, "No such image.", code="not_found")
    stem = name.split(".")[0]
    if stem in request.if_none_match:
        response = Response(status=304)
        response.set_etag(stem)
        response.headers["Cache-Control"] = CACHE_FOREVER
        return response
    # Being kept here first: its bytes are on this instance's disk, and the store may be failing.
    reading = services.keeping.read(name) if services.keeping is not None else None
    if reading is not None:
        return _reading_response(stem, reading)
    kept = _open_kept(store, name)
    if kept is None and store.kind == "s3":
        kept = _wait_for_object(store, name)
    if kept is None:
        raise ApiError(404, "No such image.", code="not_found")
    response = Response(wrap_file(request.environ, kept.body), mimetype=kept.content_type, direct_passthrough=True)
    response.headers["X-Content-Type-Options"] = "nosniff"  # a picture is shown as a picture, never run as a page
    response.content_length = kept.size
    if kept.modified is not None:
        response.last_modified = kept.modified
    response.set_etag(stem)
    response.headers["Cache-Control"] = CACHE_FOREVER
    return response.make_conditional(request, accept_ranges=kept.seekable, complete_length=kept.size if kept.seekable else None)


def _open_kept(store: Keeper, name: str) -> Kept | None:
    try:
        return store.open(name)
    except UploadError as exc:
        message = f"The image store cannot be reached now ({en(exc.reason)}). Try again shortly."
        raise ApiError(503, message, code="store_unavailable", retry_after=10) from None


def _reading_response(stem: str, reading: Reading) -> Response:
    """A picture being kept, as it arrives; or a redirect to SiliconFlow's link when its keep failed."""
    if reading.chunks is None:
        if not reading.elsewhere:
            raise ApiError(404, "No such image.", code="not_found")
        response = Response(status=302, headers={"Location": reading.elsewhere, "Cache-Control": "no-store"})
        return response
    response = Response(reading.chunks, mimetype=reading.content_type, direct_passthrough=True)
    response.headers["X-Content-Type-Options"] = "nosniff"
    if reading.length is not None:
        response.content_length = reading.length  # a keep that fails part-way is then a cut answer
    response.set_etag(stem)
    response.headers["Cache-Control"] = CACHE_FOREVER  # the same bytes the store will hold
    return response


# At most this many requests per worker wait for a picture another instance is keeping: names
# nobody promised cannot hold the worker's threads.
_WAITERS = threading.BoundedSemaphore(8)
OBJECT_WAIT_SECONDS = 5.0


def _wait_for_object(store: Keeper, name: str) -> Kept | None:
    """In a bucket shared by instances, a picture another instance has promised appears once kept."""
    if not _WAITERS.acquire(blocking=False):
        return None
    try:
        deadline = time.monotonic() + OBJECT_WAIT_SECONDS
        while time.monotonic() < deadline:
            threading.Event().wait(0.25)  # waiting for another instance's upload, not pacing an answer
            if (kept := _open_kept(store, name)) is not None:
                return kept
        return None
    finally:
        _WAITERS.release()
