"""What the drawing's chat tests share: the first drawing of a conversation, and asking the
service one more turn over HTTP (whole or streamed) for the assistant's words."""

from __future__ import annotations

from tests.helpers import post_chat, stream_chunks

FIRST = "画一只可爱的猫咪，9:16比例 pic:2"


def ask(service, messages: list[dict], *, stream: bool = False, model: str = "Kwai-Kolors/Kolors", **extra) -> str:
    """The assistant's answer to `messages`, checking the stream ends with [DONE]."""
    body = {"model": model, "messages": messages, "stream": stream, **extra}
    response = post_chat(service.url, body, stream=stream)
    assert response.status_code == 200, response.text
    if stream:
        chunks, raw = stream_chunks(response)
        assert raw[-1] == "[DONE]"
        return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    return response.json()["choices"][0]["message"]["content"]
