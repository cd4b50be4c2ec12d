"""What pictures cost, over real HTTP against the fake SiliconFlow: a person's pictures priced by the
price table, in the admin API, the overview, the spend rows and /metrics; free and failed pictures,
a video, Redis, and a restart."""

from __future__ import annotations

import re

import pytest
import requests

from siliconflow.leases import key_id
from tests.conftest import GOOD_KEYS, SERVICE_KEY
from tests.helpers import images_in, post_chat

ADMIN = "operator-secret-0123456789"
AS_ADMIN = {"Authorization": f"Bearer {ADMIN}"}
QWEN = "Qwen/Qwen-Image"
PRICED = {"MODEL_PRICES": f"{QWEN}=0.3"}


def _start(serve, environ: dict | None = None, **overrides):
    return serve({**PRICED, **(environ or {})}, admin_key=ADMIN, api_key=SERVICE_KEY, prompt_expansion=False, **overrides)


def _new_key(url: str, name: str = "friend") -> dict:
    response = requests.post(f"{url}/admin/api/keys", json={"name": name}, headers=AS_ADMIN, timeout=10)
    assert response.status_code == 201, response.text
    return response.json()


def _draw(url: str, key: str, model: str, text: str) -> str:
    body = {"model": model, "messages": [{"role": "user", "content": text}]}
    response = post_chat(url, body, key=key, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["message"]["content"]


def _admin(url: str, path: str) -> dict:
    response = requests.get(f"{url}{path}", headers=AS_ADMIN, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def _listed(url: str, user_key_id: str) -> dict:
    [listed] = [k for k in _admin(url, "/admin/api/keys")["data"] if k["id"] == user_key_id]
    return listed


def _spend_metric(url: str, model: str) -> float:
    """The counter summed over every process of this test run (each test's drawing adds to it)."""
    text = requests.get(f"{url}/metrics", headers=AS_ADMIN, timeout=10).text
    found = re.search(rf'^siliconflow_spend_yuan_total\{{model="{re.escape(model)}"\}} (\S+)$', text, re.M)
    return float(found[1]) if found else 0.0


def _of_model(report: dict, model: str) -> list[dict]:
    return [row for row in report["data"] if row["model"] == model]


def test_three_qwen_pictures_cost_what_the_price_table_says(serve, fake):
    service = _start(serve)
    before = _spend_metric(service.url, QWEN)
    friend = _new_key(service.url)
    assert friend["spend_today"] == 0 and friend["spend_total"] == 0
    assert len(images_in(_draw(service.url, friend["key"], QWEN, "画一只猫 pic:3"))) == 3
    listed = _listed(service.url, friend["id"])
    assert (listed["spend_today"], listed["spend_total"]) == (0.9, 0.9)
    overview = _admin(service.url, "/admin/api/overview")
    [shown] = overview["user_keys"]
    assert (shown["spend_today"], shown["spend_total"]) == (0.9, 0.9)
    assert overview["spend"]["today"] == {"pictures": 3, "videos": 0, "yuan": 0.9}
    assert overview["spend"]["last_30_days"]["yuan"] == 0.9 and overview["spend"]["unpriced_models"] == []
    report = _admin(service.url, "/admin/api/spend")
    rows = _of_model(report, QWEN)
    assert sum(row["yuan"] for row in rows) == pytest.approx(0.9) and sum(row["pictures"] for row in rows) == 3
    ids = {key_id(key): key for key in GOOD_KEYS}
    for row in rows:  # each on an upstream key of the pool: masked and named by its id, never whole
        assert row["key_id"] in ids and row["key"] == f"…{ids[row['key_id']][-4:]}" and row["videos"] == 0
        assert row["day"] == report["to"] and row["account"]
    assert len(rows) == 3  # one picture per key
    assert report["days"] == 30 and report["totals"]["yuan"] == 0.9 and report["currency"] == "CNY"
    assert "SiliconFlow no longer reports balances" in report["estimate"] and report["prices_as_of"] == "2026-12-07"
    assert report["prices"][QWEN] == 0.3
    assert {entry["key_id"] for entry in report["upstream_keys_today"]} == set(ids)
    assert sum(entry["yuan"] for entry in report["upstream_keys_today"]) == pytest.approx(0.9)
    for secret in (*GOOD_KEYS, friend["key"], ADMIN):
        assert secret not in str(report) and secret not in str(overview)
    assert _spend_metric(service.url, QWEN) - before == pytest.approx(0.9)


def test_kolors_is_free_an_unpriced_model_is_named_and_the_operators_own_pictures_count_too(serve, fake):
    service = _start(serve)
    friend = _new_key(service.url)
    _draw(service.url, friend["key"], "Kwai-Kolors/Kolors", "画一只猫 pic:2")
    sdxl = "stabilityai/stable-diffusion-xl-base-1.0"
    _draw(service.url, SERVICE_KEY, sdxl, "画一只狗")  # the operator's key: no user key, still spent
    images = requests.post(  # the Images API, with the operator's key
        f"{service.url}/v1/images/generations",
        json={"prompt": "a dog", "model": QWEN},
        headers={"Authorization": f"Bearer {SERVICE_KEY}"},
        timeout=60,
    )
    assert images.status_code == 200 and len(images.json()["data"]) == 1, images.text
    listed = _listed(service.url, friend["id"])
    assert (listed["images_today"], listed["spend_today"], listed["spend_total"]) == (2, 0, 0)
    report = _admin(service.url, "/admin/api/spend?days=1")
    assert sum(row["pictures"] for row in _of_model(report, "Kwai-Kolors/Kolors")) == 2
    assert all(row["yuan"] == 0 for row in _of_model(report, "Kwai-Kolors/Kolors"))
    assert [row["pictures"] for row in _of_model(report, sdxl)] == [1] and report["unpriced_models"] == [sdxl]
    assert report["totals"] == {"pictures": 4, "videos": 0, "yuan": 0.3}
    assert _admin(service.url, "/admin/api/overview")["spend"]["unpriced_models"] == [sdxl]


def test_failed_pictures_cost_nothing(serve, fake):
    dead = "sk-dead-spend0001"
    service = _start(serve, api_keys=(dead, GOOD_KEYS[0]))
    friend = _new_key(service.url)
    assert len(images_in(_draw(service.url, friend["key"], QWEN, "画一只猫 pic:2"))) == 2  # the dead key's moved on
    report = _admin(service.url, "/admin/api/spend")
    assert {row["key_id"] for row in report["data"]} == {key_id(GOOD_KEYS[0])}
    assert report["totals"] == {"pictures": 2, "videos": 0, "yuan": 0.6}
    [dead_today] = [entry for entry in report["upstream_keys_today"] if entry["key_id"] == key_id(dead)]
    assert (dead_today["pictures"], dead_today["yuan"]) == (0, 0)
    assert _listed(service.url, friend["id"])["spend_today"] == 0.6

    nothing = _start(serve, api_keys=(dead,))
    other = _new_key(nothing.url)
    assert images_in(_draw(nothing.url, other["key"], QWEN, "画一只猫")) == {}
    assert _listed(nothing.url, other["id"])["spend_total"] == 0
    assert _admin(nothing.url, "/admin/api/spend")["data"] == []


def test_a_video_through_the_videos_api_counts_two_yuan_and_one_from_chat_too(serve, fake):
    service = _start(serve, video_poll_seconds=0.1)
    friend = _new_key(service.url)
    before = _spend_metric(service.url, "Wan-AI/Wan2.2-T2V-A14B")
    made = requests.post(
        f"{service.url}/v1/videos",
        json={"prompt": "a cat", "model": "Wan-AI/Wan2.2-T2V-A14B"},
        headers={"Authorization": f"Bearer {friend['key']}"},
        timeout=30,
    )
    assert made.status_code == 200, made.text
    assert _listed(service.url, friend["id"])["spend_today"] == 2.0
    [row] = _admin(service.url, "/admin/api/spend")["data"]
    assert (row["model"], row["videos"], row["pictures"], row["yuan"]) == ("Wan-AI/Wan2.2-T2V-A14B", 1, 0, 2.0)
    assert _spend_metric(service.url, "Wan-AI/Wan2.2-T2V-A14B") - before == pytest.approx(2.0)
    _draw(service.url, friend["key"], "Wan-AI/Wan2.2-T2V-A14B", "一只狗")  # the chat's video: counted once taken
    listed = _listed(service.url, friend["id"])
    assert (listed["videos_today"], listed["spend_today"], listed["spend_total"]) == (2, 4.0, 4.0)


def test_with_redis_every_instance_sees_the_spending(serve, fake, redis_server):
    first = _start(serve, redis_url=redis_server.url)
    second = _start(serve, redis_url=redis_server.url)
    friend = _new_key(first.url)
    _draw(first.url, friend["key"], QWEN, "画一只猫 pic:2")
    _draw(second.url, friend["key"], QWEN, "画一只狗")
    for service in (first, second):
        listed = _listed(service.url, friend["id"])
        assert (listed["spend_today"], listed["spend_total"]) == (0.9, 0.9)
        report = _admin(service.url, "/admin/api/spend")
        assert sum(row["yuan"] for row in _of_model(report, QWEN)) == pytest.approx(0.9)
        assert report["totals"]["pictures"] == 3


def test_spending_survives_a_restart(serve, fake, tmp_path):
    data = str(tmp_path / "data")
    before = _start(serve, data_dir=data)
    friend = _new_key(before.url)
    _draw(before.url, friend["key"], QWEN, "画一只猫 pic:3")
    after = _start(serve, data_dir=data)  # a second app on the same DATA_DIR
    listed = _listed(after.url, friend["id"])
    assert (listed["spend_today"], listed["spend_total"]) == (0.9, 0.9)
    assert _admin(after.url, "/admin/api/spend")["totals"]["yuan"] == 0.9


@pytest.mark.parametrize("days", ["0", "31", "abc", "1.5", "-1", "", "٣", "9" * 40])
def test_a_bad_days_is_a_clear_400(serve, fake, days):
    service = _start(serve)
    response = requests.get(f"{service.url}/admin/api/spend", params={"days": days}, headers=AS_ADMIN, timeout=10)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "days" and error["message"] == "'days' must be a whole number of days from 1 to 30."


def test_the_spend_route_wants_the_admin_key_and_exists_only_with_it(serve, fake):
    service = _start(serve)
    for headers, status in (({}, 401), ({"Authorization": f"Bearer {SERVICE_KEY}"}, 403)):
        assert requests.get(f"{service.url}/admin/api/spend", headers=headers, timeout=10).status_code == status
    open_service = serve(prompt_expansion=False)
    assert requests.get(f"{open_service.url}/admin/api/spend", headers=AS_ADMIN, timeout=10).status_code == 404
