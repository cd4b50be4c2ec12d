"""The OpenAI wire shapes: chat completions (whole and streamed), errors, models, images answers.

What the clients require is in shared/reference/CONTRACTS.md section 4: the first delta carries
the role, the last chunk has `finish_reason` inside `choices[0]`, every SSE event ends with a blank
line, `data: [DONE]` closes the stream, and every error is `{"error": {message, type, param, code}}`.
One function builds each shape; the surfaces (chat.py, images.py, videos.py, admin.py) send them.
No Flask here: the chat-UI tasks and the conversation readers raise `ApiError` without a web framework.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import Any

MODEL_CREATED = 1_700_000_000  # the typed clients need an int; SiliconFlow itself answers 0


_ERROR_TYPES = {401: "invalid_request_error", 403: "permission_error", 429: "rate_limit_error"}


def error_body(status: int, message: str, *, param: str | None = None, code: str | None = None) -> dict:
    """The one shape of every error this service answers, as the OpenAI clients parse it."""
    kind = _ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def dumps(obj: Any) -> str:
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
    return f"data: {payload if isinstance(payload, str) else dumps(payload)}\n\n"


def completion(completion_id: str, created: int, model: str, prompt: str, content: str) -> dict:
    """A whole non-stream `chat.completion`."""
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
        "usage": usage(prompt, content),
    }


def usage_chunk(completion_id: str, created: int, model: str, prompt: str, content: str) -> dict:
    """The last chunk of a stream asked with `stream_options.include_usage`: no choices, the usage
    (the same numbers a whole answer gives)."""
    return {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [],
        "usage": usage(prompt, content),
    }


def usage(prompt: str, content: str) -> dict:
    prompt_tokens, completion_tokens = tokens(prompt), tokens(content)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def tokens(text: str) -> int:
    """A rough token count for `usage`: a CJK character or about four other bytes per token."""
    cjk = sum(1 for ch in text if ord(ch) > 0x2E80)
    return cjk + (len(text) - cjk + 3) // 4


KEEP_ALIVE = None  # in a stream of answer pieces: "still working", sent as nothing a client reads


def model_list(models: Iterable[str]) -> dict:
    """`GET /v1/models`: `created` int and `owned_by` str are required by the typed clients."""
    return {
        "object": "list",
        "data": [
            {"id": m, "object": "model", "created": MODEL_CREATED, "owned_by": m.split("/")[0] if "/" in m else "siliconflow"}
            for m in models
        ],
    }


def images_answer(items: list[dict[str, Any]]) -> dict:
    """`POST /v1/images/generations` (and edits): one item per picture, `url` or `b64_json`."""
    return {"created": int(time.time()), "data": items}
