"""What every surface asks of a request: where the service is reached (for links to kept pictures),
the model it names, whether any key may draw, the caller's quota taken before anything is drawn,
the operator's key recognised, and a slow JSON answer sent as spaces first."""

from __future__ import annotations

import json
import re

import pytest
import requests

from api.context import spaces_before_json
from core.errors import ApiError
from tests.conftest import SERVICE_KEY
from tests.helpers import chat_body, post_chat

ADMIN = "operator-secret-0123456789"
AS_ADMIN = {"Authorization": f"Bearer {ADMIN}"}


def _picture_url(service, headers: dict[str, str], prompt: str = "a cat") -> str:
    response = requests.post(f"{service.url}/v1/images/generations", json={"prompt": prompt}, headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()["data"][0]["url"]


# --- where the service is reached -------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers, base",
    [
        ({"X-Forwarded-Host": "[::1]:8080"}, "http://[::1]:8080"),
        (
            {"X-Forwarded-Host": "draw.example.org, proxy.internal", "X-Forwarded-Proto": "https, http"},
            "https://draw.example.org",
        ),
        ({"Host": "image_proxy:65535"}, "http://image_proxy:65535"),
        ({"X-Forwarded-Host": "draw.example.org:0"}, None),
        ({"X-Forwarded-Host": "draw.example.org:65536"}, None),
        ({"X-Forwarded-Host": "draw.example.org", "X-Forwarded-Proto": "javascript"}, None),
        ({"X-Forwarded-Host": "[::1"}, None),
    ],
)
def test_links_to_kept_pictures_name_the_address_the_client_used_when_it_is_one(serve, fake, tmp_path, headers, base):
    service = serve(image_store_dir=str(tmp_path), prompt_expansion=False)
    url = _picture_url(service, headers)
    if base is None:  # no link can be built on it: the upstream's own link is given instead
        assert url.startswith(fake.url) and "/images/" not in url.split("?")[0].replace(fake.url, "")
    else:
        assert re.fullmatch(rf"{re.escape(base)}/images/[0-9a-f]+\.png", url), url


def test_public_base_url_wins_over_what_the_request_says(serve, fake, tmp_path):
    service = serve(image_store_dir=str(tmp_path), public_base_url="https://pictures.example.com", prompt_expansion=False)
    url = _picture_url(service, {"X-Forwarded-Host": "evil.example", "X-Forwarded-Proto": "http"})
    assert url.startswith("https://pictures.example.com/images/")


# --- the model named, and whether anything may draw -------------------------------------------------


def test_a_model_that_is_not_a_string_or_not_offered_is_a_400_naming_the_choices(serve, fake):
    service = serve(models=tuple(f"org/model-{n}" for n in range(8)))
    typed = post_chat(service.url, chat_body("画一只猫", model=42)).json()["error"]
    assert typed["param"] == "model" and typed["message"].startswith("'model' must be a string")
    unknown = post_chat(service.url, chat_body("画一只猫", model="x" * 300)).json()["error"]
    assert unknown["code"] == "model_not_found" and f"Unknown model '{'x' * 100}'." in unknown["message"]
    assert "(org/model-0, org/model-1, org/model-2, org/model-3, org/model-4, org/model-5, …)" in unknown["message"]
    built_in = post_chat(service.url, chat_body("画一只猫", model="Kwai-Kolors/Kolors")).json()["error"]
    assert built_in["code"] == "model_not_found"  # MODELS is the whole offer: a built-in one outside it too
    assert fake.state.drawing_calls() == []


def test_an_empty_model_is_the_default(service, fake):
    assert post_chat(service.url, chat_body("画一只猫", model="")).status_code == 200
    assert fake.state.image_calls()[0].body["model"] == "Kwai-Kolors/Kolors"


def test_with_every_upstream_key_disabled_nothing_may_draw(serve, fake):
    service = serve(admin_key=ADMIN, api_key=SERVICE_KEY, api_keys=("sk-good-only0001",))
    [record] = requests.get(f"{service.url}/admin/api/upstream-keys", headers=AS_ADMIN, timeout=10).json()["data"]
    changed = requests.patch(
        f"{service.url}/admin/api/upstream-keys/{record['id']}", json={"disabled": True}, headers=AS_ADMIN, timeout=10
    )
    assert changed.status_code == 200
    refused = post_chat(service.url, chat_body("画一只猫"), key=SERVICE_KEY)
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "no_upstream_keys"
    assert fake.state.drawing_calls() == []


def test_a_banned_word_is_refused_before_anything_is_sent(serve, fake):
    service = serve(banned_keywords=("blood",))
    response = requests.post(f"{service.url}/v1/images/generations", json={"prompt": "a cat in BLOOD"}, timeout=10)
    error = response.json()["error"]
    assert response.status_code == 400 and (error["param"], error["code"]) == ("prompt", "content_policy_violation")
    assert "'blood'" in error["message"] and fake.state.drawing_calls() == []


# --- the caller's quota -----------------------------------------------------------------------------


def test_an_images_request_over_what_is_left_takes_nothing_and_what_is_left_stays(serve, fake):
    service = serve(admin_key=ADMIN, api_key=SERVICE_KEY, prompt_expansion=False)
    made = requests.post(f"{service.url}/admin/api/keys", json={"name": "a", "daily_images": 2}, headers=AS_ADMIN, timeout=10)
    mine = {"Authorization": f"Bearer {made.json()['key']}"}

    def generate(n: int) -> requests.Response:
        return requests.post(f"{service.url}/v1/images/generations", json={"prompt": "a cat", "n": n}, headers=mine, timeout=30)

    assert generate(1).status_code == 200
    refused = generate(2)
    error = refused.json()["error"]
    assert refused.status_code == 429 and error["code"] == "insufficient_quota"
    assert "daily quota is 2 pictures, and 2 asked, only 1 left today. It resets at 00:00 UTC+8, in " in error["message"]
    assert re.search(r", in (\d+ h \d{2}|\d+) min\.$", error["message"]), error["message"]
    assert len(fake.state.image_calls()) == 1
    assert generate(1).status_code == 200  # the refused request gave back what it reserved
    used_up = generate(1)
    assert used_up.status_code == 429 and "it is used up" in used_up.json()["error"]["message"]
    assert len(fake.state.image_calls()) == 2


# --- the operator's key -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "header, admin",
    [
        (f"Bearer {ADMIN}", True),
        (f"bearer   {ADMIN} ", True),
        (f"Basic {ADMIN}", False),
        (f"Bearer {ADMIN[:-1]}", False),
        (f"Bearer {ADMIN}x", False),
        (ADMIN, False),
    ],
)
def test_the_operators_key_is_a_bearer_token_compared_whole(serve, header, admin):
    service = serve(admin_key=ADMIN, api_key=SERVICE_KEY)
    body = requests.get(f"{service.url}/health", headers={"Authorization": header}, timeout=10).json()
    assert ("store" in body) == admin and body["status"] == "ok"


# --- a slow JSON answer -----------------------------------------------------------------------------


def _work(keep_alives: int, closed: list[str]):
    try:
        for _ in range(keep_alives):
            yield None
    finally:
        closed.append("drawing")


def test_a_slow_answer_is_a_space_per_keep_alive_then_its_json():
    closed: list[str] = []
    sent = "".join(spaces_before_json(_work(3, closed), lambda: json.dumps({"ok": True})))
    assert sent == '   {"ok": true}' and json.loads(sent) == {"ok": True} and closed == ["drawing"]


def test_a_failure_found_after_the_spaces_is_an_error_object_in_the_same_answer():
    def refuse() -> str:
        raise ApiError(429, "Every upstream key is rate limited.", code="rate_limited")

    sent = "".join(spaces_before_json(_work(2, []), refuse))
    error = {"message": "Every upstream key is rate limited.", "type": "rate_limit_error", "param": None, "code": "rate_limited"}
    assert sent.startswith("  ") and json.loads(sent) == {"error": error}


def test_a_client_that_leaves_during_the_spaces_stops_the_drawing():
    closed: list[str] = []
    work = _work(100, closed)  # held here too, as a chain of generators holds it: closed, not collected
    answer = spaces_before_json(work, lambda: "{}")
    assert next(answer) == " " and closed == []
    answer.close()
    assert closed == ["drawing"]
