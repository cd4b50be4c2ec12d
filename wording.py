"""The reply's wording: every line a chat user reads, and the rule that keeps it ours.

Chat UIs render the answer as Markdown. Only the lines built here carry Markdown images and links,
and only to the service's own pictures. Text from anyone else (the user's prompt, the expansion
model, SiliconFlow's error messages, an image host's) goes through `md()`, which escapes what could
start an image, a link or HTML and breaks bare links, so it reads as the plain text it is. Texts
from upstreams are folded to one short line with anything key-like removed (`upstream_text`)
before they are kept anywhere, since they also reach logs and JSON errors.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING
from urllib.parse import quote

if TYPE_CHECKING:
    from pipeline import Event

# --- text from others --------------------------------------------------------------------------


def one_line(text: str, limit: int) -> str:
    """`text` with its white space folded to single spaces, cut to `limit` characters with "…"."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


_KEYLIKE = re.compile(
    r"sk-[A-Za-z0-9_\-]{4,}"  # SiliconFlow and OpenAI-style keys
    # Never two \s* in a row (the separator's own is inside the optional group): two could share a
    # run of spaces in n ways each, a quadratic match on a hostile upstream's 40 kB message.
    r"|(?i:bearer|token|api[_-]?key|authorization)(?:\s*[:=])?\s*[^\s,;\"'}]{4,}"
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


# --- the answer's lines ------------------------------------------------------------------------

# The labels of the lines that describe a drawing. The follow-up reader (conversation.py) reads the
# last answer back by these same constants, so renaming one cannot break follow-ups.
PROMPT_LABEL = "🎨 提示词："
NEGATIVE_LABEL = "🚫 负面提示词："
SIZE_LABEL = "📐 尺寸："
COUNT_LABEL = " · 数量："
MODEL_LABEL = " · 模型："
SEED_LABEL = " · 种子："
FOLLOWS_INPUT = "跟随输入图片"
IMAGE_MARK = "![image"


def refusal(keyword: str) -> str:
    return f"抱歉，您的请求包含不允许的内容（“{md(keyword)}”），无法生成图片。请修改描述后重试。"


def expansion_skipped(reason: str) -> str:
    return f"（提示词扩充跳过：{md(reason)}；已使用原始描述）\n"


def expansion_failed(reason: str) -> str:
    return f"（提示词扩充失败：{md(reason)}；已使用原始描述）\n"


def seeds_text(seeds: list[int]) -> str:
    if len(seeds) == 1:
        return str(seeds[0])
    if seeds[-1] < seeds[0]:  # past the largest seed, the count starts again at 0
        return "、".join(str(seed) for seed in seeds)
    return f"{seeds[0]}–{seeds[-1]}（每张 +1）"


def prompt_info(
    model: str,
    prompt: str,
    *,
    size: str | None,
    asked_size: str | None,
    size_adjusted: bool,
    count: int,
    seeds: list[int] | None,
    negative: str | None,
    notes: Iterable[str],
    expansion_note: str = "",
) -> str:
    """The lines before the images: the prompt used, size, count, model, seeds and notes."""
    if size is None:
        shown_size = FOLLOWS_INPUT
    elif size_adjusted:
        shown_size = f"{size}（{md(model)} 不支持 {md(asked_size or '')}，已使用最接近的尺寸）"
    else:
        shown_size = size
    extras = f"{SEED_LABEL}{seeds_text(seeds)}" if seeds else ""
    negative_line = f"{NEGATIVE_LABEL}{md(one_line(negative, 500))}\n" if negative else ""
    note_lines = "".join(f"ℹ️ {md(one_line(note, 500))}\n" for note in notes)
    return (
        f"{expansion_note}{PROMPT_LABEL}{md(one_line(prompt, 2000))}\n{negative_line}"
        f"{SIZE_LABEL}{shown_size}{COUNT_LABEL}{count}{MODEL_LABEL}{md(model)}{extras}\n{note_lines}\n"
    )


def image_markdown(
    index: int,
    alt: str,
    image: str,
    download: str | None,
    permanent: str | None,
    notes: Iterable[str] = (),
    seed: int | None = None,
) -> str:
    """One picture: the image itself, its links, its seed, and what did not work for it.

    The image line stands alone on its line and starts with `![image<N>|`: that is the marker
    the seed's format promises UIs, and the one the playground looks for.
    """
    lines = [f"{IMAGE_MARK}{index}|{alt}]({md_url(image)})"]
    seed_part = f" · 种子：{seed}" if seed is not None else ""
    if permanent and download:
        lines.append(
            f"[永久链接]({md_url(permanent)}) · [上游原图]({md_url(download)})（上游链接一小时后失效）{seed_part}"
        )
    elif permanent:  # the upstream sent the picture inline: there is no upstream link to give
        lines.append(f"[永久链接]({md_url(permanent)}){seed_part}")
    else:
        lines.append(f"[下载第 {index} 张]({md_url(download or image)})（上游链接一小时后失效，请及时保存）{seed_part}")
    lines.extend(f"⚠️ {md(one_line(note, 300))}" for note in notes)
    return "\n".join(lines) + "\n\n"


def image_failed(index: int, reason: str) -> str:
    return f"⚠️ 第 {index} 张图片生成失败：{md(reason)}\n\n"


def queued(waiting: int, ahead: int, next_in: float | None, cooling: int = 0) -> str:
    """Images waiting for a key: how many, behind whom, when a key frees, and why they wait."""
    behind = f"，前面还有 {ahead} 个请求在排" if ahead else ""
    soon = f"，下一个名额约 {max(1, round(next_in))} 秒后空出" if next_in is not None else ""
    why = f"{cooling} 个密钥出错后冷却中或不可用，其余账户限额用完后按时段恢复" if cooling else "账户限额用完后按时段恢复"
    return f"⏳ 排队等候上游名额：本次还有 {waiting} 张在等{behind}{soon}（{why}）\n\n"


def summary(delivered: int, count: int) -> str:
    return f"完成：{delivered}/{count} 张图片生成成功。"


INTERNAL_ERROR = "\n\n⚠️ 服务内部错误，回答不完整。"


def chat(events: Iterable[Event]) -> Iterator[str | None]:
    """The drawing's events as the assistant's words, piece by piece (None: a keep-alive)."""
    import pipeline as p  # the events' module; imported here, since it imports this one

    alt = ""
    for event in events:
        if isinstance(event, p.KeepAlive):
            yield None
        elif isinstance(event, p.Refused):
            yield refusal(event.keyword)
        elif isinstance(event, p.PromptReady):
            alt = markdown_safe(event.prompt, limit=300)
            yield _prompt_ready(event)
            yield "生成中"
        elif isinstance(event, p.Submitted):
            yield "✅\n\n"
        elif isinstance(event, p.Queued):
            yield queued(event.waiting, event.ahead, event.next_in, event.cooling)
        elif isinstance(event, p.ImageReady):
            outcome = event.outcome
            links = outcome.links
            assert links is not None
            yield image_markdown(outcome.index, alt, links.image, links.download, links.permanent, links.notes,
                                 outcome.seed)
        elif isinstance(event, p.ImageFailed):
            yield image_failed(event.index, event.reason)
        elif isinstance(event, p.Done):
            yield summary(event.delivered, event.count)
        elif isinstance(event, p.Broken):
            yield INTERNAL_ERROR


def _prompt_ready(event) -> str:
    job, draw = event.job, event.job.draw
    expansion = event.expansion
    note = ""
    if expansion is not None and expansion.failed:
        note = expansion_failed(expansion.failed)
    elif expansion is not None and expansion.skipped:
        note = expansion_skipped(expansion.skipped)
    return prompt_info(
        job.model, event.prompt, size=draw.size, asked_size=draw.asked_size, size_adjusted=draw.size_adjusted,
        count=draw.count, seeds=event.seeds, negative=draw.negative_prompt, notes=event.notes, expansion_note=note,
    )
