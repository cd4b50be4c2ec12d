"""The SiliconFlow client and the pool of upstream keys.

Every call has a timeout. Every failure is an `UpstreamError` whose `message` is safe to show a
user: plain words, never a Python exception text, never a key.
"""

from __future__ import annotations

import re
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any

import requests
from requests.adapters import HTTPAdapter

from parsing import accepts_negative_prompt


class UpstreamError(Exception):
    """A call to SiliconFlow failed. `message` is meant for the user; `kind` for the code."""

    def __init__(self, kind: str, message: str, status: int | None = None):
        super().__init__(message)
        self.kind = kind  # auth | balance | rate_limit | bad_request | server | timeout | network | bad_response
        self.message = message
        self.status = status


def mask_key(key: str) -> str:
    """`sk-abcdef…wxyz` -> `sk-ab…wxyz`: enough to tell keys apart in a log, useless to a thief."""
    if len(key) <= 10:
        return "…" + key[-2:] if len(key) > 4 else "…"
    return f"{key[:5]}…{key[-4:]}"


def make_session(pool_size: int) -> requests.Session:
    """One HTTP session per app, its connection pool sized for the worker threads."""
    session = requests.Session()
    adapter = HTTPAdapter(pool_connections=4, pool_maxsize=max(pool_size, 10))
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


class KeyPool:
    """Hands out upstream keys least recently used first, so `pic:N` spreads over N keys."""

    def __init__(self, keys: tuple[str, ...]):
        self._queue = deque(dict.fromkeys(keys))  # de-duplicated, order kept
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._queue)

    def acquire(self) -> str:
        """The least recently handed-out key. Raises UpstreamError when there is none."""
        with self._lock:
            if not self._queue:
                raise UpstreamError("no_keys", "没有配置上游 API 密钥（API_KEYS）")
            key = self._queue.popleft()
            self._queue.append(key)
            return key


@dataclass(frozen=True)
class Image:
    url: str
    seed: int | None = None


def generate_image(
    session: requests.Session, base_url: str, key: str, payload: dict[str, Any], timeout: float
) -> Image:
    """POST /v1/images/generations and return the first image. Raises UpstreamError."""
    body = _post_json(session, f"{base_url}/v1/images/generations", key, payload, timeout)
    images = body.get("images") or body.get("data") if isinstance(body, dict) else None
    if not isinstance(images, list) or not images:
        raise UpstreamError("bad_response", "上游没有返回图片")
    first = images[0]
    url = first.get("url") if isinstance(first, dict) else None
    if not isinstance(url, str) or not url.startswith(("http://", "https://", "data:")):
        raise UpstreamError("bad_response", "上游返回的图片地址无效")
    seed = body.get("seed")
    return Image(url=url, seed=seed if isinstance(seed, int) else None)


EXPANSION_SYSTEM_PROMPT = (
    "You write prompts for an image generation model. Rewrite the user's request as one detailed "
    "English image prompt of about 100 words: subject, setting, composition, lighting, colours, "
    "style and mood. Describe only what is to be drawn. Do not mention image size, aspect ratio "
    "or the number of images. Answer with the prompt alone, no preface, no quotes."
)

_THINK = re.compile(r"<think>.*?(?:</think>|$)", re.DOTALL | re.IGNORECASE)


def expand_prompt(
    session: requests.Session, base_url: str, key: str, model: str, text: str, timeout: float
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
    body = _post_json(session, f"{base_url}/v1/chat/completions", key, payload, timeout)
    try:
        content = body["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise UpstreamError("bad_response", "提示词扩充没有返回内容") from None
    if not isinstance(content, str):
        raise UpstreamError("bad_response", "提示词扩充没有返回内容")
    # Some reasoning models put their thinking in a <think> block before the answer.
    expanded = _THINK.sub("", content).strip().strip('"“”').strip()
    if not expanded:
        raise UpstreamError("bad_response", "提示词扩充返回了空内容")
    return expanded


def _post_json(session: requests.Session, url: str, key: str, payload: dict[str, Any], timeout: float) -> Any:
    try:
        response = session.post(
            url,
            json=payload,
            headers={"Authorization": f"Bearer {key}", "Accept": "application/json"},
            timeout=(min(10.0, timeout), timeout),
        )
    except requests.Timeout:
        raise UpstreamError("timeout", f"上游在 {timeout:g} 秒内没有响应") from None
    except requests.RequestException:
        raise UpstreamError("network", "无法连接上游服务") from None
    if response.status_code != 200:
        raise _error_for(response)
    try:
        return response.json()
    except ValueError:
        raise UpstreamError("bad_response", "上游返回了无法解析的内容（不是 JSON）", 200) from None


def _error_for(response: requests.Response) -> UpstreamError:
    status = response.status_code
    code, detail = _error_detail(response)
    if status == 401:
        return UpstreamError("auth", "上游 API 密钥无效或已被吊销（401）", status)
    if status == 402 or code == 30001 or (status == 403 and "balance" in detail.lower()):
        return UpstreamError("balance", "上游账户余额不足", status)
    if status == 403:
        return UpstreamError("forbidden", f"上游拒绝访问（403）：{detail or '模型已禁用或需要实名认证'}", status)
    if status == 429:
        return UpstreamError("rate_limit", "上游限流：该账户请求过于频繁，请稍后再试（429）", status)
    if status == 404:
        return UpstreamError("bad_request", "上游地址不存在（404），请检查 API_BASE_URL", status)
    if 400 <= status < 500:
        return UpstreamError("bad_request", f"上游拒绝了请求（{status}）：{detail or '参数无效'}", status)
    if status == 504:
        return UpstreamError("timeout", "上游处理超时（504）", status)
    return UpstreamError("server", f"上游服务暂时不可用（{status}）", status)


def _error_detail(response: requests.Response) -> tuple[int | None, str]:
    """The upstream's error code and message, trimmed; bodies may be an object, a bare string or text."""
    try:
        body = response.json()
    except ValueError:
        return None, ""
    if isinstance(body, str):
        return None, _trim(body)
    if isinstance(body, dict):
        code = body.get("code")
        message = body.get("message") or body.get("error") or ""
        if isinstance(message, dict):
            message = message.get("message", "")
        return (code if isinstance(code, int) else None), _trim(str(message))
    return None, ""


def _trim(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


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
