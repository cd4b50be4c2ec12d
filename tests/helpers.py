"""Small clients for the tests: post a chat request over HTTP and read the SSE stream back."""

from __future__ import annotations

import fcntl
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests

from drawing.chat_words import IMAGE_LINE


@contextmanager
def one_at_a_time(name: str) -> Iterator[None]:
    """Across the test processes (pytest-xdist's workers): one at a time makes what they share in
    .cache/ (a venv, downloaded packages), the others wait and then find it made."""
    cache = Path(__file__).resolve().parent.parent / ".cache"
    cache.mkdir(exist_ok=True)
    with open(cache / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def wait_until(condition: Callable[[], object], timeout: float = 5.0, interval: float = 0.02) -> bool:
    """True as soon as `condition()` is truthy, False if it is not within `timeout` seconds.

    What a test waits on instead of sleeping: it returns the moment the thing has happened, and a
    bounded timeout keeps a test that would wait for ever from hanging the suite.
    """
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def child_exited(pid: int, timeout: float = 10.0) -> int | None:
    """A forked child's exit code once it has exited; None (and the child killed) if it has not
    within `timeout`: a child stuck on a lock held at the fork fails its test instead of hanging it."""
    import os
    import signal

    ended: list[tuple[int, int]] = []
    if not wait_until(lambda: ended.append(os.waitpid(pid, os.WNOHANG)) or ended[-1][0] != 0, timeout):
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        return None
    return os.waitstatus_to_exitcode(ended[-1][1])


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
                    yield line[len("data: ") :]
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


def rendered(markdown: str) -> dict[str, list[str]]:
    """What a chat UI would make of `markdown` (CommonMark + GFM tables, strikethrough and literal
    autolinks): {"images": [src], "links": [href], "html": [raw html]}."""
    from markdown_it import MarkdownIt

    renderer = MarkdownIt("gfm-like")
    # GFM links www., http(s):// and e-mail addresses, not bare domains (linkify-it's fuzzy links).
    renderer.linkify.set({"fuzzy_link": False, "fuzzy_email": True})

    found: dict[str, list[str]] = {"images": [], "links": [], "html": []}

    def walk(tokens):
        for token in tokens:
            if token.type == "image":
                found["images"].append(token.attrs["src"])
                continue  # its children are the alt text, which renders as plain text
            elif token.type == "link_open":
                found["links"].append(token.attrs["href"])
            elif token.type in ("html_inline", "html_block"):
                found["html"].append(token.content)
            walk(token.children or [])

    walk(renderer.parse(markdown))
    return found


def answer_text(url: str, text: str, *, stream: bool, key: str | None = None, **body: Any) -> str:
    """The assistant's whole answer to `text`, streamed or not, checking the stream's ending."""
    response = post_chat(url, chat_body(text, stream=stream, **body), key=key, stream=stream)
    assert response.status_code == 200, response.text
    if stream:
        chunks, raw = stream_chunks(response)
        assert raw[-1] == "[DONE]" and chunks[-1]["choices"][0]["finish_reason"] == "stop"
        return content_of(chunks)
    return response.json()["choices"][0]["message"]["content"]
