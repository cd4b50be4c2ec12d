"""Failures to HTTP statuses in one place: when nothing was made, the kinds of failure say whose
problem it was and so the status (400, 429, 503, 500, 504, 502), in an OpenAI-shaped English body;
and whatever a request raises is answered as that JSON, never HTML, a traceback or an exception's
own text."""

from __future__ import annotations

import os
import re

import pytest
import requests

from api.errors import failed
from core.errors import ApiError, Failure, Reason
from tests.conftest import SERVICE_KEY

CJK = re.compile(r"[\u4e00-\u9fff]")
ADMIN = "operator-secret-0123456789"

RATE = (Failure.RATE_LIMIT, Reason.of("rate_limited"))
DEAD = (Failure.AUTH, Reason.of("key_invalid"))
BROKE = (Failure.BALANCE, Reason.of("no_balance"))
NO_KEYS = (Failure.NO_KEYS, Reason.of("no_upstream_keys"))
SERVER = (Failure.SERVER, Reason.of("upstream_unavailable", status=503))
REFUSED = (Failure.BAD_REQUEST, Reason.of("upstream_refused", status=400, detail="The parameter is invalid."))
NO_PICTURE = (Failure.INPUT, Reason.of("needs_picture", model="Qwen/Qwen-Image-Edit-2509"))
LATE = (Failure.TIMEOUT, Reason.of("request_timeout", seconds=300))
SLOW = (Failure.TIMEOUT, Reason.of("upstream_timeout", seconds=60))
BUG = (Failure.INTERNAL, Reason.of("internal"))
UNSURE = (Failure.TIMEOUT, Reason.of("video_submit_unsure", why="SiliconFlow did not answer within 60 s"))

# (each picture's failure, the status, the code, words the message has)
TABLE = [
    ([NO_PICTURE, SERVER], 400, "invalid_request", "This request cannot be drawn: "),
    ([REFUSED, SERVER], 400, "upstream_bad_request", "SiliconFlow refused the request (400): The parameter is invalid."),
    ([RATE, RATE], 429, "rate_limited", "Every upstream key is rate limited: SiliconFlow rate-limited the account (429)"),
    ([DEAD, BROKE, NO_KEYS], 503, "no_usable_keys", "No upstream key can draw right now: "),
    ([BUG], 500, "internal_error", "It has been logged; please try again."),
    ([UNSURE], 504, "upstream_unsure", "it was not sent again"),
    ([LATE, LATE], 504, "timeout", "Nothing was finished in time: not finished within 300 s (REQUEST_TIMEOUT)"),
    ([SLOW], 502, "upstream_error", "SiliconFlow did not deliver an image: SiliconFlow did not answer within 60 s."),
    ([RATE, SERVER], 502, "upstream_error", "the account (429); SiliconFlow is unavailable right now (503)."),
    ([SERVER, BUG], 502, "upstream_error", "SiliconFlow did not deliver an image: "),
    ([(None, Reason.of("no_image"))], 502, "upstream_error", "SiliconFlow did not deliver an image: "),
]


@pytest.mark.parametrize("failures, status, code, says", TABLE, ids=[f"{row[1]}-{row[2]}-{i}" for i, row in enumerate(TABLE)])
def test_when_nothing_was_made_the_kinds_of_failure_choose_the_status(failures, status, code, says):
    error = failed(failures)
    assert (error.status, error.code) == (status, code)
    assert says in error.message and not CJK.search(error.message)  # the APIs speak English
    assert "{" not in error.message and "Reason(" not in error.message and "Failure." not in error.message


def test_the_same_reason_twice_is_said_once_and_a_video_is_named_as_one():
    error = failed([SERVER, SERVER, SERVER], what="the video job", verb="take")
    assert error.message == "SiliconFlow did not take the video job: SiliconFlow is unavailable right now (503)."


def _error(response: requests.Response) -> dict:
    assert response.headers["Content-Type"].startswith("application/json"), response.text[:200]
    body = response.json()
    assert list(body) == ["error"] and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def test_an_unknown_path_or_method_is_told_in_the_one_shape(service):
    missing = requests.post(f"{service.url}/v1/completions", json={}, timeout=10)
    assert missing.status_code == 404
    assert "No such endpoint: POST /v1/completions" in _error(missing)["message"]
    assert "POST /v1/chat/completions" in _error(missing)["message"]
    wrong = requests.get(f"{service.url}/v1/chat/completions", timeout=10)
    assert wrong.status_code == 405 and _error(wrong)["message"] == "GET is not allowed on /v1/chat/completions."


def test_a_bug_is_a_plain_500_whose_text_never_reaches_the_client(serve, logged):
    service = serve()

    def broken():
        raise RuntimeError("boom: sk-good-aaaa1111 in /srv/app/secret.py")

    service.app.add_url_rule("/v1/broken", "broken", broken)  # a route with a bug, before the first request
    response = requests.get(f"{service.url}/v1/broken", timeout=10)
    assert response.status_code == 500
    error = _error(response)
    assert error["message"] == "Internal error in the image service. It has been logged; please try again."
    assert error["type"] == "server_error" and not re.search("boom|sk-good|secret|RuntimeError|Traceback", response.text)
    assert [r for r in logged.records if r.exc_info and "unexpected error" in r.getMessage()]  # the operator has it


def test_a_store_that_cannot_be_read_is_a_503_to_retry_without_a_traceback(serve, fake, tmp_path, logged):
    service = serve(admin_key=ADMIN, api_key=SERVICE_KEY, data_dir=str(tmp_path), prompt_expansion=False)
    made = requests.post(
        f"{service.url}/admin/api/keys", json={"name": "friend"}, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=10
    )
    secret = made.json()["key"]
    for name in ("users.sqlite3", "users.sqlite3-wal", "users.sqlite3-shm"):  # the user keys' file, broken on disk
        if os.path.exists(tmp_path / name):
            os.remove(tmp_path / name)
    (tmp_path / "users.sqlite3").write_bytes(b"not a database " * 100)
    response = requests.post(
        f"{service.url}/v1/chat/completions",
        json={"model": "Kwai-Kolors/Kolors", "messages": [{"role": "user", "content": "画一只猫"}]},
        headers={"Authorization": f"Bearer {secret}"},
        timeout=30,
    )
    assert response.status_code == 503 and response.headers["Retry-After"] == "10"
    assert _error(response)["code"] == "store_unavailable" and "DatabaseError" not in response.text
    assert not [r for r in logged.records if r.exc_info] and logged.lines("a store cannot be used now")
    assert fake.state.drawing_calls() == []


def test_an_api_error_is_answered_with_its_status_words_and_retry_after(serve):
    service = serve()

    def busy():
        raise ApiError(503, "This worker is busy: retry in 7 seconds.", param="image", code="server_busy", retry_after=7)

    service.app.add_url_rule("/v1/busy", "busy", busy)
    response = requests.get(f"{service.url}/v1/busy", timeout=10)
    assert response.status_code == 503 and response.headers["Retry-After"] == "7"
    assert _error(response) == {
        "message": "This worker is busy: retry in 7 seconds.",
        "type": "server_error",
        "param": "image",
        "code": "server_busy",
    }
    no_keys = requests.post(f"{serve(api_keys=()).url}/v1/images/generations", json={"prompt": "a cat"}, timeout=10)
    assert no_keys.status_code == 503 and "Retry-After" not in no_keys.headers
    assert _error(no_keys)["code"] == "no_upstream_keys"
