"""The chat answer's lines: the drawing's events as the assistant's words, in Chinese (`chat()`).

Chat UIs render the answer as Markdown: only the lines built here carry Markdown images and links,
and only to the service's own pictures; text from anyone else goes through `text.md()` first. The
labels of the answer's lines (提示词, 尺寸, the image marker) are constants here, and the follow-up
reader (followups.py) reads an earlier answer back by the same constants.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

from core.errors import Reason
from core.text import markdown_safe, md, md_url, one_line, seconds
from drawing import events as ev
from drawing.reasons import zh
from siliconflow.families import family

# The labels of the lines that describe a drawing. The follow-up reader (followups.py) reads the
# last answer back by these same constants, so renaming one cannot break follow-ups.
PROMPT_LABEL = "🎨 提示词："
NEGATIVE_LABEL = "🚫 负面提示词："
SIZE_LABEL = "📐 尺寸："
COUNT_LABEL = " · 数量："
MODEL_LABEL = " · 模型："
SEED_LABEL = " · 种子："
FOLLOWS_INPUT = "跟随输入图片"
IMAGE_MARK = "![image"
# An answer's picture, as the playground and the tests find it: (number, alt text, URL).
IMAGE_LINE = re.compile(rf"^{re.escape(IMAGE_MARK)}(\d+)\|([^\]\n]*)\]\((\S+?)\)$", re.M)


def refusal(keyword: str) -> str:
    return f"抱歉，您的请求包含不允许的内容（“{md(keyword)}”），无法生成图片。请修改描述后重试。"


def expansion_skipped(reason: Reason) -> str:
    return f"（提示词扩充跳过：{md(zh(reason))}；已使用原始描述）\n"


def expansion_failed(reason: Reason) -> str:
    return f"（提示词扩充失败：{md(zh(reason))}；已使用原始描述）\n"


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
    notes: Iterable[Reason],
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
    note_lines = "".join(f"ℹ️ {md(one_line(zh(note), 500))}\n" for note in notes)
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
    notes: Iterable[Reason] = (),
    seed: int | None = None,
) -> str:
    """One picture: the image itself, its links, its seed, and what did not work for it.

    The image line stands alone on its line and starts with `![image<N>|`: that is the marker
    the seed's format promises UIs, and the one the playground looks for.
    """
    lines = [f"{IMAGE_MARK}{index}|{alt}]({md_url(image)})"]
    seed_part = f"{SEED_LABEL}{seed}" if seed is not None else ""
    if permanent and download:
        lines.append(f"[永久链接]({md_url(permanent)}) · [上游原图]({md_url(download)})（上游链接一小时后失效）{seed_part}")
    elif permanent:  # the upstream sent the picture inline: there is no upstream link to give
        lines.append(f"[永久链接]({md_url(permanent)}){seed_part}")
    else:
        lines.append(f"[下载第 {index} 张]({md_url(download or image)})（上游链接一小时后失效，请及时保存）{seed_part}")
    lines.extend(f"⚠️ {md(one_line(zh(note), 300))}" for note in notes)
    return "\n".join(lines) + "\n\n"


def image_failed(index: int, reason: Reason) -> str:
    return f"⚠️ 第 {index} 张图片生成失败：{md(zh(reason))}\n\n"


def queued(waiting: int, ahead: int, next_in: float | None, cooling: int = 0) -> str:
    """Images waiting for a key: how many, behind whom, when a key frees, and why they wait."""
    behind = f"，前面还有 {ahead} 个请求在排" if ahead else ""
    soon = f"，下一个名额约 {max(1, round(next_in))} 秒后空出" if next_in is not None else ""
    why = f"{cooling} 个密钥出错后冷却中或不可用，其余账户限额用完后按时段恢复" if cooling else "账户限额用完后按时段恢复"
    return f"⏳ 排队等候上游名额：本次还有 {waiting} 张在等{behind}{soon}（{why}）\n\n"


def preparing(expanding: bool, pictures: int) -> str:
    """The first line, said before the chat model or the input pictures are waited for."""
    if expanding and pictures:
        return "✍️ 正在读取输入图片并完善提示词…\n\n"
    return "✍️ 正在完善提示词…\n\n" if expanding else "📥 正在读取输入图片…\n\n"


SUMMARY_LABEL = "完成："  # the answer's last line; chat UIs' tasks quote it back (without the pictures)
SUMMARY_LINE = re.compile(rf"^{SUMMARY_LABEL}(\d+)/(\d+) ", re.M)


def summary(delivered: int, count: int, videos: bool = False) -> str:
    return f"{SUMMARY_LABEL}{delivered}/{count} {'个视频' if videos else '张图片'}生成成功。"


def video_submitted(index: int, link: str | None = None) -> str:
    later = f"中途断开也不会丢，做好后可在[这里取回]({md_url(link)})。" if link else ""
    return f"🎬 第 {index} 个视频已提交，通常需要几分钟，进度会在这里更新；{later}\n\n"


def video_progress(index: int, status: str, position: int | None, elapsed: float) -> str:
    if status == "queued":
        ahead = f"（前面还有 {position} 个）" if position else ""
        return f"⏳ 第 {index} 个视频排队中{ahead}，已等 {seconds(elapsed)} 秒\n\n"
    return f"⏳ 第 {index} 个视频生成中，已用 {seconds(elapsed)} 秒\n\n"


VIDEO_MARK = "🎞️ [▶️ 播放第 "  # a video line starts with it (the playground finds videos by it)


def video_ready(index: int, url: str, poster: str | None, seed: int | None, notes: tuple[Reason, ...]) -> str:
    """A link every chat UI shows; with a picture at hand, the picture, linking to the video."""
    lines = []
    if poster:
        lines.append(f"[![第 {index} 个视频的首帧]({md_url(poster)})]({md_url(url)})")
    extra = f" · 种子：{seed}" if seed is not None else ""
    lines.append(f"{VIDEO_MARK}{index} 个视频（MP4）]({md_url(url)}){extra}")
    lines += [f"⚠️ {md(zh(note))}" for note in notes]
    return "\n".join(lines) + "\n\n"


def video_page(status: str, progress: int, error: str) -> str:
    """`/videos/{id}` for a person whose chat ended before the video: both languages (plain text)."""
    return {
        "queued": "视频还在排队，请稍后刷新。 (queued: refresh later)",
        "in_progress": f"视频生成中（{progress}%），请稍后刷新。 (in progress: refresh later)",
        "failed": f"视频没有生成 (failed): {error}",
        "completed": "视频已过期：没有保存，上游链接已失效。 (expired: nothing kept it)",
    }[status]


def video_failed(index: int, reason: Reason) -> str:
    return f"⚠️ 第 {index} 个视频没有生成：{md(zh(reason))}\n\n"


INTERNAL_ERROR = "\n\n⚠️ 服务内部错误，回答不完整。"


def chat(events: Iterable[ev.Event]) -> Iterator[str | None]:
    """The drawing's events as the assistant's words, piece by piece (None: a keep-alive).
    Closing it closes the drawing."""
    try:
        yield from _chat(events)
    finally:
        ev.close(events)


def _chat(events: Iterable[ev.Event]) -> Iterator[str | None]:
    p = ev
    alt = ""
    generating = False  # "生成中" said, its ✅ not yet: anything else starts a line of its own
    for event in events:
        if isinstance(event, p.KeepAlive):
            yield None
            continue
        if generating and not isinstance(event, p.Submitted):
            yield "\n\n"
            generating = False
        if isinstance(event, p.Refused):
            yield refusal(event.keyword)
        elif isinstance(event, p.Preparing):
            yield preparing(event.expanding, event.pictures)
        elif isinstance(event, p.PromptReady):
            alt = markdown_safe(event.prompt, limit=300)
            yield _prompt_ready(event)
            yield "提交中" if family(event.job.model).video else "生成中"  # a video is submitted, then made
            generating = True
        elif isinstance(event, p.Submitted):
            yield "✅\n\n"
            generating = False
        elif isinstance(event, p.Queued):
            yield queued(event.waiting, event.ahead, event.next_in, event.cooling)
        elif isinstance(event, p.ImageReady):
            outcome = event.outcome
            links = outcome.links
            assert links is not None
            yield image_markdown(outcome.index, alt, links.image, links.download, links.permanent, links.notes, outcome.seed)
        elif isinstance(event, p.ImageFailed):
            yield image_failed(event.index, event.reason)
        elif isinstance(event, p.VideoSubmitted):
            yield video_submitted(event.index, event.link)
        elif isinstance(event, p.VideoProgress):
            yield video_progress(event.index, event.status, event.position, event.elapsed)
        elif isinstance(event, p.VideoReady):
            yield video_ready(event.index, event.url, event.poster, event.seed, event.notes)
        elif isinstance(event, p.VideoFailed):
            yield video_failed(event.index, event.reason)
        elif isinstance(event, p.Done):
            yield summary(event.delivered, event.count, event.videos)
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
        job.model,
        event.prompt,
        size=draw.size,
        asked_size=draw.asked_size,
        size_adjusted=draw.size_adjusted,
        count=draw.count,
        seeds=event.seeds,
        negative=draw.negative_prompt,
        notes=event.notes,
        expansion_note=note,
    )
