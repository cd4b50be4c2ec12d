"""Chat UIs' background tasks (titles, tags, follow-up suggestions, queries, emoji, summaries)
recognised by each UI's own template, from their packages, and answered in the shape that UI
parses, with no picture drawn; a message that only looks like a template is drawn."""

from __future__ import annotations

import json
import re

import pytest
import requests

from drawing import chat_tasks
from tests.drawing.chats import FIRST, ask
from tests.helpers import images_in, rendered
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
    answer = ask(service, [{"role": "user", "content": task}], max_tokens=1000)
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
    suggestions = parse_like_open_webui(ask(service, [{"role": "user", "content": task}]))["follow_ups"]
    fake.state.expansion_mode = "ok"
    for suggestion in suggestions:
        answer = ask(service, [*history, {"role": "user", "content": suggestion}])
        assert "沿用上一张" in answer and images_in(answer), (suggestion, answer)


def test_open_webui_emoji_task_gets_one_emoji(chat, fake):
    service, history = chat
    calls = len(fake.state.image_calls())
    template = open_webui_templates()["DEFAULT_EMOJI_GENERATION_PROMPT_TEMPLATE"]
    answer = ask(service, [{"role": "user", "content": render_open_webui(template, history[-1:])}], max_tokens=4)
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
    answer = ask(service, [{"role": "user", "content": prompt}])
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
    answer = ask(service, messages, stream=True, model="gpt-5-mini", stream_options={"include_usage": True})
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
    assert ask(service, [*history, {"role": "user", "content": topic}], model="gpt-4o-mini") == "可爱的猫咪"
    memory = "Summarize the discussion briefly in 200 words or less to use as a prompt for future context."
    summary = ask(service, [*history, {"role": "system", "content": memory}], stream=True)
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
    assert ask(service, [{"role": "system", "content": naming}, {"role": "user", "content": quoted}]) == "可爱的猫咪"
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
    answer = ask(service, history)
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
        said.append(ask(service, messages, stream=stream))
    assert said[:2] == ["图片已经画好，就在上面。", "图片已经改好，就在上面。"]
    assert said[2].startswith("图片没有画成：") and "quota" in said[2]
    assert rendered(said[2])["links"] == [] and fake.state.image_calls() == [] and fake.state.chat_calls() == []


def test_open_webui_with_image_generation_switched_off_still_draws(serve, fake):
    service = serve(prompt_expansion=False)
    [off] = [c for c in open_webui_image_contexts() if "disabled by the administrator" in c]
    answer = ask(service, [{"role": "system", "content": off}, {"role": "user", "content": "画一只可爱的小狗"}])
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
        model: parse_like_open_webui(ask(service, [{"role": "user", "content": prompt}], model=model))["follow_ups"]
        for model in ("Qwen/Qwen-Image", "Kwai-Kolors/Kolors", "Qwen/Qwen-Image-Edit-2509")
    }
    ratios = {model: [s for s in suggested if re.search(r"\d+:\d+", s)] for model, suggested in offered.items()}
    assert ratios["Qwen/Qwen-Image"] == ["改成 16:9 横图"] and ratios["Qwen/Qwen-Image-Edit-2509"] == []
    assert ratios["Kwai-Kolors/Kolors"] == ([] if chat_model == "helpful" else ["改成 9:16 竖图"])
    assert all(len(suggested) >= 2 for suggested in offered.values()) and fake.state.image_calls() == []
    if chat_model == "helpful":  # the chat model is not asked for what an edit model cannot do
        asked = [json.dumps(call.body, ensure_ascii=False) for call in fake.state.chat_calls()]
        assert len(asked) == 3 and "pic:2" in asked[0] and "pic:2" not in asked[2], asked


# --- what a real chat UI showed (Open WebUI 0.12.4, driven in Chromium) ------------------------------


def test_a_chat_model_that_echoes_does_not_make_the_title(chat, fake):
    """Open WebUI asks for the title before the answer exists; a model that repeats its input
    has not written a title, and the local one is used."""
    service, history = chat
    fake.state.expansion_mode = "ok"  # the fake chat model echoes: "A detailed illustration of …"
    task = render_open_webui(
        open_webui_templates()["DEFAULT_TITLE_GENERATION_PROMPT_TEMPLATE"], [history[0], {"role": "assistant", "content": ""}]
    )
    assert parse_like_open_webui(ask(service, [{"role": "user", "content": task}]))["title"] == "可爱的猫咪"


def test_follow_up_suggestions_move_on_with_the_conversation(chat, fake):
    service, history = chat
    fake.state.expansion_mode = "fail"
    template = open_webui_templates()["DEFAULT_FOLLOW_UP_GENERATION_PROMPT_TEMPLATE"]

    def suggestions(messages: list[dict]) -> list[str]:
        task = render_open_webui(template, messages)
        return parse_like_open_webui(ask(service, [{"role": "user", "content": task}], model="Qwen/Qwen-Image"))["follow_ups"]

    first = suggestions(history)
    assert "换成水彩风格" in first and "改成 16:9 横图" in first  # the picture is 9:16; Qwen-Image draws 16:9
    later = suggestions([*history, {"role": "user", "content": "换成水彩风格"}, {"role": "assistant", "content": "…"}])
    assert not any("水彩" in item for item in later) and later != first


# --- suggestions, titles and tags a user can use ----------------------------------------------------


def _follow_ups(service, messages: list[dict], model: str) -> list[str]:
    task = render_open_webui(open_webui_templates()["DEFAULT_FOLLOW_UP_GENERATION_PROMPT_TEMPLATE"], messages)
    return parse_like_open_webui(ask(service, [{"role": "user", "content": task}], model=model))["follow_ups"]


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
    assert parse_like_open_webui(ask(service, [{"role": "user", "content": made}]))["title"] == title
    made = render_open_webui(templates["DEFAULT_TAGS_GENERATION_PROMPT_TEMPLATE"], history)
    tags = parse_like_open_webui(ask(service, [{"role": "user", "content": made}]))["tags"]
    assert tags and not any(tag in request_text and len(tag) > 8 for tag in tags) and request_text not in tags


# --- the tasks no template above reaches ------------------------------------------------------------

MEMORY = "You are Open WebUI's private memory reviewer. Return only valid JSON."
LOBE = "You are a conversation context compressor."
QUIET = [
    ([("system", "test"), ("user", "hi")], "Cherry Studio", "check", "OK"),
    ([("system", MEMORY), ("user", "画一只猫")], "Open WebUI", "memory", '{"operations": []}'),
    ([("system", "Available Tools: []"), ("user", "Query: 画一只猫")], "Open WebUI", "tools", '{"tool_calls": []}'),
    ([("system", LOBE), ("user", "画一只猫")], "LobeChat", "summary", "用户请本服务画了这些图："),
]


@pytest.mark.parametrize("messages, ui, kind, said", QUIET, ids=[row[2] for row in QUIET])
def test_connection_checks_memory_reviews_tool_calls_and_summaries_are_answered_not_drawn(messages, ui, kind, said):
    task = chat_tasks.housekeeping(messages)
    assert (task.ui, task.kind) == (ui, kind) and chat_tasks.answer(task, None) == said
    assert chat_tasks.housekeeping([("system", "You are a helpful assistant."), ("user", "画一只猫")]) is None
