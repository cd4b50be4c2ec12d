"""Pure text helpers any layer may import: fold, escape for Markdown, redact secrets, say seconds.

Chat UIs render answers as Markdown, so text from anyone else (the user's prompt, the expansion
model, SiliconFlow's error messages, an image host's) goes through `md()`, which escapes what could
start an image, a link or HTML and breaks bare links, so it reads as the plain text it is. Texts
from upstreams are folded to one short line with anything key-like removed (`upstream_text`)
before they are kept anywhere, since they also reach logs and JSON errors. Imports nothing of ours.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import quote


def one_line(text: str, limit: int) -> str:
    """`text` with its white space folded to single spaces, cut to `limit` characters with "…"."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


_KEYLIKE = re.compile(
    r"sk-[A-Za-z0-9_\-]{4,}"  # SiliconFlow and OpenAI-style keys
    # Never two \s* in a row (the separator's own is inside the optional group): two could share a
    # run of spaces in n ways each, a quadratic match on a hostile upstream's 40 kB message.
    # "Authorization: Bearer <token>": the scheme's word is not the secret, the token after it is.
    r"|(?i:bearer|token|api[_-]?key|authorization)(?:\s*[:=])?\s*(?:(?i:bearer)\s+)?[^\s,;\"'}]{4,}"
    r"|\b\d+\|[A-Za-z0-9]{12,}"  # Lsky Pro tokens: "1|abc…"
    r"|[A-Za-z0-9_\-+/=%]{32,}"  # long opaque strings: tokens, signatures
)


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """`text` without the given secrets and without anything shaped like a key or token."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return _KEYLIKE.sub("***", text)


def seconds(value: float) -> str:
    """A duration as people say it: whole seconds (at least 1), tenths below one second."""
    if value >= 0.95:
        return str(max(1, round(value)))
    return f"{max(value, 0.1):.1f}"


UPSTREAM_TEXT_READ = 2000  # what is read of an upstream's message: more is never shown anyway


_KEY_IN_PROSE = re.compile(r"sk-[A-Za-z0-9_\-]{8,}|(?i:bearer)\s+[^\s,;\"'}]{8,}")


def redact_secrets(text: str, secrets: Iterable[str | None] = ()) -> str:
    """`text` without the given secrets and without keys and Bearer tokens, for text that is meant
    to be prose (an expanded prompt): unlike `redact`, ordinary words are left alone."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return _KEY_IN_PROSE.sub("***", text)


def upstream_text(text: str, limit: int = 160, secrets: Iterable[str | None] = ()) -> str:
    """What an upstream or host said, fit to repeat: one short line, no secrets."""
    return one_line(redact(text[:UPSTREAM_TEXT_READ], secrets), limit)


_MD_SPECIAL = re.compile(r"([\\\[\]<])")
_BARE_LINK = re.compile(r"(?i)(?<=[a-z])(?=://)|(?<=/)(?=/)|(?<=www)(?=\.)|(?=@)")


def md(text: str) -> str:
    """`text` as inert Markdown: it renders as itself, never as an image, a link or HTML.

    Backslash escapes (CommonMark) stop `[`, `]` and `<` from opening a link, an image, an
    autolink or a tag; a zero-width space before `://`, between two slashes, after `www` and
    before `@` stops bare links (`http://…`, `//host`, `www.…`, e-mail addresses): GFM's in marked
    and remark-gfm, and linkify-it's in markdown-it. Before `@`, not after: after it, linkify
    reads the space as part of an international domain name.
    """
    return _BARE_LINK.sub("\u200b", _MD_SPECIAL.sub(r"\\\1", text))


_ALT_SAFE = str.maketrans({"[": "【", "]": "】", "(": "（", ")": "）", "|": "｜", "\\": "＼", "<": "‹", ">": "›"})


def markdown_safe(text: str, limit: int = 200) -> str:
    """`text` on one line, safe inside `![...]`: no brackets, parentheses, pipes or newlines."""
    return _BARE_LINK.sub("\u200b", one_line(text.translate(_ALT_SAFE), limit))


def md_url(url: str) -> str:
    """`url` as a Markdown link target that cannot end early or smuggle a title or HTML."""
    return quote(url, safe="/:?#[]@!$&'*+,;=%-._~")


def mask_key(key: str) -> str:
    """`sk-abcdef…wxyz` -> `sk-ab…wxyz`: enough to tell keys apart in a log, useless to a thief.
    Short keys show less, so that never more than about a third of one is shown."""
    if len(key) >= 24:
        return f"{key[:5]}…{key[-4:]}"
    if len(key) >= 12:
        return "…" + key[-4:]
    return "…"
