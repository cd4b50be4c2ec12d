"""What every surface asks of a request: the services, the caller's quota and what a picture
costs them, the model a request names, where this service is reached, whether it may draw, and
JSON answers (spaces before a slow one)."""

from __future__ import annotations

import hmac
import ipaddress
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

from flask import Response, current_app, g, request

from api.wire import dumps, error_body
from config import Settings
from core.errors import ApiError
from drawing.pipeline import Services
from parsing import find_banned
from siliconflow.families import DEFAULT_MODELS, DEFAULT_VIDEO_MODELS
from storage import user_keys


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


def current() -> Services:
    return current_app.extensions["siliconflow"]


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
    """The model a request names (an alias of MODEL_ALIASES: the model it stands for), or the
    default. Raises ApiError for one this service does not know.

    Offered: MODELS, else what SiliconFlow lists now. Also taken when MODELS is not set: the
    built-in list, so that a withdrawn model asked for by name reaches SiliconFlow and its answer
    (20012) is said in plain words.
    """
    catalog = services.catalog
    if value is None or value == "":
        return default or catalog.default()
    if not isinstance(value, str):
        raise ApiError(400, "'model' must be a string: one of the ids from GET /v1/models.", param="model")
    model = services.settings.aliases.get(value, value)
    offered = catalog.models()
    if model not in offered and (services.settings.models or model not in (*DEFAULT_MODELS, *DEFAULT_VIDEO_MODELS)):
        shown = ", ".join(offered[:6]) + (", …" if len(offered) > 6 else "")
        if model != value:
            raise ApiError(
                400,
                f"'{value}' stands for '{model}' here (MODEL_ALIASES), which this service does not offer now. "
                f"Use one of the ids listed by GET /v1/models ({shown}).",
                param="model",
                code="model_not_found",
            )
        raise ApiError(
            400,
            f"Unknown model '{value[:100]}'. Use one of the ids listed by GET /v1/models ({shown}).",
            param="model",
            code="model_not_found",
        )
    return model


def is_alias(value: Any, services: Services) -> bool:
    """The request named its model by an alias (MODEL_ALIASES: OpenAI's names): the route may pick
    the model of the same kind that fits what is asked (an edit, a video from a picture)."""
    return isinstance(value, str) and value in services.settings.aliases
