"""The operator's surface, only with ADMIN_KEY: the user keys API (`/admin/api/keys`), an overview
for the page (`/admin/api/overview`), what pictures cost (`/admin/api/spend`, estimated from the price
table: ledger.py), the page itself (`/admin`) and Prometheus metrics (`/metrics`).

A key's daily caps (`daily_images`, `daily_videos`) are null (no cap), 0 (none allowed) or N; a key
made with a picture cap and no word on videos makes no videos.

The admin key travels as a bearer header only (never in a URL), is compared in constant time and
is never logged; admin actions are logged with the key's id and name, never a secret. English.
"""

from __future__ import annotations

import hmac
import logging
import time
import unicodedata
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, g, request

from api import context, site
from api.bodies import json_object
from config import ACCOUNT_NAME, key_entries, split_key_entry
from core import metrics
from core.errors import ApiError, Failure, UpstreamError
from core.text import mask_key
from drawing.reasons import en
from siliconflow.client import image_models
from siliconflow.leases import Lease, key_id, mask_account
from siliconflow.prices import PRICES_AS_OF, yuan
from storage import ledger, user_keys
from storage.upstream_keys import ENV, Roster, UpstreamKey
from storage.upstream_keys import PAGE as FROM_PAGE

log = logging.getLogger("siliconflow_proxy")

bp = Blueprint("admin", __name__)
PAGE = Path(__file__).resolve().parent.parent / "static" / "admin.html"


@bp.before_request
def _operator_only() -> None:
    services = context.current()
    admin_key = services.settings.admin_key
    if not admin_key or services.users is None:
        raise ApiError(404, "No such endpoint: the operator's page and API exist only when ADMIN_KEY is set.", code="not_found")
    if request.method == "OPTIONS" or request.path == "/admin":
        return  # the page asks for the key itself and sends it as a bearer header
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(
            401, "The admin API needs the operator's key: 'Authorization: Bearer <ADMIN_KEY>'.", code="admin_key_missing"
        )
    if not hmac.compare_digest(token.strip().encode(), admin_key.encode()):
        raise ApiError(
            403, "That is not the admin key. User keys and the service key cannot use the admin API.", code="admin_key_wrong"
        )


@bp.get("/admin")
def page() -> Response:
    response = Response(PAGE.read_text(encoding="utf-8"), mimetype="text/html")
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Content-Security-Policy"] = (
        "default-src 'self'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'"
    )
    return response


CAPS = {"daily_images": "pictures", "daily_videos": "videos"}


def _cap(body: dict[str, Any], name: str) -> int | None:
    """A daily cap as sent (the field present): a whole number, 0 for none allowed, or null for no cap."""
    value = body[name]
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 1_000_000:
        raise ApiError(
            400,
            f"'{name}' must be a whole number of {CAPS[name]} a day from 0 (none) to 1000000, or null for no cap.",
            param=name,
        )
    return value


def _said(cap: int | None) -> str:
    return "no cap" if cap is None else "none" if cap == 0 else str(cap)


def _name(body: dict[str, Any], required: bool) -> str | None:
    name = body.get("name")
    if name is None and not required:
        return None
    if not isinstance(name, str) or not name.strip() or len(name) > 80:
        raise ApiError(400, "'name' is required: who the key is for, at most 80 characters.", param="name")
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Zl", "Zp") for ch in name):
        raise ApiError(400, "'name' must be plain text: no line breaks or control characters.", param="name")
    return name.strip()


def _shown(key: user_keys.UserKey) -> dict[str, Any]:
    services = context.current()
    day = services.day
    today, total = _spent().get(key.id, (0, 0))
    shown = key.public(services.users.used(key.id, day.today()), day.resets_at())
    return shown | {"spend_today": yuan(today), "spend_total": yuan(total)}


def _key(key_id: str) -> user_keys.UserKey:
    key = context.current().users.get(key_id) if len(key_id) <= 40 else None
    if key is None:
        raise ApiError(404, f"No user key with id '{key_id[:40]}'.", code="not_found")
    return key


@bp.post("/admin/api/keys")
def create_key() -> Response:
    body = json_object()
    name = _name(body, True) or ""
    images = _cap(body, "daily_images") if "daily_images" in body else None
    # A key capped on pictures and silent on videos makes no videos: a video costs about ten pictures,
    # and a cap the operator did not write must not be "no cap".
    videos = _cap(body, "daily_videos") if "daily_videos" in body else (None if images is None else 0)
    key, secret = user_keys.make(name, images, videos)
    context.current().users.save(key)
    log.info(
        "req=%s admin: user key %s (%s) made, pictures a day: %s, videos a day: %s",
        g.request_id,
        key.id,
        key.name,
        _said(key.daily_images),
        _said(key.daily_videos),
    )
    return context.json_response({**_shown(key), "key": secret, "key_shown_once": True}, 201)


@bp.get("/admin/api/keys")
def list_keys() -> Response:
    keys = sorted(context.current().users.all(), key=lambda k: k.created_at)
    return context.json_response({"object": "list", "data": [_shown(key) for key in keys]})


@bp.patch("/admin/api/keys/<key_id>")
def change_key(key_id: str) -> Response:
    key = _key(key_id)
    body = json_object()
    changes: dict[str, Any] = {}
    if (name := _name(body, False)) is not None:
        changes["name"] = name
    for field in CAPS:
        if field in body:
            changes[field] = _cap(body, field)  # null: back to no cap
    if changes.get("daily_images") is not None and "daily_videos" not in body and key.daily_videos is None:
        changes["daily_videos"] = 0  # as when a key is made: a cap on pictures never leaves videos open
    if "disabled" in body:
        if not isinstance(body["disabled"], bool):
            raise ApiError(400, "'disabled' must be true or false.", param="disabled")
        changes["disabled"] = body["disabled"]
    if changes and not context.current().users.change(key, changes):
        raise ApiError(404, f"No user key with id '{key_id[:40]}'.", code="not_found")  # revoked meanwhile
    key = _key(key_id)
    log.info("req=%s admin: user key %s (%s) changed: %s", g.request_id, key.id, key.name, ", ".join(sorted(body)))
    return context.json_response(_shown(key))


@bp.delete("/admin/api/keys/<key_id>")
def revoke_key(key_id: str) -> Response:
    key = _key(key_id)
    context.current().users.delete(key.id)
    log.info("req=%s admin: user key %s (%s) revoked", g.request_id, key.id, key.name)
    return context.json_response({"id": key.id, "object": "user_key.deleted", "deleted": True})


@bp.get("/admin/api/overview")
def overview() -> Response:
    """Everything the page shows, no key material: upstream keys masked, accounts, user keys with
    usage, pictures per hour (24 h), failures by kind, the stores."""
    services = context.current()
    pool = services.pool
    keys = sorted(services.users.all(), key=lambda k: k.created_at)
    return context.json_response(
        {
            "now": int(time.time()),
            "upstream_keys": pool.key_states(),
            **pool.summary(),
            "rate_limit": ",".join(str(limit) for limit in pool.configured_limits) or "learned from 429s",
            "user_keys": [_shown(key) for key in keys],
            "quota_resets": services.day.label(),
            "pictures_per_hour": metrics.per_hour(services.users),
            "failures": metrics.failures(),
            "spend": _spend_summary(),
            "key_state_store": pool.store.describe(),
            "pictures_store": site.health_of_pictures(services),
        }
    )


@bp.route("/metrics")
def prometheus() -> Response:
    return Response(metrics.exposition(context.current()), mimetype="text/plain; version=0.0.4; charset=utf-8")


# --- upstream keys, changed while the service runs ----------------------------------------------------


def _roster() -> Roster:
    roster = context.current().pool.roster
    if roster is None:  # cannot be: with ADMIN_KEY there is always one (siliconflow_proxy._roster)
        raise ApiError(404, "Upstream keys are not managed here.", code="not_found")
    return roster


def _upstream_shown(states: dict[str | None, dict[str, Any]], record: UpstreamKey, usage: dict[str, Any]) -> dict[str, Any]:
    state = states.get(record.id, {})
    kid = key_id(record.key)
    today = usage.get(kid, {})
    return {
        "id": record.id,
        "object": "upstream_key",
        "key": mask_key(record.key),
        "account": record.account,
        "state": "disabled" if record.disabled else state.get("state", "ok"),
        "disabled": record.disabled,
        "next_try": state.get("next_try"),
        "probing": state.get("probing", False),
        "cooling_seconds": state.get("cooling_seconds", 0),
        "last_failure": state.get("last_failure"),
        "calls_in_flight": state.get("calls_in_flight", 0),
        "calls_today": today.get("calls", 0),
        "failed_today": today.get("failed", 0),
        "pictures_today": today.get("pictures", 0),
        "videos_today": today.get("videos", 0),
        "spend_today": today.get("yuan", 0.0),
        "source": "API_KEYS" if record.source == ENV else "page",
        "added_at": record.added_at,
    }


def _usage_today() -> dict[str, Any]:
    """Calls and pictures per upstream key today (the ledger's), by key id."""
    services = context.current()
    if services.spend is None:
        return {}
    days = services.spend.ledger.keys(services.day.today())
    return {
        kid: {"calls": day.calls, "failed": day.failed, "pictures": day.pictures, "videos": day.videos, "yuan": yuan(day.micro)}
        for kid, day in days.items()
    }


def _upstream_list() -> list[dict[str, Any]]:
    pool = context.current().pool
    states = {state["id"]: state for state in pool.key_states()}
    usage = _usage_today()
    return [_upstream_shown(states, record, usage) for record in _roster().all()]


def _upstream(record_id: str) -> UpstreamKey:
    record = next((r for r in _roster().all() if r.id == record_id), None) if len(record_id) <= 40 else None
    if record is None:
        raise ApiError(404, f"No upstream key with id '{record_id[:40]}'.", param="id", code="not_found")
    return record


@bp.get("/admin/api/upstream-keys")
def list_upstream_keys() -> Response:
    return context.json_response({"object": "list", "data": _upstream_list(), "balances": site.balances_words(context.current())})


@bp.post("/admin/api/upstream-keys")
def add_upstream_keys() -> Response:
    """Keys pasted as they come (commas, spaces or lines; each `sk-…` or `NAME/sk-…`): what was
    added and what was there already, masked. Nothing is added when one entry is malformed."""
    body = json_object()
    text = body.get("keys")
    if not isinstance(text, str) or not text.strip():
        raise ApiError(
            400,
            "'keys' is required: one or more SiliconFlow keys (sk-… or NAME/sk-…), separated by commas, spaces or lines.",
            param="keys",
        )
    try:
        entries = key_entries(text, what="key")
    except ValueError as exc:
        raise ApiError(400, f"'keys': {exc}. Nothing was added.", param="keys") from None
    added, there = _roster().add([split_key_entry(entry) for entry in entries], FROM_PAGE)
    pool = context.current().pool
    pool.sync(force=True)
    states = {state["id"]: state for state in pool.key_states()}
    log.info("req=%s admin: %d upstream key(s) added, %d there already", g.request_id, len(added), len(there))
    return context.json_response(
        {
            "added": [_upstream_shown(states, record, {}) for record in added],
            "already_there": [_upstream_shown(states, record, {}) for record in there],
        },
        201 if added else 200,
    )


@bp.patch("/admin/api/upstream-keys/<record_id>")
def change_upstream_key(record_id: str) -> Response:
    record = _upstream(record_id)
    body = json_object()
    changes: dict[str, Any] = {}
    if "disabled" in body:
        if not isinstance(body["disabled"], bool):
            raise ApiError(400, "'disabled' must be true or false.", param="disabled")
        changes["disabled"] = body["disabled"]
    if "account" in body:
        account = body["account"]
        if account is not None and (not isinstance(account, str) or not ACCOUNT_NAME.fullmatch(account.strip())):
            raise ApiError(
                400,
                "'account' must be a NAME of at most 64 characters without spaces, commas or slashes, "
                "or null for its own account.",
                param="account",
            )
        changes["account"] = account.strip() if isinstance(account, str) else None
    if not changes:
        raise ApiError(400, "Nothing to change: send 'disabled' (true or false) and/or 'account' (a NAME or null).")
    changed = _roster().change(record.id, changes)
    if changed is None:
        raise ApiError(404, f"No upstream key with id '{record_id[:40]}'.", param="id", code="not_found")  # removed meanwhile
    pool = context.current().pool
    if changes.get("disabled") is False:
        pool.revive(key_id(changed.key))  # the operator's word: a dead key is tried again
    pool.sync(force=True)
    log.info(
        "req=%s admin: upstream key %s (%s) changed: %s",
        g.request_id,
        record.id,
        mask_key(record.key),
        ", ".join(sorted(changes)),
    )
    return context.json_response(next(shown for shown in _upstream_list() if shown["id"] == record.id))


@bp.delete("/admin/api/upstream-keys/<record_id>")
def remove_upstream_key(record_id: str) -> Response:
    record = _upstream(record_id)
    if _roster().remove(record.id) is None:
        raise ApiError(404, f"No upstream key with id '{record_id[:40]}'.", param="id", code="not_found")
    context.current().pool.sync(force=True)
    log.info("req=%s admin: upstream key %s (%s) removed", g.request_id, record.id, mask_key(record.key))
    return context.json_response({"id": record.id, "object": "upstream_key.deleted", "deleted": True})


@bp.post("/admin/api/upstream-keys/<record_id>/test")
def test_upstream_key(record_id: str) -> Response:
    """One call that costs nothing (SiliconFlow's model list with that key): does SiliconFlow take it?"""
    record = _upstream(record_id)
    services = context.current()
    settings = services.settings
    try:
        image_models(services.http, settings.api_base_url, record.key, min(settings.expansion_timeout, 10.0))
    except UpstreamError as exc:
        if exc.kind is Failure.AUTH:
            services.pool.report(Lease(record.key), exc)  # dead until the operator says otherwise
        words = f"SiliconFlow did not take the key: {en(exc.reason).rstrip('.')}."
        return context.json_response({"id": record.id, "ok": False, "status": exc.status, "message": words})
    services.pool.revive(key_id(record.key))  # it works: a dead mark (a 401 seen earlier) goes
    log.info("req=%s admin: upstream key %s tested: taken", g.request_id, record.id)
    return context.json_response({"id": record.id, "ok": True, "status": 200, "message": "SiliconFlow takes this key."})


# --- what pictures cost (estimates: ledger.py, prices.py) ----------------------------------------

SPEND_NOTE = (
    f"Estimates from the price table (built-in prices as of {PRICES_AS_OF}, MODEL_PRICES over them): "
    "SiliconFlow no longer reports balances."
)


def _spent() -> dict[str, tuple[int, int]]:
    """Each user key's spend (today, in all) in millionths of a yuan, read once a request."""
    if "spent" not in g:
        services = context.current()
        g.spent = services.spend.ledger.users(services.day.today()) if services.spend is not None else {}
    return g.spent


def _days() -> int:
    raw = request.args.get("days", str(ledger.DAYS))
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 3 and 1 <= int(raw) <= ledger.DAYS):
        raise ApiError(400, f"'days' must be a whole number of days from 1 to {ledger.DAYS}.", param="days")
    return int(raw)


def _sums(rows: list[ledger.Row]) -> dict[str, Any]:
    return {
        "pictures": sum(row.pictures for row in rows),
        "videos": sum(row.videos for row in rows),
        "yuan": yuan(sum(row.micro for row in rows)),
    }


def _spend(days: int) -> dict[str, Any]:
    """The last `days` days of drawing per day, account, upstream key (masked, and its id) and
    model; totals; the models that had no price; each upstream key's day so far."""
    services = context.current()
    spend, pool, today = services.spend, services.pool, services.day.today()
    first = ledger.first_day(today, days)
    rows = spend.ledger.rows(first, today)

    def masked(kid: str) -> str | None:
        key = pool.key_for(kid)
        return mask_key(key) if key is not None else None  # None: a key no longer configured

    keys_today = {key_id(key): ledger.KeyDay() for key in pool.keys} | spend.ledger.keys(today)
    return {
        "object": "spend",
        "days": days,
        "from": first,
        "to": today,
        "currency": "CNY",
        "estimate": SPEND_NOTE,
        "prices_as_of": PRICES_AS_OF,
        "data": [
            {
                "day": row.day,
                "account": mask_account(row.account),
                "key": masked(row.key_id),
                "key_id": row.key_id,
                "model": row.model,
                "pictures": row.pictures,
                "videos": row.videos,
                "yuan": yuan(row.micro),
            }
            for row in rows
        ],
        "totals": _sums(rows),
        "today": _sums([row for row in rows if row.day == today]),
        "unpriced_models": sorted({row.model for row in rows if row.unpriced}),
        "upstream_keys_today": [
            {
                "key": masked(kid),
                "key_id": kid,
                "account": mask_account(pool.account_of(kid)),
                "calls": counts.calls,
                "failed": counts.failed,
                "pictures": counts.pictures,
                "videos": counts.videos,
                "yuan": yuan(counts.micro),
            }
            for kid, counts in keys_today.items()
        ],
        "prices": spend.prices.table(),
    }


def _spend_summary() -> dict[str, Any]:
    """The overview's few words on spending: today, the last 30 days, what had no price."""
    report = _spend(ledger.DAYS)
    return {
        "today": report["today"],
        "last_30_days": report["totals"],
        "unpriced_models": report["unpriced_models"],
        "estimate": SPEND_NOTE,
        "prices_as_of": PRICES_AS_OF,
    }


@bp.get("/admin/api/spend")
def spending() -> Response:
    """What the community spent, estimated from the price table: `?days=N` (1 to 30, default 30)."""
    return context.json_response(_spend(_days()))
