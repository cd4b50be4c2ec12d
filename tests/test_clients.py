"""The real OpenAI clients against the service: openai>=1 here, openai==0.28.1 in its own venv."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import openai
import pytest

from tests.conftest import GOOD_KEYS, SERVICE_KEY
from tests.helpers import images_in

LEGACY_SCRIPT = Path(__file__).with_name("legacy_client.py")


@pytest.fixture
def locked(serve, fake):
    # Heartbeats every 0.1 s while images take 0.3 s or more: every client must read past them.
    fake.state.image_latency = 0.3
    return serve(api_key=SERVICE_KEY, heartbeat_seconds=0.1)


def client(service, key: str = SERVICE_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{service.url}/v1", api_key=key, max_retries=0, timeout=30)


def test_openai_v1_stream_gets_every_image(locked, fake):
    stream = client(locked).chat.completions.create(
        model="Kwai-Kolors/Kolors", messages=[{"role": "user", "content": "画一只可爱的猫咪，9:16比例 pic:2"}], stream=True
    )
    parts, finish = [], None
    for chunk in stream:
        parts.append(chunk.choices[0].delta.content or "")
        finish = chunk.choices[0].finish_reason or finish
    content = "".join(parts)
    assert finish == "stop"
    assert sorted(images_in(content)) == [1, 2]
    assert {c.body["image_size"] for c in fake.state.image_calls()} == {"720x1280"}


def test_openai_v1_non_stream(locked):
    answer = client(locked).chat.completions.create(
        model="Kwai-Kolors/Kolors", messages=[{"role": "user", "content": "画一只猫 pic:2"}]
    )
    assert answer.choices[0].finish_reason == "stop"
    assert sorted(images_in(answer.choices[0].message.content)) == [1, 2]
    assert answer.usage.total_tokens > 0


def test_openai_v1_lists_models(locked):
    ids = [m.id for m in client(locked).models.list()]
    assert "Kwai-Kolors/Kolors" in ids and "Qwen/Qwen-Image" in ids


def test_openai_v1_errors_are_typed(locked, fake):
    with pytest.raises(openai.AuthenticationError):
        client(locked, key="wrong").chat.completions.create(
            model="Kwai-Kolors/Kolors", messages=[{"role": "user", "content": "cat"}]
        )
    with pytest.raises(openai.BadRequestError, match="Unknown model"):
        client(locked).chat.completions.create(model="midjourney-v6", messages=[{"role": "user", "content": "cat"}])
    assert fake.state.drawing_calls() == []


def _legacy(python: str, service, key: str, mode: str, prompt: str) -> dict:
    result = subprocess.run(
        [python, str(LEGACY_SCRIPT), service.url, key, mode, prompt], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_legacy_stream_pic3_gets_three_images_from_three_keys_in_parallel(legacy_python, locked, fake):
    fake.state.image_latency = 0.5
    out = _legacy(legacy_python, locked, SERVICE_KEY, "stream", "画一只可爱的猫咪，9:16比例 pic:3")
    assert sorted(images_in(out["content"])) == [1, 2, 3]
    calls = fake.state.image_calls()
    assert sorted(c.key for c in calls) == sorted(GOOD_KEYS)
    assert max(c.start for c in calls) < min(c.end for c in calls), "the three upstream calls did not overlap"


def test_legacy_non_stream(legacy_python, locked):
    out = _legacy(legacy_python, locked, SERVICE_KEY, "plain", "画一只猫 pic:2")
    assert sorted(images_in(out["content"])) == [1, 2]


def test_legacy_wrong_key_raises_authentication_error(legacy_python, locked, fake):
    out = _legacy(legacy_python, locked, "wrong-key", "stream", "画一只猫")
    assert out == {"error": "AuthenticationError", "status": 401}
    assert fake.state.drawing_calls() == []
