"""A service for a community: user keys with daily quotas made by the operator (ADMIN_KEY), the
operator's page, Prometheus metrics; over real HTTP, on one instance, two sharing Redis, and after
a restart."""

from __future__ import annotations

import json
import re
import subprocess

import pytest
import requests

from tests.conftest import ROOT, SERVICE_KEY
from tests.helpers import images_in, post_chat
from tests.js_env import CHROMIUM, JS_DIR, node_modules, require
from tests.servers import Gunicorn

ADMIN = "operator-secret-0123456789"
AS_ADMIN = {"Authorization": f"Bearer {ADMIN}"}
ROUTES = [
    ("GET", "/admin/api/keys"),
    ("POST", "/admin/api/keys"),
    ("PATCH", "/admin/api/keys/uk_000000000000"),
    ("DELETE", "/admin/api/keys/uk_000000000000"),
    ("GET", "/admin/api/overview"),
    ("GET", "/metrics"),
]


@pytest.fixture
def community(serve):
    return serve(admin_key=ADMIN, api_key=SERVICE_KEY, prompt_expansion=False)


def _new_key(url: str, name: str = "friend", daily: int = 3) -> dict:
    response = requests.post(f"{url}/admin/api/keys", json={"name": name, "daily_images": daily}, headers=AS_ADMIN, timeout=10)
    assert response.status_code == 201, response.text
    return response.json()


def _draw(url: str, key: str, text: str, *, stream: bool = False) -> requests.Response:
    body = {"model": "Kwai-Kolors/Kolors", "messages": [{"role": "user", "content": text}], "stream": stream}
    return post_chat(url, body, key=key, stream=stream, timeout=60)


def test_a_friend_draws_their_three_pictures_and_is_told_when_they_can_draw_again(community, fake):
    made = _new_key(community.url)
    secret = made["key"]
    assert re.fullmatch(r"sfk-[A-Za-z0-9_-]{32}", secret) and made["key_shown_once"]
    first = _draw(community.url, secret, "画一只猫 pic:2").json()["choices"][0]["message"]["content"]
    assert len(images_in(first)) == 2
    # pic:2 with one left: one drawn, and the line says why not two.
    second = _draw(community.url, secret, "画一只狗 pic:2").json()["choices"][0]["message"]["content"]
    assert len(images_in(second)) == 1 and "只剩 1 个（这次要了 2 个）" in second and "00:00 UTC+8" in second, second
    calls = len(fake.state.image_calls())
    refused = _draw(community.url, secret, "画一只鸟", stream=True)  # a stream is refused before it starts
    error = refused.json()["error"]
    assert refused.status_code == 429 and error["code"] == "insufficient_quota"
    assert "daily quota is 3 pictures" in error["message"] and "resets at 00:00 UTC+8, in" in error["message"]
    assert len(fake.state.image_calls()) == calls  # nothing drawn past the quota
    images = requests.post(
        f"{community.url}/v1/images/generations",
        json={"prompt": "a cat"},
        headers={"Authorization": f"Bearer {secret}"},
        timeout=30,
    )
    assert images.status_code == 429 and images.json()["error"]["code"] == "insufficient_quota"
    [listed] = requests.get(f"{community.url}/admin/api/keys", headers=AS_ADMIN, timeout=10).json()["data"]
    assert listed["images_today"] == 3 and listed["images_total"] == 3 and listed["key"] == f"{secret[:6]}…{secret[-4:]}"
    metrics = requests.get(f"{community.url}/metrics", headers=AS_ADMIN, timeout=10).text
    assert re.search(r'siliconflow_images_total\{model="Kwai-Kolors/Kolors",outcome="ok"\} [3-9]', metrics), metrics
    assert 'siliconflow_keys{state="healthy"} 3' in metrics and secret not in metrics
    # The operator's shared key has no quota; it still draws.
    shared = _draw(community.url, SERVICE_KEY, "画一只鸟").json()["choices"][0]["message"]["content"]
    assert len(images_in(shared)) == 1


def test_failed_pictures_do_not_count(serve, fake):
    service = serve(admin_key=ADMIN, api_keys=("sk-dead-quota001",), prompt_expansion=False)
    secret = _new_key(service.url, daily=1)["key"]
    failed = _draw(service.url, secret, "画一只猫").json()["choices"][0]["message"]["content"]
    assert "0/1" in failed
    [listed] = requests.get(f"{service.url}/admin/api/keys", headers=AS_ADMIN, timeout=10).json()["data"]
    assert listed["images_today"] == 0  # still one left to draw


def test_disabled_and_revoked_keys_are_refused_in_plain_words(community, fake):
    made = _new_key(community.url, daily=0)
    secret, key_id = made["key"], made["id"]
    assert _draw(community.url, secret, "画一只猫").status_code == 200
    changed = requests.patch(f"{community.url}/admin/api/keys/{key_id}", json={"disabled": True}, headers=AS_ADMIN, timeout=10)
    assert changed.status_code == 200 and changed.json()["disabled"] is True
    refused = _draw(community.url, secret, "画一只猫")
    assert refused.status_code == 401 and "disabled by the service's operator" in refused.json()["error"]["message"]
    requests.patch(f"{community.url}/admin/api/keys/{key_id}", json={"disabled": False}, headers=AS_ADMIN, timeout=10)
    assert _draw(community.url, secret, "画一只猫").status_code == 200
    assert requests.delete(f"{community.url}/admin/api/keys/{key_id}", headers=AS_ADMIN, timeout=10).json()["deleted"]
    revoked = _draw(community.url, secret, "画一只猫")
    assert revoked.status_code == 401 and "revoked" in revoked.json()["error"]["message"]


@pytest.mark.parametrize("method, path", ROUTES)
def test_every_admin_route_wants_the_admin_key(community, method, path):
    friend = _new_key(community.url)["key"]
    for headers, status in (
        ({}, 401),
        ({"Authorization": "Bearer not-the-admin-key"}, 403),
        ({"Authorization": f"Bearer {friend}"}, 403),  # a user key cannot reach the admin API
        ({"Authorization": f"Bearer {SERVICE_KEY}"}, 403),
    ):
        response = requests.request(method, f"{community.url}{path}", json={}, headers=headers, timeout=10)
        assert response.status_code == status, (path, headers, response.text)
        error = response.json()["error"]
        assert error["message"] and error["type"] and ADMIN not in response.text


def test_without_admin_key_there_is_no_admin_surface(service):
    for method, path in [*ROUTES, ("GET", "/admin")]:
        response = requests.request(method, f"{service.url}{path}", headers=AS_ADMIN, timeout=10)
        assert response.status_code == 404, path


def test_bad_admin_requests_are_clear_400s(community):
    for body, says in (({}, "'name' is required"), ({"name": "x", "daily_images": -1}, "'daily_images'")):
        response = requests.post(f"{community.url}/admin/api/keys", json=body, headers=AS_ADMIN, timeout=10)
        assert response.status_code == 400 and says in response.json()["error"]["message"]


def test_admin_actions_are_logged_without_secrets(community, logged):
    made = _new_key(community.url, name="小明")
    requests.delete(f"{community.url}/admin/api/keys/{made['id']}", headers=AS_ADMIN, timeout=10)
    lines = logged.lines("admin: user key")
    assert any("made" in line and "小明" in line for line in lines) and any("revoked" in line for line in lines)
    assert all(made["key"] not in r.getMessage() and ADMIN not in r.getMessage() for r in logged.records)


def test_keys_survive_a_restart_and_a_revoke_reaches_every_instance_at_once(fake, production_bin, redis_server, tmp_path):
    env = {"API_BASE_URL": fake.url, "API_KEYS": "sk-good-comm1", "ADMIN_KEY": ADMIN, "PROMPT_EXPANSION": "false"}
    alone = Gunicorn({**env, "DATA_DIR": str(tmp_path / "alone")}, production_bin)
    assert alone.wait_until_up(), alone.stop()
    try:
        secret = _new_key(alone.url, daily=5)["key"]
        assert _draw(alone.url, secret, "画一只猫").status_code == 200
    finally:
        alone.stop()
    again = Gunicorn({**env, "DATA_DIR": str(tmp_path / "alone")}, production_bin)
    assert again.wait_until_up(), again.stop()
    try:
        assert _draw(again.url, secret, "画一只猫").status_code == 200  # the key, and its usage, outlived the restart
        [listed] = requests.get(f"{again.url}/admin/api/keys", headers=AS_ADMIN, timeout=10).json()["data"]
        assert listed["images_today"] == 2
        metrics = requests.get(f"{again.url}/metrics", headers=AS_ADMIN, timeout=10).text
        assert "siliconflow_requests_total" in metrics  # both workers' counters, summed
    finally:
        again.stop()
    shared = {**env, "REDIS_URL": redis_server.url}
    first = Gunicorn({**shared, "DATA_DIR": str(tmp_path / "a")}, production_bin)
    second = Gunicorn({**shared, "DATA_DIR": str(tmp_path / "b")}, production_bin)
    try:
        assert first.wait_until_up() and second.wait_until_up()
        made = _new_key(first.url, daily=0)
        assert _draw(second.url, made["key"], "画一只猫").status_code == 200  # made on one, known on the other
        requests.delete(f"{first.url}/admin/api/keys/{made['id']}", headers=AS_ADMIN, timeout=10)
        assert _draw(second.url, made["key"], "画一只猫").status_code == 401  # revoked on one, refused on the other
    finally:
        first.stop()
        second.stop()


def test_the_operators_page_in_chromium(community, fake):
    require(CHROMIUM, "Chromium (Debian package chromium)")
    node_modules("playwright-core")
    friend = _new_key(community.url, name="friend")
    _draw(community.url, friend["key"], "画一只猫 pic:2")
    shots = ROOT / "artifacts"
    shots.mkdir(exist_ok=True)
    result = subprocess.run(
        ["node", str(JS_DIR / "admin_check.mjs"), community.url, ADMIN, str(shots)],
        capture_output=True,
        text=True,
        timeout=120,
        env={"CHROMIUM": CHROMIUM, "PATH": "/usr/bin:/bin:/usr/local/bin"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert "friend" in out["users"] and "2" in out["users"] and friend["key"] not in out["html"]
    assert out["upstream"].count("healthy") >= 3 and out["bars"] == 24
    assert out["made"].startswith("sfk-") and out["madeListed"]  # the new key shown once, then masked in the table
    assert out["revoked"] and not out["overflow"] and out["errors"] == []
    assert ADMIN not in out["url"]  # never in a URL
    for view in ("desktop", "phone"):
        assert (shots / f"admin-{view}.png").stat().st_size > 10_000


def test_a_persons_videos_are_theirs_alone(serve, fake):
    service = serve(admin_key=ADMIN, api_key=SERVICE_KEY, prompt_expansion=False, video_poll_seconds=0.1)
    alice, bob = _new_key(service.url, "alice", 0)["key"], _new_key(service.url, "bob", 0)["key"]

    def call(method: str, path: str, key: str, **kwargs) -> requests.Response:
        return requests.request(method, f"{service.url}{path}", headers={"Authorization": f"Bearer {key}"}, timeout=30, **kwargs)

    made = call("POST", "/v1/videos", alice, json={"prompt": "a cat", "model": "Wan-AI/Wan2.2-T2V-A14B"}).json()
    assert call("GET", f"/v1/videos/{made['id']}", alice).status_code == 200
    for method, path in (
        ("GET", f"/v1/videos/{made['id']}"),
        ("GET", f"/v1/videos/{made['id']}/content"),
        ("DELETE", f"/v1/videos/{made['id']}"),
    ):
        assert call(method, path, bob).status_code == 404, (method, path)  # as if it did not exist
    assert call("GET", "/v1/videos", bob).json()["data"] == []
    assert [v["id"] for v in call("GET", "/v1/videos", alice).json()["data"]] == [made["id"]]
    assert [v["id"] for v in call("GET", "/v1/videos", SERVICE_KEY).json()["data"]] == [made["id"]]  # the operator sees all
    assert requests.get(f"{service.url}/videos/{made['id']}", allow_redirects=False, timeout=10).status_code in (200, 302)


def test_a_video_counts_once_taken_even_when_the_chat_is_dropped(serve, fake):
    """A dropped stream does not give back a video SiliconFlow took (and bills): it is made all the same."""
    fake.state.video_seconds = 2.0
    service = serve(admin_key=ADMIN, prompt_expansion=False, video_poll_seconds=0.1, heartbeat_seconds=0.2)
    secret = requests.post(
        f"{service.url}/admin/api/keys", json={"name": "carol", "daily_videos": 1}, headers=AS_ADMIN, timeout=10
    ).json()["key"]
    body = {"model": "Wan-AI/Wan2.2-T2V-A14B", "messages": [{"role": "user", "content": "一只狗"}], "stream": True}
    response = post_chat(service.url, body, key=secret, stream=True)
    for line in response.iter_lines(decode_unicode=True):
        if "取回" in line:
            break
    response.close()  # dropped while the job runs
    assert fake.state.videos  # taken by SiliconFlow
    [listed] = requests.get(f"{service.url}/admin/api/keys", headers=AS_ADMIN, timeout=10).json()["data"]
    assert listed["videos_today"] == 1
    again = post_chat(service.url, {**body, "stream": False}, key=secret)
    assert again.status_code == 429 and "daily quota is 1 videos" in again.json()["error"]["message"]
    assert len(fake.state.videos) == 1


def test_a_keys_use_never_undoes_a_revoke_or_a_disable(tmp_path):
    """Noting a key's use writes that field alone: a revoke or a disable made meanwhile stands."""
    from userkeys import SqliteKeys, make, secret_hash

    keys = SqliteKeys(str(tmp_path / "users.sqlite3"))
    key, secret = make("dora", 0, 0)
    keys.save(key)
    seen = keys.by_hash(secret_hash(secret))  # authenticated...
    keys.delete(key.id)  # ...revoked meanwhile...
    keys.touch(seen)  # ...then its use is noted
    assert keys.by_hash(secret_hash(secret)) is None
    other, secret = make("eve", 0, 0)
    keys.save(other)
    seen = keys.by_hash(secret_hash(secret))
    assert keys.change(other, {"disabled": True})
    keys.touch(seen)
    assert keys.by_hash(secret_hash(secret)).disabled is True


def test_odd_inputs_to_the_new_routes_are_400s_and_the_admin_routes_send_no_cors(community):
    forged = requests.post(f"{community.url}/admin/api/keys", json={"name": "ev\nINFO forged"}, headers=AS_ADMIN, timeout=10)
    assert forged.status_code == 400 and "plain text" in forged.json()["error"]["message"]
    for seconds in ("²", "9" * 5000, "٥"):
        response = requests.post(
            f"{community.url}/v1/videos",
            json={"prompt": "a cat", "model": "Wan-AI/Wan2.2-T2V-A14B", "seconds": seconds},
            headers={"Authorization": f"Bearer {SERVICE_KEY}"},
            timeout=10,
        )
        assert response.status_code == 400 and "'seconds'" in response.json()["error"]["message"], seconds
    foreign = requests.get(f"{community.url}/admin/api/keys", headers={**AS_ADMIN, "Origin": "https://evil.example"}, timeout=10)
    assert foreign.status_code == 200 and "Access-Control-Allow-Origin" not in foreign.headers
    page = requests.get(f"{community.url}/admin", timeout=10)
    assert page.headers["X-Frame-Options"] == "DENY" and "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]
