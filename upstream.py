"""The SiliconFlow client and the pool of upstream keys.

Every call has a timeout. Every failure is an `UpstreamError` whose `message` is safe to show a
user: plain words, never a Python exception text, never a key.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import urllib3

from outbound import TooLarge, deadline, read_capped, remaining
from parsing import accepts_negative_prompt
from wording import upstream_text

log = logging.getLogger("siliconflow_proxy.upstream")


class UpstreamError(Exception):
    """A call to SiliconFlow failed. `message` is meant for the user; `kind` for the code."""

    def __init__(self, kind: str, message: str, status: int | None = None, retry_after: float | None = None):
        super().__init__(message)
        # auth | balance | rate_limit | bad_request | forbidden | server | timeout | network | bad_response
        # | no_keys | cancelled
        self.kind = kind
        self.message = message
        self.status = status
        self.retry_after = retry_after


def mask_key(key: str) -> str:
    """`sk-abcdef…wxyz` -> `sk-ab…wxyz`: enough to tell keys apart in a log, useless to a thief."""
    if len(key) <= 10:
        return "…" + key[-2:] if len(key) > 4 else "…"
    return f"{key[:5]}…{key[-4:]}"


# What a failure says about the key that met it.
KEY_DEAD = {"auth"}  # 401: revoked or mistyped; out for good
KEY_BROKE = {"balance"}  # 402/403 no balance; out until a balance check finds money again
KEY_LIMITED = {"rate_limit"}  # 429; cools down, the next key is tried
REQUEST_WRONG = {"bad_request"}  # 400: the request itself is wrong; another key would say the same
KEY_ONLY = KEY_DEAD | KEY_BROKE | KEY_LIMITED | {"forbidden"}  # the next key may well succeed
TRANSIENT_COOL_AFTER = 2  # consecutive transient failures before a key cools down

# Most bytes read from one answer. An image answer holds a link (a few hundred bytes), but an
# OpenAI-style upstream may inline the picture as base64, so it may be as large as an image may be.
CHAT_ANSWER_BYTES = 256 * 1024
INFO_ANSWER_BYTES = 64 * 1024


def image_answer_bytes(max_image_mb: float) -> int:
    return 64 * 1024 + int(max_image_mb * 2**20 * 4 / 3)


@dataclass
class KeyState:
    key: str
    status: str = "healthy"  # healthy | dead | broke (cooling is healthy with a future `ready_at`)
    last_used: float = 0.0
    in_flight: int = 0
    ready_at: float = 0.0
    limited_streak: int = 0
    failure_streak: int = 0
    reason: str = ""


class KeyPool:
    """Hands out upstream keys, least recently used healthy key first, and heals them.

    The interface (acquire / next_ready_in / report / summary / outage) is all a shared store
    (Redis, say) would have to offer to let several processes share one view of the keys.
    Thread-safe; all state is in memory.
    """

    def __init__(self, keys: tuple[str, ...], *, clock: Callable[[], float] = time.monotonic):
        self._states = {key: KeyState(key) for key in dict.fromkeys(keys)}  # de-duplicated, order kept
        self._lock = threading.Lock()
        self._clock = clock

    def __len__(self) -> int:
        return len(self._states)

    def acquire(self, exclude: Collection[str] = ()) -> str | None:
        """A healthy, not cooling key, or None. Hand it back with `report` or `release`.

        Preferred: the fewest failures in a row, then the fewest calls in flight (a key whose
        last call has not come back may be a bad one), then the least recently used.
        """
        with self._lock:
            now = self._clock()
            ready = [s for s in self._states.values() if s.status == "healthy" and s.ready_at <= now
                     and s.key not in exclude]
            if not ready:
                return None
            state = min(ready, key=lambda s: (s.failure_streak, s.in_flight, s.last_used))
            state.last_used = now
            state.in_flight += 1
            return state.key

    def release(self, key: str) -> None:
        """Hand back a key whose call says nothing about it."""
        with self._lock:
            state = self._states.get(key)
            if state is not None and state.in_flight:
                state.in_flight -= 1

    def next_ready_in(self, exclude: Collection[str] = ()) -> float | None:
        """Seconds until a cooling key outside `exclude` is ready again; None if none will be."""
        with self._lock:
            now = self._clock()
            waits = [s.ready_at - now for s in self._states.values() if s.status == "healthy" and s.key not in exclude]
            return max(min(waits), 0.0) if waits else None

    def report(self, key: str, error: UpstreamError | None) -> None:
        """Hand back `key` and record how its call went; None means it succeeded."""
        self.release(key)
        with self._lock:
            state = self._states.get(key)
            if state is None:
                return
            if error is None:
                state.limited_streak = state.failure_streak = 0
                state.reason = ""
                return
            now = self._clock()
            if error.kind in KEY_DEAD:
                state.status, state.reason = "dead", "密钥无效"
            elif error.kind in KEY_BROKE:
                state.status, state.reason = "broke", "余额不足"
            elif error.kind in KEY_LIMITED:
                state.limited_streak += 1
                # Without Retry-After: 5 s, 10 s, 20 s ... up to 5 minutes (about 2 images/min per account).
                pause = error.retry_after if error.retry_after else 5.0 * 2 ** (state.limited_streak - 1)
                state.ready_at = now + min(pause, 300.0)
                state.reason = "限流冷却中"
            elif error.kind not in REQUEST_WRONG:
                state.failure_streak += 1
                if state.failure_streak >= TRANSIENT_COOL_AFTER:
                    state.ready_at = now + min(10.0 * 2 ** (state.failure_streak - TRANSIENT_COOL_AFTER), 300.0)
                    state.reason = "连续出错，冷却中"

    def revive(self, key: str) -> None:
        """Bring a key that was out for lack of balance back into use."""
        with self._lock:
            state = self._states.get(key)
            if state is not None and state.status == "broke":
                state.status, state.reason, state.ready_at = "healthy", "", 0.0

    def broke_keys(self) -> list[str]:
        with self._lock:
            return [s.key for s in self._states.values() if s.status == "broke"]

    def summary(self) -> dict[str, int]:
        """Counts by state, for /health: no key material."""
        with self._lock:
            now = self._clock()
            states = list(self._states.values())
            cooling = sum(1 for s in states if s.status == "healthy" and s.ready_at > now)
            return {
                "total": len(states),
                "healthy": sum(1 for s in states if s.status == "healthy") - cooling,
                "cooling": cooling,
                "dead": sum(1 for s in states if s.status == "dead"),
                "no_balance": sum(1 for s in states if s.status == "broke"),
                "calls_in_flight": sum(s.in_flight for s in states),
            }

    def outage(self) -> str:
        """Why no key can be used right now, in plain words."""
        counts = self.summary()
        if not counts["total"]:
            return "没有配置上游 API 密钥（API_KEYS）"
        parts = [
            f"{counts[name]} 个{label}"
            for name, label in (("dead", "无效（401）"), ("no_balance", "余额不足"), ("cooling", "限流或出错后冷却中"))
            if counts[name]
        ]
        wait = self.next_ready_in()
        later = f"，最早约 {math.ceil(wait)} 秒后恢复" if wait is not None and counts["cooling"] else ""
        return f"全部 {counts['total']} 个上游密钥暂不可用：{'、'.join(parts) or '都在使用中'}{later}"


@dataclass(frozen=True)
class Image:
    url: str  # http(s), or a data:image URI that only re-hosting can turn into a link
    seed: int | None  # the seed the upstream says it used


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
        raise UpstreamError("bad_response", "上游没有返回图片")
    first = images[0]
    url = first.get("url") if isinstance(first, dict) else None
    if not isinstance(url, str) or not (_is_web_link(url) or _DATA_IMAGE.match(url)):
        raise UpstreamError("bad_response", "上游返回的图片地址无效")
    seed = body.get("seed")
    return Image(url, seed if isinstance(seed, int) and not isinstance(seed, bool) else None)


def _is_web_link(url: str) -> bool:
    if len(url) > 8192 or any(ch.isspace() or ord(ch) < 32 for ch in url):
        return False
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def has_balance(http: urllib3.PoolManager, base_url: str, key: str, timeout: float) -> bool:
    """GET /v1/user/info: True when the account behind `key` has money again. Raises UpstreamError."""
    status, headers, data = _call(http, "GET", f"{base_url}/v1/user/info", key, None, timeout, INFO_ANSWER_BYTES)
    if status != 200:
        raise _error_for(status, headers, data, key)
    try:
        info = json.loads(data)["data"]
        # Balances are strings; totalBalance includes charged (paid) balance.
        return float(info.get("totalBalance") or info.get("balance") or 0) > 0
    except (ValueError, KeyError, TypeError, AttributeError):
        raise UpstreamError("bad_response", "余额查询返回了无法解析的内容") from None


def generate_with_failover(
    http: urllib3.PoolManager,
    base_url: str,
    pool: KeyPool,
    payload: dict[str, Any],
    *,
    timeout: float,
    deadline: float,
    max_attempts: int,
    max_bytes: int,
    cancelled: threading.Event,
    label: str,
) -> Image:
    """One image, before `deadline` (monotonic), failing over from key to key.

    Failures that belong to a key (dead, no balance, rate limited, forbidden) just move to the
    next key: they say nothing about the image, and the key leaves the rotation or cools down.
    Failures that might be the request's (5xx, timeouts, unreadable answers) are allowed
    `max_attempts` times. Every key is tried at most once before any is tried again.

    Each attempt takes a key not tried yet when one is ready or will be; otherwise a tried key
    that is ready again, or waits for a cooling key when it is back in time. Raises UpstreamError
    with the reason to show; kind "cancelled" when `cancelled` was set.
    """
    tried: list[str] = []
    attempts = doubtful = 0
    last: UpstreamError | None = None
    while doubtful < max_attempts and attempts < max_attempts + len(pool):
        if cancelled.is_set():
            raise UpstreamError("cancelled", "客户端已断开")
        key = pool.acquire(exclude=tried)
        if key is None and pool.next_ready_in(exclude=tried) is None:
            key = pool.acquire()  # no fresh key will come: one already tried that is ready again
        if key is None:
            wait = pool.next_ready_in()
            if wait is None or time.monotonic() + wait >= deadline:
                break
            # Backoff in a worker thread, woken at once if the client goes away.
            cancelled.wait(wait + 0.01)
            continue
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            pool.release(key)
            break
        attempts += 1
        if key not in tried:
            tried.append(key)
        started = time.monotonic()
        try:
            image = generate_image(http, base_url, key, payload, min(timeout, remaining), max_bytes)
        except UpstreamError as exc:
            pool.report(key, exc)
            last = exc
            log.warning(
                "%s attempt %d on key %s failed after %.2fs: %s (HTTP %s)",
                label, attempts, mask_key(key), time.monotonic() - started, exc.kind, exc.status,
            )
            if exc.kind in REQUEST_WRONG:
                raise
            if exc.kind not in KEY_ONLY:
                doubtful += 1
            continue
        except BaseException:
            pool.release(key)
            raise
        pool.report(key, None)
        log.info("%s ok on key %s (attempt %d) in %.2fs", label, mask_key(key), attempts, time.monotonic() - started)
        return image
    if last is None:
        raise UpstreamError("no_keys", pool.outage())
    message = last.message + (f"（共尝试 {attempts} 次，{len(tried)} 个密钥）" if attempts > 1 else "")
    if pool.summary()["healthy"] == 0:
        message += f"；{pool.outage()}"
    raise UpstreamError(last.kind, message, last.status)


class BalanceRechecker:
    """Every `interval` seconds, brings back keys whose account has a balance again.

    Its thread starts on first use in each process: gunicorn forks workers after loading the
    app, and a thread started before the fork would not exist in them.
    """

    def __init__(self, pool: KeyPool, check: Callable[[str], bool], interval: float):
        self._pool, self._check, self._interval = pool, check, interval
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._pid: int | None = None

    def ensure_running(self) -> None:
        if self._pid == os.getpid():
            return
        with self._lock:
            if self._pid != os.getpid():
                threading.Thread(target=self._run, name="balance-recheck", daemon=True).start()
                self._pid = os.getpid()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            for key in self._pool.broke_keys():
                try:
                    if self._check(key):
                        self._pool.revive(key)
                        log.info("key %s has a balance again; back in use", mask_key(key))
                except UpstreamError as exc:
                    log.info("balance check for key %s failed: %s", mask_key(key), exc.kind)


EXPANSION_SYSTEM_PROMPT = (
    "You write prompts for an image generation model. Rewrite the user's request as one detailed "
    "English image prompt of about 100 words: subject, setting, composition, lighting, colours, "
    "style and mood. Describe only what is to be drawn. Do not mention image size, aspect ratio "
    "or the number of images. Answer with the prompt alone, no preface, no quotes."
)

_THINK = re.compile(r"<think>.*?(?:</think>|$)", re.DOTALL | re.IGNORECASE)


def expand_prompt(
    http: urllib3.PoolManager, base_url: str, key: str, model: str, text: str, timeout: float
) -> str:
    """Turn a short request into a detailed English image prompt. Raises UpstreamError."""
    payload = {
        "model": model,
        "messages": [
            {"role": "system", "content": EXPANSION_SYSTEM_PROMPT},
            {"role": "user", "content": text},
        ],
        "stream": False,
        "max_tokens": 400,
        "temperature": 0.7,
    }
    body = _post_json(http, f"{base_url}/v1/chat/completions", key, payload, timeout, CHAT_ANSWER_BYTES)
    try:
        content = body["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise UpstreamError("bad_response", "提示词扩充没有返回内容") from None
    if not isinstance(content, str):
        raise UpstreamError("bad_response", "提示词扩充没有返回内容")
    # Some reasoning models put their thinking in a <think> block before the answer. A lone
    # surrogate ("\ud800" in the JSON) would break every later encode: replaced here.
    content = content.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    expanded = _THINK.sub("", content).strip().strip('"“”').strip()
    if not expanded:
        raise UpstreamError("bad_response", "提示词扩充返回了空内容")
    return expanded


def _call(
    http: urllib3.PoolManager, method: str, url: str, key: str, payload: dict[str, Any] | None, timeout: float,
    max_bytes: int,
) -> tuple[int, Any, bytes]:
    """(status, headers, body) of one call, all of it within `timeout` seconds of wall-clock time.

    Raises UpstreamError for timeouts, connection errors and answers longer than `max_bytes`.
    """
    headers = {"Authorization": f"Bearer {key}", "Accept": "application/json"}
    body = None
    if payload is not None:
        headers["Content-Type"] = "application/json"
        body = json.dumps(payload, ensure_ascii=False).encode()
    at = time.monotonic() + timeout
    with deadline(at) as scope:
        try:
            response = http.request(
                method, url, body=body, headers=headers, redirect=False, preload_content=False,
                timeout=urllib3.Timeout(connect=remaining(at, 10.0), read=remaining(at, timeout)),
            )
            return response.status, response.headers, read_capped(response, max_bytes)
        except TooLarge:
            raise UpstreamError("bad_response", f"上游的回答超过 {max_bytes // 1024} KB，已放弃") from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            # NewConnectionError is a subclass of ConnectTimeoutError, oddly: refused is not slow.
            slow = isinstance(exc, urllib3.exceptions.TimeoutError | TimeoutError) and not isinstance(
                exc, urllib3.exceptions.NewConnectionError
            )
            if scope.expired or slow:
                raise UpstreamError("timeout", f"上游在 {timeout:g} 秒内没有响应") from None
            raise UpstreamError("network", "无法连接上游服务") from None


def _post_json(
    http: urllib3.PoolManager, url: str, key: str, payload: dict[str, Any], timeout: float, max_bytes: int
) -> Any:
    status, headers, data = _call(http, "POST", url, key, payload, timeout, max_bytes)
    if status != 200:
        raise _error_for(status, headers, data, key)
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        raise UpstreamError("bad_response", "上游返回了无法解析的内容（不是 JSON）", 200) from None


def _error_for(status: int, headers: Any, data: bytes, key: str) -> UpstreamError:
    code, detail = _error_detail(data, key)
    if status == 401:
        return UpstreamError("auth", "上游 API 密钥无效或已被吊销（401）", status)
    if status == 402 or code == 30001 or (status == 403 and "balance" in detail.lower()):
        return UpstreamError("balance", "上游账户余额不足", status)
    if status == 403:
        return UpstreamError("forbidden", f"上游拒绝访问（403）：{detail or '模型已禁用或需要实名认证'}", status)
    if status == 429:
        return UpstreamError(
            "rate_limit", "上游限流：该账户请求过于频繁（429）", status, _retry_after(headers.get("Retry-After"))
        )
    if status == 404:
        return UpstreamError("bad_request", "上游地址不存在（404），请检查 API_BASE_URL", status)
    if 400 <= status < 500:
        return UpstreamError("bad_request", f"上游拒绝了请求（{status}）：{detail or '参数无效'}", status)
    if status == 504:
        return UpstreamError("timeout", "上游处理超时（504）", status)
    return UpstreamError("server", f"上游服务暂时不可用（{status}）", status)


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
    """The body of one image request, holding only the fields `model` accepts."""
    payload: dict[str, Any] = {"model": model, "prompt": prompt}
    if size:
        payload["image_size"] = size
    if seed is not None:
        payload["seed"] = seed
    if accepts_negative_prompt(model):
        payload["batch_size"] = 1  # Kolors and the SD family: one image per call, spread over keys
        if negative:
            payload["negative_prompt"] = negative
    return payload
