"""Reading a chat request's messages: their text, the current turn, the pictures attached to it.

What a conversation asks besides a new picture lives beside this: a chat UI's background tasks in
chat_tasks.py, a turn that changes the last picture in followups.py. No Flask here: bad shapes
raise `ApiError` (openai_wire.py), which the app answers as OpenAI-shaped JSON.
"""

from __future__ import annotations

import re
from typing import Any

from core.errors import ApiError, Reason
from drawing.events import ImageRef

# --- reading messages --------------------------------------------------------------------------------


# Open WebUI (native tool calling, its default) puts the files of a message before its text, for
# its tools: `<attached_files>\n<file type="file" id=… name="cat.png"/>\n</attached_files>\n\n`.
# The pictures themselves come as image_url parts; the block is not something to draw.
_ATTACHED_FILES = re.compile(r"\A\s*<attached_files>\s*(?:<file\b[^<>]*/>\s*)*</attached_files>\s*")


def message_text(content: Any, index: int) -> str:
    """The text of a message's content: a string, or the `text` parts of a list."""
    if content is None or isinstance(content, str):
        return _ATTACHED_FILES.sub("", content or "", count=1)
    if isinstance(content, list):
        texts = [
            _ATTACHED_FILES.sub("", part["text"], count=1)
            for part in content
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
        ]
        return "\n".join(text for text in texts if text)
    raise ApiError(400, f"messages[{index}].content must be a string or a list of content parts.", param="messages")


MAX_PART_NOTES = 5  # one line each for the first few parts that cannot be used, then a count


def turn_images(messages: Any) -> tuple[tuple[ImageRef, ...], tuple[Reason, ...]]:
    """The pictures attached to the current turn's user messages (`image_url` parts), in order,
    and a note for each part that cannot be used. Nothing here fails the request: what is not
    understood is said, and the rest is drawn."""
    turn: list[Any] = []
    for message in messages:
        if message.get("role") == "assistant":
            turn = []
        elif message.get("role") == "user" and isinstance(message.get("content"), list):
            turn.extend(message["content"])
    refs: list[ImageRef] = []
    notes: list[Reason] = []
    unusable = 0
    for part in turn:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            continue
        if kind != "image_url":
            unusable += 1
            if unusable <= MAX_PART_NOTES:
                notes.append(Reason.of("part_unusable", kind=str(kind)[:40] if kind else "no type"))
            continue
        image = part.get("image_url")
        url = image.get("url") if isinstance(image, dict) else image
        ref = ImageRef("attached", len(refs) + 1)
        if not isinstance(url, str) or not url.strip():
            notes.append(Reason.of("no_image_url", pictures=(ref,)))
            continue
        refs.append(ImageRef("attached", ref.number, url.strip()))
    if unusable > MAX_PART_NOTES:
        notes.append(Reason.of("parts_more", count=unusable - MAX_PART_NOTES))
    return tuple(refs), tuple(notes)


def read_messages(messages: Any) -> list[tuple[str, str]]:
    """(role, text) of each message. Raises ApiError for shapes the OpenAI API does not allow."""
    if messages is None:
        example = '[{"role": "user", "content": "画一只猫"}]'
        raise ApiError(400, f"'messages' is required: a list like {example}.", param="messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, '\'messages\' must be a non-empty list of {"role", "content"} objects.', param="messages")
    read = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise ApiError(400, f"messages[{i}] must be an object with a 'role' string and a 'content'.", param="messages")
        read.append((message["role"], message_text(message.get("content"), i)))
    return read


def current_turn(messages: list[tuple[str, str]]) -> str:
    """The text to draw from: the current turn's user messages.

    Chat UIs resend the whole history; earlier turns were already answered, so only the
    messages after the last assistant reply count. User messages are preferred over system
    ones (a UI's system prompt is not something to draw). Raises ApiError when there is none.
    """
    turn: list[tuple[str, str]] = []
    for role, text in messages:
        if role == "assistant":
            turn = []
        else:
            turn.append((role, text))
    user_texts = [text for role, text in turn if role == "user" and text.strip()]
    texts = user_texts or [text for _, text in turn if text.strip()]
    text = "\n".join(texts).strip()
    if not text:
        raise ApiError(
            400,
            "Nothing to draw: the last user message has no text. Describe the picture, e.g. '画一只可爱的猫咪，9:16比例 pic:2'.",
            param="messages",
        )
    return text
