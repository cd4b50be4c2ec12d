"""The chat endpoint over real HTTP, against the fake SiliconFlow."""

from __future__ import annotations

import io
import json
import logging
import re

import openai
import pytest
import requests

from api.wire import tokens
from tests.conftest import SERVICE_KEY
from tests.helpers import (
    IMAGE_LINE,
    answer_text,
    chat_body,
    content_of,
    images_in,
    post_chat,
    sse_events,
    stream_chunks,
    wait_until,
)


def test_seed_curl_example_draws_a_portrait_cat(service, fake):
    # The seed's own example: SDXL, "9:16比例" inside Chinese text.
    body = {
        "model": "stabilityai/stable-diffusion-xl-base-1.0",
        "messages": [{"role": "user", "content": "画一只可爱的猫咪，9:16比例"}],
    }
    response = requests.post(f"{service.url}/v1/chat/completions", json=body, timeout=30)
    assert response.status_code == 200
    answer = response.json()
    assert answer["object"] == "chat.completion"
    assert answer["id"].startswith("chatcmpl-")
    choice = answer["choices"][0]
    assert choice["finish_reason"] == "stop" and choice["message"]["role"] == "assistant"
    urls = images_in(choice["message"]["content"])
    assert list(urls) == [1]
    [call] = fake.state.image_calls()
    assert call.body["image_size"] == "720x1280"  # portrait, not square
    assert "9:16" not in call.body["prompt"] and "比例" not in call.body["prompt"]
    picture = requests.get(urls[1], timeout=10)
    assert picture.headers["Content-Type"] == "image/png" and picture.content.startswith(b"\x89PNG")
    usage = answer["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0


def test_stream_is_shaped_as_the_openai_clients_expect(service):
    response = post_chat(service.url, chat_body("画一只可爱的猫咪 pic:2", stream=True), stream=True)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/event-stream")
    chunks, raw = stream_chunks(response)
    assert raw[-1] == "[DONE]"
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    last = chunks[-1]["choices"][0]
    assert last["delta"] == {} and last["finish_reason"] == "stop"
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks)
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    content = content_of(chunks)
    info, generating, submitted = content.index("提示词"), content.index("生成中"), content.index("生成中✅")
    first_image = content.index("![image")
    assert info < generating <= submitted < first_image
    assert sorted(images_in(content)) == [1, 2]
    assert "一小时" in content  # the upstream link's lifetime is stated


def test_first_byte_goes_out_before_prompt_expansion_ends(service, fake):
    fake.state.expansion_latency = 1.5
    response = post_chat(service.url, chat_body("画一只猫", stream=True), stream=True)
    events = sse_events(response)
    first = json.loads(next(events))
    assert first["choices"][0]["delta"]["role"] == "assistant"
    # The expansion call has not been made yet, or is still running.
    assert all(call.end == 0.0 for call in fake.state.chat_calls()), "the first chunk waited for expansion"
    assert "[DONE]" in list(events)
    assert len(fake.state.chat_calls()) == 1


def test_the_first_line_is_seen_while_the_prompt_is_expanded(service, fake):
    """Open WebUI showed only a cursor for the whole expansion: a line says it is under way."""
    fake.state.expansion_latency = 1.5
    response = post_chat(service.url, chat_body("画一只猫", stream=True), stream=True)
    events = sse_events(response)
    next(events)  # the role
    said = json.loads(next(events))["choices"][0]["delta"]["content"]
    assert "正在完善提示词" in said and said.endswith("\n\n")
    assert all(call.end == 0.0 for call in fake.state.chat_calls()), "the line waited for the expansion"
    rest = content_of([json.loads(p) for p in events if p != "[DONE]"])
    assert rest.index("提示词") < rest.index("生成中✅")


def test_a_status_after_generating_starts_its_own_line(serve, fake):
    """生成中 followed by a failure, not by ✅: the failure is a line of its own."""
    service = serve(prompt_expansion=False)
    content = answer_text(service.url, "换成蓝色", stream=True, model="Qwen/Qwen-Image-Edit-2509")
    assert "生成中\n\n⚠️ 第 1 张" in content, content


@pytest.mark.parametrize("stream", [False, True])
def test_usage_is_counted_the_same_in_a_stream_that_asks_for_it(service, stream):
    """`stream_options.include_usage` (llm, LiteLLM, LangChain): a last chunk with no choices and the usage."""
    client = openai.OpenAI(base_url=f"{service.url}/v1", api_key="x", max_retries=0, timeout=60)
    messages = [{"role": "user", "content": "画一只猫 pic:2"}]
    whole = client.chat.completions.create(model="Kwai-Kolors/Kolors", messages=messages)
    chunks = list(
        client.chat.completions.create(
            model="Kwai-Kolors/Kolors", messages=messages, stream=True, stream_options={"include_usage": stream}
        )
    )
    if not stream:
        assert all(c.choices and c.usage is None for c in chunks)
        return
    last = chunks[-1]
    assert last.choices == [] and all(c.choices for c in chunks[:-1])
    content = "".join(c.choices[0].delta.content or "" for c in chunks[:-1])
    assert last.usage.prompt_tokens == whole.usage.prompt_tokens
    assert last.usage.completion_tokens == tokens(content) > 0  # the whole answer's count, of this answer
    assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens


def test_stream_options_that_are_not_an_object_are_refused(service):
    response = post_chat(service.url, {**chat_body("画一只猫", stream=True), "stream_options": "usage"})
    assert response.status_code == 400 and "stream_options" in response.json()["error"]["message"]


def test_each_image_is_sent_as_soon_as_it_is_ready(serve, fake):
    fake.state.hang_seconds = 2.0
    service = serve(api_keys=("sk-good-fast0001", "sk-hang-slow0002"))
    response = post_chat(service.url, chat_body("画一只猫 pic:2", stream=True), stream=True)
    seen, events = "", sse_events(response)
    for payload in events:
        if payload == "[DONE]":
            break
        seen += json.loads(payload)["choices"][0]["delta"].get("content") or ""
        if images_in(seen):
            slow = [c for c in fake.state.image_calls() if c.key.startswith("sk-hang")]
            # The slow call may not even have reached the fake yet; none of it may have ended.
            assert all(c.end == 0.0 for c in slow), "the fast image waited for the slow one"
            break
    else:
        pytest.fail("no image arrived")
    rest = content_of([json.loads(p) for p in events if p != "[DONE]"])
    assert len(images_in(seen + rest)) == 2


def test_non_stream_returns_every_image(service, fake):
    response = post_chat(service.url, chat_body("画一只猫 pic:2"))
    content = response.json()["choices"][0]["message"]["content"]
    assert sorted(images_in(content)) == [1, 2]
    assert len({c.key for c in fake.state.image_calls()}) == 2
    assert "生成中✅" in content and "2/2" in content


def test_pic_count_is_capped_by_max_images_and_reuses_keys(serve, fake):
    service = serve(api_keys=("sk-good-only0001",), max_images_per_request=3)
    content = post_chat(service.url, chat_body("画一只猫 pic:5")).json()["choices"][0]["message"]["content"]
    assert sorted(images_in(content)) == [1, 2, 3]
    assert [c.key for c in fake.state.image_calls()] == ["sk-good-only0001"] * 3


@pytest.mark.parametrize("stream", [False, True])
def test_banned_keyword_is_refused_without_any_upstream_call(service, fake, stream):
    response = post_chat(service.url, chat_body("a NUDE figure pic:2", stream=stream), stream=stream)
    assert response.status_code == 200
    content = content_of(stream_chunks(response)[0]) if stream else response.json()["choices"][0]["message"]["content"]
    assert "不允许" in content and "nude" in content
    assert not images_in(content)
    assert fake.state.drawing_calls() == []


def test_banned_word_in_the_expanded_prompt_is_refused_too(serve, fake):
    # The fake's expansion always says "illustration"; the user never typed it.
    service = serve(banned_keywords=("illustration",))
    content = post_chat(service.url, chat_body("画一只猫")).json()["choices"][0]["message"]["content"]
    assert "不允许" in content
    assert len(fake.state.chat_calls()) == 1 and fake.state.image_calls() == []


@pytest.mark.parametrize("mode", ["fail", "hang", "garbage"])
def test_expansion_failure_falls_back_to_the_users_text(serve, fake, mode):
    fake.state.expansion_mode, fake.state.hang_seconds = mode, 3.0
    service = serve(expansion_timeout=0.5)
    content = post_chat(service.url, chat_body("画一只戴帽子的猫 16:9")).json()["choices"][0]["message"]["content"]
    [call] = fake.state.image_calls()
    assert call.body["prompt"] == "画一只戴帽子的猫"
    assert "扩充失败" in content and len(images_in(content)) == 1


def test_expansion_strips_a_think_block(service, fake):
    fake.state.expansion_mode = "think"
    post_chat(service.url, chat_body("画一只猫"))
    [call] = fake.state.image_calls()
    assert call.body["prompt"].startswith("A detailed illustration of 画一只猫")


def test_prompt_expansion_can_be_turned_off(serve, fake):
    service = serve(prompt_expansion=False)
    post_chat(service.url, chat_body("画一只猫"))
    assert fake.state.chat_calls() == []
    assert fake.state.image_calls()[0].body["prompt"] == "画一只猫"


def test_user_text_cannot_break_or_inject_markdown(serve, fake):
    service = serve(prompt_expansion=False)
    evil = "cat](http://evil.example/x.png) ![x|y\n\n# heading (z) | w"
    content = post_chat(service.url, chat_body(evil)).json()["choices"][0]["message"]["content"]
    [(number, alt, url)] = IMAGE_LINE.findall(content)
    assert number == "1" and url.startswith(fake.url)
    assert not re.search(r"[\[\]()|\n]", alt)
    assert "evil.example" not in content.split("![image1")[1].split(")")[0].split("](")[1]


def test_only_the_current_turns_user_text_is_drawn(serve, fake):
    service = serve(prompt_expansion=False)
    body = {
        "model": "Kwai-Kolors/Kolors",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "画一只猫 pic:3"},
            {"role": "assistant", "content": "![image1|cat](http://x/1.png)"},
            {
                "role": "user",
                "content": [{"type": "text", "text": "画一只狗"}, {"type": "image_url", "image_url": {"url": "http://x/1.png"}}],
            },
        ],
    }
    post_chat(service.url, body)
    [call] = fake.state.image_calls()
    assert call.body["prompt"] == "画一只狗"


def _error(response: requests.Response, status: int) -> dict:
    assert response.status_code == status
    assert response.headers["Content-Type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert "Traceback" not in error["message"] and "Error(" not in error["message"]
    return error


@pytest.mark.parametrize(
    "raw, words",
    [
        (b"{not json", "valid JSON"),
        (b"[1, 2]", "JSON object"),
        (b'{"model": "Kwai-Kolors/Kolors"}', "'messages' is required"),
        (b'{"messages": "draw a cat"}', "'messages' must be"),
        (b'{"messages": []}', "'messages' must be"),
        (b'{"messages": ["draw a cat"]}', "messages[0]"),
        (b'{"messages": [{"role": "user", "content": 42}]}', "messages[0].content"),
        (b'{"messages": [{"role": "user", "content": "   "}]}', "Nothing to draw"),
        (b'{"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}', "Nothing to draw"),
        (b'{"messages": [{"role": "user", "content": "cat"}], "model": "midjourney-v6"}', "Unknown model 'midjourney-v6'"),
        (b'{"messages": [{"role": "user", "content": "cat"}], "model": 7}', "'model' must be a string"),
        (b'{"messages": [{"role": "user", "content": "cat"}], "stream": "yes"}', "'stream' must be"),
    ],
)
def test_bad_input_answers_400_saying_what_to_fix(service, fake, raw, words):
    response = requests.post(
        f"{service.url}/v1/chat/completions", data=raw, headers={"Content-Type": "application/json"}, timeout=10
    )
    error = _error(response, 400)
    assert words in error["message"]
    assert error["type"] == "invalid_request_error"
    assert fake.state.drawing_calls() == []


def test_no_upstream_keys_health_is_up_but_drawing_is_503(serve, fake):
    service = serve(api_keys=())
    assert requests.get(f"{service.url}/health", timeout=5).status_code == 200
    error = _error(post_chat(service.url, chat_body("画一只猫")), 503)
    assert "API_KEYS" in error["message"]


@pytest.mark.parametrize(
    "key, words",
    [
        ("sk-dead-00001111", "无效（401）"),
        ("sk-broke-0000111", "余额不足"),
        ("sk-limited-00011", "限流"),
        ("sk-overload-0001", "暂时不可用"),
        ("sk-gateway-00001", "超时"),
        ("sk-html-00001111", "不是 JSON"),
        ("sk-empty-0000111", "没有返回图片"),
        ("sk-hang-00001111", "没有响应"),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
def test_upstream_failure_becomes_a_plain_line_and_the_answer_completes(serve, fake, key, words, stream):
    fake.state.hang_seconds = 3.0
    # A 429 without Retry-After rests the account RATE_LIMIT_REST (60 s by default), and the lone key
    # is tried again after it: the same two attempts and the same line, without waiting a minute.
    service = serve(api_keys=(key,), upstream_timeout=0.5, prompt_expansion=False, max_key_attempts=1, rate_limit_rest=0.2)
    response = post_chat(service.url, chat_body("画一只猫", stream=stream), stream=stream)
    assert response.status_code == 200
    if stream:
        chunks, raw = stream_chunks(response)
        assert raw[-1] == "[DONE]" and chunks[-1]["choices"][0]["finish_reason"] == "stop"
        content = content_of(chunks)
    else:
        content = response.json()["choices"][0]["message"]["content"]
    assert "第 1 张图片生成失败" in content and words in content
    assert key not in content and "Traceback" not in content
    assert "0/1" in content


def test_a_withdrawn_model_asked_for_by_name_is_explained(serve, fake):
    """openjourney is in the built-in list but SiliconFlow no longer serves it: the request goes
    through, and SiliconFlow's 20012 becomes a plain line."""
    service = serve(prompt_expansion=False)
    listed = [m["id"] for m in requests.get(f"{service.url}/v1/models", timeout=5).json()["data"]]
    assert "prompthero/openjourney" not in listed
    content = post_chat(service.url, chat_body("a cat", model="prompthero/openjourney")).json()
    assert "这个模型已下线或不存在（SiliconFlow 20012）" in content["choices"][0]["message"]["content"]


class TestAuth:
    @pytest.fixture
    def locked(self, serve):
        return serve(api_key=SERVICE_KEY)

    @pytest.mark.parametrize("header", [None, "Bearer wrong-key", f"Basic {SERVICE_KEY}", f"Bearer {SERVICE_KEY}x"])
    def test_wrong_or_missing_key_is_401_invalid_api_key(self, locked, fake, header):
        headers = {"Authorization": header} if header else {}
        response = requests.post(f"{locked.url}/v1/chat/completions", json=chat_body("cat"), headers=headers, timeout=5)
        error = _error(response, 401)
        assert error["code"] == "invalid_api_key" and error["type"] == "invalid_request_error"
        assert fake.state.drawing_calls() == []
        assert _error(requests.get(f"{locked.url}/v1/models", headers=headers, timeout=5), 401)

    def test_right_key_draws_and_health_needs_none(self, locked):
        assert post_chat(locked.url, chat_body("画一只猫"), key=SERVICE_KEY).status_code == 200
        assert requests.get(f"{locked.url}/health", timeout=5).status_code == 200


def test_models_lists_the_image_models_siliconflow_serves_now(service, fake):
    response = requests.get(f"{service.url}/v1/models", timeout=5)
    listing = response.json()
    assert listing["object"] == "list"
    ids = [m["id"] for m in listing["data"]]
    assert ids[:2] == ["Kwai-Kolors/Kolors", "Qwen/Qwen-Image"]  # ours first, in our order
    assert {
        "Tongyi-MAI/Z-Image-Turbo",
        "black-forest-labs/FLUX.2-pro",
        "Qwen/Qwen-Image-Edit-2509",
        "black-forest-labs/FLUX.1-Kontext-dev",
    } <= set(ids)  # newer models, and the edit models
    assert "prompthero/openjourney" not in ids and "Qwen/Qwen2.5-7B-Instruct" not in ids  # withdrawn; chat
    assert len(ids) == len(set(ids))
    asked = [c.body for c in fake.state.calls if c.path == "/v1/models"]
    assert any("sub_type=text-to-image" in query for query in asked)
    assert any("sub_type=image-to-image" in query for query in asked)
    for model in listing["data"]:
        assert model["object"] == "model"
        assert isinstance(model["created"], int) and isinstance(model["owned_by"], str)


def test_models_fall_back_to_the_built_in_list_when_siliconflow_cannot_say(serve, fake):
    fake.state.models_down = True
    service = serve()
    ids = [m["id"] for m in requests.get(f"{service.url}/v1/models", timeout=5).json()["data"]]
    assert "prompthero/openjourney" in ids and "Kwai-Kolors/Kolors" in ids


def test_models_are_asked_again_in_the_background(serve, fake):
    fake.state.models_down = True
    service = serve(models_refresh_seconds=0.3)
    assert "FLUX.2-pro" not in requests.get(f"{service.url}/v1/models", timeout=5).text  # not a built-in one
    fake.state.models_down = False
    assert wait_until(lambda: "FLUX.2-pro" in requests.get(f"{service.url}/v1/models", timeout=5).text, 5, interval=0.1), (
        "the list was not refreshed"
    )


def test_models_variable_replaces_the_list(serve):
    service = serve({"MODELS": "Qwen/Qwen-Image, Kwai-Kolors/Kolors"})
    ids = [m["id"] for m in requests.get(f"{service.url}/v1/models", timeout=5).json()["data"]]
    assert ids == ["Qwen/Qwen-Image", "Kwai-Kolors/Kolors"]
    assert post_chat(service.url, chat_body("cat", model="black-forest-labs/FLUX.1-dev")).status_code == 400


def test_missing_model_uses_the_first_of_the_list(service, fake):
    post_chat(service.url, chat_body("画一只猫", model=None))
    assert fake.state.image_calls()[0].body["model"] == "Kwai-Kolors/Kolors"


@pytest.mark.parametrize("method, path, status", [("GET", "/nope", 404), ("GET", "/v1/chat/completions", 405)])
def test_unknown_routes_answer_json_not_html(service, method, path, status):
    error = _error(requests.request(method, f"{service.url}{path}", timeout=5), status)
    assert "<html" not in error["message"].lower()


def test_logs_never_contain_a_key_or_token(serve, fake, lsky, sink, capfd):
    written = io.StringIO()
    handler = logging.StreamHandler(written)
    for name in ("siliconflow_proxy", ""):  # the service's logger and the root one (werkzeug, urllib3)
        logging.getLogger(name).addHandler(handler)
    logging.getLogger("urllib3").setLevel(logging.DEBUG)
    upstream_keys = ("sk-good-secretA1", "sk-dead-secretB2", "sk-limited-secC3")
    lsky_token, sink_token = "1|quota-lsky-secret", "sink-secret-token"  # failing, so their errors get logged
    sink.fail = True
    service = serve(
        api_key=SERVICE_KEY,
        api_keys=upstream_keys,
        use_lsky_pro=True,
        lsky_pro_url=lsky.url,
        lsky_pro_token=lsky_token,
        use_shortlink=True,
        shortlink_base_url=sink.url,
        shortlink_api_key=sink_token,
    )
    post_chat(service.url, chat_body("画一只猫 pic:3"), key=SERVICE_KEY)
    assert "[DONE]" in post_chat(service.url, chat_body("画一只猫 pic:3", stream=True), key=SERVICE_KEY).text
    post_chat(service.url, chat_body("画一只猫"), key="wrong-" + SERVICE_KEY)

    # Every request and every image has been logged: the three requests' access lines, the failed
    # uploads' lines, and no upstream call still in flight whose line could come later.
    def all_logged() -> bool:
        lines = written.getvalue().splitlines()
        served = [line for line in lines if "127.0.0.1 - - [" in line and "POST /v1/chat/completions" in line]  # werkzeug's
        return (
            len(served) == 3
            and any("uploading to Lsky Pro failed" in line for line in lines)
            and any("the short link could not be made" in line for line in lines)
            and service.services.pool.summary()["keys"]["calls_in_flight"] == 0
        )

    assert wait_until(all_logged), written.getvalue()
    for name in ("siliconflow_proxy", ""):
        logging.getLogger(name).removeHandler(handler)
    logging.getLogger("urllib3").setLevel(logging.NOTSET)
    logged = written.getvalue() + capfd.readouterr().err
    assert "req=" in logged and "…etA1" in logged  # keys are identified only masked, short ones by their end
    assert "uploading to Lsky Pro failed" in logged and "the short link could not be made" in logged
    for secret in (SERVICE_KEY, *upstream_keys, lsky_token, sink_token):
        assert secret not in logged


def test_seed_and_negative_prompt_reach_the_upstream(serve, fake):
    service = serve(prompt_expansion=False)
    content = post_chat(service.url, chat_body("画一只猫 seed:42 --no 文字, 水印")).json()["choices"][0]["message"]["content"]
    [call] = fake.state.image_calls()
    assert (call.body["prompt"], call.body["seed"], call.body["negative_prompt"]) == ("画一只猫", 42, "文字, 水印")
    assert "种子：42" in content and "负面提示词：文字, 水印" in content


def test_what_was_changed_or_left_out_is_said(serve, fake):
    service = serve(prompt_expansion=False, max_images_per_request=2)
    body = chat_body("a cat 16:9 pic:5 --no text", model="Kwai-Kolors/Kolors")
    content = post_chat(service.url, body).json()["choices"][0]["message"]["content"]
    assert "1024x1024（Kwai-Kolors/Kolors 不支持 16:9" in content
    assert "每次最多 2 张" in content
    body = chat_body("a cat --no text", model="Qwen/Qwen-Image")
    content = post_chat(service.url, body).json()["choices"][0]["message"]["content"]
    assert "不支持负面提示词" in content
    assert "negative_prompt" not in fake.state.image_calls()[-1].body


# --- OpenAI's model names (MODEL_ALIASES) ----------------------------------------------------------


def test_an_openai_model_name_draws_with_the_model_it_stands_for_and_says_that_one(service, fake):
    client = openai.OpenAI(base_url=f"{service.url}/v1", api_key="x", max_retries=0, timeout=30)
    answer = client.chat.completions.create(model="dall-e-3", messages=[{"role": "user", "content": "画一只猫"}])
    assert answer.model == "Qwen/Qwen-Image"
    assert "模型：Qwen/Qwen-Image" in answer.choices[0].message.content
    assert {c.body["model"] for c in fake.state.image_calls()} == {"Qwen/Qwen-Image"}
    listed = {m.id for m in client.models.list().data}
    assert "Qwen/Qwen-Image" in listed and not listed & {"dall-e-3", "gpt-image-1", "sora-2"}  # accepted, not offered


def test_an_alias_whose_model_is_not_offered_is_a_400_naming_both(serve, fake):
    service = serve(models=("Kwai-Kolors/Kolors",))  # the built-in gpt-image-1 stands for Qwen/Qwen-Image
    response = post_chat(service.url, chat_body("画一只猫", model="gpt-image-1"))
    assert response.status_code == 400, response.text
    message = response.json()["error"]["message"]
    assert "'gpt-image-1' stands for 'Qwen/Qwen-Image'" in message and "MODEL_ALIASES" in message
    assert fake.state.image_calls() == []
