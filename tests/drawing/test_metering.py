"""What a drawing costs a person's quota: what SiliconFlow drew or took, whatever happens to the
connection (metering.py). Over real HTTP, hanging up with a TCP reset as an attacker would."""

from __future__ import annotations

import json
import socket
import struct
import time
from concurrent.futures import Future
from urllib.parse import urlsplit

import requests

from drawing.metering import Meter
from tests.helpers import wait_until

ADMIN = "operator-secret-0123456789"
AS_ADMIN = {"Authorization": f"Bearer {ADMIN}"}


def _new_key(url: str, **caps: int) -> str:
    response = requests.post(f"{url}/admin/api/keys", json={"name": "mallory", **caps}, headers=AS_ADMIN, timeout=10)
    assert response.status_code == 201, response.text
    return response.json()["key"]


def _used_today(url: str) -> dict:
    [listed] = requests.get(f"{url}/admin/api/keys", headers=AS_ADMIN, timeout=10).json()["data"]
    return listed


def _stream_then_reset(url: str, key: str, model: str, text: str, until: str, also=lambda: True) -> str:
    """A stream chat read until `until` appears (and `also()` holds), then the connection reset (RST, no goodbye)."""
    host, port = urlsplit(url).hostname, urlsplit(url).port
    body = json.dumps({"model": model, "stream": True, "messages": [{"role": "user", "content": text}]}).encode()
    sock = socket.create_connection((host, port), timeout=30)
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {key}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    seen = b""
    deadline = time.monotonic() + 30
    while until not in _text(seen):
        assert time.monotonic() < deadline, seen[-500:]
        piece = sock.recv(65536)
        assert piece, seen[-500:]
        seen += piece
    assert wait_until(also, timeout=10)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()  # a reset: the service's next write fails
    return _text(seen)


def _counted_for_good(url: str, fake) -> None:
    """The one video taken counts, and stays counted once the service has seen the person leave.
    (It was reserved before it was drawn: what matters is that the hang-up does not give it back,
    which the service does, if it does, within moments of SiliconFlow's answer.)"""
    assert wait_until(lambda: all(job.get("answered") for job in fake.state.videos.values()), timeout=10)
    assert not wait_until(lambda: _used_today(url)["videos_today"] == 0, timeout=2), "given back on hang-up"
    assert _used_today(url)["videos_today"] == 1


def _text(raw: bytes) -> str:
    """The assistant's words so far, from the SSE chunks received."""
    words = ""
    for line in raw.decode("utf-8", "ignore").split("\n"):
        if line.startswith("data: {"):
            try:
                words += json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
            except (ValueError, KeyError, IndexError):
                pass
    return words


def test_a_video_taken_by_siliconflow_counts_when_the_person_hangs_up_at_its_first_line(serve, fake):
    """The attack: read until 提交中, reset while SiliconFlow takes the job (it has, and bills it,
    before it answers): it is counted, though no line about it could be written any more."""
    fake.state.video_seconds = 1.0
    fake.state.video_submit_latency = 0.3  # the reset lands between the job's arrival and its answer
    service = serve(admin_key=ADMIN, prompt_expansion=False, video_poll_seconds=0.1, heartbeat_seconds=0.2)
    secret = _new_key(service.url, daily_videos=1)
    said = _stream_then_reset(
        service.url, secret, "Wan-AI/Wan2.2-T2V-A14B", "一只狗在草地上跑", "提交中", lambda: fake.state.videos
    )
    assert "提交中" in said
    _counted_for_good(service.url, fake)
    again = requests.post(
        f"{service.url}/v1/chat/completions",
        json={"model": "Wan-AI/Wan2.2-T2V-A14B", "messages": [{"role": "user", "content": "一只猫"}]},
        headers={"Authorization": f"Bearer {secret}"},
        timeout=30,
    )
    assert again.status_code == 429 and again.json()["error"]["code"] == "insufficient_quota"
    assert len(fake.state.videos) == 1  # no second paid video


def test_pictures_drawn_after_the_person_hangs_up_still_count(serve, fake):
    """The attack: pic:2 with pictures slower than a heartbeat, reset after ✅. SiliconFlow draws
    both (they were on their way): both count against the quota, though neither was delivered."""
    fake.state.image_latency = 0.8
    service = serve(admin_key=ADMIN, prompt_expansion=False, heartbeat_seconds=0.2)
    secret = _new_key(service.url, daily_images=3)
    _stream_then_reset(
        service.url, secret, "Kwai-Kolors/Kolors", "画一只猫 pic:2", "✅", lambda: len(fake.state.image_calls()) == 2
    )
    assert wait_until(lambda: len([c for c in fake.state.image_calls() if c.end]) == 2, timeout=10)
    # Settled (the total is written then): what was reserved stays taken, none given back.
    assert wait_until(lambda: _used_today(service.url)["images_total"] == 2, timeout=10), _used_today(service.url)
    assert _used_today(service.url)["images_today"] == 2
    # One left of three: a pic:2 draws one and says why not two.
    answer = requests.post(
        f"{service.url}/v1/chat/completions",
        json={"model": "Kwai-Kolors/Kolors", "messages": [{"role": "user", "content": "画一只狗 pic:2"}]},
        headers={"Authorization": f"Bearer {secret}"},
        timeout=30,
    ).json()["choices"][0]["message"]["content"]
    assert "只剩 1 个" in answer


def test_a_picture_not_begun_when_the_person_hangs_up_is_given_back(serve, fake):
    """Only what SiliconFlow drew counts: pictures still waiting for a key when the person leaves
    are never sent, and their reservation is given back."""
    fake.state.image_latency = 1.0
    service = serve(
        admin_key=ADMIN,
        prompt_expansion=False,
        heartbeat_seconds=0.2,
        api_keys=("sk-good-alone0001",),
        image_rate_limit=((1, 30.0),),  # one call per 30 s: the other two pictures wait in line
    )
    secret = _new_key(service.url, daily_images=4)
    _stream_then_reset(service.url, secret, "Kwai-Kolors/Kolors", "画一只猫 pic:3", "✅", lambda: fake.state.image_calls())
    assert wait_until(lambda: [c.end for c in fake.state.image_calls()] not in ([], [0.0]), timeout=10)
    assert wait_until(lambda: _used_today(service.url)["images_today"] == 1, timeout=10), (
        _used_today(service.url)["images_today"],
        [(c.key, c.end) for c in fake.state.image_calls()],
    )
    assert len(fake.state.image_calls()) == 1  # the two waiting were never sent


def test_the_meter_settles_once_after_the_answer_and_the_work_have_both_ended():
    settled: list[int] = []

    class Reservation:
        def settle(self, count: int) -> None:
            settled.append(count)

    meter = Meter(Reservation())
    work: Future = Future()
    meter.track(work)
    meter.close()  # the person left while a picture was being drawn
    assert settled == []
    meter.drawn("kid", "Kwai-Kolors/Kolors")
    work.set_result(None)
    assert settled == [1]
    meter.close()
    assert settled == [1]  # once


def test_an_over_quota_video_request_fetches_nothing(serve, fake, internal):
    """The quota is checked before `input_reference` is downloaded: a key past it costs no fetch."""
    service = serve(admin_key=ADMIN, prompt_expansion=False, allow_private_image_urls=True)
    secret = _new_key(service.url, daily_videos=1)
    headers = {"Authorization": f"Bearer {secret}"}
    link = f"http://127.0.0.1:{internal.server_port}/first-frame.png"
    body = {"prompt": "the cat walks", "model": "Wan-AI/Wan2.2-I2V-A14B", "input_reference": link}
    assert requests.post(f"{service.url}/v1/videos", json=body, headers=headers, timeout=30).status_code == 200
    assert len(internal.hits) == 1
    refused = requests.post(f"{service.url}/v1/videos", json=body, headers=headers, timeout=30)
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "insufficient_quota"
    assert len(internal.hits) == 1  # nothing fetched for a request that was refused anyway


def test_a_video_whose_first_frame_cannot_be_read_gives_its_quota_back(serve, fake, internal):
    service = serve(admin_key=ADMIN, prompt_expansion=False, allow_private_image_urls=True)
    secret = _new_key(service.url, daily_videos=1)
    body = {
        "prompt": "the cat walks",
        "model": "Wan-AI/Wan2.2-I2V-A14B",
        "input_reference": f"http://127.0.0.1:{internal.server_port}/missing.png",
    }
    refused = requests.post(f"{service.url}/v1/videos", json=body, headers={"Authorization": f"Bearer {secret}"}, timeout=30)
    assert refused.status_code == 400 and "input_reference" in refused.json()["error"]["message"]
    assert _used_today(service.url)["videos_today"] == 0


def test_a_picture_whose_answer_timed_out_counts_for_it_may_have_been_drawn(serve, fake):
    """SiliconFlow drew it (and bills it) but answered after UPSTREAM_TIMEOUT: each such attempt
    counts, up to what the request reserved; so retries cannot spend the pool for free."""
    fake.state.image_latency = 1.0
    service = serve(admin_key=ADMIN, prompt_expansion=False, upstream_timeout=0.4, heartbeat_seconds=5)
    secret = _new_key(service.url, daily_images=2)
    answer = requests.post(
        f"{service.url}/v1/images/generations",
        json={"prompt": "a cat", "n": 1},
        headers={"Authorization": f"Bearer {secret}"},
        timeout=60,
    )
    assert answer.status_code in (502, 504), answer.text
    assert len(fake.state.image_calls()) == 3  # MAX_KEY_ATTEMPTS
    assert wait_until(lambda: _used_today(service.url)["images_today"] == 1, timeout=10), (
        _used_today(service.url)["images_today"],
        [(c.key, c.end) for c in fake.state.image_calls()],
    )


def test_a_video_submit_that_timed_out_is_never_sent_again_and_counts(serve, fake):
    """The job may exist at SiliconFlow (and be billed): not submitted a second time on another key."""
    fake.state.video_submit_latency = 1.0
    service = serve(admin_key=ADMIN, prompt_expansion=False, upstream_timeout=0.4)
    secret = _new_key(service.url, daily_videos=2)
    answer = requests.post(
        f"{service.url}/v1/videos",
        json={"prompt": "a cat walks", "model": "Wan-AI/Wan2.2-T2V-A14B"},
        headers={"Authorization": f"Bearer {secret}"},
        timeout=60,
    )
    assert answer.status_code == 504 and "not sent again" in answer.json()["error"]["message"], answer.text
    assert len(fake.state.videos) == 1
    assert _used_today(service.url)["videos_today"] == 1
    chat = requests.post(
        f"{service.url}/v1/chat/completions",
        json={"model": "Wan-AI/Wan2.2-T2V-A14B", "messages": [{"role": "user", "content": "一只猫"}]},
        headers={"Authorization": f"Bearer {secret}"},
        timeout=60,
    ).json()["choices"][0]["message"]["content"]
    assert "为免重复计费没有再次提交" in chat
    assert len(fake.state.videos) == 2 and _used_today(service.url)["videos_today"] == 2


def test_a_key_allowed_no_pictures_gets_its_ui_tasks_answered_without_the_chat_model(serve, fake):
    """A chat UI's title task from a key that may not draw: answered, and the pool's chat model
    is not asked (nothing would count it)."""
    fake.state.expansion_mode = "helpful"
    service = serve(admin_key=ADMIN)
    secret = _new_key(service.url, daily_images=0, daily_videos=0)
    from tests.ui_templates import open_webui_templates, render_open_webui

    history = [{"role": "user", "content": "画一只猫"}, {"role": "assistant", "content": ""}]
    task = render_open_webui(open_webui_templates()["DEFAULT_TITLE_GENERATION_PROMPT_TEMPLATE"], history)
    for _ in range(3):
        answer = requests.post(
            f"{service.url}/v1/chat/completions",
            json={"model": "Kwai-Kolors/Kolors", "messages": [{"role": "user", "content": task}]},
            headers={"Authorization": f"Bearer {secret}"},
            timeout=30,
        )
        assert answer.status_code == 200 and "title" in answer.json()["choices"][0]["message"]["content"]
    assert fake.state.chat_calls() == []


def test_under_gunicorn_a_video_taken_counts_when_the_person_hangs_up_at_its_first_line(fake, production_bin):
    """The attack as it was made: the Procfile's gunicorn, a stream read until 提交中, then reset."""
    from tests.servers import Gunicorn

    fake.state.video_submit_latency = 0.3
    server = Gunicorn(
        {
            "API_BASE_URL": fake.url,
            "API_KEYS": "sk-good-g1,sk-good-g2",
            "ADMIN_KEY": ADMIN,
            "PROMPT_EXPANSION": "false",
            "HEARTBEAT_SECONDS": "0.2",
            "VIDEO_POLL_SECONDS": "0.2",
        },
        production_bin,
    )
    try:
        assert server.wait_until_up(), server.log()[-2000:]
        secret = _new_key(server.url, daily_videos=1)
        _stream_then_reset(server.url, secret, "Wan-AI/Wan2.2-T2V-A14B", "一只狗在跑", "提交中", lambda: fake.state.videos)
        _counted_for_good(server.url, fake)
    finally:
        server.stop()


def test_what_hears_of_a_drawing_never_fails_it():
    """A Meter's on_drawn (what it cost, recorded in the ledger) that fails leaves the count alone."""
    heard: list[tuple[str, str]] = []
    meter = Meter(on_drawn=lambda key_id, model: heard.append((key_id, model)))
    meter.drawn("k1", "Qwen/Qwen-Image")
    assert heard == [("k1", "Qwen/Qwen-Image")] and meter.count == 1
    failing = Meter(on_drawn=lambda key_id, model: 1 / 0)
    failing.drawn("k1", "Qwen/Qwen-Image")
    assert failing.count == 1
