"""Drawing inside a conversation: follow-ups that change the last picture, read back from the
service's own answer, through the real OpenAI clients; an edit model told what it cannot do, and
"continue" answered without drawing. (Chat UIs' background tasks: test_chat_tasks.py.)"""

from __future__ import annotations

import json
import subprocess

import openai
import pytest

from tests.drawing.chats import FIRST, ask
from tests.helpers import answer_text, images_in
from tests.test_clients import LEGACY_SCRIPT


def test_an_edit_that_only_asks_for_a_ratio_is_told_not_drawn(serve, fake):
    service = serve(prompt_expansion=False)
    first = answer_text(service.url, "画一只猫", stream=False)
    history = [{"role": "user", "content": "画一只猫"}, {"role": "assistant", "content": first}]
    answer = ask(service, [*history, {"role": "user", "content": "改成 16:9"}], model="Qwen/Qwen-Image-Edit-2509")
    assert "16:9 没有使用" in answer and "没有要修改的内容" in answer and "0/1" in answer
    assert len(fake.state.image_calls()) == 1  # the first picture only


# --- follow-ups change the last picture ------------------------------------------------------------


def test_a_follow_up_changes_the_last_picture_with_expansion(chat, fake):
    service, history = chat
    fake.state.expansion_mode = "helpful"  # a chat model that rewrites the prompt as asked
    before = len(fake.state.image_calls())
    answer = ask(service, [*history, {"role": "user", "content": "换成蓝色"}])
    calls = fake.state.image_calls()[before:]
    assert len(calls) == 2  # the count carried over
    assert {c.body["image_size"] for c in calls} == {"720x1280"}  # 9:16 on Kolors, carried over
    prompt = calls[0].body["prompt"]
    assert "猫咪" in prompt and "蓝色" in prompt  # the chat model saw the old picture and the change
    refine = fake.state.chat_calls()[-1].body["messages"]
    assert "Previous prompt" in refine[-1]["content"] and "换成蓝色" in refine[-1]["content"]
    assert "rewritten so that: 换成蓝色" in prompt  # the chat model's rewrite is what is drawn
    assert "沿用上一张的描述、尺寸、数量和模型" in answer and "猫咪" in answer.split("🎨 提示词：")[1].split("\n")[0]
    assert "提示词扩充失败" not in answer


def test_a_follow_up_without_expansion_combines_plainly(serve, fake):
    service = serve(prompt_expansion=False)
    first = answer_text(service.url, FIRST, stream=False)
    history = [{"role": "user", "content": FIRST}, {"role": "assistant", "content": first}]
    ask(service, [*history, {"role": "user", "content": "换成蓝色"}])
    assert {c.body["prompt"] for c in fake.state.image_calls()[2:]} == {"画一只可爱的猫咪, 换成蓝色"}


@pytest.mark.parametrize(
    "turn, count, size, same_prompt",
    [
        ("再来一张", 1, "720x1280", True),
        ("16:9", 2, "1024x1024", True),  # 16:9 replaces 9:16 (Kolors has no landscape size: its nearest)
        ("换成水彩风格 pic:3", 3, "720x1280", False),
        ("again", 1, "720x1280", True),
    ],
)
def test_what_the_new_turn_says_wins(serve, fake, turn, count, size, same_prompt):
    service = serve(prompt_expansion=False)
    first = answer_text(service.url, FIRST, stream=False)
    history = [{"role": "user", "content": FIRST}, {"role": "assistant", "content": first}]
    ask(service, [*history, {"role": "user", "content": turn}])
    calls = fake.state.image_calls()[2:]
    assert len(calls) == count and {c.body["image_size"] for c in calls} == {size}
    assert ({c.body["prompt"] for c in calls} == {"画一只可爱的猫咪"}) == same_prompt


def test_a_new_subject_starts_afresh(serve, fake):
    service = serve(prompt_expansion=False)
    first = answer_text(service.url, FIRST, stream=False)
    history = [{"role": "user", "content": FIRST}, {"role": "assistant", "content": first}]
    answer = ask(service, [*history, {"role": "user", "content": "画一只狗"}])
    calls = fake.state.image_calls()[2:]
    assert [c.body["prompt"] for c in calls] == ["画一只狗"] and calls[0].body["image_size"] == "1024x1024"
    assert "沿用上一张" not in answer


@pytest.mark.parametrize("stream", [False, True])
def test_follow_ups_through_openai_v1(chat, fake, stream):
    service, history = chat
    client = openai.OpenAI(base_url=f"{service.url}/v1", api_key="x", max_retries=0, timeout=60)
    before = len(fake.state.image_calls())
    messages = [*history, {"role": "user", "content": "换成蓝色"}]
    if stream:
        content = "".join(
            c.choices[0].delta.content or ""
            for c in client.chat.completions.create(model="Kwai-Kolors/Kolors", messages=messages, stream=True)
        )
    else:
        content = client.chat.completions.create(model="Kwai-Kolors/Kolors", messages=messages).choices[0].message.content
    calls = fake.state.image_calls()[before:]
    assert len(images_in(content)) == 2 and {c.body["image_size"] for c in calls} == {"720x1280"}
    assert all("猫咪" in c.body["prompt"] and "蓝色" in c.body["prompt"] for c in calls)


@pytest.mark.parametrize("mode", ["plain", "stream"])
def test_follow_ups_through_legacy_openai(chat, fake, legacy_python, mode):
    service, history = chat
    before = len(fake.state.image_calls())
    messages = json.dumps([*history, {"role": "user", "content": "换成蓝色"}], ensure_ascii=False)
    result = subprocess.run(
        [legacy_python, str(LEGACY_SCRIPT), service.url, "x", mode, messages], capture_output=True, text=True, timeout=120
    )
    out = json.loads(result.stdout.strip().splitlines()[-1])
    calls = fake.state.image_calls()[before:]
    assert len(images_in(out["content"])) == 2 and {c.body["image_size"] for c in calls} == {"720x1280"}
    assert all("猫咪" in c.body["prompt"] and "蓝色" in c.body["prompt"] for c in calls)


# --- what a real chat UI showed (Open WebUI 0.12.4, driven in Chromium) ------------------------------


def test_an_expansion_that_echoes_the_change_is_not_drawn_as_is(chat, fake):
    service, history = chat
    fake.state.expansion_mode = "ok"  # echoes "Previous prompt: … Change: …" back
    before = len(fake.state.image_calls())
    answer = ask(service, [*history, {"role": "user", "content": "换成蓝色"}])
    prompts = {c.body["prompt"] for c in fake.state.image_calls()[before:]}
    assert len(prompts) == 1 and not any("Previous prompt" in p or "Change:" in p for p in prompts)
    assert "蓝色" in prompts.pop() and "Previous prompt" not in answer


# --- the turns people type after a picture (issue 19's table, and more in test_followups.py) ------

# (the turn, pictures drawn, words the drawn prompt has, words it must not have)
NEXT_TURNS = [
    ("再来一张，换成蓝色", 1, ("猫咪", "蓝色"), ("再来",)),
    ("再画一张蓝色的", 1, ("猫咪", "蓝色"), ("再画",)),
    ("再来两张", 2, ("画一只可爱的猫咪",), ("再来",)),
    ("同样的再来一张", 1, ("画一只可爱的猫咪",), ("同样", "再来")),
    ("可以再来一张吗", 1, ("画一只可爱的猫咪",), ("可以", "吗")),
    ("one more, make it blue", 1, ("猫咪", "make it blue"), ("one more",)),
    ("换成蓝色，再来一张", 1, ("猫咪", "换成蓝色"), ("再来",)),
    ("添加详情", 2, ("猫咪", "细节"), ("添加详情",)),
]


@pytest.mark.parametrize("expansion", [False, True], ids=["plain", "expanded"])
@pytest.mark.parametrize("turn, count, has, lacks", NEXT_TURNS, ids=[row[0] for row in NEXT_TURNS])
def test_a_next_turn_does_what_was_meant(serve, fake, turn, count, has, lacks, expansion):
    service = serve(prompt_expansion=expansion)
    fake.state.expansion_mode = "helpful"
    first = answer_text(service.url, FIRST, stream=False)
    history = [{"role": "user", "content": FIRST}, {"role": "assistant", "content": first}]
    answer = ask(service, [*history, {"role": "user", "content": turn}], stream=expansion)
    calls = fake.state.image_calls()[2:]
    assert len(calls) == count and len(images_in(answer)) == count, answer
    assert {c.body["image_size"] for c in calls} == {"720x1280"}  # the 9:16 carried over
    for call in calls:
        assert all(word in call.body["prompt"] for word in has), call.body["prompt"]
        assert not any(word in call.body["prompt"] for word in lacks), call.body["prompt"]
    assert "沿用上一张" in answer


@pytest.mark.parametrize("stream", [False, True])
def test_continue_after_a_whole_answer_draws_nothing_and_says_so(chat, fake, stream):
    """Open WebUI's 继续回答 sends the history ending with our answer."""
    service, history = chat
    before = len(fake.state.image_calls())
    answer = ask(service, history, stream=stream)
    assert "回答已经完整" in answer and fake.state.image_calls()[before:] == []
    # Open WebUI appends it to the answer it continues: on a line of its own, not glued to "完成：2/2…".
    assert answer.startswith("\n\n这条回答")
    english = [{"role": "user", "content": "draw a cat"}, {"role": "assistant", "content": "![image1|a cat](https://x/a.png)"}]
    assert "answer is complete" in ask(service, english, stream=stream)


def test_an_edit_models_again_words_are_not_its_instruction(chat, fake):
    """Our own suggestion "再画两张 pic:2" sent to an edit model: nothing to change is said, not drawn."""
    service, history = chat
    before = len(fake.state.image_calls())
    answer = ask(service, [*history, {"role": "user", "content": "再画两张 pic:2"}], model="Qwen/Qwen-Image-Edit-2509")
    assert "没有要修改的内容" in answer and fake.state.image_calls()[before:] == []
    answer = ask(service, [*history, {"role": "user", "content": "再来一张，换成蓝色"}], model="Qwen/Qwen-Image-Edit-2509")
    assert [c.body["prompt"] for c in fake.state.image_calls()[before:]] == ["换成蓝色"]


@pytest.mark.parametrize("turn", ["再来一张，换成蓝色", "再来两张"])
def test_next_turns_through_openai_v1_and_legacy(chat, fake, legacy_python, turn):
    service, history = chat
    messages = [*history, {"role": "user", "content": turn}]
    client = openai.OpenAI(base_url=f"{service.url}/v1", api_key="x", max_retries=0, timeout=60)
    before = len(fake.state.image_calls())
    content = "".join(
        c.choices[0].delta.content or ""
        for c in client.chat.completions.create(model="Kwai-Kolors/Kolors", messages=messages, stream=True)
        if c.choices
    )
    v1_calls = fake.state.image_calls()[before:]
    result = subprocess.run(
        [legacy_python, str(LEGACY_SCRIPT), service.url, "x", "plain", json.dumps(messages, ensure_ascii=False)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    legacy = json.loads(result.stdout.strip().splitlines()[-1])["content"]
    legacy_calls = fake.state.image_calls()[before + len(v1_calls) :]
    want = 2 if "两张" in turn else 1
    assert len(v1_calls) == len(legacy_calls) == want and len(images_in(content)) == len(images_in(legacy)) == want
    assert all(("蓝色" in c.body["prompt"]) == ("蓝色" in turn) for c in v1_calls + legacy_calls)
