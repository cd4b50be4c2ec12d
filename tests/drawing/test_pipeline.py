"""The drawing pipeline alone: a Job in, typed events out, against the fake SiliconFlow over real
HTTP. What the surfaces make of the events is tested through them (test_chat, test_images_api)."""

from __future__ import annotations

import tempfile

import pytest

from config import Settings
from core.errors import Failure
from drawing import pipeline
from drawing.events import Done, ImageFailed, ImageReady, Job, PromptReady, Refused, Submitted
from parsing import parse
from siliconflow_proxy import create_app


@pytest.fixture
def services(fake):
    app = create_app(
        Settings.from_env(
            {},
            api_base_url=fake.url,
            api_keys=("sk-good-pipe01", "sk-good-pipe02"),
            prompt_expansion=False,
            heartbeat_seconds=0.2,
            image_store_dir=None,
            data_dir=tempfile.mkdtemp(),
        )
    )
    yield app.extensions["siliconflow"]
    app.extensions["siliconflow"].close()
    app.extensions["siliconflow"].catalog.stop()


def _job(text: str, **fields) -> Job:
    return Job("req-test", "Kwai-Kolors/Kolors", text, parse(text, "Kwai-Kolors/Kolors", 4), **fields)


def _kinds(events) -> list[type]:
    return [type(event) for event in events if type(event).__name__ != "KeepAlive"]


def test_a_drawing_is_its_prompt_then_each_picture_then_done(services, fake):
    events = list(pipeline.draw(_job("一只猫 pic:2"), services))
    assert _kinds(events) == [PromptReady, Submitted, ImageReady, ImageReady, Done]
    assert events[-1] == Done(2, 2) and len(fake.state.image_calls()) == 2


def test_a_banned_word_is_refused_before_anything_is_sent(services, fake):
    events = list(pipeline.draw(_job("a nude figure"), services))
    assert events == [Refused("nude", "request")] and fake.state.drawing_calls() == []


def test_the_prompt_being_changed_is_moderated_too(services, fake):
    assert list(pipeline.draw(_job("换成蓝色", previous="porn"), services)) == [Refused("porn", "request")]
    assert fake.state.drawing_calls() == []


def test_a_failed_picture_is_a_reason_and_a_kind_not_a_sentence(fake):
    app = create_app(
        Settings.from_env(
            {},
            api_base_url=fake.url,
            api_keys=("sk-dead-pipe01",),
            prompt_expansion=False,
            image_store_dir=None,
            data_dir=tempfile.mkdtemp(),
        )
    )
    try:
        events = list(pipeline.draw(_job("一只猫"), app.extensions["siliconflow"]))
    finally:
        app.extensions["siliconflow"].close()
    [failed] = [event for event in events if isinstance(event, ImageFailed)]
    assert failed.kind is Failure.AUTH and failed.reason.code == "after_attempts"
    assert failed.reason.get("last").code == "key_invalid" and failed.reason.get("also").code == "keys_out"
    assert events[-1] == Done(0, 1)


def test_closing_the_drawing_stops_the_pictures_not_begun(services, fake):
    fake.state.image_latency = 0.5
    drawing = pipeline.draw(_job("一只猫 pic:4"), services)
    next(drawing)  # the prompt is ready; the pictures are on their way
    drawing.close()  # the client left
    services.executor.shutdown(wait=True)
    assert len(fake.state.image_calls()) <= 2  # the two keys' first pictures at most


def test_close_stops_every_thread_the_service_started(fake, tmp_path):
    """Nothing of a closed service runs on: no thread left to log into a finished test run."""
    import threading

    import requests
    from werkzeug.serving import make_server

    before = set(threading.enumerate())
    app = create_app(
        Settings.from_env(
            {}, api_base_url=fake.url, api_keys=("sk-good-close01",), prompt_expansion=False, data_dir=str(tmp_path)
        )
    )
    server = make_server("127.0.0.1", 0, app, threaded=True)
    serving = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    serving.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}"
        body = {"messages": [{"role": "user", "content": "画一只猫"}], "model": "Kwai-Kolors/Kolors"}
        assert requests.post(f"{url}/v1/chat/completions", json=body, timeout=30).status_code == 200
        started = {t.name for t in set(threading.enumerate()) - before}
        assert {"key-upkeep", "key-queue", "model-catalog"} <= started or {"key-upkeep", "model-catalog"} <= started
    finally:
        server.shutdown()
        server.server_close()
        serving.join(5)
        app.extensions["siliconflow"].close()
    # The request threads are the test server's; the deadline watchdog is one per process, shared by all.
    ours = [t for t in set(threading.enumerate()) - before if "process_request" not in t.name and t.name != "deadline-watchdog"]
    left = [t.name for t in ours if t.is_alive() and not t.name.startswith("upstream")]
    assert left == [], left
