"""The words of chat UIs' background tasks (titles, tags, suggestions, continue): the phrases
chat_tasks.py answers them with, never drawing."""

from __future__ import annotations

# Each is (Chinese, English): the UI's conversation decides which.

TASK_WORDS: dict[str, tuple[str, str]] = {
    "summary": ("用户请本服务画了这些图：{drawn}", "The user asked this image service to draw: {drawn}"),
    "edited": ("图片已经改好，就在上面。", "Your picture is changed, shown above."),
    "ready": ("图片已经画好，就在上面。", "Your picture is ready, shown above."),
    "failed": ("图片没有画成：{reason}", "The picture could not be made: {reason}"),
    "no_reason": ("没有说明原因", "no reason given"),
    "default_title": ("AI 绘画", "Image Generation"),
    "edit_title": ("图片编辑", "Image Editing"),
    "continued": (
        "这条回答已经完整，图片都在上面。想要改动请直接说（例如“换成蓝色”），想要更多请说“再来两张”。",
        'That answer is complete: its pictures are above. Say what to change ("make it blue"), or "two more".',
    ),
}

# (what a request says in Chinese, in English, the tag in Chinese); the English tag is title-cased.
STYLE_TAGS = (
    ("水彩", "watercolor", "水彩"),
    ("油画", "oil painting", "油画"),
    ("动漫", "anime", "动漫"),
    ("二次元", "anime", "动漫"),
    ("像素", "pixel", "像素风"),
    ("写实", "photo", "写实"),
    ("素描", "sketch", "素描"),
    ("赛博朋克", "cyberpunk", "赛博朋克"),
    ("插画", "illustration", "插画"),
)

# Suggested next requests: (a style already asked for in Chinese, in English, the suggestion in each).
NEXT_STYLES = (
    ("水彩", "watercolor", "换成水彩风格", "Make it a watercolor"),
    ("油画", "oil painting", "换成油画风格", "Make it an oil painting"),
    ("赛博朋克", "cyberpunk", "换成赛博朋克风格", "Make it cyberpunk"),
    ("像素", "pixel", "换成像素风", "Make it pixel art"),
    ("动漫", "anime", "换成动漫风格", "Make it anime style"),
)
SUGGEST = {
    "angle": ("换个角度", "Show it from another angle"),
    "tall": ("改成 9:16 竖图", "Make it 9:16"),
    "wide": ("改成 16:9 横图", "Make it 16:9"),
    "background": ("把背景换成海边", "Change the background to a beach"),
    "two_more": ("再画两张 pic:2", "Two more pic:2"),
    "again": ("再来一张", "Draw it again"),
    "detail": ("给它加一顶小帽子", "Give it a small hat"),
}


def task_words(key: str, zh: bool, **params: str) -> str:
    """One of TASK_WORDS in the conversation's language."""
    chinese, english = TASK_WORDS[key]
    return (chinese if zh else english).format(**params)
