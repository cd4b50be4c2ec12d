"""The OpenAI wire shapes as the real `openai` package reads them: a whole chat completion, a stream
of chunks (the role first, `finish_reason` in the last, the usage after it), server-sent events
that end with a blank line, errors, the model list and images answers."""

from __future__ import annotations

import json

import pytest
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types import ImagesResponse, Model
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.shared import ErrorObject

from api import wire

PROMPT = "画一只猫 pic:2"
ANSWER = "🎨 提示词：一只猫\n![image1|一只猫](https://img.example.com/a.png)\n\n完成：1/1 张图片生成成功。"


def test_a_whole_completion_is_what_the_client_reads_with_its_usage():
    completion = ChatCompletion.model_validate(wire.completion("chatcmpl-1", 1_700_000_123, "Kwai-Kolors/Kolors", PROMPT, ANSWER))
    [choice] = completion.choices
    assert (completion.object, completion.id, completion.created) == ("chat.completion", "chatcmpl-1", 1_700_000_123)
    assert choice.message.role == "assistant" and choice.message.content == ANSWER and choice.finish_reason == "stop"
    usage = completion.usage
    assert usage is not None and usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert (usage.prompt_tokens, usage.completion_tokens) == (wire.tokens(PROMPT), wire.tokens(ANSWER))


def test_a_stream_of_chunks_adds_up_to_the_same_answer_and_usage():
    pieces = ["🎨 提示词：一只猫\n", "![image1|一只猫](https://img.example.com/a.png)\n\n", "完成：1/1 张图片生成成功。"]
    chunks = [
        wire.chunk("chatcmpl-2", 1, "m", {"role": "assistant", "content": ""}),
        *(wire.chunk("chatcmpl-2", 1, "m", {"content": piece}) for piece in pieces),
        wire.chunk("chatcmpl-2", 1, "m", {}, "stop"),
        wire.usage_chunk("chatcmpl-2", 1, "m", PROMPT, "".join(pieces)),
    ]
    state = ChatCompletionStreamState()
    for raw in chunks:
        state.handle_chunk(ChatCompletionChunk.model_validate(raw))
    final = state.get_final_completion()
    assert final.choices[0].message.content == ANSWER and final.choices[0].finish_reason == "stop"
    whole = wire.completion("chatcmpl-2", 1, "m", PROMPT, ANSWER)["usage"]
    assert final.usage is not None and final.usage.model_dump(include=set(whole)) == whole  # as a whole answer says
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert [c["choices"][0]["finish_reason"] for c in chunks[:-1]] == [None] * 4 + ["stop"] and chunks[-1]["choices"] == []


def test_each_event_ends_with_a_blank_line_and_keeps_its_words_readable():
    event = wire.sse(wire.chunk("c", 1, "m", {"content": "一只猫\n\n完成"}))
    assert event.startswith("data: {") and event.endswith("}\n\n") and event.count("\n") == 2  # the newlines escaped
    assert "一只猫" in event and json.loads(event[len("data: ") :])["choices"][0]["delta"]["content"] == "一只猫\n\n完成"
    assert wire.sse("[DONE]") == "data: [DONE]\n\n"


@pytest.mark.parametrize(
    "status, kind",
    [
        (400, "invalid_request_error"),
        (401, "invalid_request_error"),
        (403, "permission_error"),
        (404, "invalid_request_error"),
        (429, "rate_limit_error"),
        (500, "server_error"),
        (503, "server_error"),
    ],
)
def test_every_error_has_the_one_shape_with_a_type_for_its_status(status, kind):
    body = wire.error_body(status, "Unknown model 'x'.", param="model", code="model_not_found")
    assert list(body) == ["error"]
    error = ErrorObject.model_validate(body["error"])
    assert (error.message, error.type, error.param, error.code) == ("Unknown model 'x'.", kind, "model", "model_not_found")
    assert wire.error_body(status, "m")["error"] == {"message": "m", "type": kind, "param": None, "code": None}


def test_the_model_list_has_what_the_typed_clients_require():
    listed = wire.model_list(["Kwai-Kolors/Kolors", "flux-dev"])
    models = [Model.model_validate(item) for item in listed["data"]]
    assert listed["object"] == "list" and [m.id for m in models] == ["Kwai-Kolors/Kolors", "flux-dev"]
    assert [m.owned_by for m in models] == ["Kwai-Kolors", "siliconflow"]
    assert all(isinstance(item["created"], int) and m.object == "model" for item, m in zip(listed["data"], models, strict=True))


def test_an_images_answer_has_a_created_time_and_one_item_per_picture():
    answer = ImagesResponse.model_validate(wire.images_answer([{"url": "https://img.example.com/a.png"}, {"b64_json": "iVBO"}]))
    assert [item.url for item in answer.data] == ["https://img.example.com/a.png", None]
    assert answer.data[1].b64_json == "iVBO" and answer.created > 1_700_000_000


@pytest.mark.parametrize(
    "text, count",
    [("", 0), ("画一只猫", 4), ("abcd", 1), ("abcde", 2), ("draw a cat", 3), ("画cat", 2)],
)
def test_tokens_are_counted_a_cjk_character_or_about_four_other_characters_each(text, count):
    assert wire.tokens(text) == count


def test_the_json_keeps_chinese_as_it_is_and_has_no_spaces_to_spend():
    assert wire.dumps({"a": "一只猫", "b": [1, 2]}) == '{"a":"一只猫","b":[1,2]}'
