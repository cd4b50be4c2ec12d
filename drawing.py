"""Drawing: what happens between a validated request and its answer.

Prompt expansion, moderation of the expanded prompt, the fan-out of `pic:N` over the shared
executor with failover and re-hosting per image, and the assistant's reply as typed events.
Nothing here touches Flask: request handlers pass plain values in (STYLE habit 6).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

import requests
import urllib3

from config import Settings
from parsing import DrawRequest, find_banned, markdown_safe
from uploaders import ImageStore, Links, lasting_links
from upstream import (
    KEY_BROKE,
    KEY_DEAD,
    BalanceRechecker,
    KeyPool,
    UpstreamError,
    expand_prompt,
    generate_with_failover,
    payload_for,
)

log = logging.getLogger("siliconflow_proxy.drawing")


@dataclass(frozen=True)
class Services:
    """What request handlers hand to generators and worker threads: plain values, no Flask."""

    settings: Settings
    pool: KeyPool
    http: urllib3.PoolManager  # SiliconFlow's JSON API
    session: requests.Session  # fetching and re-hosting images
    executor: ThreadPoolExecutor
    rechecker: BalanceRechecker
    store: ImageStore | None


@dataclass(frozen=True)
class Job:
    request_id: str
    model: str
    text: str  # what the user typed, tokens included
    draw: DrawRequest
    public_base: str | None = None  # where this service is reached, for links to stored images


@dataclass(frozen=True)
class Outcome:
    index: int
    links: Links | None = None
    error: str | None = None
    kind: str | None = None  # the UpstreamError kind when it failed


class KeepAlive:
    """An answer event meaning "still working": an SSE comment on the wire, nothing in JSON."""


KEEPALIVE = KeepAlive()
AnswerEvent = str | KeepAlive


def answer(job: Job, services: Services) -> Iterator[AnswerEvent]:
    """The assistant's reply, piece by piece, in the order the user should see it."""
    settings = services.settings
    if banned := find_banned(job.text, settings.banned_keywords):
        yield _refusal(banned)
        return

    deadline = time.monotonic() + settings.request_timeout
    cancelled = threading.Event()
    futures: list[Future] = []
    try:
        prompt, expansion_note = job.draw.prompt, ""
        if settings.prompt_expansion:
            expansion = services.executor.submit(expand, job, services)
            futures.append(expansion)
            yield from _heartbeats_until_done([expansion], settings.heartbeat_seconds)
            prompt, expansion_note = expansion.result()
            if banned := find_banned(prompt, settings.banned_keywords):
                yield _refusal(banned)
                return

        draw = job.draw
        yield _prompt_info(job, prompt, expansion_note)
        yield "生成中"
        payload = payload_for(job.model, prompt, draw.size, draw.seed, draw.negative_prompt)
        images = submit_images(job, payload, services, deadline, cancelled)
        futures.extend(images)
        yield "✅\n\n"
        alt = markdown_safe(prompt, limit=300)
        delivered = 0
        pending = set(images)
        while pending:
            # Each image goes out as soon as it is ready, not after the slowest one.
            done, pending = wait(pending, timeout=settings.heartbeat_seconds, return_when=FIRST_COMPLETED)
            if not done:
                yield KEEPALIVE
            for future in sorted(done, key=images.index):
                outcome = future.result()
                if outcome.links:
                    delivered += 1
                    yield _image_markdown(outcome, alt)
                else:
                    yield f"⚠️ 第 {outcome.index} 张图片生成失败：{outcome.error}\n\n"
        yield f"完成：{delivered}/{draw.count} 张图片生成成功。"
    finally:
        # A client that hung up does not need the images that have not started yet.
        cancelled.set()
        for future in futures:
            future.cancel()


def _heartbeats_until_done(futures: list[Future], every: float) -> Iterator[KeepAlive]:
    while not wait(futures, timeout=every).done:
        yield KEEPALIVE


def expand(job: Job, services: Services) -> tuple[str, str]:
    """Runs on a worker thread: the expanded prompt and a note, or the user's text and why."""
    settings, pool = services.settings, services.pool
    key = pool.acquire()
    if key is None:
        return job.draw.prompt, "（提示词扩充跳过：暂无可用密钥；已使用原始描述）\n"
    try:
        expanded = expand_prompt(
            services.http, settings.api_base_url, key, settings.image_prompt_model,
            job.draw.prompt, settings.expansion_timeout,
        )
    except UpstreamError as exc:
        if exc.kind in KEY_DEAD | KEY_BROKE:  # the same account draws; a chat 429 says nothing of images
            pool.report(key, exc)
        else:
            pool.release(key)
        log.warning("req=%s prompt expansion failed (%s); using the user's text", job.request_id, exc.kind)
        return job.draw.prompt, f"（提示词扩充失败：{exc.message}；已使用原始描述）\n"
    pool.report(key, None)
    return expanded, ""


def _refusal(keyword: str) -> str:
    return f"抱歉，您的请求包含不允许的内容（“{keyword}”），无法生成图片。请修改描述后重试。"


def _prompt_info(job: Job, prompt: str, expansion_note: str) -> str:
    draw = job.draw
    if draw.size is None:
        size = "跟随输入图片"
    elif draw.size_adjusted:
        size = f"{draw.size}（{job.model} 不支持 {draw.asked_size}，已使用最接近的尺寸）"
    else:
        size = draw.size
    extras = f" · 种子：{draw.seed}" if draw.seed is not None else ""
    negative = f"🚫 负面提示词：{' '.join(draw.negative_prompt.split())}\n" if draw.negative_prompt else ""
    notes = "".join(f"ℹ️ {note}\n" for note in draw.notes)
    return (
        f"{expansion_note}🎨 提示词：{' '.join(prompt.split())}\n{negative}"
        f"📐 尺寸：{size} · 数量：{draw.count} · 模型：{job.model}{extras}\n{notes}\n"
    )


def _image_markdown(outcome: Outcome, alt: str) -> str:
    links = outcome.links
    assert links is not None
    n = outcome.index
    lines = [f"![image{n}|{alt}]({_markdown_url(links.image)})"]
    if links.permanent:
        lines.append(
            f"[永久链接]({_markdown_url(links.permanent)}) · "
            f"[上游原图]({_markdown_url(links.download)})（上游链接一小时后失效）"
        )
    else:
        lines.append(f"[下载第 {n} 张]({_markdown_url(links.download)})（上游链接一小时后失效，请及时保存）")
    lines.extend(f"⚠️ {note}" for note in links.notes)
    return "\n".join(lines) + "\n\n"


def _markdown_url(url: str) -> str:
    """A URL that cannot end a Markdown link early."""
    return url.replace(" ", "%20").replace("(", "%28").replace(")", "%29").replace("<", "%3C").replace(">", "%3E")


def make_image(
    index: int, payload: dict[str, Any], services: Services, deadline: float, cancelled: threading.Event, job: Job
) -> Outcome:
    """Runs on a worker thread: one image with failover over keys, then re-hosted; failures become reasons.

    Re-hosting happens here, right after this image is made, while the other images are still
    being drawn.
    """
    settings = services.settings
    if cancelled.is_set():
        return Outcome(index, error="客户端已断开")
    try:
        url = generate_with_failover(
            services.http, settings.api_base_url, services.pool, payload,
            timeout=settings.upstream_timeout, deadline=deadline, max_attempts=settings.max_key_attempts,
            cancelled=cancelled, label=f"req={job.request_id} image {index}",
        )
        if cancelled.is_set():
            return Outcome(index, error="客户端已断开")
        links = lasting_links(services.session, settings, services.store, url, job.public_base)
    except UpstreamError as exc:
        if exc.kind != "cancelled":
            log.warning("req=%s image %d failed: %s", job.request_id, index, exc.kind)
        return Outcome(index, error=exc.message, kind=exc.kind)
    except Exception:  # a bug must cost one image, not the whole stream
        log.exception("req=%s image %d: unexpected error", job.request_id, index)
        return Outcome(index, error="服务内部错误")
    for note in links.notes:
        log.warning("req=%s image %d: %s", job.request_id, index, note)
    return Outcome(index, links=links)


def submit_images(
    job: Job, payload: dict[str, Any], services: Services, deadline: float, cancelled: threading.Event
) -> list[Future[Outcome]]:
    """Start every image of `job` on the shared executor; setting `cancelled` stops those not begun."""
    return [
        services.executor.submit(make_image, index, payload, services, deadline, cancelled, job)
        for index in range(1, job.draw.count + 1)
    ]


def draw_all(job: Job, payload: dict[str, Any], services: Services) -> list[Outcome]:
    """Every image of `job`, in parallel on the shared pool, each with failover and re-hosting."""
    cancelled = threading.Event()
    futures = submit_images(job, payload, services, time.monotonic() + services.settings.request_timeout, cancelled)
    try:
        return [future.result() for future in futures]
    finally:
        cancelled.set()
        for future in futures:
            future.cancel()


def guarded(pieces: Iterator[AnswerEvent], request_id: str) -> Iterator[AnswerEvent]:
    """`pieces`, with a bug turned into one plain line instead of a broken response."""
    try:
        yield from pieces
    except Exception:
        log.exception("req=%s unexpected error while answering", request_id)
        yield "\n\n⚠️ 服务内部错误，回答不完整。"
    finally:
        pieces.close()  # type: ignore[attr-defined]
