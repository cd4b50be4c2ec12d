"""Every parser of client-controlled text costs its input's length, not its square.

A request's text is read on the worker's own loop: under gevent nothing else on that worker runs
while a regex backtracks. Each parser is given long runs of the fragments its patterns look for
(alone and two by two), built to make a backtracking regex or a nested loop do quadratic work.
The bound is a thousand times what a linear reading takes: it catches a freeze, not a slowdown.
"""

from __future__ import annotations

import random
import time

import pytest

from api.context import _valid_host
from core import text
from drawing import chat_tasks, conversation, followups
from parsing import find_banned, parse

SIZE = 100_000  # characters per input: a quadratic parser at 20 KB took 0.11 s, at 100 KB seconds
BOUND = 1.5  # seconds; a linear reading of 100 KB takes milliseconds

FRAGMENTS = [
    "数量：1",
    " · 数量：",
    " · 模型：",
    "📐 尺寸：1024x1024",
    "🎨 提示词：",
    "🚫 负面提示词：",
    "![image1|",
    "](http://a",
    "pic:",
    "pic：",
    "pic: 9",
    "seed:",
    "seed=1",
    "--no ",
    "negative:",
    "负面提示词：",
    "比例",
    "16:9",
    "9:16比例",
    "1024x",
    "x1024",
    "1024×768",
    "１６：９",
    "横屏",
    "portrait ",
    "a ",
    " ",
    "\\[",
    "\\",
    "sk-",
    "bearer ",
    "token=",
    "1|",
    "aaaa",
    "<attached_files>",
    "<file ",
    "/>",
    "### Task:",
    "<chat_history>",
    "USER: ",
    "user: ",
    "\n",
    "，",
    "再来",
    "再来一张",
    "换成",
    "画一只",
    "draw a ",
    "again ",
    "http://",
    "www.",
    "@",
    "//",
    ":",
    "\u200b",
    "12:30",
    "<context>Image generation was attempted but failed",
    "the following error occurred:",
    '{"title":',
]

PARSERS = {
    "parse": lambda text: parse(text, "Kwai-Kolors/Kolors", 16),
    "find_banned": lambda text: find_banned(text, ("porn", "nude", "成人")),
    "last_picture": lambda text: followups.last_picture([("user", "a"), ("assistant", text), ("user", "b")]),
    "refinement": lambda text: followups.refinement(
        parse(text, "Kwai-Kolors/Kolors", 16), followups.Picture("a cat", (1024, 1024), 1, "Kwai-Kolors/Kolors", None)
    ),
    "housekeeping": lambda text: chat_tasks.housekeeping([("system", text), ("user", text)]),
    "housekeeping_task": lambda text: chat_tasks.housekeeping(
        [("user", "### Task:\n<chat_history>\n" + text + "\n</chat_history>")]
    ),
    "message_text": lambda text: conversation.message_text(text, 0),
    "title_tags_follow_ups": lambda text: (
        chat_tasks.title(text, True),
        chat_tasks.tags((text,), True),
        chat_tasks.follow_ups((text,), True, "Kwai-Kolors/Kolors"),
    ),
    "md": text.md,
    "markdown_safe": text.markdown_safe,
    "redact": text.redact,
    "redact_secrets": text.redact_secrets,
    "upstream_text": text.upstream_text,
    "valid_host": _valid_host,
}


# What opens a line the follow-up and housekeeping readers look at: a run after one of these is
# what made the size-line reader quadratic ("📐 尺寸：1024x1024" then " · 数量：1" × 30,000).
OPENERS = [
    "🎨 提示词：",
    "📐 尺寸：1024x1024",
    "📐 尺寸：跟随输入图片",
    "🚫 负面提示词：",
    "![image1|a](http://a",
    "### Task:\n<chat_history>\nUSER: ",
    "<context>Image generation was attempted but failed",
    "<attached_files>",
]
LINE_PARSERS = {"parse", "last_picture", "refinement", "housekeeping", "housekeeping_task", "message_text"}


def _inputs(name: str) -> list[tuple[str, str]]:
    chosen = [(fragment, fragment * (SIZE // len(fragment))) for fragment in FRAGMENTS]
    pairs = random.Random(17).sample([(a, b) for a in FRAGMENTS for b in FRAGMENTS if a != b], 60)
    chosen += [(a + b, (a + b) * (SIZE // len(a + b))) for a, b in pairs]
    if name in LINE_PARSERS:
        chosen += [(f"{opener} + {run}", opener + run * (SIZE // len(run))) for opener in OPENERS for run in FRAGMENTS]
    return chosen


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_no_parser_is_held_by_long_runs_of_its_own_fragments(name):
    parser = PARSERS[name]
    slowest = (0.0, "")
    for fragment, body in _inputs(name):
        started = time.perf_counter()
        parser(body)
        took = time.perf_counter() - started
        slowest = max(slowest, (took, fragment))
    assert slowest[0] < BOUND, f"{name} took {slowest[0]:.2f} s on {slowest[1]!r} × {SIZE // len(slowest[1])}"
