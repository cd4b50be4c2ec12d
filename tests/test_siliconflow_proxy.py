"""The app factory: `create_app(settings)` builds a service from the settings it is given (never
from the environment behind them), says at start what it runs with, stops a start whose named
places cannot be used; `Services.close()` ends every background thread and the drawing executor;
`/health` tells a stranger only the status when there is an operator."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest
import requests

from config import Settings
from core.errors import ConfigError
from siliconflow_proxy import create_app
from tests.conftest import GOOD_KEYS, ROOT, SERVICE_KEY
from tests.helpers import chat_body, post_chat

ADMIN = "operator-secret-0123456789"
LOOPS = {"key-upkeep", "key-queue", "model-catalog", "video-jobs"}


def _loops(before: set[threading.Thread]) -> dict[str, threading.Thread]:
    """The service loops running now that were not before."""
    return {t.name: t for t in set(threading.enumerate()) - before if t.name in LOOPS and t.is_alive()}


def test_the_settings_given_are_the_ones_used_not_the_environment(serve, fake, monkeypatch):
    monkeypatch.setenv("API_KEY", "from-the-environment")
    monkeypatch.setenv("API_KEYS", "sk-good-environ01")
    first = serve(api_keys=("sk-good-first0001",), prompt_expansion=False)
    second = serve(api_keys=("sk-good-second001",), api_key=SERVICE_KEY, prompt_expansion=False)
    assert post_chat(first.url, chat_body("画一只猫")).status_code == 200  # open: no API_KEY in its settings
    assert post_chat(second.url, chat_body("画一只猫")).status_code == 401
    assert post_chat(second.url, chat_body("画一只猫"), key=SERVICE_KEY).status_code == 200
    assert [call.key for call in fake.state.image_calls()] == ["sk-good-first0001", "sk-good-second001"]


def test_importing_the_module_builds_no_app_and_reads_no_environment(tmp_path):
    """gunicorn asks for `siliconflow_proxy:app`; importing the module (tests, tools) must not start one."""
    env = {**os.environ, "MAX_IMAGES_PER_REQUEST": "not-a-number"}
    code = f"import sys; sys.path.insert(0, {str(ROOT)!r}); import siliconflow_proxy as m; print(m._app is None)"
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "True", result.stderr


def test_the_start_says_what_the_service_runs_with_and_never_a_key(fake, logged, tmp_path):
    settings = Settings.from_env({}, api_base_url=fake.url, api_keys=("team/sk-good-startlog1",), data_dir=str(tmp_path))
    create_app(settings).extensions["siliconflow"].close()
    said = "\n".join(record.getMessage() for record in logged.records)
    assert "API_KEY is not set: this service is open to anyone who can reach it." in said
    assert "1 upstream key(s): team/…log1" in said and "sk-good-startlog1" not in said
    assert f"Images are kept by: the built-in store ({tmp_path / 'images'})." in said
    create_app(Settings.from_env({}, api_base_url=fake.url, api_keys=(), image_store_dir=None)).extensions["siliconflow"].close()
    assert logged.lines(r"No upstream keys: /health answers, but drawing answers 503 until keys are added \(API_KEYS\)")
    assert logged.lines(r"Images are kept by: nobody \(upstream links expire in 1 hour\)")


def test_with_an_operator_the_start_does_not_call_the_service_open(fake, logged, tmp_path):
    settings = Settings.from_env({}, api_base_url=fake.url, admin_key=ADMIN, data_dir=str(tmp_path))
    create_app(settings).extensions["siliconflow"].close()
    assert not logged.lines("open to anyone") and logged.lines("clients need a user key made on the operator's page")


def test_a_place_named_that_cannot_be_used_stops_the_start_and_the_default_only_warns(fake, logged, tmp_path):
    a_file = tmp_path / "a-file"
    a_file.write_text("not a directory")
    with pytest.raises(ConfigError, match=r"IMAGE_STORE_DIR: cannot create or write to .*a-file/images"):
        create_app(Settings.from_env({}, api_base_url=fake.url, image_store_dir=str(a_file / "images")))
    with pytest.raises(ConfigError, match=r"ADMIN_KEY: the .* file .*a-file.* cannot be made .*set DATA_DIR"):
        create_app(Settings.from_env({}, api_base_url=fake.url, admin_key=ADMIN, data_dir=str(a_file)))
    app = create_app(Settings.from_env({}, api_base_url=fake.url, data_dir=str(a_file)))  # the default place
    try:
        services = app.extensions["siliconflow"]
        assert services.store is None and services.videos is None
        assert logged.lines("Pictures are not kept: cannot create or write to") and logged.lines("Videos are off")
    finally:
        app.extensions["siliconflow"].close()


def test_close_ends_every_background_thread_and_the_drawing_executor(serve, fake):
    """Shut down while a picture waits in line for a key: nothing of the service runs on."""
    before = set(threading.enumerate())
    service = serve(
        api_keys=("sk-good-closing01",),
        image_rate_limit=((1, 30.0),),
        heartbeat_seconds=0.1,
        request_timeout=40,  # past the next call allowed (30 s): the picture waits; the stream ends by then
        prompt_expansion=False,
    )
    response = post_chat(service.url, chat_body("画一只猫 pic:2", stream=True), stream=True)
    said = ""
    for line in response.iter_lines(decode_unicode=True):
        said += line
        if "排队等候上游名额" in said:  # the second picture waits for the account's next call
            break
    running = _loops(before)
    assert set(running) == LOOPS, set(running)
    response.close()
    services = service.services
    services.close()
    assert not [t.name for t in running.values() if t.is_alive()]
    with pytest.raises(RuntimeError):
        services.executor.submit(print)
    assert len(fake.state.image_calls()) == 1  # the waiting picture was never sent


@pytest.mark.parametrize("admin_key", [ADMIN, None], ids=["with an operator", "without"])
def test_health_tells_a_stranger_only_the_status_when_there_is_an_operator(serve, fake, admin_key):
    service = serve(admin_key=admin_key, api_key=SERVICE_KEY)
    stranger = requests.get(f"{service.url}/health", timeout=10)
    user = requests.get(f"{service.url}/health", headers={"Authorization": f"Bearer {SERVICE_KEY}"}, timeout=10)
    operator = requests.get(f"{service.url}/health", headers={"Authorization": f"Bearer {ADMIN}"}, timeout=10)
    assert stranger.status_code == user.status_code == operator.status_code == 200
    full = operator.json()
    assert full["status"] == "ok" and {"store", "pictures", "queue", "balances", "rate_limit"} <= set(full)
    if admin_key:
        assert stranger.json() == user.json() == {"status": "ok"}  # a platform's health check reads this
    else:
        assert set(stranger.json()) == set(user.json()) == set(full)  # everyone is told everything (the upkeep may move on)
    for answer in (stranger, user, operator):
        assert not any(key in answer.text for key in (*GOOD_KEYS, ADMIN, SERVICE_KEY))
