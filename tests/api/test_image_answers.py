"""The Images adapter's answers (api/image_answers.py) over real HTTP: OpenAI's image stream read by
openai-python, keep-alives and error events on the wire, and what an answer says of a picture that
was not made."""

from __future__ import annotations

import base64
import json
import re
import time
from pathlib import Path

import openai
import pytest
import requests

from tests.conftest import SERVICE_KEY

FRAME = (Path(__file__).parent.parent / "data" / "frame.png").read_bytes()  # a real PNG


def client(service, key: str = SERVICE_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{service.url}/v1", api_key=key, max_retries=0, timeout=30)


def sse(response: requests.Response) -> list[tuple[str, str]]:
    """The stream as (event name or ':' for a comment, data) in order, each ending with a blank line."""
    assert response.headers["Content-Type"].startswith("text/event-stream")
    text = response.content.decode()
    assert text.endswith("\n\n"), text[-200:]
    out = []
    for block in text.split("\n\n")[:-1]:
        lines = block.split("\n")
        if lines[0].startswith(":"):
            out.append((":", lines[0]))
        else:
            name = lines[0].removeprefix("event: ")
            assert lines[1].startswith("data: ") and len(lines) == 2, block[:200]
            out.append((name, lines[1][6:]))
    return out


def test_openai_python_streams_each_picture_as_a_completed_event(serve, fake):
    service = serve(api_key=SERVICE_KEY)
    events = list(
        client(service).images.generate(
            model="Kwai-Kolors/Kolors", prompt="a red fox", n=2, size="1024x1024", stream=True, partial_images=2
        )
    )
    assert [event.type for event in events] == ["image_generation.completed"] * 2  # no partial images: none is made
    for event in events:
        assert base64.b64decode(event.b64_json).startswith(b"\x89PNG")
        assert (event.size, event.quality, event.background, event.output_format) == ("64x64", "auto", "opaque", "png")
        assert event.created_at > 0 and event.usage.input_tokens == event.usage.input_tokens_details.text_tokens > 0
    assert len({event.b64_json for event in events}) == 2  # two pictures, not one twice
    calls = fake.state.image_calls()
    assert len(calls) == 2 and len({c.key for c in calls}) == 2  # spread over the pool as pic:2


def test_a_streamed_edit_answers_image_edit_events(serve, fake):
    service = serve(api_key=SERVICE_KEY)
    events = list(
        client(service).images.edit(
            model="Qwen/Qwen-Image-Edit-2509", image=("in.png", FRAME, "image/png"), prompt="make it blue", stream=True
        )
    )
    [event] = events
    assert event.type == "image_edit.completed" and base64.b64decode(event.b64_json).startswith(b"\x89PNG")
    [call] = fake.state.image_calls()
    assert call.body["model"] == "Qwen/Qwen-Image-Edit-2509" and call.body["image"].startswith("data:image/png;base64,")


def test_a_slow_stream_keeps_alive_then_sends_the_picture(serve, fake):
    fake.state.image_latency = 0.6
    service = serve(heartbeat_seconds=0.1)
    started = time.monotonic()
    response = requests.post(
        f"{service.url}/v1/images/generations", json={"prompt": "a fox", "stream": True}, stream=True, timeout=30
    )
    assert response.status_code == 200 and time.monotonic() - started < 0.5  # the stream starts before the picture
    events = sse(response)
    names = [name for name, _ in events]
    assert names[0] == ":" and names[-1] == "image_generation.completed" and names.count(":") >= 2
    assert all(data == ": keep-alive" for name, data in events if name == ":")
    assert json.loads(events[-1][1])["type"] == "image_generation.completed"


def test_a_picture_not_made_is_an_error_event_after_the_pictures_that_were(serve, fake):
    # The second key's link serves a web page: its picture cannot be fetched for b64_json.
    service = serve(api_keys=("sk-good-stream01", "sk-notimage-strm1"))
    response = requests.post(f"{service.url}/v1/images/generations", json={"prompt": "a fox", "n": 2, "stream": True}, timeout=30)
    assert response.status_code == 200
    events = [(name, json.loads(data)) for name, data in sse(response) if name != ":"]
    assert [name for name, _ in events] == ["image_generation.completed", "error"]
    error = events[1][1]
    # Which picture met the bad key depends on which thread took a key first: either, named.
    assert error["type"] == "error" and re.match(r"Picture [12] of 2 was not made: ", error["error"]["message"])
    assert "could not be fetched" in error["error"]["message"] and error["error"]["code"] == "upstream_error"
    # openai-python yields the picture, then raises with the reason
    got = []
    with pytest.raises(openai.APIError, match="was not made"):
        for event in client(service).images.generate(prompt="a fox", n=2, stream=True):
            got.append(event.type)
    assert got == ["image_generation.completed"]


def test_a_stream_with_nothing_made_before_it_starts_is_an_http_error(serve, fake):
    service = serve(api_keys=("sk-notimage-only01",), heartbeat_seconds=5)
    with pytest.raises(openai.APIStatusError) as caught:
        list(client(service).images.generate(prompt="a fox", stream=True))
    assert caught.value.status_code == 502 and "SiliconFlow did not deliver" in caught.value.message


def test_a_json_answer_says_which_picture_was_not_made_and_why(serve, fake):
    service = serve(api_keys=("sk-good-json0001", "sk-notimage-json1"))
    response = requests.post(
        f"{service.url}/v1/images/generations",
        json={"prompt": "a fox", "n": 2, "response_format": "b64_json"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body["data"]) == 1 and base64.b64decode(body["data"][0]["b64_json"]).startswith(b"\x89PNG")
    [error] = body["errors"]
    assert error["index"] in (1, 2) and error["message"].startswith(f"Picture {error['index']} of 2 was not made: ")
    # the typed client reads the pictures as ever
    assert len(client(service).images.generate(prompt="a fox", n=2, response_format="b64_json").data) == 1
