"""Small clients for the tests: post a chat request over HTTP and read the SSE stream back."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import requests

IMAGE_LINE = re.compile(r"!\[image(\d+)\|([^\]\n]*)\]\((\S+?)\)")


def chat_body(content: Any, *, stream: bool = False, model: str | None = "Kwai-Kolors/Kolors", **extra: Any) -> dict:
    body: dict[str, Any] = {"messages": [{"role": "user", "content": content}], "stream": stream, **extra}
    if model is not None:
        body["model"] = model
    return body


def post_chat(url: str, body: Any, *, key: str | None = None, stream: bool = False, timeout: float = 30) -> requests.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return requests.post(f"{url}/v1/chat/completions", json=body, headers=headers, stream=stream, timeout=timeout)


def sse_events(response: requests.Response) -> Iterator[str]:
    """The `data:` payloads of a stream, checking that every event ends with a blank line."""
    buffer = b""
    for piece in response.iter_content(chunk_size=None):
        buffer += piece
        while b"\n\n" in buffer:
            event, buffer = buffer.split(b"\n\n", 1)
            for line in event.decode().split("\n"):
                if line.startswith("data: "):
                    yield line[len("data: "):]
    assert buffer == b"", f"stream ended inside an event: {buffer!r}"


def stream_chunks(response: requests.Response) -> tuple[list[dict], list[str]]:
    """(chunks, raw payloads) of a whole stream."""
    raw = list(sse_events(response))
    return [json.loads(p) for p in raw if p != "[DONE]"], raw


def content_of(chunks: list[dict]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)


def images_in(content: str) -> dict[int, str]:
    """{image number: url} of the Markdown images in an answer."""
    return {int(n): url for n, _, url in IMAGE_LINE.findall(content)}
