"""The SiliconFlow client: images, prompt expansion, account info, the model list; HTTP only.

Every call has a wall-clock timeout (outbound.py). Every failure is an `UpstreamError`: a `Failure` kind
(whose problem it is: the key's, the request's, the upstream's) and a typed `Reason`, never a
Python exception text, never a key. Which key makes a call, and what its failure means for the
key, is the key pool's business (pool.py, failover.py).
"""

from __future__ import annotations

import base64
import json
import logging
import math
import re
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import urllib3

from core.errors import Failure, Reason, TooLarge, UpstreamError
from core.text import upstream_text
from siliconflow.families import MODEL_ID, family
from siliconflow.outbound import deadline, read_capped, remaining

log = logging.getLogger("siliconflow_proxy.upstream")


# Most bytes read from one answer. An image answer holds a link (a few hundred bytes), but an
# OpenAI-style upstream may inline the picture as base64, so it may be as large as an image may be.
CHAT_ANSWER_BYTES = 256 * 1024
INFO_ANSWER_BYTES = 64 * 1024


def image_answer_bytes(max_image_mb: float) -> int:
    return 64 * 1024 + int(max_image_mb * 2**20 * 4 / 3)


@dataclass(frozen=True)
class Image:
    url: str  # http(s), or a data:image URI that only re-hosting can turn into a link
    seed: int | None  # the seed the upstream says it used
    key_id: str = ""  # the pool's id of the key that drew it (set by failover): whose account paid


_DATA_IMAGE = re.compile(r"data:image/(?:png|jpeg|webp|gif);base64,", re.IGNORECASE)


def generate_image(
    http: urllib3.PoolManager, base_url: str, key: str, payload: dict[str, Any], timeout: float, max_bytes: int
) -> Image:
    """POST /v1/images/generations: the first image. Raises UpstreamError.

    The link is checked, not trusted: an http(s) URL with a host, or an inline PNG, JPEG, WebP or
    GIF; anything else (`javascript:`, `data:text/html`, a relative path) is a bad answer.
    """
    body = _post_json(http, f"{base_url}/v1/images/generations", key, payload, timeout, max_bytes)
    images = body.get("images") or body.get("data") if isinstance(body, dict) else None
    if not isinstance(images, list) or not images:
        raise UpstreamError(Failure.BAD_RESPONSE, Reason.of("no_image"))
    first = images[0]
    url = first.get("url") if isinstance(first, dict) else None
    if not isinstance(url, str) or not (_is_web_link(url) or _DATA_IMAGE.match(url)):
        raise UpstreamError(Failure.BAD_RESPONSE, Reason.of("bad_image_link"))
    seed = body.get("seed")
    return Image(url, seed if isinstance(seed, int) and not isinstance(seed, bool) else None)


VIDEO_ANSWER_BYTES = 256 * 1024


@dataclass(frozen=True)
class VideoStatus:
    status: str  # InQueue | InProgress | Succeed | Failed (CONTRACTS.md: video)
    reason: str  # why it failed, in SiliconFlow's words (checked text)
    position: int | None  # in the queue, when given
    url: str | None  # the clip, once it succeeded
    seed: int | None


def video_submit(http: urllib3.PoolManager, base_url: str, key: str, payload: dict[str, Any], timeout: float) -> str:
    """POST /v1/video/submit: SiliconFlow's requestId for the job. Raises UpstreamError."""
    body = _post_json(http, f"{base_url}/v1/video/submit", key, payload, timeout, VIDEO_ANSWER_BYTES)
    request_id = body.get("requestId") if isinstance(body, dict) else None
    if not isinstance(request_id, str) or not 0 < len(request_id) <= 200:
        raise UpstreamError(Failure.BAD_RESPONSE, Reason.of("no_request_id"))
    return request_id


def video_status(http: urllib3.PoolManager, base_url: str, key: str, request_id: str, timeout: float) -> VideoStatus:
    """POST /v1/video/status with a key of the account that submitted it. Raises UpstreamError."""
    body = _post_json(http, f"{base_url}/v1/video/status", key, {"requestId": request_id}, timeout, VIDEO_ANSWER_BYTES)
    if not isinstance(body, dict) or body.get("status") not in ("InQueue", "InProgress", "Succeed", "Failed"):
        raise UpstreamError(Failure.BAD_RESPONSE, Reason.of("unreadable_status"))
    results = body.get("results") if isinstance(body.get("results"), dict) else {}
    videos = results.get("videos") if isinstance(results.get("videos"), list) else []
    url = videos[0].get("url") if videos and isinstance(videos[0], dict) else None
    position, seed = body.get("position"), results.get("seed")
    return VideoStatus(
        body["status"],
        upstream_text(str(body.get("reason") or ""), 200),
        position if isinstance(position, int) and not isinstance(position, bool) else None,
        url if isinstance(url, str) and _is_web_link(url) else None,
        seed if isinstance(seed, int) and not isinstance(seed, bool) else None,
    )


def video_models(http: urllib3.PoolManager, base_url: str, key: str, timeout: float) -> list[str]:
    """GET /v1/models?type=video: the video models served now. Raises UpstreamError."""
    found: list[str] = []
    for sub_type in ("text-to-video", "image-to-video"):
        status, headers, data = _call(
            http, "GET", f"{base_url}/v1/models?type=video&sub_type={sub_type}", key, None, timeout, MODELS_ANSWER_BYTES
        )
        if status != 200:
            raise _error_for(status, headers, data, key)
        try:
            found += [
                item["id"] for item in json.loads(data)["data"] if isinstance(item, dict) and isinstance(item.get("id"), str)
            ]
        except (ValueError, KeyError, TypeError, RecursionError):
            raise UpstreamError(Failure.BAD_RESPONSE, Reason.of("unreadable_models")) from None
    return list(dict.fromkeys(m for m in found if MODEL_ID.fullmatch(m)))[:MAX_LISTED_MODELS]


def _is_web_link(url: str) -> bool:
    if len(url) > 8192 or any(ch.isspace() or ord(ch) < 32 for ch in url):
        return False
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


@dataclass(frozen=True)
class AccountInfo:
    account: str | None  # the SiliconFlow account (data.id); keys of one account share its budget
    funded: bool  # a balance above zero (totalBalance includes charged balance)


MODELS_ANSWER_BYTES = 1024 * 1024


def image_models(http: urllib3.PoolManager, base_url: str, key: str, timeout: float) -> list[str]:
    """GET /v1/models?type=image: the image models served now, text-to-image and image-to-image
    (chat models are not image models). Raises UpstreamError."""
    found: list[str] = []
    for sub_type in ("text-to-image", "image-to-image"):
        url = f"{base_url}/v1/models?type=image&sub_type={sub_type}"
        status, headers, data = _call(http, "GET", url, key, None, timeout, MODELS_ANSWER_BYTES)
        if status != 200:
            raise _error_for(status, headers, data, key)
        try:
            items = json.loads(data)["data"]
            found += [item["id"] for item in items if isinstance(item, dict) and isinstance(item.get("id"), str)]
        except (ValueError, KeyError, TypeError, RecursionError):
            raise UpstreamError(Failure.BAD_RESPONSE, Reason.of("unreadable_models")) from None
    # Ids are offered to clients and shown in answers: only ones that look like a model's id.
    valid = [model for model in found if MODEL_ID.fullmatch(model)]
    if len(valid) < len(found):
        log.warning("the model list held %d ids that do not look like a model's; left out", len(found) - len(valid))
    return list(dict.fromkeys(valid))[:MAX_LISTED_MODELS]


MAX_LISTED_MODELS = 500


def account_info(http: urllib3.PoolManager, base_url: str, key: str, timeout: float) -> AccountInfo:
    """GET /v1/user/info: the account behind `key` and whether it has money. Raises UpstreamError."""
    status, headers, data = _call(http, "GET", f"{base_url}/v1/user/info", key, None, timeout, INFO_ANSWER_BYTES)
    if status != 200:
        raise _error_for(status, headers, data, key)
    try:
        info = json.loads(data)["data"]
        account = info.get("id")
        # Balances are strings.
        funded = float(info.get("totalBalance") or info.get("balance") or 0) > 0
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
        raise UpstreamError(Failure.BAD_RESPONSE, Reason.of("unreadable_account")) from None
    return AccountInfo(str(account)[:128] if isinstance(account, str | int) and account != "" else None, funded)


EXPANSION_SYSTEM_PROMPT = (
    "You write prompts for an image generation model. Rewrite the user's request as one detailed "
    "English image prompt of about 100 words: subject, setting, composition, lighting, colours, "
    "style and mood. Describe only what is to be drawn. Do not mention image size, aspect ratio "
    "or the number of images. Answer with the prompt alone, no preface, no quotes."
)

REFINE_SYSTEM_PROMPT = (
    "You write prompts for an image generation model. A picture was drawn from the prompt under "
    "'Previous prompt'; the user now asks for the change under 'Change'. Rewrite the previous prompt "
    "with the change applied, keeping its subject, composition, lighting and style unless the change "
    "says otherwise: one detailed English image prompt of about 100 words. Do not mention image size, "
    "aspect ratio or the number of images. Answer with the prompt alone, no preface, no quotes."
)

VIDEO_EXPANSION_SYSTEM_PROMPT = (
    "You write prompts for a text-to-video model that makes 5-second clips. Rewrite the user's "
    "request as one detailed English video prompt of about 80 words: the subject and what it does, "
    "the camera (angle, movement: pan, dolly, tracking, static), the setting, lighting and mood, as "
    "one continuous shot. Do not mention size, aspect ratio, duration or the number of videos. "
    "Answer with the prompt alone, no preface, no quotes."
)

_THINK = re.compile(r"<think>.*?(?:</think>|$)", re.DOTALL | re.IGNORECASE)


def expand_prompt(
    http: urllib3.PoolManager,
    base_url: str,
    key: str,
    model: str,
    text: str,
    timeout: float,
    previous: str | None = None,
    video: bool = False,
) -> str:
    """Turn a short request into a detailed English image (or, `video`, motion) prompt; with
    `previous`, the last prompt changed as `text` asks. Raises UpstreamError."""
    system, user = (VIDEO_EXPANSION_SYSTEM_PROMPT if video else EXPANSION_SYSTEM_PROMPT), text
    if previous:
        system, user = REFINE_SYSTEM_PROMPT, f"Previous prompt: {previous}\nChange: {text}"
    expanded = complete(http, base_url, key, model, system, user, timeout)
    return expanded.strip('"“”').strip()


def complete(
    http: urllib3.PoolManager,
    base_url: str,
    key: str,
    model: str,
    system: str,
    user: str,
    timeout: float,
    max_tokens: int = 400,
) -> str:
    """One answer of a chat model (a <think> block dropped). Raises UpstreamError."""
    payload = {
        "model": model,
        "messages": [
            {"role": "system", "content": system},
            {"role": "user", "content": user},
        ],
        "stream": False,
        "max_tokens": max_tokens,
        "temperature": 0.7,
    }
    body = _post_json(http, f"{base_url}/v1/chat/completions", key, payload, timeout, CHAT_ANSWER_BYTES)
    try:
        content = body["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise UpstreamError(Failure.BAD_RESPONSE, Reason.of("expansion_empty")) from None
    if not isinstance(content, str):
        raise UpstreamError(Failure.BAD_RESPONSE, Reason.of("expansion_empty"))
    # Some reasoning models put their thinking in a <think> block before the answer. A lone
    # surrogate ("\ud800" in the JSON) would break every later encode: replaced here.
    content = content.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    answer = _THINK.sub("", content).strip()
    if not answer:
        raise UpstreamError(Failure.BAD_RESPONSE, Reason.of("expansion_empty"))
    return answer


def _call(
    http: urllib3.PoolManager,
    method: str,
    url: str,
    key: str,
    payload: dict[str, Any] | None,
    timeout: float,
    max_bytes: int,
) -> tuple[int, Any, bytes]:
    """(status, headers, body) of one call, all of it within `timeout` seconds of wall-clock time.

    Raises UpstreamError for timeouts, connection errors and answers longer than `max_bytes`.
    """
    headers = {"Authorization": f"Bearer {key}", "Accept": "application/json"}
    body = None
    if payload is not None:
        body = json_body(payload)
        headers["Content-Type"] = "application/json"
        headers["Content-Length"] = str(sum(len(piece) for piece in body))
    at = time.monotonic() + timeout
    with deadline(at) as scope:
        try:
            response = http.request(
                method,
                url,
                body=body,
                headers=headers,
                redirect=False,
                preload_content=False,
                timeout=urllib3.Timeout(connect=remaining(at, 10.0), read=remaining(at, timeout)),
            )
            data = read_capped(response, max_bytes)
            if scope.expired:  # cut at the deadline where a body without a length just ends
                raise TimeoutError
            return response.status, response.headers, data
        except TooLarge:
            raise UpstreamError(Failure.BAD_RESPONSE, Reason.of("answer_too_large", kb=max_bytes // 1024)) from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            # NewConnectionError is a subclass of ConnectTimeoutError, oddly: refused is not slow.
            slow = isinstance(exc, urllib3.exceptions.TimeoutError | TimeoutError) and not isinstance(
                exc, urllib3.exceptions.NewConnectionError
            )
            if scope.expired or slow:
                raise UpstreamError(Failure.TIMEOUT, Reason.of("upstream_timeout", seconds=timeout)) from None
            raise UpstreamError(Failure.NETWORK, Reason.of("upstream_unreachable")) from None


@dataclass(frozen=True)
class JsonText:
    """A payload value already encoded as a JSON string: an input picture's data URI, up to tens
    of MB. It is sent as it is, so the `n` calls of one request share this one copy instead of
    each encoding its own (four calls with three 19 MB pictures took 760 MB that way)."""

    encoded: bytes

    @classmethod
    def of(cls, text: str) -> JsonText:
        return cls(json.dumps(text).encode())

    @classmethod
    def data_uri(cls, mimetype: str, data: bytes) -> JsonText:
        """`data` as a `data:` URI in a JSON string (base64 needs no escapes), made with one copy
        besides the base64 itself, where encoding a str took five."""
        return cls(b"".join((b'"data:', mimetype.encode(), b";base64,", base64.b64encode(data), b'"')))


def json_body(payload: dict[str, Any]) -> list[bytes]:
    """`payload` as JSON, in pieces: the small fields encoded here, JsonText values as they are."""
    small = {name: value for name, value in payload.items() if not isinstance(value, JsonText)}
    large = [(name, value) for name, value in payload.items() if isinstance(value, JsonText)]
    encoded = json.dumps(small, ensure_ascii=False).encode()
    if not large:
        return [encoded]
    pieces = [encoded[:-1]]  # without its closing brace
    for name, value in large:
        comma = b"," if small or len(pieces) > 1 else b""
        pieces += [comma + json.dumps(name).encode() + b":", value.encoded]
    return [*pieces, b"}"]


def _post_json(http: urllib3.PoolManager, url: str, key: str, payload: dict[str, Any], timeout: float, max_bytes: int) -> Any:
    status, headers, data = _call(http, "POST", url, key, payload, timeout, max_bytes)
    if status != 200:
        raise _error_for(status, headers, data, key)
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        raise UpstreamError(Failure.BAD_RESPONSE, Reason.of("not_json"), 200) from None


def _error_for(status: int, headers: Any, data: bytes, key: str) -> UpstreamError:
    code, detail = _error_detail(data, key)
    if status == 401:
        return UpstreamError(Failure.AUTH, Reason.of("key_invalid"), status)
    if status == 402 or code == 30001 or (status == 403 and "balance" in detail.lower()):
        return UpstreamError(Failure.BALANCE, Reason.of("no_balance"), status)
    if status == 403:
        return UpstreamError(Failure.FORBIDDEN, Reason.of("forbidden", detail=detail), status)
    if status == 429:
        return UpstreamError(Failure.RATE_LIMIT, Reason.of("rate_limited"), status, _retry_after(headers.get("Retry-After")))
    if status == 404:
        return UpstreamError(Failure.BAD_REQUEST, Reason.of("wrong_base_url"), status)
    if code == 20012:
        return UpstreamError(Failure.BAD_REQUEST, Reason.of("model_gone"), status)
    if 400 <= status < 500:
        return UpstreamError(Failure.BAD_REQUEST, Reason.of("upstream_refused", status=status, detail=detail), status)
    if status == 504:
        return UpstreamError(Failure.TIMEOUT, Reason.of("gateway_timeout"), status)
    return UpstreamError(Failure.SERVER, Reason.of("upstream_unavailable", status=status), status)


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (seconds or an HTTP date), capped at 10 minutes."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
    return min(max(seconds, 0.0), 600.0) if math.isfinite(seconds) else None


def _error_detail(data: bytes, key: str) -> tuple[int | None, str]:
    """The upstream's error code and message, short and without secrets; bodies may be an object,
    a bare string or text."""
    try:
        body = json.loads(data)
    except (ValueError, RecursionError):
        return None, ""
    if isinstance(body, str):
        return None, upstream_text(body, secrets=(key,))
    if isinstance(body, dict):
        code = body.get("code")
        message = body.get("message") or body.get("error") or ""
        if isinstance(message, dict):
            message = message.get("message", "")
        return (code if isinstance(code, int) else None), upstream_text(str(message), secrets=(key,))
    return None, ""


def payload_for(model: str, prompt: str, size: str | None, seed: int | None, negative: str | None) -> dict[str, Any]:
    """The body of one image request, holding only the fields `model` accepts (families.family)."""
    takes = family(model)
    payload: dict[str, Any] = {"model": model, "prompt": prompt}
    if size:
        payload[takes.size_field] = size
    if seed is not None:
        payload["seed"] = seed
    if takes.batch_size:
        payload["batch_size"] = 1  # Kolors and the SD family: one image per call, spread over keys
    if negative and takes.negative_prompt:
        payload["negative_prompt"] = negative
    return payload
