"""Failover over keys, timeouts, heartbeats and aborted streams, over real HTTP against the fake."""

from __future__ import annotations

import time

import pytest
import requests

from tests.helpers import chat_body, content_of, images_in, post_chat, stream_chunks, wait_until


def _content(service, text: str, *, stream: bool) -> str:
    response = post_chat(service.url, chat_body(text, stream=stream), stream=stream)
    assert response.status_code == 200
    if stream:
        chunks, raw = stream_chunks(response)
        assert raw[-1] == "[DONE]" and chunks[-1]["choices"][0]["finish_reason"] == "stop"
        return content_of(chunks)
    return response.json()["choices"][0]["message"]["content"]


def _health(service) -> dict:
    return requests.get(f"{service.url}/health", timeout=5).json()["keys"]


def _resting(service) -> list[dict]:
    return requests.get(f"{service.url}/health", timeout=5).json()["accounts"]["resting"]


MIXED = ("sk-dead-mixed001", "sk-broke-mixed02", "sk-limited-mix03", "sk-overload-mix4", "sk-good-mixed005", "sk-good-mixed006")


@pytest.mark.parametrize("stream", [False, True])
def test_mixed_pool_still_delivers_every_image(serve, fake, stream):
    service = serve(api_keys=MIXED, prompt_expansion=False)
    content = _content(service, "画一只猫 pic:4", stream=stream)
    assert sorted(images_in(content)) == [1, 2, 3, 4], content
    assert "4/4" in content
    keys = _health(service)
    assert keys["dead"] == 1 and keys["resting"] == 1 and keys["total"] == 6
    # Known-bad keys are not tried again.
    before = len(fake.state.image_calls())
    content = _content(service, "画一只狗 pic:4", stream=stream)
    assert sorted(images_in(content)) == [1, 2, 3, 4]
    again = {c.key for c in fake.state.image_calls()[before:]}
    assert not again & {"sk-dead-mixed001", "sk-broke-mixed02", "sk-limited-mix03"}


@pytest.mark.parametrize("stream", [False, True])
def test_every_key_out_is_said_in_plain_words(serve, fake, stream):
    service = serve(api_keys=("sk-dead-out00001", "sk-broke-out0002"), prompt_expansion=False)
    content = _content(service, "画一只猫 pic:2", stream=stream)
    assert "0/2" in content
    assert "全部 2 个上游密钥暂不可用：1 个无效（401）、1 个余额不足" in content
    calls = len(fake.state.image_calls())
    content = _content(service, "画一只猫", stream=stream)
    assert "全部 2 个上游密钥暂不可用" in content
    assert len(fake.state.image_calls()) == calls  # nothing left to try: no upstream call


def test_a_hanging_key_times_out_and_the_image_moves_on(serve, fake):
    fake.state.hang_seconds = 5.0
    service = serve(api_keys=("sk-hang-slow0001", "sk-good-fast0002"), upstream_timeout=0.5, prompt_expansion=False)
    content = _content(service, "画一只猫", stream=True)
    assert len(images_in(content)) == 1
    # Cut at the timeout, not waited out: a hang waited out would have drawn the picture itself.
    assert [c.key for c in fake.state.image_calls()] == ["sk-hang-slow0001", "sk-good-fast0002"]


def test_upstream_400_is_not_retried_on_other_keys(serve, fake):
    service = serve(models=("prompthero/openjourney",), prompt_expansion=False)
    response = post_chat(service.url, chat_body("a cat", model="prompthero/openjourney"))
    assert "已下线或不存在（SiliconFlow 20012）" in response.json()["choices"][0]["message"]["content"]
    assert len(fake.state.image_calls()) == 1
    assert _health(service)["healthy"] == 3


def test_where_user_info_still_answers_the_balance_recheck_brings_a_key_back(serve, fake):
    fake.state.user_info = True  # another deployment, whose /v1/user/info still answers 200
    service = serve(api_keys=("sk-broke-topup001",), key_recheck_seconds=0.2, prompt_expansion=False)
    assert "余额不足" in _content(service, "画一只猫", stream=False)
    assert _health(service)["resting"] == 1
    fake.state.funded.add("sk-broke-topup001")
    assert wait_until(lambda: _health(service)["healthy"] == 1), "the topped-up key did not come back"
    assert any(c.path == "/v1/user/info" and c.key == "sk-broke-topup001" for c in fake.state.calls)
    content = _content(service, "画一只猫", stream=False)
    assert len(images_in(content)) == 1


def test_429_with_retry_after_rests_the_account_for_that_long(serve, fake):
    fake.state.retry_after = "1"
    service = serve(api_keys=("sk-retry-after001", "sk-good-other002"), prompt_expansion=False)
    assert len(images_in(_content(service, "画一只猫", stream=False))) == 1  # failed over to the good key
    [rest] = _resting(service)
    assert rest["model"] == "Kwai-Kolors/Kolors" and rest["seconds"] == 1
    before = len(fake.state.image_calls())
    _content(service, "画一只猫 pic:2", stream=False)
    assert {c.key for c in fake.state.image_calls()[before:]} == {"sk-good-other002"}
    assert wait_until(lambda: _resting(service) == [], 3.0)  # back after Retry-After


def test_429_without_retry_after_rests_the_account_for_rate_limit_rest(serve, fake):
    service = serve(api_keys=("sk-limited-noRA01", "sk-good-other002"), prompt_expansion=False, rate_limit_rest=60)
    _content(service, "画一只猫", stream=False)
    [rest] = _resting(service)
    assert 59 <= rest["seconds"] <= 60  # the whole minute: not a Retry-After's second, nor anything shorter
    before = len(fake.state.image_calls())
    _content(service, "画一只猫", stream=False)
    assert {c.key for c in fake.state.image_calls()[before:]} == {"sk-good-other002"}


def test_a_lone_rate_limited_key_is_waited_for_and_retried(serve, fake):
    fake.state.retry_after = "1"
    service = serve(api_keys=("sk-once-limited01",), prompt_expansion=False, request_timeout=10)
    started = time.monotonic()
    content = _content(service, "画一只猫", stream=True)
    assert len(images_in(content)) == 1
    assert time.monotonic() - started >= 1.0  # it honoured Retry-After before trying again
    assert [c.key for c in fake.state.image_calls()] == ["sk-once-limited01"] * 2


def test_no_wait_past_the_request_deadline(serve, fake):
    fake.state.retry_after = "30"
    service = serve(api_keys=("sk-retry-long0001",), prompt_expansion=False, request_timeout=2)
    content = _content(service, "画一只猫", stream=False)
    assert [c.key for c in fake.state.image_calls()] == ["sk-retry-long0001"]  # not tried again 30 s later
    assert "限流" in content and "REQUEST_TIMEOUT" in content and "约 30 秒后" in content


def test_heartbeats_are_on_the_wire_while_waiting(serve, fake):
    fake.state.image_latency = 1.0
    fake.state.expansion_latency = 0.5
    service = serve(heartbeat_seconds=0.2)
    response = post_chat(service.url, chat_body("画一只猫", stream=True), stream=True)
    raw = response.content.decode()
    assert raw.count(": keep-alive\n\n") >= 4
    assert raw.rstrip().endswith("data: [DONE]")
    first_line, rest = raw.split("正在完善提示词", 1)  # the first line streams before the expansion starts
    assert "提示词" not in first_line
    assert ": keep-alive" in rest.split("提示词")[0]  # and heartbeats during it


def test_openai_v1_client_reads_through_heartbeats(serve, fake):
    import openai

    fake.state.image_latency = 0.6
    service = serve(heartbeat_seconds=0.1)
    client = openai.OpenAI(base_url=f"{service.url}/v1", api_key="x", max_retries=0, timeout=30)
    stream = client.chat.completions.create(
        model="Kwai-Kolors/Kolors", messages=[{"role": "user", "content": "画一只猫 pic:2"}], stream=True
    )
    content = "".join(chunk.choices[0].delta.content or "" for chunk in stream)
    assert sorted(images_in(content)) == [1, 2]


def test_health_reports_the_pool_without_key_material(serve, fake):
    service = serve(api_keys=("sk-dead-health01", "sk-good-health02"), prompt_expansion=False)
    _content(service, "画一只猫 pic:2", stream=False)
    response = requests.get(f"{service.url}/health", timeout=5)
    body = response.json()
    assert body["keys"] == {"total": 2, "healthy": 1, "cooling": 0, "dead": 1, "resting": 0, "disabled": 0, "calls_in_flight": 0}
    assert body["accounts"]["total"] == 2 and body["store"]["kind"] == "local"
    assert body["rate_limit"] == "learned from 429s" and body["queue"] == {"waiting_in_this_worker": 0}
    assert "sk-" not in response.text and "health01" not in response.text


def test_unreachable_upstream_is_said_plainly(serve, fake):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    service = serve(api_base_url=closed, max_key_attempts=2)
    content = _content(service, "画一只猫", stream=True)
    assert "提示词扩充失败：无法连接上游服务" in content
    assert "第 1 张图片生成失败：无法连接上游服务" in content and "0/1" in content


def test_a_topped_up_key_draws_again_by_itself(serve, fake):
    """SiliconFlow's /v1/user/info answers 410: a key refused for balance rests, and a real call
    tries it again after KEY_RECHECK_SECONDS; once its account has money, it draws."""
    service = serve(api_keys=("sk-broke-topup001", "sk-good-other002"), key_recheck_seconds=0.5, prompt_expansion=False)
    assert len(images_in(_content(service, "画一只猫", stream=False))) == 1  # moved on to the good key at once
    assert _health(service)["resting"] == 1
    fake.state.funded.add("sk-broke-topup001")
    before = len(fake.state.image_calls())

    def drew_with_the_topped_up_key() -> bool:
        _content(service, "画一只猫 pic:2", stream=False)
        return any(c.key == "sk-broke-topup001" for c in fake.state.image_calls()[before:])

    assert wait_until(drew_with_the_topped_up_key, timeout=5, interval=0.2)
    assert _health(service)["resting"] == 0 and _health(service)["healthy"] == 2


def test_nothing_asks_the_stopped_user_info_again_and_again(serve, fake, logged):
    service = serve(api_keys=("sk-good-one00001", "sk-good-two00002"), key_recheck_seconds=0.2, prompt_expansion=False)
    _content(service, "画一只猫", stream=False)
    time.sleep(1.5)  # seven re-check intervals
    asked = [c for c in fake.state.calls if c.path == "/v1/user/info"]
    assert len(asked) <= 1, len(asked)  # the first 410 ends the asking
    assert len(logged.lines("no longer tells accounts or balances")) == 1
    assert logged.lines("user info for key") == []
    body = requests.get(f"{service.url}/health", timeout=5).json()
    assert "no longer tells accounts or balances" in body["balances"]
