"""The words chat UIs' tasks are answered with: each in Chinese and in English, chosen by the
conversation's language; every suggestion offered is a turn the service carries out on the last
picture, and a style already asked for is recognised by its own words, as a tag and as not to be
suggested again."""

from __future__ import annotations

import re

import pytest

from drawing import chat_tasks, followups
from drawing.ui_words import NEXT_STYLES, STYLE_TAGS, SUGGEST, TASK_WORDS, task_words
from parsing import parse
from tests.helpers import rendered

CJK = re.compile(r"[\u4e00-\u9fff]")
LAST = followups.Picture("一只可爱的猫咪", (1024, 1024), 1, "Qwen/Qwen-Image", None, "https://x.example/a.png")
PHRASES = [*TASK_WORDS.values(), *SUGGEST.values(), *((zh, en) for _, _, zh, en in NEXT_STYLES)]


@pytest.mark.parametrize("chinese, english", PHRASES, ids=[en[:24] for _, en in PHRASES])
def test_each_phrase_is_said_in_chinese_and_in_english_as_plain_text(chinese, english):
    assert CJK.search(chinese) and not CJK.search(english)
    for text in (chinese, english):
        assert rendered(text) == {"images": [], "links": [], "html": []}


def test_the_conversations_language_picks_the_words_and_fills_them_in():
    assert task_words("failed", True, reason="余额不足") == "图片没有画成：余额不足"
    assert task_words("failed", False, reason="no balance") == "The picture could not be made: no balance"
    assert task_words("default_title", False) == "Image Generation" and task_words("edit_title", True) == "图片编辑"
    assert task_words("summary", True, drawn="猫；狗") == "用户请本服务画了这些图：猫；狗"


SUGGESTIONS = [pytest.param(key, zh, en, id=key) for key, (zh, en) in SUGGEST.items()] + [
    pytest.param(zh, zh, en, id=en) for _, _, zh, en in NEXT_STYLES
]


@pytest.mark.parametrize("key, chinese, english", SUGGESTIONS)
def test_every_suggestion_sent_back_changes_the_last_picture(key, chinese, english):
    for text in (chinese, english):
        change = followups.refinement(parse(text, "Qwen/Qwen-Image", 4), LAST)
        assert change is not None and change.picture == LAST, text


def test_suggested_shapes_and_counts_are_read_as_asked():
    model = "Qwen/Qwen-Image"
    for key, shape in (("tall", (9, 16)), ("wide", (16, 9))):
        assert all(parse(words, model, 4).asked_shape == shape for words in SUGGEST[key])
    assert all(parse(words, model, 4).count == 2 for words in SUGGEST["two_more"])


def test_the_continue_line_offers_turns_the_service_understands():
    chinese, english = TASK_WORDS["continued"]
    offered = re.findall(r"“([^”]+)”", chinese) + re.findall(r'"([^"]+)"', english)
    assert offered == ["换成蓝色", "再来两张", "make it blue", "two more"]
    for text in offered:
        assert followups.refinement(parse(text, "Kwai-Kolors/Kolors", 4), LAST) is not None, text


@pytest.mark.parametrize("said_zh, said_en, suggestion_zh, suggestion_en", NEXT_STYLES, ids=[row[1] for row in NEXT_STYLES])
def test_a_style_asked_for_is_not_suggested_again(said_zh, said_en, suggestion_zh, suggestion_en):
    assert said_zh in suggestion_zh and said_en in suggestion_en.lower()  # the suggestion names its own style
    for words, zh in ((suggestion_zh, True), (suggestion_en, False)):
        offered = chat_tasks.follow_ups(("画一只猫" if zh else "draw a cat", words), zh, "Qwen/Qwen-Image")
        assert not any(said_zh in item or said_en in item.lower() for item in offered), offered


@pytest.mark.parametrize("chinese, english, tag", STYLE_TAGS, ids=[row[1] + "-" + row[0] for row in STYLE_TAGS])
def test_a_style_in_a_request_becomes_its_tag_in_either_language(chinese, english, tag):
    assert tag in chat_tasks.tags((f"画一只猫，{chinese}",), True)
    assert english.title() in chat_tasks.tags((f"draw a cat, {english}",), False)
