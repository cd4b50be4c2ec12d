"""A service for a community: user keys with daily quotas made by the operator (ADMIN_KEY), the
operator's page, Prometheus metrics; over real HTTP, on one instance, two sharing Redis, and after
a restart."""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
import subprocess

import pytest
import redis
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


def _new_key(url: str, name: str = "friend", daily: int | None = 3, **caps: int | None) -> dict:
    """A key made over the API; `daily` None sends no picture cap (nor a video cap: no caps at all)."""
    body = {"name": name, **({} if daily is None else {"daily_images": daily}), **caps}
    response = requests.post(f"{url}/admin/api/keys", json=body, headers=AS_ADMIN, timeout=10)
    assert response.status_code == 201, response.text
    return response.json()


def _listed(url: str, key_id: str) -> dict:
    [listed] = [
        k for k in requests.get(f"{url}/admin/api/keys", headers=AS_ADMIN, timeout=10).json()["data"] if k["id"] == key_id
    ]
    return listed


def _video(url: str, key: str) -> requests.Response:
    body = {"prompt": "a cat", "model": "Wan-AI/Wan2.2-T2V-A14B"}
    return requests.post(f"{url}/v1/videos", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=30)


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
    # Counters are the process's since it started (other tests' pictures too): at least these three.
    counted = re.search(r'siliconflow_images_total\{model="Kwai-Kolors/Kolors",outcome="ok"\} ([0-9.]+)', metrics)
    assert counted and float(counted[1]) >= 3, metrics
    assert 'siliconflow_keys{state="ok"} 3' in metrics and secret not in metrics
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
    made = _new_key(community.url, daily=None)
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


@pytest.mark.parametrize("field", ["daily_images", "daily_videos"])
@pytest.mark.parametrize("bad", ["3", 2.5, True, -1, 1_000_001, [3], {"n": 3}])
def test_a_cap_is_a_whole_number_or_null_and_anything_else_is_a_clear_400(community, field, bad):
    made = _new_key(community.url)
    for method, path in (("POST", "/admin/api/keys"), ("PATCH", f"/admin/api/keys/{made['id']}")):
        response = requests.request(
            method, f"{community.url}{path}", json={"name": "x", field: bad}, headers=AS_ADMIN, timeout=10
        )
        assert response.status_code == 400, (method, response.text)
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["param"] == field
        assert f"'{field}' must be a whole number" in error["message"] and "null for no cap" in error["message"]
    assert _listed(community.url, made["id"])["daily_images"] == 3  # nothing changed


def test_a_key_capped_on_pictures_makes_no_videos_until_the_operator_allows_them(community, fake):
    """A video costs about ten pictures: a key made with a picture cap and no word on videos makes none."""
    made = _new_key(community.url, daily=3)
    assert made["daily_images"] == 3 and made["daily_videos"] == 0
    refused = _video(community.url, made["key"])
    error = refused.json()["error"]
    assert refused.status_code == 429 and error["code"] == "insufficient_quota", refused.text
    assert error["message"].startswith("This key may not make videos") and "0" in error["message"]
    body = {"model": "Wan-AI/Wan2.2-T2V-A14B", "messages": [{"role": "user", "content": "一只狗"}], "stream": True}
    chat = post_chat(community.url, body, key=made["key"], stream=True)  # refused before the stream starts
    assert chat.status_code == 429 and chat.json()["error"]["message"] == error["message"]
    assert not fake.state.videos  # nothing submitted to SiliconFlow
    # The operator allows two, then lifts the cap (null); the listing and the overview say so.
    allow = requests.patch(f"{community.url}/admin/api/keys/{made['id']}", json={"daily_videos": 2}, headers=AS_ADMIN, timeout=10)
    assert allow.status_code == 200 and allow.json()["daily_videos"] == 2
    assert _video(community.url, made["key"]).status_code == 200 and len(fake.state.videos) == 1
    lift = requests.patch(
        f"{community.url}/admin/api/keys/{made['id']}", json={"daily_videos": None}, headers=AS_ADMIN, timeout=10
    )
    assert lift.status_code == 200 and lift.json()["daily_videos"] is None and lift.json()["daily_images"] == 3
    overview = requests.get(f"{community.url}/admin/api/overview", headers=AS_ADMIN, timeout=10).json()
    [shown] = overview["user_keys"]
    assert shown["daily_videos"] is None and shown["videos_today"] == 1 and shown["daily_images"] == 3


def test_null_is_no_cap_and_0_is_none(community, fake):
    unlimited = _new_key(community.url, daily=None)  # no word on either: no caps
    assert unlimited["daily_images"] is None and unlimited["daily_videos"] is None
    assert _new_key(community.url, daily=None, daily_images=None)["daily_videos"] is None
    assert _new_key(community.url, daily=3, daily_videos=None)["daily_videos"] is None  # said: no cap
    assert _video(community.url, unlimited["key"]).status_code == 200
    no_pictures = _new_key(community.url, daily=0, daily_videos=None)
    for refused in (
        _draw(community.url, no_pictures["key"], "画一只猫", stream=True),
        requests.post(
            f"{community.url}/v1/images/generations",
            json={"prompt": "a cat"},
            headers={"Authorization": f"Bearer {no_pictures['key']}"},
            timeout=30,
        ),
    ):
        error = refused.json()["error"]
        assert refused.status_code == 429 and error["code"] == "insufficient_quota"
        assert error["message"].startswith("This key may not make pictures")
    assert not fake.state.image_calls()
    lifted = requests.patch(
        f"{community.url}/admin/api/keys/{no_pictures['id']}", json={"daily_images": None}, headers=AS_ADMIN, timeout=10
    )
    assert lifted.status_code == 200 and lifted.json()["daily_images"] is None
    assert (
        len(images_in(_draw(community.url, no_pictures["key"], "画一只猫 pic:2").json()["choices"][0]["message"]["content"])) == 2
    )


OLD_SECRETS = {"uk_old000000001": "sfk-" + "a" * 32, "uk_old000000002": "sfk-" + "b" * 32}


def _old_records() -> list[dict]:
    """Two keys as the service stored them before caps had a version: 0 was "no cap"."""
    records = []
    for (key_id, secret), (images, videos) in zip(OLD_SECRETS.items(), ((0, 0), (2, 0)), strict=True):
        records.append(
            {
                "id": key_id,
                "name": key_id[-1],
                "hash": hashlib.sha256(secret.encode()).hexdigest(),
                "shown": f"{secret[:6]}…{secret[-4:]}",
                "daily_images": images,
                "daily_videos": videos,
                "disabled": False,
                "created_at": 1_700_000_000,
                "last_used": None,
                "images_total": 0,
                "videos_total": 0,
            }
        )
    return records


@pytest.mark.parametrize("store", ["sqlite", "redis"])
def test_keys_stored_before_caps_had_a_version_keep_their_meaning(request, serve, fake, tmp_path, store):
    if store == "sqlite":
        service = serve(admin_key=ADMIN, data_dir=str(tmp_path), prompt_expansion=False)
        db = sqlite3.connect(tmp_path / "users.sqlite3")  # the service made the table at its start
        with db:
            for record in _old_records():
                db.execute("INSERT INTO keys VALUES (?, ?, ?)", (record["id"], record["hash"], json.dumps(record)))
        db.close()
    else:
        redis_server = request.getfixturevalue("redis_server")
        service = serve(admin_key=ADMIN, redis_url=redis_server.url, prompt_expansion=False)
        client = redis.Redis.from_url(redis_server.url)
        for record in _old_records():
            client.set(f"siliconflow:users:key:{record['id']}", json.dumps(record))
            client.set(f"siliconflow:users:hash:{record['hash']}", record["id"])
            client.sadd("siliconflow:users:all", record["id"])
    free, capped = (_listed(service.url, key_id) for key_id in OLD_SECRETS)
    assert (free["daily_images"], free["daily_videos"]) == (None, None)
    assert (capped["daily_images"], capped["daily_videos"]) == (2, None)  # as before: a cap on pictures only
    free_secret, capped_secret = OLD_SECRETS.values()
    assert len(images_in(_draw(service.url, free_secret, "画一只猫 pic:3").json()["choices"][0]["message"]["content"])) == 3
    assert _video(service.url, capped_secret).status_code == 200
    # A 0 set now on an old record means none, and its other cap keeps its old meaning.
    changed = requests.patch(
        f"{service.url}/admin/api/keys/uk_old000000002", json={"daily_videos": 0}, headers=AS_ADMIN, timeout=10
    )
    assert changed.status_code == 200, changed.text
    capped = _listed(service.url, "uk_old000000002")
    assert (capped["daily_images"], capped["daily_videos"]) == (2, 0)
    assert _video(service.url, capped_secret).status_code == 429
    requests.patch(
        f"{service.url}/admin/api/keys/uk_old000000001",
        json={"daily_images": 0, "daily_videos": None},
        headers=AS_ADMIN,
        timeout=10,
    )
    free = _listed(service.url, "uk_old000000001")
    assert (free["daily_images"], free["daily_videos"]) == (0, None)
    assert _draw(service.url, free_secret, "画一只猫").status_code == 429


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
        made = _new_key(first.url, daily=None)
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
    qwen = {"model": "Qwen/Qwen-Image", "messages": [{"role": "user", "content": "画一只狗"}]}
    assert post_chat(community.url, qwen, key=friend["key"], timeout=60).status_code == 200  # ¥0.30 by the built-in table
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
    assert "friend" in out["users"] and friend["key"] not in out["html"]
    assert out["upstream"].count("ok") >= 3 and out["bars"] == 24
    assert out["made"].startswith("sfk-") and out["madeListed"]  # the new key shown once, then masked in the table
    # Made with Enter in the form, 5 pictures and 2 videos a day; the friend's key (3 pictures, no
    # word on videos) makes none.
    assert "0 / 5" in out["madeRow"] and "0 / 2" in out["madeRow"], out["madeRow"]
    assert "3 / 3" in out["friendRow"] and "0 / 不允许 none" in out["friendRow"], out["friendRow"]
    # What it cost: a spend column per key (today / total), and the last 30 days per day, account, key, model.
    assert "spend today / total" in out["usersHead"] and "¥0.30 / ¥0.30" in out["friendRow"], out["friendRow"]
    assert "SiliconFlow no longer reports balances" in out["spendNote"] and "¥0.30" in out["spendTotals"]
    qwen_rows = [row for row in out["spendRows"] if "Qwen/Qwen-Image" in row]
    assert len(qwen_rows) == 1 and "¥0.30" in qwen_rows[0], out["spendRows"]
    assert any("Kwai-Kolors/Kolors" in row and "¥0.00" in row for row in out["spendRows"]), out["spendRows"]
    assert out["revoked"] and not out["overflow"] and out["errors"] == []
    assert ADMIN not in out["url"]  # never in a URL
    for view in ("desktop", "phone"):
        assert (shots / f"admin-{view}.png").stat().st_size > 10_000


def test_a_persons_videos_are_theirs_alone(serve, fake):
    service = serve(admin_key=ADMIN, api_key=SERVICE_KEY, prompt_expansion=False, video_poll_seconds=0.1)
    alice, bob = _new_key(service.url, "alice", None)["key"], _new_key(service.url, "bob", None)["key"]

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
    from storage.user_keys import SqliteKeys, make, secret_hash

    keys = SqliteKeys(str(tmp_path / "users.sqlite3"))
    key, secret = make("dora", None, None)
    keys.save(key)
    seen = keys.by_hash(secret_hash(secret))  # authenticated...
    keys.delete(key.id)  # ...revoked meanwhile...
    keys.touch(seen)  # ...then its use is noted
    assert keys.by_hash(secret_hash(secret)) is None
    other, secret = make("eve", None, None)
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


def test_with_an_operator_a_stranger_is_told_the_health_status_alone(serve, fake, s3):
    """No data path, bucket, key counts or store failures for strangers; all of it for the admin key."""
    service = serve({"S3_BUCKET": "health-secrets-bucket"}, admin_key=ADMIN, api_key=SERVICE_KEY)
    stranger = requests.get(f"{service.url}/health", timeout=10)
    assert stranger.status_code == 200 and stranger.json() == {"status": stranger.json()["status"]}
    assert stranger.json()["status"] in ("ok", "degraded")
    for who in ({"Authorization": f"Bearer {SERVICE_KEY}"}, {"Authorization": "Bearer wrong-key-0123456789"}):
        assert set(requests.get(f"{service.url}/health", headers=who, timeout=10).json()) == {"status"}
    operator = requests.get(f"{service.url}/health", headers=AS_ADMIN, timeout=10).json()
    assert operator["keys"]["total"] == 3 and "health-secrets-bucket" in json.dumps(operator["pictures"])


def test_capping_the_pictures_of_an_uncapped_key_closes_its_videos_too(community, fake):
    made = requests.post(f"{community.url}/admin/api/keys", json={"name": "erin"}, headers=AS_ADMIN, timeout=10).json()
    assert made["daily_images"] is None and made["daily_videos"] is None
    capped = requests.patch(
        f"{community.url}/admin/api/keys/{made['id']}", json={"daily_images": 3}, headers=AS_ADMIN, timeout=10
    ).json()
    assert capped["daily_images"] == 3 and capped["daily_videos"] == 0
    video = requests.post(
        f"{community.url}/v1/videos",
        json={"prompt": "a cat", "model": "Wan-AI/Wan2.2-T2V-A14B"},
        headers={"Authorization": f"Bearer {made['key']}"},
        timeout=30,
    )
    assert video.status_code == 429 and not fake.state.videos
    both = requests.patch(
        f"{community.url}/admin/api/keys/{made['id']}",
        json={"daily_images": 5, "daily_videos": None},
        headers=AS_ADMIN,
        timeout=10,
    ).json()
    assert both["daily_videos"] is None  # said in words: no cap on videos


def test_user_keys_in_a_redis_that_went_away_are_a_503_to_retry_without_a_traceback(serve, fake, redis_server, logged):
    service = serve(admin_key=ADMIN, redis_url=redis_server.url, prompt_expansion=False)
    secret = _new_key(service.url)["key"]
    redis_server.stop()
    try:
        for path, body in (("/v1/images/generations", {"prompt": "a cat"}), ("/v1/chat/completions", None)):
            response = requests.post(
                f"{service.url}{path}",
                json=body or {"messages": [{"role": "user", "content": "画一只猫"}]},
                headers={"Authorization": f"Bearer {secret}"},
                timeout=30,
            )
            assert response.status_code == 503 and response.json()["error"]["code"] == "store_unavailable", response.text
            assert response.headers["Retry-After"] == "10"
        listed = requests.get(f"{service.url}/admin/api/keys", headers=AS_ADMIN, timeout=30)
        assert listed.status_code == 503
    finally:
        redis_server.start()
    assert not [r for r in logged.records if r.exc_info], "a traceback was logged"
    assert not fake.state.drawing_calls()
