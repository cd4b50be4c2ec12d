"""The official OpenAI npm package against the service: streaming chat with pic:2, images.generate."""

from __future__ import annotations

import json
import subprocess

from tests.conftest import SERVICE_KEY
from tests.helpers import images_in
from tests.js_env import JS_DIR, node_modules


def test_openai_js_sdk_streams_chat_and_generates_images(serve, fake):
    node_modules("openai")
    fake.state.image_latency = 0.3
    service = serve(api_key=SERVICE_KEY, heartbeat_seconds=0.1)  # heartbeats included
    result = subprocess.run(
        ["node", str(JS_DIR / "sdk_check.mjs"), service.url, SERVICE_KEY],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["finish"] == "stop"
    assert sorted(images_in(out["content"])) == [1, 2]
    assert len(out["images"]) == 2 and all(url.startswith(fake.url) for url in out["images"])
    assert out["authError"] == "AuthenticationError"
