"""The chat answer's lines, from the drawing's events: the prompt and its size, each picture's
line and links, each failure in Chinese, the done line "完成：n/m", the video lines; only the lines
built here carry Markdown images and links, and the follow-up reader reads the answer back."""

from __future__ import annotations

import pytest

from core.errors import Failure, Reason
from drawing import chat_words, followups
from drawing import events as ev
from drawing.chat_words import IMAGE_LINE, SUMMARY_LINE, chat, image_markdown, seeds_text, summary, video_page
from parsing import parse
from tests.helpers import images_in, rendered
from uploaders import Links

KOLORS, EDIT, T2V = "Kwai-Kolors/Kolors", "Qwen/Qwen-Image-Edit-2509", "Wan-AI/Wan2.2-T2V-A14B"
KEPT = "https://draw.example.org/images/ab12.png"
UPSTREAM = "https://sf.example.com/outputs/a.png?Expires=1&Signature=x"


def _ready(text: str, model: str = KOLORS, prompt: str | None = None, **kwargs) -> ev.PromptReady:
    draw = parse(text, model, 4)
    job = ev.Job("req1", model, text, draw)
    defaults = {"seeds": None, "notes": draw.notes, "expansion": None}
    return ev.PromptReady(job, prompt if prompt is not None else draw.prompt, **{**defaults, **kwargs})


def _picture(index: int, **links) -> ev.ImageReady:
    shown = {"image": KEPT, "download": UPSTREAM, "permanent": KEPT, "notes": (), **links}
    return ev.ImageReady(ev.Outcome(index, Links(**shown), seed=links.pop("seed", None)))


def _said(events: list) -> str:
    return "".join(piece for piece in chat(events) if piece is not None)


def test_a_drawing_is_its_prompt_its_pictures_each_failure_and_the_done_line():
    said = _said(
        [
            _ready("画一只猫，9:16 pic:2"),
            ev.Submitted(),
            _picture(1),
            ev.ImageFailed(2, Reason.of("key_invalid"), Failure.AUTH),
            ev.Done(1, 2),
        ]
    )
    lines = said.split("\n")
    assert lines[0] == "🎨 提示词：画一只猫" and lines[1] == "📐 尺寸：720x1280 · 数量：2 · 模型：Kwai-Kolors/Kolors"
    assert "生成中✅\n\n" in said and said.endswith(
        "⚠️ 第 2 张图片生成失败：上游 API 密钥无效或已被吊销（401）\n\n完成：1/2 张图片生成成功。"
    )
    assert images_in(said) == {1: KEPT} and rendered(said)["images"] == [KEPT]
    assert [int(n) for n in SUMMARY_LINE.search(said).groups()] == [1, 2]


def test_a_picture_line_gives_the_lasting_link_and_says_how_long_the_upstreams_lasts():
    both = image_markdown(1, "一只猫", KEPT, UPSTREAM, KEPT, seed=42)
    assert both.splitlines()[1] == f"[永久链接]({KEPT}) · [上游原图]({UPSTREAM})（上游链接一小时后失效） · 种子：42"
    inline = image_markdown(2, "一只猫", KEPT, None, KEPT)
    assert inline.splitlines()[1] == f"[永久链接]({KEPT})"  # no upstream link to give
    nothing_kept = image_markdown(3, "一只猫", UPSTREAM, UPSTREAM, None, notes=(Reason.of("no_public_base"),))
    assert nothing_kept.splitlines()[1] == f"[下载第 3 张]({UPSTREAM})（上游链接一小时后失效，请及时保存）"
    assert nothing_kept.splitlines()[2].startswith("⚠️ 图片未保存到本机") and nothing_kept.endswith("\n\n")
    for line in (both, inline, nothing_kept):
        [(number, alt, url)] = IMAGE_LINE.findall(line)
        assert alt == "一只猫" and url in (KEPT, UPSTREAM)


def test_only_the_services_own_links_render_whatever_the_prompt_and_the_upstream_said():
    hostile = "a cat](http://evil.example/x.png) <img src=x> www.evil.example"
    upstream = Reason.of("upstream_refused", status=400, detail="see [here](http://evil.example/) <b>")
    said = _said(
        [
            _ready(hostile),
            ev.Submitted(),
            _picture(1),
            ev.ImageFailed(2, upstream),
            ev.Refused("<script>"),
            ev.Done(1, 2),
        ]
    )
    assert rendered(said) == {"images": [KEPT], "links": [KEPT, UPSTREAM], "html": []}


def test_what_the_answer_says_of_a_drawing_is_what_the_follow_up_reader_reads_back():
    said = _said([_ready("画一只猫 16:9 pic:2 --no 模糊", seeds=[7, 8]), ev.Submitted(), _picture(1), ev.Done(1, 2)])
    assert "（Kwai-Kolors/Kolors 不支持 16:9，已使用最接近的尺寸）" in said and " · 种子：7–8（每张 +1）" in said
    picture = followups.last_picture([("user", "画一只猫"), ("assistant", said), ("user", "换成蓝色")])
    assert picture == followups.Picture("画一只猫", (1024, 1024), 2, KOLORS, "模糊", KEPT)
    edit = _said([_ready("换成蓝色", model=EDIT), ev.Submitted(), _picture(1), ev.Done(1, 1)])
    assert f"{chat_words.SIZE_LABEL}{chat_words.FOLLOWS_INPUT}" in edit
    assert followups.last_picture([("assistant", edit), ("user", "再来一张")]).size is None


def test_a_rewritten_prompt_that_failed_or_was_skipped_is_said_before_it():
    failed = ev.Expansion("画一只猫", failed=Reason.of("expansion_empty"))
    said = _said([_ready("画一只猫", expansion=failed), ev.Submitted(), ev.Done(0, 1)])
    assert said.startswith("（提示词扩充失败：提示词扩充没有返回内容；已使用原始描述）\n🎨 提示词：画一只猫")
    skipped = ev.Expansion("画一只猫", skipped=Reason.of("no_key_for_expansion"))
    assert _said([_ready("画一只猫", expansion=skipped)]).startswith("（提示词扩充跳过：暂无可用密钥；已使用原始描述）")


def test_waiting_is_said_on_a_line_of_its_own_and_keep_alives_are_nothing():
    pieces = list(chat([_ready("画一只猫"), ev.KEEPALIVE, ev.Queued(2, 1, 12.4, cooling=1), ev.Submitted(), ev.Done(0, 1)]))
    assert None in pieces
    said = "".join(piece for piece in pieces if piece is not None)
    assert "生成中\n\n⏳ 排队等候上游名额：本次还有 2 张在等，前面还有 1 个请求在排，下一个名额约 12 秒后空出" in said
    assert "（1 个密钥出错后冷却中或不可用，其余账户限额用完后按时段恢复）" in said
    assert chat_words.queued(1, 0, None) == "⏳ 排队等候上游名额：本次还有 1 张在等（账户限额用完后按时段恢复）\n\n"


@pytest.mark.parametrize(
    "expanding, pictures, said",
    [(True, 0, "✍️ 正在完善提示词…"), (False, 2, "📥 正在读取输入图片…"), (True, 1, "✍️ 正在读取输入图片并完善提示词…")],
)
def test_the_first_line_says_what_is_being_waited_for(expanding, pictures, said):
    assert _said([ev.Preparing(expanding, pictures)]) == said + "\n\n"


def test_a_video_is_submitted_followed_and_linked_with_its_first_frame():
    link = "https://draw.example.org/videos/video_1"
    clip, poster = "https://draw.example.org/images/c.mp4", "https://draw.example.org/images/f.png"
    said = _said(
        [
            _ready("一只猫在奔跑", model=T2V),
            ev.Submitted(),
            ev.VideoSubmitted(1, "video_1", link),
            ev.VideoProgress(1, "queued", 3, 4.2),
            ev.VideoProgress(1, "in_progress", None, 61.5),
            ev.VideoReady(1, "video_1", clip, poster, seed=4242),
            ev.Done(1, 1, videos=True),
        ]
    )
    assert "提交中✅" in said and f"做好后可在[这里取回]({link})。" in said
    assert "⏳ 第 1 个视频排队中（前面还有 3 个），已等 4 秒" in said and "⏳ 第 1 个视频生成中，已用 62 秒" in said
    assert f"[![第 1 个视频的首帧]({poster})]({clip})\n{chat_words.VIDEO_MARK}1 个视频（MP4）]({clip}) · 种子：4242" in said
    assert said.endswith("完成：1/1 个视频生成成功。") and rendered(said)["images"] == [poster]
    failed = _said([ev.VideoFailed(2, Reason.of("video_timeout", seconds=1800))])
    assert failed.startswith("⚠️ 第 2 个视频没有生成：")


def test_a_bug_cuts_the_answer_with_a_plain_line_and_closing_the_words_closes_the_drawing():
    cut = _said([_ready("画一只猫"), ev.Broken()])
    assert cut.endswith("\n\n⚠️ 服务内部错误，回答不完整。") and "生成中\n" in cut  # a line of its own
    closed = []

    def drawing():
        try:
            yield _ready("画一只猫")
            yield ev.Submitted()
        finally:
            closed.append(True)

    events = drawing()
    words = chat(events)
    next(words)
    words.close()
    assert closed == [True]


@pytest.mark.parametrize(
    "seeds, said", [([5], "5"), ([5, 6, 7], "5–7（每张 +1）"), ([9999999998, 9999999999, 0], "9999999998、9999999999、0")]
)
def test_seeds_are_said_as_one_a_range_or_a_list_past_the_largest(seeds, said):
    assert seeds_text(seeds) == said


def test_the_done_line_counts_pictures_or_videos():
    assert summary(0, 3) == "完成：0/3 张图片生成成功。" and summary(2, 2, videos=True) == "完成：2/2 个视频生成成功。"


@pytest.mark.parametrize(
    "status, says",
    [("queued", "refresh later"), ("in_progress", "（40%）"), ("failed", "(failed): why"), ("completed", "expired")],
)
def test_a_videos_own_page_speaks_both_languages(status, says):
    page = video_page(status, 40, "why")
    assert says in page and any("\u4e00" <= ch <= "\u9fff" for ch in page)
