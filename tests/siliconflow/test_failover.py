"""Failover (failover.py): one call over the pool's keys, against the fake SiliconFlow over real HTTP
and a real KeyPool. Which failures move the call on to the next key without counting against it
(the key's or its account's), which count (they may be the request's), what the caller is told may
have been billed, and what is never sent twice: a video submit that SiliconFlow may have taken."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from core.errors import Failure, UpstreamError
from siliconflow.client import video_submit
from siliconflow.failover import generate_with_failover, submit_video
from siliconflow.keystate_sqlite import LocalStore
from siliconflow.leases import key_id
from siliconflow.outbound import make_http
from siliconflow.pool import KeyPool

PAYLOAD = {"model": "Kwai-Kolors/Kolors", "prompt": "a cat", "image_size": "1024x1024", "batch_size": 1}
VIDEO = {"model": "Wan-AI/Wan2.2-T2V-A14B", "prompt": "a cat running", "image_size": "1280x720"}


@pytest.fixture(scope="module")
def http():
    return make_http(4)


@pytest.fixture
def pool_of():
    """`pool_of(*keys, **settings)`: a KeyPool on a fresh SQLite key state, removed after the test."""
    stores: list[LocalStore] = []

    def make(*keys: str, **kwargs) -> KeyPool:
        stores.append(LocalStore())
        return KeyPool(keys, stores[-1], **kwargs)

    yield make
    for store in stores:
        store.remove()


def picture(http, base_url: str, pool: KeyPool, *, attempts: int = 1, timeout: float = 10, spent=None, cancelled=None):
    return generate_with_failover(
        http,
        base_url,
        pool,
        PAYLOAD,
        timeout=timeout,
        deadline=time.monotonic() + 30,
        max_attempts=attempts,
        max_bytes=1 << 20,
        request_id="req-1",
        label="req=req-1 image 1",
        cancelled=cancelled or threading.Event(),
        maybe_drawn=spent.append if spent is not None else None,
    )


def video(pool: KeyPool, send, *, taken: list[str], attempts: int = 3, seconds: float = 30) -> tuple[str, str]:
    return submit_video(
        pool,
        send,
        VIDEO,
        deadline=time.monotonic() + seconds,
        max_attempts=attempts,
        request_id="req-v",
        label="req=req-v video 1",
        maybe_taken=taken.append,
    )


def submits(fake) -> list[str]:
    with fake.state.lock:
        return [call.key for call in fake.state.calls if call.path == "/v1/video/submit"]


class Scripted(ThreadingHTTPServer):
    """A SiliconFlow that answers what the fake cannot: 403 without a balance problem to keys named
    sk-forbid, a picture to any other key, and 200 with an HTML page to every video submit."""

    daemon_threads = True

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        super().__init__(("127.0.0.1", 0), _ScriptedHandler)
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _ScriptedHandler(BaseHTTPRequestHandler):
    server: Scripted

    def log_message(self, *args) -> None:
        pass

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        key = self.headers.get("Authorization", "").removeprefix("Bearer ")
        self.server.calls.append((self.path, key))
        if self.path == "/v1/video/submit":
            status, body = 200, b"<html><body>502 Bad Gateway</body></html>"
        elif key.startswith("sk-forbid"):
            status, body = 403, json.dumps({"code": 30003, "message": "Model disabled for this account.", "data": None}).encode()
        else:
            status, body = 200, json.dumps({"images": [{"url": "https://images.example/cat.png"}], "seed": 7}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/html" if body.startswith(b"<") else "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def scripted():
    server = Scripted()
    yield server
    server.shutdown()
    server.server_close()


# --- pictures ---------------------------------------------------------------------------------------


def test_failures_of_the_key_or_its_account_move_on_and_do_not_count(fake, http, pool_of, logged):
    """One attempt allowed, and a dead key, a key without balance and a rate-limited account before
    the good key: none of them is the request's fault, so the picture is still drawn."""
    keys = ("sk-dead-fo01", "sk-broke-fo01", "sk-limited-fo1", "sk-good-fo01")
    pool = pool_of(*keys)
    image = picture(http, fake.url, pool, attempts=1)
    assert image.key_id == key_id("sk-good-fo01")
    assert [call.key for call in fake.state.image_calls()] == list(keys)  # each tried once, in turn
    summary = pool.summary()
    assert (summary["keys"]["dead"], summary["keys"]["resting"], len(summary["accounts"]["resting"])) == (1, 1, 1)
    failed = logged.lines(r"attempt \d on key")
    assert len(failed) == 3 and not any(key in line for line in failed for key in keys)  # keys masked in logs


def test_a_model_disabled_for_an_account_moves_on_too(scripted, http, pool_of):
    pool = pool_of("sk-forbid-fo01", "sk-other-fo01")
    image = picture(http, scripted.url, pool, attempts=1)
    assert image.url == "https://images.example/cat.png" and image.key_id == key_id("sk-other-fo01")
    assert [key for _, key in scripted.calls] == ["sk-forbid-fo01", "sk-other-fo01"]


@pytest.mark.parametrize(
    "prefix, kind",
    [("sk-overload", Failure.SERVER), ("sk-gateway", Failure.TIMEOUT), ("sk-html", Failure.BAD_RESPONSE)],
)
def test_failures_that_may_be_the_requests_count_up_to_max_attempts(fake, http, pool_of, prefix, kind):
    keys = (f"{prefix}-fo01", f"{prefix}-fo02", "sk-good-fo02")
    with pytest.raises(UpstreamError) as failed:
        picture(http, fake.url, pool_of(*keys), attempts=2)
    assert failed.value.kind is kind
    assert failed.value.reason.code == "after_attempts" and failed.value.reason.get("attempts") == 2
    assert "sk-good-fo02" not in [call.key for call in fake.state.image_calls()]  # two were all it had
    fake.state.reset()
    assert picture(http, fake.url, pool_of(*keys), attempts=3).key_id == key_id("sk-good-fo02")


def test_a_bad_request_is_not_sent_to_another_key(fake, http, pool_of):
    pool = pool_of("sk-good-fo03", "sk-good-fo04")
    with pytest.raises(UpstreamError) as failed:
        generate_with_failover(
            http,
            fake.url,
            pool,
            PAYLOAD | {"model": "gone/model"},
            timeout=10,
            deadline=time.monotonic() + 30,
            max_attempts=3,
            max_bytes=1 << 20,
            request_id="req-2",
            label="req=req-2 image 1",
            cancelled=threading.Event(),
        )
    assert (failed.value.kind, failed.value.reason.code) == (Failure.BAD_REQUEST, "model_gone")
    assert len(fake.state.image_calls()) == 1  # another key would say the same


@pytest.mark.parametrize("slow_key", ["sk-gateway-fo03", "sk-hang-fo0001"])
def test_a_picture_that_may_have_been_drawn_is_told_to_the_caller_and_drawn_on_the_next_key(fake, http, pool_of, slow_key):
    """A 504 from SiliconFlow's gateway, or no answer before our timeout: the picture may be billed
    (the person's quota counts it), and the picture is drawn on the next key all the same."""
    fake.state.hang_seconds = 3
    spent: list[str] = []
    image = picture(http, fake.url, pool_of(slow_key, "sk-good-fo05"), attempts=2, timeout=0.5, spent=spent)
    assert image.key_id == key_id("sk-good-fo05") and spent == [key_id(slow_key)]


def test_a_call_refused_for_balance_moves_on_at_once_to_a_key_of_the_same_account(fake, http, pool_of):
    """No money is the key's own problem: the account is not rested, and its other key draws now,
    not after a rest (the call has a few seconds; the account's rest would be ten minutes)."""
    pool = pool_of("A/sk-broke-fo02", "A/sk-good-fo06", rest_seconds=600, recheck_seconds=600)
    image = generate_with_failover(
        http,
        fake.url,
        pool,
        PAYLOAD,
        timeout=5,
        deadline=time.monotonic() + 5,
        max_attempts=1,
        max_bytes=1 << 20,
        request_id="req-3",
        label="req=req-3 image 1",
        cancelled=threading.Event(),
    )
    assert image.key_id == key_id("sk-good-fo06")
    assert [call.key for call in fake.state.image_calls()] == ["sk-broke-fo02", "sk-good-fo06"]
    assert pool.summary()["accounts"]["resting"] == [] and pool.summary()["keys"]["resting"] == 1


def test_when_every_key_is_out_nothing_is_sent_and_the_call_says_why(fake, http, pool_of):
    pool = pool_of("sk-dead-fo02")
    with pytest.raises(UpstreamError) as first:
        picture(http, fake.url, pool, attempts=3)
    assert first.value.kind is Failure.AUTH and first.value.reason.get("last").code == "key_invalid"
    fake.state.reset()
    with pytest.raises(UpstreamError) as second:
        picture(http, fake.url, pool, attempts=3)
    assert second.value.kind is Failure.NO_KEYS and second.value.reason.code == "keys_out"
    assert second.value.reason.get("dead") == 1 and fake.state.image_calls() == []


def test_a_cancelled_call_is_not_sent(fake, http, pool_of):
    cancelled = threading.Event()
    cancelled.set()
    with pytest.raises(UpstreamError) as failed:
        picture(http, fake.url, pool_of("sk-good-fo07"), cancelled=cancelled)
    assert failed.value.kind is Failure.CANCELLED and fake.state.image_calls() == []


# --- video submits ----------------------------------------------------------------------------------


def test_a_video_submit_that_timed_out_is_never_sent_twice(fake, http, pool_of):
    """SiliconFlow takes the job (and bills the clip) but answers late: the submit is not repeated on
    another key, the caller is told it may have been taken, and the reason says why."""
    fake.state.video_submit_latency = 1.5
    taken: list[str] = []
    pool = pool_of("sk-good-fv01", "sk-good-fv02")
    with pytest.raises(UpstreamError) as failed:
        video(pool, lambda key, body: video_submit(http, fake.url, key, body, 0.3), taken=taken, attempts=3)
    assert (failed.value.kind, failed.value.reason.code) == (Failure.TIMEOUT, "video_submit_unsure")
    assert submits(fake) == ["sk-good-fv01"] and len(fake.state.videos) == 1
    assert taken == [key_id("sk-good-fv01")]


def test_a_video_submit_whose_answer_cannot_be_read_is_not_sent_again(scripted, http, pool_of):
    taken: list[str] = []
    pool = pool_of("sk-one-fv03", "sk-two-fv04")
    with pytest.raises(UpstreamError) as failed:
        video(pool, lambda key, body: video_submit(http, scripted.url, key, body, 5), taken=taken)
    assert (failed.value.kind, failed.value.reason.code) == (Failure.BAD_RESPONSE, "video_submit_unsure")
    assert scripted.calls == [("/v1/video/submit", "sk-one-fv03")] and taken == [key_id("sk-one-fv03")]


def test_a_video_submit_refused_by_dead_or_broke_keys_moves_on_and_is_taken_once(fake, http, pool_of):
    taken: list[str] = []
    keys = ("sk-dead-fv05", "sk-broke-fv05", "sk-good-fv05")
    key, upstream_id = video(pool_of(*keys), lambda key, body: video_submit(http, fake.url, key, body, 5), taken=taken)
    assert key == "sk-good-fv05" and list(fake.state.videos) == [upstream_id]
    assert submits(fake) == list(keys) and taken == []  # refusals bill nothing
