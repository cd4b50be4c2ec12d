"""Error answers: the one OpenAI-shaped error response, the one mapping of a drawing's failure to
an HTTP status (pictures and videos alike), and the app's handlers for what a request raises."""

from __future__ import annotations

import logging
import sqlite3

from flask import Flask, Response, g, request
from werkzeug.exceptions import HTTPException

from api.bodies import MAX_BODY_BYTES
from api.context import json_response
from api.wire import error_body
from core.errors import ApiError, Failure, Reason
from drawing import reasons

log = logging.getLogger("siliconflow_proxy")


def error_response(status: int, message: str, *, param: str | None = None, code: str | None = None) -> Response:
    """The one OpenAI-shaped error answer (openai_wire.error_body) every 4xx/5xx gets."""
    return json_response(error_body(status, message, param=param, code=code), status)


def _api_error(exc: ApiError) -> Response:
    response = error_response(exc.status, exc.message, param=exc.param, code=exc.code)
    if exc.retry_after is not None:
        response.headers["Retry-After"] = str(exc.retry_after)
    return response


def _http_error(exc: HTTPException) -> Response:
    messages = {
        404: f"No such endpoint: {request.method} {request.path[:200]}. This service offers "
        "POST /v1/chat/completions, POST /v1/responses, POST /v1/images/generations, POST /v1/images/edits, "
        "/v1/videos, POST /v1/video/submit and /v1/video/status (SiliconFlow's), GET /v1/models, GET /health "
        "and a playground at /.",
        405: f"{request.method} is not allowed on {request.path[:200]}.",
        413: f"The request body is larger than {MAX_BODY_BYTES // 1024} KB.",
    }
    status = exc.code or 400
    return error_response(status, messages.get(status, exc.description or "Bad request."))


def _store_failures() -> tuple[type[Exception], ...]:
    """What the durable stores raise when they cannot be reached or written (Redis, a SQLite file)."""
    try:
        import redis
    except ImportError:
        return (sqlite3.Error,)
    return (sqlite3.Error, redis.RedisError)


def _store_error(exc: Exception) -> Response:
    """User keys, quotas or the video record cannot be read now: a 503 to retry, one log line, no
    traceback (the store is down, not the code)."""
    log.warning("req=%s a store cannot be used now (%s); answered 503", g.get("request_id", "-"), type(exc).__name__)
    response = error_response(
        503,
        "This service cannot reach the store it keeps keys and quotas in right now. Try again shortly.",
        code="store_unavailable",
    )
    response.headers["Retry-After"] = "10"
    return response


def _unexpected_error(exc: Exception) -> Response:
    log.exception("req=%s unexpected error", g.get("request_id", "-"))
    return error_response(500, "Internal error in the image service. It has been logged; please try again.")


def _sentence(words: str) -> str:
    return words[:1].upper() + words[1:].rstrip(".") + "."


def failed(failures: list[tuple[Failure | None, Reason]], *, what: str = "an image", verb: str = "deliver") -> ApiError:
    """Nothing was made (or taken): one error, in English, whose status says whose problem it is.
    `failures` are each picture's (or video's) kind of failure and reason; `what` names it."""
    kinds = {kind for kind, _ in failures}
    codes = {reason.code for _, reason in failures}
    why = "; ".join(dict.fromkeys(reasons.en(reason) for _, reason in failures)) or f"no {what.split()[-1]} was made"
    if Failure.INPUT in kinds:  # found here, before any call: nothing of SiliconFlow's
        return ApiError(400, f"This request cannot be drawn: {why}.", code="invalid_request")
    if Failure.BAD_REQUEST in kinds:  # the reasons say who refused ("SiliconFlow refused the request (400): …")
        return ApiError(400, _sentence(why), code="upstream_bad_request")
    if kinds == {Failure.RATE_LIMIT}:
        return ApiError(429, f"Every upstream key is rate limited: {why}", code="rate_limited")
    if kinds <= {Failure.NO_KEYS, Failure.AUTH, Failure.BALANCE}:
        return ApiError(503, f"No upstream key can draw right now: {why}", code="no_usable_keys")
    if kinds == {Failure.INTERNAL}:
        return ApiError(500, f"The image service failed: {why}. It has been logged; please try again.", code="internal_error")
    if "video_submit_unsure" in codes:  # SiliconFlow may have taken it: said, and not sent again
        return ApiError(504, _sentence(why), code="upstream_unsure")
    if kinds == {Failure.TIMEOUT} and codes & {"request_timeout", "shutting_down"}:
        return ApiError(504, f"Nothing was finished in time: {why}", code="timeout")
    return ApiError(502, f"SiliconFlow did not {verb} {what}: {why.rstrip('.')}.", code="upstream_error")


def register(app: Flask) -> None:
    """Every error a request raises answered as OpenAI-shaped JSON, never HTML or a traceback."""
    app.register_error_handler(ApiError, _api_error)
    app.register_error_handler(HTTPException, _http_error)
    for failure in _store_failures():
        app.register_error_handler(failure, _store_error)
    app.register_error_handler(Exception, _unexpected_error)
