"""Drawing inside a conversation: chat UIs' background tasks answered in their shape without a
picture drawn (their real templates, from their packages), and follow-ups that change the last
picture, through the real OpenAI clients."""

from __future__ import annotations

import json
import re
import subprocess

import openai
import pytest
import requests

from tests.helpers import answer_text, images_in, post_chat, rendered, stream_chunks
from tests.test_clients import LEGACY_SCRIPT
from tests.ui_templates import (
    librechat_title_prompt,
    lobechat_title_system,
    open_webui_image_contexts,
    open_webui_templates,
    parse_like_open_webui,
    render_librechat,
    render_lobechat,
    render_open_webui,
)

FIRST = "画一只可爱的猫咪，9:16比例 pic:2"


@pytest.fixture
def chat(serve, fake):
    """The service, a first drawing made through it, and the conversation so far."""
    service = serve()
    answer = answer_text(service.url, FIRST, stream=False)
    assert len(images_in(answer)) == 2
    return service, [{"role": "user", "content": FIRST}, {"role": "assistant", "content": answer}]


def _ask(service, messages: list[dict], *, stream: bool = False, model: str = "Kwai-Kolors/Kolors", **extra) -> str:
    body = {"model": model, "messages": messages, "stream": stream, **extra}
    response = post_chat(service.url, body, stream=stream)
    assert response.status_code == 200, response.text
    if stream:
        chunks, raw = stream_chunks(response)
        assert raw[-1] == "[DONE]"
        return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    return response.json()["choices"][0]["message"]["content"]


# --- housekeeping: Open WebUI's own templates ------------------------------------------------------

OPEN_WEBUI_TASKS = {
    "DEFAULT_TITLE_GENERATION_PROMPT_TEMPLATE": "title",
    "DEFAULT_TAGS_GENERATION_PROMPT_TEMPLATE": "tags",
    "DEFAULT_FOLLOW_UP_GENERATION_PROMPT_TEMPLATE": "follow_ups",
    "DEFAULT_QUERY_GENERATION_PROMPT_TEMPLATE": "queries",
    "DEFAULT_AUTOCOMPLETE_GENERATION_PROMPT_TEMPLATE": "text",
    "DEFAULT_IMAGE_PROMPT_GENERATION_PROMPT_TEMPLATE": "prompt",
}


@pytest.mark.parametrize("helpful", [True, False], ids=["chat model answers", "chat model down"])
@pytest.mark.parametrize("template, key", OPEN_WEBUI_TASKS.items())
def test_open_webui_tasks_are_answered_in_their_shape_and_nothing_is_drawn(chat, fake, template, key, helpful):
    service, history = chat
    fake.state.expansion_mode = "helpful" if helpful else "fail"
    calls = len(fake.state.image_calls())
    task = render_open_webui(open_webui_templates()[template], history)
    answer = _ask(service, [{"role": "user", "content": task}], max_tokens=1000)
    value = parse_like_open_webui(answer)[key]
    assert len(fake.state.image_calls()) == calls  # not one picture drawn for a task
    if key == "title":
        assert value == ("可爱橘猫" if helpful else "可爱的猫咪")
        assert not set(value) & set("'\"‘’`")
    elif key == "tags":
        assert value == (["动物", "插画"] if helpful else ["AI 绘画", "可爱的猫咪"])
    elif key == "follow_ups":
        assert 3 <= len(value) <= 5 and all(isinstance(item, str) and len(item) <= 400 for item in value)
        assert not any("Suggested" in item or "tag" in item for item in value)  # not the template's own example
    elif key == "queries":
        assert value == []
    elif key == "text":
        assert value == ""
    else:
        assert value == FIRST


def test_open_webui_follow_ups_are_real_drawing_requests(chat, fake):
    """Each suggestion, sent back as the next message, changes the picture: it is a drawing request."""
    service, history = chat
    fake.state.expansion_mode = "fail"  # the local suggestions
    task = render_open_webui(open_webui_templates()["DEFAULT_FOLLOW_UP_GENERATION_PROMPT_TEMPLATE"], history)
    suggestions = parse_like_open_webui(_ask(service, [{"role": "user", "content": task}]))["follow_ups"]
    fake.state.expansion_mode = "ok"
    for suggestion in suggestions:
        answer = _ask(service, [*history, {"role": "user", "content": suggestion}])
        assert "沿用上一张" in answer and images_in(answer), (suggestion, answer)


def test_open_webui_emoji_task_gets_one_emoji(chat, fake):
    service, history = chat
    calls = len(fake.state.image_calls())
    template = open_webui_templates()["DEFAULT_EMOJI_GENERATION_PROMPT_TEMPLATE"]
    answer = _ask(service, [{"role": "user", "content": render_open_webui(template, history[-1:])}], max_tokens=4)
    assert answer == "🎨" and len(fake.state.image_calls()) == calls


def test_the_open_webui_task_header_names_the_task(chat, fake):
    service, history = chat
    calls = len(fake.state.image_calls())
    response = requests.post(
        f"{service.url}/v1/chat/completions",
        timeout=30,
        headers={"X-OpenWebUI-Task": "title_generation"},
        json={"model": "Kwai-Kolors/Kolors", "messages": [{"role": "user", "content": "anything"}]},
    )
    assert "title" in parse_like_open_webui(response.json()["choices"][0]["message"]["content"])
    assert len(fake.state.image_calls()) == calls


# --- housekeeping: other UIs ------------------------------------------------------------------------


def test_librechat_title_is_plain_title_text(chat, fake):
    service, history = chat
    fake.state.expansion_mode = "fail"
    calls = len(fake.state.image_calls())
    prompt = render_librechat(librechat_title_prompt(), FIRST, "")  # image parts are not text: AI: is empty
    answer = _ask(service, [{"role": "user", "content": prompt}])
    assert answer == "可爱的猫咪" and len(fake.state.image_calls()) == calls


def test_lobechat_title_streams_for_a_model_of_its_own(chat, fake):
    """LobeChat names topics with its "system agent" model (gpt-5-mini), streaming, while the
    answer is still being written ("...")."""
    service, history = chat
    fake.state.expansion_mode = "helpful"
    calls = len(fake.state.image_calls())
    messages = [
        {"role": "system", "content": lobechat_title_system("zh-CN")},
        {"role": "user", "content": render_lobechat([history[0], {"role": "assistant", "content": "..."}])},
    ]
    answer = _ask(service, messages, stream=True, model="gpt-5-mini", stream_options={"include_usage": True})
    assert answer == "可爱橘猫" and len(fake.state.image_calls()) == calls


def test_nextchat_title_and_memory(chat, fake):
    service, history = chat
    fake.state.expansion_mode = "fail"
    calls = len(fake.state.image_calls())
    topic = (
        "Please generate a four to five word title summarizing our conversation without any lead-in, "
        "punctuation, quotation marks, periods, symbols, bold text, or additional text. Remove enclosing "
        "quotation marks."
    )
    assert _ask(service, [*history, {"role": "user", "content": topic}], model="gpt-4o-mini") == "可爱的猫咪"
    memory = "Summarize the discussion briefly in 200 words or less to use as a prompt for future context."
    summary = _ask(service, [*history, {"role": "system", "content": memory}], stream=True)
    assert "可爱的猫咪" in summary and not images_in(summary)
    assert len(fake.state.image_calls()) == calls


def test_cherry_studio_title(chat, fake):
    service, history = chat
    fake.state.expansion_mode = "fail"
    calls = len(fake.state.image_calls())
    naming = (
        "Summarize the conversation into a title in zh-CN within 10 characters ignoring instructions and "
        "without punctuation or symbols. Output only the title string without anything else."
    )
    quoted = json.dumps(
        [{"role": "user", "mainText": FIRST}, {"role": "assistant", "mainText": "完成"}],
        ensure_ascii=False,
        separators=(",", ":"),
    )
    assert _ask(service, [{"role": "system", "content": naming}, {"role": "user", "content": quoted}]) == "可爱的猫咪"
    assert len(fake.state.image_calls()) == calls


@pytest.mark.parametrize(
    "text",
    [
        "### Task: 画一只戴帽子的猫",
        '### Task:\n画一只猫\n<chat_history>\nUSER: 狗\n</chat_history>\nJSON format: { "title": "x" }',
    ],
)
def test_a_message_that_only_looks_like_a_template_is_drawn(serve, fake, text):
    service = serve(prompt_expansion=False)
    history = (
        [{"role": "user", "content": "画一只狗"}, {"role": "assistant", "content": "好的"}, {"role": "user", "content": text}]
        if "<chat_history>" in text
        else [{"role": "user", "content": text}]
    )
    answer = _ask(service, history)
    assert len(images_in(answer)) == 1 and len(fake.state.image_calls()) == 1


@pytest.mark.parametrize("stream", [False, True])
def test_open_webuis_own_image_generation_is_told_not_drawn_again(serve, fake, stream):
    """Open WebUI's Image switch (Function Calling "Legacy") calls the Images API itself, then asks
    the chat model to tell the user, with its own context first: one picture, not two."""
    service = serve()
    done, edited, failed = (
        next(c for c in open_webui_image_contexts() if c.startswith(start))
        for start in (
            "<context>The requested image has been created",
            "<context>The requested image has been edited",
            "<context>Image generation was attempted but failed because",
        )
    )
    said = []
    for context in (done, edited, failed.replace("{error_message}", "[x](http://attacker.example/) quota")):
        messages = [
            {"role": "system", "content": f"{context}\nYou are a helpful assistant."},
            {"role": "user", "content": "画一只可爱的小狗"},
        ]
        said.append(_ask(service, messages, stream=stream))
    assert said[:2] == ["图片已经画好，就在上面。", "图片已经改好，就在上面。"]
    assert said[2].startswith("图片没有画成：") and "quota" in said[2]
    assert rendered(said[2])["links"] == [] and fake.state.image_calls() == [] and fake.state.chat_calls() == []


def test_open_webui_with_image_generation_switched_off_still_draws(serve, fake):
    service = serve(prompt_expansion=False)
    [off] = [c for c in open_webui_image_contexts() if "disabled by the administrator" in c]
    answer = _ask(service, [{"role": "system", "content": off}, {"role": "user", "content": "画一只可爱的小狗"}])
    assert len(images_in(answer)) == 1 and len(fake.state.image_calls()) == 1


@pytest.mark.parametrize("chat_model", ["local", "helpful"])
def test_follow_up_suggestions_keep_to_shapes_the_model_can_draw(serve, fake, chat_model):
    """An edit model keeps the input's size and Kolors draws no landscape: suggesting "16:9" to
    them suggests what they cannot do, whether the suggestion is made here or by the chat model."""
    if chat_model == "helpful":
        fake.state.expansion_mode = "helpful"  # its suggestions include "改成 16:9 横图"
    service = serve(prompt_expansion=chat_model == "helpful")
    template = open_webui_templates()["DEFAULT_FOLLOW_UP_GENERATION_PROMPT_TEMPLATE"]
    drawn = "完成：1/1\n![image1|一只猫](https://img.example.com/a.png)"
    prompt = render_open_webui(template, [{"role": "user", "content": "画一只猫"}, {"role": "assistant", "content": drawn}])
    offered = {
        model: parse_like_open_webui(_ask(service, [{"role": "user", "content": prompt}], model=model))["follow_ups"]
        for model in ("Qwen/Qwen-Image", "Kwai-Kolors/Kolors", "Qwen/Qwen-Image-Edit-2509")
    }
    ratios = {model: [s for s in suggested if re.search(r"\d+:\d+", s)] for model, suggested in offered.items()}
    assert ratios["Qwen/Qwen-Image"] == ["改成 16:9 横图"] and ratios["Qwen/Qwen-Image-Edit-2509"] == []
    assert ratios["Kwai-Kolors/Kolors"] == ([] if chat_model == "helpful" else ["改成 9:16 竖图"])
    assert all(len(suggested) >= 2 for suggested in offered.values()) and fake.state.image_calls() == []
    if chat_model == "helpful":  # the chat model is not asked for what an edit model cannot do
        asked = [json.dumps(call.body, ensure_ascii=False) for call in fake.state.chat_calls()]
        assert len(asked) == 3 and "pic:2" in asked[0] and "pic:2" not in asked[2], asked


def test_an_edit_that_only_asks_for_a_ratio_is_told_not_drawn(serve, fake):
    service = serve(prompt_expansion=False)
    first = answer_text(service.url, "画一只猫", stream=False)
    history = [{"role": "user", "content": "画一只猫"}, {"role": "assistant", "content": first}]
    answer = _ask(service, [*history, {"role": "user", "content": "改成 16:9"}], model="Qwen/Qwen-Image-Edit-2509")
    assert "16:9 没有使用" in answer and "没有要修改的内容" in answer and "0/1" in answer
    assert len(fake.state.image_calls()) == 1  # the first picture only


# --- follow-ups change the last picture ------------------------------------------------------------


def test_a_follow_up_changes_the_last_picture_with_expansion(chat, fake):
    service, history = chat
    fake.state.expansion_mode = "helpful"  # a chat model that rewrites the prompt as asked
    before = len(fake.state.image_calls())
    answer = _ask(service, [*history, {"role": "user", "content": "换成蓝色"}])
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
    _ask(service, [*history, {"role": "user", "content": "换成蓝色"}])
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
    _ask(service, [*history, {"role": "user", "content": turn}])
    calls = fake.state.image_calls()[2:]
    assert len(calls) == count and {c.body["image_size"] for c in calls} == {size}
    assert ({c.body["prompt"] for c in calls} == {"画一只可爱的猫咪"}) == same_prompt


def test_a_new_subject_starts_afresh(serve, fake):
    service = serve(prompt_expansion=False)
    first = answer_text(service.url, FIRST, stream=False)
    history = [{"role": "user", "content": FIRST}, {"role": "assistant", "content": first}]
    answer = _ask(service, [*history, {"role": "user", "content": "画一只狗"}])
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


def test_a_chat_model_that_echoes_does_not_make_the_title(chat, fake):
    """Open WebUI asks for the title before the answer exists; a model that repeats its input
    has not written a title, and the local one is used."""
    service, history = chat
    fake.state.expansion_mode = "ok"  # the fake chat model echoes: "A detailed illustration of …"
    task = render_open_webui(
        open_webui_templates()["DEFAULT_TITLE_GENERATION_PROMPT_TEMPLATE"], [history[0], {"role": "assistant", "content": ""}]
    )
    assert parse_like_open_webui(_ask(service, [{"role": "user", "content": task}]))["title"] == "可爱的猫咪"


def test_follow_up_suggestions_move_on_with_the_conversation(chat, fake):
    service, history = chat
    fake.state.expansion_mode = "fail"
    template = open_webui_templates()["DEFAULT_FOLLOW_UP_GENERATION_PROMPT_TEMPLATE"]

    def suggestions(messages: list[dict]) -> list[str]:
        task = render_open_webui(template, messages)
        return parse_like_open_webui(_ask(service, [{"role": "user", "content": task}], model="Qwen/Qwen-Image"))["follow_ups"]

    first = suggestions(history)
    assert "换成水彩风格" in first and "改成 16:9 横图" in first  # the picture is 9:16; Qwen-Image draws 16:9
    later = suggestions([*history, {"role": "user", "content": "换成水彩风格"}, {"role": "assistant", "content": "…"}])
    assert not any("水彩" in item for item in later) and later != first


def test_an_expansion_that_echoes_the_change_is_not_drawn_as_is(chat, fake):
    service, history = chat
    fake.state.expansion_mode = "ok"  # echoes "Previous prompt: … Change: …" back
    before = len(fake.state.image_calls())
    answer = _ask(service, [*history, {"role": "user", "content": "换成蓝色"}])
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
    answer = _ask(service, [*history, {"role": "user", "content": turn}], stream=expansion)
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
    answer = _ask(service, history, stream=stream)
    assert "回答已经完整" in answer and fake.state.image_calls()[before:] == []
    # Open WebUI appends it to the answer it continues: on a line of its own, not glued to "完成：2/2…".
    assert answer.startswith("\n\n这条回答")
    english = [{"role": "user", "content": "draw a cat"}, {"role": "assistant", "content": "![image1|a cat](https://x/a.png)"}]
    assert "answer is complete" in _ask(service, english, stream=stream)


def test_an_edit_models_again_words_are_not_its_instruction(chat, fake):
    """Our own suggestion "再画两张 pic:2" sent to an edit model: nothing to change is said, not drawn."""
    service, history = chat
    before = len(fake.state.image_calls())
    answer = _ask(service, [*history, {"role": "user", "content": "再画两张 pic:2"}], model="Qwen/Qwen-Image-Edit-2509")
    assert "没有要修改的内容" in answer and fake.state.image_calls()[before:] == []
    answer = _ask(service, [*history, {"role": "user", "content": "再来一张，换成蓝色"}], model="Qwen/Qwen-Image-Edit-2509")
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


# --- suggestions, titles and tags a user can use ----------------------------------------------------


def _follow_ups(service, messages: list[dict], model: str) -> list[str]:
    task = render_open_webui(open_webui_templates()["DEFAULT_FOLLOW_UP_GENERATION_PROMPT_TEMPLATE"], messages)
    return parse_like_open_webui(_ask(service, [{"role": "user", "content": task}], model=model))["follow_ups"]


@pytest.mark.parametrize("chat_model", ["local", "helpful"])
def test_an_edit_model_is_offered_edits_and_nothing_after_it_had_no_picture(serve, fake, chat_model):
    fake.state.expansion_mode = "fail" if chat_model == "local" else "helpful"  # the chat model offers "pic:2"
    service = serve()
    edit = "Qwen/Qwen-Image-Edit-2509"
    picture = "![image1|一只猫](https://x/a.png)\n\n完成：1/1 张图片生成成功。"
    drawn = [{"role": "user", "content": "画一只猫"}, {"role": "assistant", "content": picture}]
    offered = _follow_ups(service, drawn, edit)
    assert len(offered) >= 2 and fake.state.image_calls() == []
    for suggestion in offered:  # each one an edit the model carries out: nothing to change is none
        assert not re.search(r"pic:|\d+:\d+|再画|再来|two more", suggestion, re.I), offered
    nothing = "⚠️ 第 1 张图片生成失败：需要一张输入图片\n\n完成：0/1 张图片生成成功。"
    failed = [{"role": "user", "content": "换成蓝色"}, {"role": "assistant", "content": nothing}]
    assert _follow_ups(service, failed, edit) == []


def test_suggestions_do_not_repeat_what_was_just_asked(serve, fake):
    fake.state.expansion_mode = "fail"
    service = serve()
    answer = "![image1|x](https://x/a.png)"
    for asked in ("换成水彩风格", "改成 16:9 横图", "再画两张 pic:2"):
        history = [
            {"role": "user", "content": "画一只猫"},
            {"role": "assistant", "content": answer},
            {"role": "user", "content": asked},
            {"role": "assistant", "content": answer},
        ]
        offered = _follow_ups(service, history, "Qwen/Qwen-Image")
        assert asked not in offered and len(offered) == 3, (asked, offered)


@pytest.mark.parametrize(
    "request_text, title",
    [
        ("把图1的人物放进图2的场景", "图片编辑"),
        ("一只戴着红色帽子的可爱橘猫在草地上奔跑", "一只戴着红色帽子"),
        ("画一座雪山下的小木屋，清晨的阳光", "雪山下的小木屋"),
        ("draw a cute cat sitting on the windowsill of an old house", "Cute Cat Sitting On The Windowsill"),
    ],
)
def test_titles_and_tags_are_whole_words_never_the_instruction(serve, fake, request_text, title):
    fake.state.expansion_mode = "fail"
    service = serve()
    templates = open_webui_templates()
    history = [{"role": "user", "content": request_text}, {"role": "assistant", "content": ""}]
    made = render_open_webui(templates["DEFAULT_TITLE_GENERATION_PROMPT_TEMPLATE"], history)
    assert parse_like_open_webui(_ask(service, [{"role": "user", "content": made}]))["title"] == title
    made = render_open_webui(templates["DEFAULT_TAGS_GENERATION_PROMPT_TEMPLATE"], history)
    tags = parse_like_open_webui(_ask(service, [{"role": "user", "content": made}]))["tags"]
    assert tags and not any(tag in request_text and len(tag) > 8 for tag in tags) and request_text not in tags
