"""The words: every reason the code can give has a Chinese and an English sentence, and the
answer's labels are what the follow-up reader reads back."""

from __future__ import annotations

import re

import pytest

from core.errors import Reason
from drawing import chat_words, followups, reasons, ui_words
from drawing.events import ImageRef
from tests.conftest import ROOT, source_files

CJK = re.compile(r"[\u4e00-\u9fff]")
USED = sorted(
    {code for path in source_files() for code in re.findall(r'Reason\.of\(\s*"(\w+)"', path.read_text())}
    | set(re.findall(r'Reason\.of\(\s*"(\w+)"\s+if', (ROOT / "drawing" / "followups.py").read_text()))
)
SAMPLE = {
    "kb": 256,
    "bucket": "pictures",
    "video_id": "video_0123abcd",
    "left": 1,
    "resets": "00:00 UTC+8",
    "error": "SlowDown",
    "seconds": 4.99857,
    "status": 503,
    "detail": "busy",
    "host": "img.example.com",
    "place": "loopback",
    "type": "text/html",
    "mb": 20,
    "model": "Kwai-Kolors/Kolors",
    "most": 4,
    "tried": 3,
    "chars": 2000,
    "negative": "blur",
    "asked": "16:9",
    "kind": "audio",
    "count": 2,
    "wait": 41.2,
    "message": "quota",
    "pictures": (ImageRef("attached", 1), ImageRef("last")),
    "why": Reason.of("no_balance"),
    "last": Reason.of("gateway_timeout"),
    "attempts": 3,
    "keys": 2,
    "also": None,
    "out": None,
    "total": 4,
    "dead": 1,
    "broke": 1,
    "cooling": 1,
    "causes": ("server",),
    "budget": 1,
}
PARAMS = {
    "host_timeout": {"host": "lsky", "seconds": 3.2},
    "host_unreachable": {"host": "sink"},
    "keys_out": {"total": 4, "dead": 1, "broke": 1, "cooling": 1, "causes": ("server",), "budget": 1, "wait": 41},
}


def _sample(code: str) -> Reason:
    words = reasons.REASONS[code][1]
    names = re.findall(r"{(\w+)", words) if isinstance(words, str) else list(words.__code__.co_varnames)
    params = PARAMS.get(code) or {name: SAMPLE[name] for name in names if name in SAMPLE}
    return Reason.of(code, **params)


def test_every_reason_the_code_gives_has_words():
    assert USED and not [code for code in USED if code not in reasons.REASONS]


@pytest.mark.parametrize("code", sorted(reasons.REASONS))
def test_each_reason_reads_in_chinese_and_in_english(code):
    reason = _sample(code)
    chinese, english = reasons.zh(reason), reasons.en(reason)
    assert CJK.search(chinese), chinese
    assert not CJK.search(english), english
    assert not re.search(r"\d\.\d{2,}", chinese + english)  # times are said rounded


def test_reasons_inside_reasons_are_worded_in_the_same_language():
    reason = Reason.of(
        "after_attempts", last=Reason.of("gateway_timeout"), attempts=3, keys=2, also=Reason.of("too_late", wait=10, out=None)
    )
    assert reasons.zh(reason).startswith("上游处理超时（504）（共尝试 3 次，2 个密钥）；在请求时限")
    assert reasons.en(reason).startswith("SiliconFlow timed out (504) (after 3 attempts on 2 keys); no upstream key")


def test_the_answer_describes_a_drawing_in_lines_the_follow_up_reader_reads_back():
    info = chat_words.prompt_info(
        "Kwai-Kolors/Kolors",
        "一只猫 [x]",
        size="720x1280",
        asked_size="9:16",
        size_adjusted=False,
        count=2,
        seeds=None,
        negative="blur",
        notes=(),
    )
    image = chat_words.image_markdown(1, "一只猫", "https://img.example.com/a.png", None, "https://img.example.com/a.png")
    picture = followups.last_picture([("user", "画"), ("assistant", info + image), ("user", "换成蓝色")])
    assert picture == followups.Picture(
        "一只猫 [x]", (720, 1280), 2, "Kwai-Kolors/Kolors", "blur", "https://img.example.com/a.png"
    )


def test_no_module_but_the_words_builds_a_chinese_sentence():
    """A sentence with parameters in it is words: it belongs here, not in the module that needs it
    (recognition tables such as the chat UIs' templates are data and may stay where they are read)."""
    import ast

    built = [
        f"{path.name}:{node.lineno}"
        for path in source_files()
        if path.name not in ("reasons.py", "chat_words.py", "ui_words.py")  # the words' own modules
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.JoinedStr) and CJK.search(ast.unparse(node))
    ]
    assert built == []


def test_the_housekeeping_answers_come_from_the_words_in_both_languages():
    from drawing import chat_tasks

    drawn = chat_tasks.Task("Open WebUI", "image_done", False, ("画一只猫",), "edited")
    assert chat_tasks.answer(drawn, None) == ui_words.TASK_WORDS["edited"][0]
    failed = chat_tasks.Task("Open WebUI", "image_failed", False, ("draw a cat",), "")
    assert chat_tasks.answer(failed, None) == "The picture could not be made: no reason given"
