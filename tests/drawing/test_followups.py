"""followups.py on its own: what a next turn asks of the last picture, as people type it."""

from __future__ import annotations

import pytest

from drawing import followups
from drawing.followups import Picture, carried_over, instruction, refinement
from parsing import parse

KOLORS = "Kwai-Kolors/Kolors"
CAT = Picture("画一只可爱的猫咪", (720, 1280), 2, KOLORS, "模糊", "https://img.example.com/cat.png")
AGAIN, NEW = "again", None  # a row's change: "again" draws the same again; None starts afresh

# (the turn, the change kept, how many pictures)
TURNS = [
    # the same again, counted in digits, words and pic:N
    ("再来一张", AGAIN, 1),
    ("再来两张", AGAIN, 2),
    ("再画三张", AGAIN, 3),
    ("来两张", AGAIN, 2),
    ("再来 3 张", AGAIN, 3),
    ("多画几张", AGAIN, 3),
    ("重画", AGAIN, 1),
    ("重新生成一张", AGAIN, 1),
    ("换一张", AGAIN, 1),
    ("同样的再来一张", AGAIN, 1),
    ("再来一张一样的", AGAIN, 1),
    ("可以再来一张吗", AGAIN, 1),
    ("请再画一张吧，谢谢", AGAIN, 1),
    ("帮我再生成两张好吗？", AGAIN, 2),
    ("再画两张 pic:2", AGAIN, 2),
    ("再来一张 pic:3", AGAIN, 3),
    ("again", AGAIN, 1),
    ("Again please", AGAIN, 1),
    ("one more", AGAIN, 1),
    ("two more please", AGAIN, 2),
    ("give me 3 more", AGAIN, 3),
    ("a couple more", AGAIN, 2),
    ("another one", AGAIN, 1),
    ("Could you draw it again?", AGAIN, 1),
    ("redo", AGAIN, 1),
    # again with a change: the change is kept, the count is the again's
    ("再来一张，换成蓝色", "换成蓝色", 1),
    ("换成蓝色，再来一张", "换成蓝色", 1),
    ("再画一张蓝色的", "蓝色的", 1),
    ("再来两张，背景换成海边", "背景换成海边", 2),
    ("换成蓝色并且再来两张", "换成蓝色", 2),
    ("再来三张水彩风格的", "水彩风格的", 3),
    ("可以再来一张戴帽子的吗", "戴帽子的", 1),
    ("再来一个蓝色的", "蓝色的", 1),
    ("one more, make it blue", "make it blue", 1),
    ("make it blue, and one more", "make it blue", 1),
    ("two more in watercolor please", "in watercolor", 2),
    ("another one with a red hat", "with a red hat", 1),
    # a change alone: the last picture's count
    ("换成蓝色", "换成蓝色", 2),
    ("请把背景换成海边", "把背景换成海边", 2),
    ("再大一点", "再大一点", 2),
    ("make it blue please", "make it blue", 2),
    ("Make it a watercolor", "Make it a watercolor", 2),
    # a chat UI's own buttons
    ("添加详情", "添加更多细节，细节丰富", 2),
    ("Add Details", "add more details, highly detailed", 2),
    ("精炼表达", "画面更简洁，元素更少", 2),
    ("More Concise", "simpler, cleaner composition with fewer elements", 2),
    # a picture of its own
    ("画一只狗", NEW, None),
    ("再画一只狗", NEW, None),
    ("来两只狗", NEW, None),
    ("a cat in space", NEW, None),
    ("draw a dog on the beach", NEW, None),
    ("一座雪山下的小木屋，清晨的阳光", NEW, None),
]


@pytest.mark.parametrize("turn, change, count", TURNS)
def test_a_turn_is_read_whole(turn, change, count):
    parsed = parse(turn, KOLORS, 4)
    refined = refinement(parsed, CAT)
    if change is NEW:
        assert refined is None
        return
    assert refined is not None
    assert refined.change == ("" if change is AGAIN else change)
    drawn = carried_over(parsed, refined, KOLORS, 4)
    assert drawn.count == count
    assert drawn.prompt == refined.change  # no "again", no "please" left in what is drawn
    assert drawn.size == "720x1280" and drawn.negative_prompt == "模糊"  # size and negative carried over


def test_what_the_turn_says_wins_over_what_is_carried():
    parsed = parse("再来两张，16:9\n负面：文字", KOLORS, 4)
    drawn = carried_over(parsed, refinement(parsed, CAT), KOLORS, 4)
    assert drawn.count == 2 and drawn.size != "720x1280" and drawn.negative_prompt == "文字"


def test_a_count_past_the_most_is_the_most():
    parsed = parse("再来十张", KOLORS, 4)
    assert carried_over(parsed, refinement(parsed, CAT), KOLORS, 4).count == 4


def test_nothing_to_refine_without_a_picture():
    assert refinement(parse("再来一张，换成蓝色", KOLORS, 4), None) is None


@pytest.mark.parametrize(
    "turn, instruction_left, count",
    [
        ("再画两张", "", 2),
        ("再来一张，换成蓝色", "换成蓝色", 1),
        ("把猫换成蓝色", "把猫换成蓝色", 1),
        ("添加详情", "添加更多细节，细节丰富", 1),
    ],
)
def test_an_edit_instruction_has_no_again_words(turn, instruction_left, count):
    edited = instruction(parse(turn, "Qwen/Qwen-Image-Edit-2509", 4), 4)
    assert edited.prompt == instruction_left and edited.count == count


def test_the_chat_ui_actions_are_the_labels_open_webui_sends():
    """Open WebUI's regenerate menu sends its label as the next user message, in the UI's language."""
    assert {"添加详情", "精炼表达", "add details", "more concise"} <= set(followups.UI_ACTIONS)
