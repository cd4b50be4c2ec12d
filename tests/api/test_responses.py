"""The Responses API over real HTTP, with the real clients: openai-python's `responses.create` and
`responses.stream`, and the Vercel AI SDK's `openai(id)` (tests/js/ai_sdk_check.mjs)."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import tempfile

import openai
import pytest
import requests

from tests.conftest import SERVICE_KEY
from tests.fake_siliconflow import png
from tests.helpers import answer_text, images_in
from tests.js_env import JS_DIR, node_modules

KOLORS = "Kwai-Kolors/Kolors"
TOOL = {"type": "image_generation", "size": "1024x1536"}
PNG = b"\x89PNG\r\n\x1a\n"


def _client(service, key: str = "x") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{service.url}/v1", api_key=key, max_retries=0, timeout=60)


def _post(service, body: dict, *, stream: bool = False, key: str | None = None) -> requests.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return requests.post(f"{service.url}/v1/responses", json=body, headers=headers, stream=stream, timeout=60)


def _without_links(text: str) -> str:
    return re.sub(r"\]\([^)\s]+\)", "](…)", text)


def _pictures(response) -> list:
    return [item for item in response.output if item.type == "image_generation_call"]


# --- the answer ----------------------------------------------------------------------------------


def test_create_answers_with_the_words_chat_gives_and_lasting_links(serve, fake):
    service = serve({"DATA_DIR": tempfile.mkdtemp(prefix="service-data-")})  # pictures kept: links that last
    text = "画一只可爱的猫咪 seed:7 pic:2"
    answer = _client(service).responses.create(model=KOLORS, input=text)
    assert answer.status == "completed" and answer.object == "response" and answer.id.startswith("resp_")
    [message] = answer.output  # no image tool: the message alone
    assert message.type == "message" and message.role == "assistant" and message.status == "completed"
    links = images_in(answer.output_text)
    assert sorted(links) == [1, 2] and all(url.startswith(f"{service.url}/images/") for url in links.values())
    assert requests.get(links[1], timeout=10).content.startswith(PNG)
    chat = answer_text(service.url, text, stream=False)
    # The same words as chat's, line for line (pictures come in the order they are finished).
    assert sorted(_without_links(answer.output_text).split("\n")) == sorted(_without_links(chat).split("\n"))
    usage = answer.usage
    assert usage.input_tokens > 0 and usage.output_tokens > 0
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert usage.input_tokens_details.cached_tokens == 0 and usage.output_tokens_details.reasoning_tokens == 0


def test_the_image_tool_adds_one_item_per_picture_with_its_bytes(service, fake):
    answer = _client(service).responses.create(model=KOLORS, input="画一只狐狸 pic:2", tools=[TOOL])
    pictures = _pictures(answer)
    assert len(pictures) == 2 and {p.status for p in pictures} == {"completed"}
    links = images_in(answer.output_text)
    fetched = {requests.get(url, timeout=10).content for url in links.values()}
    assert {base64.b64decode(p.result) for p in pictures} == fetched  # the pictures the links show
    assert all(base64.b64decode(p.result).startswith(PNG) and p.output_format == "png" for p in pictures)
    [call, _] = fake.state.image_calls()
    assert call.body["image_size"] == "960x1280"  # the tool's 1024x1536, as near as Kolors draws
    assert {p.size for p in pictures} == {"960x1280"} and all(p.action == "generate" for p in pictures)
    assert all(p.revised_prompt and p.revised_prompt.startswith("A detailed illustration") for p in pictures)
    assert "960x1280（Kwai-Kolors/Kolors 不支持 1024x1536" in answer.output_text  # said as chat says it


def test_a_size_typed_in_the_text_wins_over_the_tools(service, fake):
    answer = _client(service).responses.create(model=KOLORS, input="画一只狐狸 9:16", tools=[TOOL])
    assert fake.state.image_calls()[0].body["image_size"] == "720x1280"
    assert _pictures(answer)[0].size == "720x1280"


def test_a_failed_picture_is_a_failed_item_and_the_words_say_why(service, fake):
    # An edit model with no picture to edit: the picture fails, the answer says so.
    answer = _client(service).responses.create(model="Qwen/Qwen-Image-Edit-2509", input="换成蓝色", tools=[TOOL])
    assert answer.status == "completed"
    [picture] = _pictures(answer)
    assert picture.status == "failed" and picture.result == "" and picture.error.code == "needs_picture"
    assert "⚠️ 第 1 张图片生成失败" in answer.output_text


def test_stream_with_the_tool_gives_the_pictures_and_the_links(service, fake):
    fake.state.image_latency = 0.3
    client = _client(service)
    with client.responses.stream(model=KOLORS, input="画一只猫 pic:2", tools=[TOOL]) as stream:
        kinds, deltas = [], ""
        for event in stream:
            kinds.append(event.type)
            if event.type == "response.output_text.delta":
                deltas += event.delta
        final = stream.get_final_response()
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-1] == "response.completed" and kinds.count("response.output_item.done") == 3
    assert kinds.index("response.output_text.delta") < kinds.index("response.image_generation_call.completed")
    assert final.output_text == deltas and sorted(images_in(deltas)) == [1, 2]
    pictures = _pictures(final)
    assert len(pictures) == 2 and all(base64.b64decode(p.result).startswith(PNG) for p in pictures)
    assert final.usage.output_tokens > 0


def test_stream_is_numbered_named_and_kept_alive(serve, fake):
    fake.state.image_latency = 0.5
    service = serve(heartbeat_seconds=0.1)
    response = _post(service, {"model": KOLORS, "input": "画一只猫", "stream": True}, stream=True)
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/event-stream")
    assert response.headers["Cache-Control"] == "no-cache"
    raw = response.content.decode()
    assert ": keep-alive\n\n" in raw and "[DONE]" not in raw
    named = re.findall(r"^event: (\S+)\ndata: (.+)$", raw, re.M)
    events = [json.loads(data) for _, data in named]
    assert [e["type"] for e in events] == [kind for kind, _ in named]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert {e["response"]["id"] for e in events if "response" in e} == {events[0]["response"]["id"]}
    assert all(e["item_id"] == events[2]["item"]["id"] for e in events if e["type"] == "response.output_text.delta")


def test_stream_ends_failed_when_the_answer_breaks(serve, fake, monkeypatch):
    from drawing import pipeline

    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(pipeline, "_settled", broken)
    service = serve()
    client = _client(service)
    with client.responses.stream(model=KOLORS, input="画一只猫") as stream:
        last = list(stream)[-1]
    assert last.type == "response.failed" and last.response.status == "failed"
    assert last.response.error.code == "server_error" and "服务内部错误" in last.response.output[0].content[0].text


def test_a_slow_answer_that_breaks_is_a_failed_response(serve, fake, monkeypatch):
    """Spaces went out while drawing: the status is 200, so the failure is a Response that says it."""
    from drawing import pipeline

    monkeypatch.setattr(pipeline, "_settled", lambda *a, **k: 1 / 0)
    fake.state.image_latency = 0.5
    service = serve(heartbeat_seconds=0.1)
    raw = _post(service, {"model": KOLORS, "input": "画一只猫"})
    assert raw.status_code == 200 and raw.text.startswith(" ")
    answer = _client(service).responses.create(model=KOLORS, input="画一只猫")
    assert answer.status == "failed" and answer.error.code == "server_error"
    assert "logged" in answer.error.message


# --- conversations -------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_a_follow_up_in_input_changes_the_last_picture(serve, fake, stream):
    service = serve(prompt_expansion=False)
    client = _client(service)
    first = client.responses.create(model=KOLORS, input="画一只可爱的猫咪，9:16比例 pic:2", tools=[TOOL])
    turns = [
        {"role": "user", "content": [{"type": "input_text", "text": "画一只可爱的猫咪，9:16比例 pic:2"}]},
        *[item.model_dump() for item in first.output],  # openai-python's own echo: pictures included
        {"type": "item_reference", "id": "msg_not_kept"},  # what the AI SDK sends: skipped
        {"role": "user", "content": "换成蓝色"},
    ]
    before = len(fake.state.image_calls())
    if stream:
        with client.responses.stream(model=KOLORS, input=turns) as events:
            text = events.get_final_response().output_text
    else:
        text = client.responses.create(model=KOLORS, input=turns).output_text
    calls = fake.state.image_calls()[before:]
    assert len(calls) == 2 and {c.body["image_size"] for c in calls} == {"720x1280"}  # carried over
    assert {c.body["prompt"] for c in calls} == {"画一只可爱的猫咪, 换成蓝色"}
    assert "沿用上一张" in text and len(images_in(text)) == 2


def test_earlier_pictures_sent_back_whole_count_as_pictures_not_text(serve, fake):
    """openai-python's `input=[..., *answer.output, ...]` sends every earlier picture back in base64."""
    service = serve(prompt_expansion=False)
    first = _client(service).responses.create(model=KOLORS, input="画一只猫 pic:2", tools=[TOOL])
    big = base64.b64encode(png(64, 64, b"x") + bytes(700_000)).decode()  # a real picture's size
    echoed = [item.model_dump() | ({"result": big} if item.type == "image_generation_call" else {}) for item in first.output]
    turns = [{"role": "user", "content": "画一只猫 pic:2"}, *echoed, {"role": "user", "content": "再来一张"}]
    assert len(json.dumps(turns)) > 1.5 * 2**20  # past the 1 MB of text
    answer = _client(service).responses.create(model=KOLORS, input=turns, tools=[TOOL])
    assert answer.status == "completed" and len(_pictures(answer)) == 1


def test_an_input_image_is_the_picture_to_edit(serve, fake):
    service = serve(prompt_expansion=False)
    picture = requests.get(images_in(answer_text(service.url, "画一只猫", stream=False))[1], timeout=10).content
    data_uri = "data:image/png;base64," + base64.b64encode(picture).decode()
    content = [{"type": "input_text", "text": "换成蓝色"}, {"type": "input_image", "image_url": data_uri}]
    answer = _client(service).responses.create(
        model="Qwen/Qwen-Image-Edit-2509",
        instructions="你是画图助手。",
        input=[{"role": "user", "content": content}],
        tools=[{"type": "image_generation"}],
    )
    [picture_item] = _pictures(answer)
    assert picture_item.status == "completed" and picture_item.action == "edit"
    call = fake.state.image_calls()[-1]
    assert call.body["prompt"] == "换成蓝色" and call.body["image"].startswith("data:image/png;base64,")


def test_a_chat_uis_task_is_answered_here_too_without_drawing(serve, fake):
    from tests.ui_templates import librechat_title_prompt, render_librechat

    service = serve()
    fake.state.expansion_mode = "fail"
    prompt = render_librechat(librechat_title_prompt(), "画一只可爱的猫咪，9:16比例 pic:2", "")
    answer = _client(service).responses.create(model="gpt-5-mini", input=prompt)
    assert answer.output_text == "可爱的猫咪" and fake.state.image_calls() == []


@pytest.mark.parametrize("system", ["instructions", "developer"])
def test_instructions_and_developer_messages_are_the_system_message(serve, fake, system):
    """LobeChat names its topics with a system prompt of its own: read from either place."""
    from tests.ui_templates import lobechat_title_system, render_lobechat

    service = serve()
    fake.state.expansion_mode = "helpful"
    user = {
        "role": "user",
        "content": render_lobechat([{"role": "user", "content": "画一只可爱的猫咪"}, {"role": "assistant", "content": "..."}]),
    }
    if system == "instructions":
        asked = {"instructions": lobechat_title_system("zh-CN"), "input": [user]}
    else:
        asked = {"input": [{"role": "developer", "content": lobechat_title_system("zh-CN")}, user]}
    answer = _client(service).responses.create(model="gpt-5-mini", **asked)
    assert answer.output_text == "可爱橘猫" and fake.state.image_calls() == []


# --- refused before anything is drawn ------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_an_unknown_model_is_a_400_before_the_stream(service, fake, stream):
    client = _client(service)
    with pytest.raises(openai.BadRequestError) as refused:
        if stream:
            with client.responses.stream(model="no/such-model", input="画一只猫"):
                pass
        else:
            client.responses.create(model="no/such-model", input="画一只猫")
    assert refused.value.status_code == 400 and "Unknown model 'no/such-model'" in refused.value.message
    assert refused.value.body["code"] == "model_not_found" and fake.state.image_calls() == []


@pytest.mark.parametrize(
    "body, says, param",
    [
        ({"input": 7}, "'input' must be a string or a list", "input"),
        ({}, "'input' is required", "input"),
        ({"input": ["画一只猫"]}, "input[0] must be an object", "input"),
        ({"input": [{"content": "画一只猫"}]}, "input[0] has neither a 'role'", "input"),
        ({"input": [{"role": "user", "content": 5}]}, "input[0].content must be a string or a list", "input"),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "holds no message to answer", "input"),
        ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]}, "Nothing to draw", "input"),
        ({"input": "画一只猫", "instructions": ["x"]}, "'instructions' must be a string", "instructions"),
        ({"input": "画一只猫", "tools": {"type": "image_generation"}}, "'tools' must be a list", "tools"),
        ({"input": "画一只猫", "tools": [{"type": "image_generation", "size": "big"}]}, "'size' must be 'auto'", "tools"),
        ({"input": "画一只猫", "stream": "yes"}, "'stream' must be true or false", "stream"),
        ({"input": "画一只猫", "background": True}, "'background' is not offered", "background"),
        ({"input": "画一只猫", "previous_response_id": "resp_1"}, "keeps no conversations", "previous_response_id"),
    ],
)
def test_bad_requests_say_what_to_fix(service, fake, body, says, param):
    response = _post(service, {"model": KOLORS, **body})
    error = response.json()["error"]
    assert response.status_code == 400 and says in error["message"] and error["param"] == param, error
    assert fake.state.image_calls() == []


def test_previous_response_id_and_stored_responses_say_to_send_the_turns(service, fake):
    client = _client(service)
    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.create(model=KOLORS, input="再来一张", previous_response_id="resp_abc")
    assert "Send the earlier turns in 'input'" in refused.value.message
    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.retrieve("resp_abc")
    assert "keeps no conversations" in refused.value.message
    assert requests.delete(f"{service.url}/v1/responses/resp_abc", timeout=10).status_code == 400


def test_keys_quotas_and_cors_are_as_on_chat(serve, fake):
    admin = "operator-secret-0123456789"
    service = serve(admin_key=admin, api_key=SERVICE_KEY, prompt_expansion=False)
    with pytest.raises(openai.AuthenticationError):
        _client(service, "wrong").responses.create(model=KOLORS, input="画一只猫")
    made = requests.post(
        f"{service.url}/admin/api/keys",
        json={"name": "friend", "daily_images": 1},
        headers={"Authorization": f"Bearer {admin}"},
        timeout=10,
    ).json()
    friend = _client(service, made["key"])
    assert len(images_in(friend.responses.create(model=KOLORS, input="画一只猫").output_text)) == 1
    with pytest.raises(openai.RateLimitError) as refused:
        with friend.responses.stream(model=KOLORS, input="画一只狗"):
            pass
    assert refused.value.body["code"] == "insufficient_quota" and len(fake.state.image_calls()) == 1
    preflight = requests.options(
        f"{service.url}/v1/responses",
        headers={"Origin": "https://chat.example", "Access-Control-Request-Method": "POST"},
        timeout=10,
    )
    assert preflight.status_code == 200 and preflight.headers["Access-Control-Allow-Origin"] == "*"


# --- the Vercel AI SDK ---------------------------------------------------------------------------


def test_vercel_ai_sdk_generates_and_streams_text_with_the_pictures(serve, fake):
    node_modules("ai")
    node_modules("@ai-sdk/openai")
    fake.state.image_latency = 0.3
    service = serve(api_key=SERVICE_KEY, heartbeat_seconds=0.1)  # keep-alives included
    result = subprocess.run(
        ["node", str(JS_DIR / "ai_sdk_check.mjs"), service.url, SERVICE_KEY],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["errors"] == []
    generate = out["generate"]
    assert sorted(images_in(generate["text"])) == [1, 2] and generate["finish"] == "stop"
    assert generate["usage"]["outputTokens"] > 0 and generate["id"].startswith("resp_")
    again = out["again"]["text"]  # the first answer sent back as item_reference, skipped: this turn alone is drawn
    assert out["again"]["sent"] >= 1 and len(images_in(again)) == 1 and "画一只狗" in again and "猫" not in again
    blue = out["blue"]["text"]  # store: false sends the answer's text: the follow-up changes the last picture
    assert len(images_in(blue)) == 2 and "沿用上一张" in blue
    stream = out["stream"]
    assert stream["text"] == stream["finalText"] and len(images_in(stream["text"])) == 1 and stream["finish"] == "stop"
    for drawn in (out["tool"], out["toolStream"]):
        assert len(images_in(drawn["text"])) == 1
        [picture] = drawn["results"]
        assert picture["name"] == "image_generation" and base64.b64decode(picture["result"]).startswith(PNG)
