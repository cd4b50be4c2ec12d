"""Upstream keys managed while the service runs (storage/upstream_keys.py, the admin API): pasted, tested,
disabled, renamed and removed on one worker, taken up by every worker and instance, kept across a
restart; never shown whole. Over real HTTP, with gunicorn as the Procfile runs it and a real Redis."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess

import pytest
import requests

from core.text import mask_key
from tests.conftest import ROOT, SERVICE_KEY
from tests.helpers import answer_text, images_in, post_chat, wait_until
from tests.js_env import CHROMIUM, JS_DIR, node_modules, require
from tests.servers import Gunicorn

ADMIN = "operator-secret-0123456789"
AS_ADMIN = {"Authorization": f"Bearer {ADMIN}"}
NEW_A, NEW_B = "sk-good-pasted0a0a", "sk-good-pasted0b0b"
DREW = re.compile(r"\[(\d+)\] siliconflow_proxy\.upstream: req=\w+ image \d+ ok on key …(\w{4})")


def _api(url: str, method: str, path: str = "", **kwargs) -> requests.Response:
    return requests.request(method, f"{url}/admin/api/upstream-keys{path}", headers=AS_ADMIN, timeout=30, **kwargs)


def _listed(url: str) -> list[dict]:
    response = _api(url, "GET")
    assert response.status_code == 200, response.text
    return response.json()["data"]


def _drawn_with(fake, key: str, since: int = 0) -> int:
    return len([c for c in fake.state.image_calls()[since:] if c.key == key])


@pytest.fixture
def operator(serve, tmp_path):
    def start(**overrides):
        overrides.setdefault("data_dir", str(tmp_path))
        return serve(admin_key=ADMIN, api_key=SERVICE_KEY, prompt_expansion=False, **overrides)

    return start


def test_keys_pasted_from_a_forum_post_are_added_masked_and_draw(operator, fake):
    service = operator(api_keys=("sk-good-seed00001",))
    pasted = f"{NEW_A},  A/{NEW_B}\n{NEW_A}\n"
    added = _api(service.url, "POST", json={"keys": pasted})
    assert added.status_code == 201, added.text
    body = added.json()
    assert [k["key"] for k in body["added"]] == ["…0a0a", "…0b0b"] and body["already_there"] == []
    assert [k["account"] for k in body["added"]] == [None, "A"]
    assert NEW_A not in added.text and NEW_B not in added.text
    again = _api(service.url, "POST", json={"keys": f"{NEW_B} sk-good-seed00001"})
    assert again.status_code == 200 and len(again.json()["already_there"]) == 2 and again.json()["added"] == []
    listed = _listed(service.url)
    assert [k["source"] for k in listed] == ["API_KEYS", "page", "page"]
    for shown in listed:  # an id says nothing of its key
        assert re.fullmatch(r"up_[0-9a-f]{12}", shown["id"]) and shown["state"] == "ok"
    before = len(fake.state.image_calls())
    for i in range(3):
        assert images_in(answer_text(service.url, f"画一只猫 {i} pic:3", stream=False, key=SERVICE_KEY))
    assert _drawn_with(fake, NEW_A, before) and _drawn_with(fake, NEW_B, before)
    used = {k["key"]: k for k in _listed(service.url)}["…0a0a"]  # today's use, from the ledger
    assert used["calls_today"] == _drawn_with(fake, NEW_A) == used["pictures_today"] and used["failed_today"] == 0


def test_disabled_and_removed_keys_draw_no_more_and_a_removed_key_stays_removed_after_a_restart(operator, fake, tmp_path):
    keys = ("sk-good-env00001", "sk-good-env00002", "sk-good-env00003")
    service = operator(api_keys=keys)
    ids = {k["key"]: k["id"] for k in _listed(service.url)}
    gone, off = ids["…0001"], ids["…0002"]
    assert _api(service.url, "DELETE", f"/{gone}").json()["deleted"] is True
    changed = _api(service.url, "PATCH", f"/{off}", json={"disabled": True, "account": "team"})
    assert changed.status_code == 200 and changed.json()["state"] == "disabled" and changed.json()["account"] == "team"
    before = len(fake.state.image_calls())
    for i in range(3):
        assert images_in(answer_text(service.url, f"画一只狗 {i} pic:2", stream=False, key=SERVICE_KEY))
    assert {c.key for c in fake.state.image_calls()[before:]} == {keys[2]}
    # A restart with the same API_KEYS: the operator's word wins.
    again = operator(api_keys=keys)
    assert [(k["key"], k["state"]) for k in _listed(again.url)] == [("…0002", "disabled"), ("…0003", "ok")]
    before = len(fake.state.image_calls())
    assert images_in(answer_text(again.url, "画一只鸟 pic:2", stream=False, key=SERVICE_KEY))
    assert {c.key for c in fake.state.image_calls()[before:]} == {keys[2]}
    # A key that came from API_KEYS and is no longer listed there goes; one the operator changed stays.
    third = operator(api_keys=(keys[2],))
    assert [k["key"] for k in _listed(third.url)] == ["…0002", "…0003"]


def test_the_test_button_says_whether_siliconflow_takes_a_key_and_a_dead_key_comes_back_only_by_the_operator(operator, fake):
    service = operator(api_keys=("sk-good-alive0001", "sk-dead-gone00002"))
    ids = {k["key"]: k["id"] for k in _listed(service.url)}
    good = _api(service.url, "POST", f"/{ids['…0001']}/test").json()
    assert good["ok"] is True and good["status"] == 200
    dead = _api(service.url, "POST", f"/{ids['…0002']}/test").json()
    assert dead["ok"] is False and dead["status"] == 401 and "invalid or revoked" in dead["message"]
    assert "sk-dead-gone00002" not in str(dead)
    assert {k["key"]: k["state"] for k in _listed(service.url)}["…0002"] == "dead"
    model_calls = [c for c in fake.state.calls if c.path == "/v1/models" and c.key == "sk-dead-gone00002"]
    assert model_calls and not [c for c in fake.state.image_calls() if c.key == "sk-dead-gone00002"]  # the test cost nothing
    # Dead until the operator says otherwise: enabling it is saying so.
    revived = _api(service.url, "PATCH", f"/{ids['…0002']}", json={"disabled": False})
    assert revived.json()["state"] == "ok"


def test_a_key_out_for_a_while_says_until_when(operator, fake):
    """The page words a cooling key's and a resting key's time out from the list alone."""
    # No good key: both fail again. A picture that finds both out waits in line for the cooling one, so
    # each round is bounded by a short REQUEST_TIMEOUT.
    service = operator(api_keys=("sk-overload-0002", "sk-broke-rest0003"), request_timeout=3)

    def both_out() -> bool:
        answer_text(service.url, "画一只猫 pic:3", stream=False, key=SERVICE_KEY)
        shown = {k["key"]: k["state"] for k in _listed(service.url)}
        return shown["…0002"] == "cooling" and shown["…0003"] == "resting"

    assert wait_until(both_out, timeout=20, interval=0.1), _listed(service.url)
    shown = {k["key"]: k for k in _listed(service.url)}
    cooling, resting = shown["…0002"], shown["…0003"]
    assert 0 < cooling["cooling_seconds"] <= 300 and cooling["last_failure"], cooling
    assert 0 < resting["next_try"] <= 6 * 3600 and resting["probing"] is False and resting["cooling_seconds"] == 0, resting
    assert all(k["calls_in_flight"] == 0 for k in shown.values())


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "says"),
    [
        ("POST", "", {"keys": ""}, 400, "'keys' is required"),
        ("POST", "", {"keys": 7}, 400, "'keys' is required"),
        ("POST", "", {"keys": "sk-good-fine0001, a/b/c, sk good"}, 400, "key 2, 3"),
        ("POST", "", {}, 400, "'keys' is required"),
        ("PATCH", "/up_000000000000", {"disabled": True}, 404, "No upstream key"),
        ("DELETE", "/up_000000000000", None, 404, "No upstream key"),
        ("POST", "/up_000000000000/test", None, 404, "No upstream key"),
        ("PATCH", "/{id}", {"disabled": "yes"}, 400, "'disabled' must be true or false"),
        ("PATCH", "/{id}", {"account": "a/b"}, 400, "'account' must be a NAME"),
        ("PATCH", "/{id}", {}, 400, "Nothing to change"),
    ],
)
def test_bad_requests_are_clear_and_change_nothing(operator, fake, method, path, body, status, says):
    service = operator(api_keys=("sk-good-only00001",))
    [only] = _listed(service.url)
    response = _api(service.url, method, path.replace("{id}", only["id"]), json=body)
    assert response.status_code == status and says in response.json()["error"]["message"], response.text
    assert _listed(service.url) == [only]


def test_every_upstream_key_route_wants_the_admin_key(operator):
    service = operator(api_keys=("sk-good-only00001",))
    for who in ({}, {"Authorization": f"Bearer {SERVICE_KEY}"}):
        response = requests.get(f"{service.url}/admin/api/upstream-keys", headers=who, timeout=10)
        assert response.status_code in (401, 403)
        response = requests.post(f"{service.url}/admin/api/upstream-keys", json={"keys": NEW_A}, headers=who, timeout=10)
        assert response.status_code in (401, 403)


def test_the_roster_file_is_readable_by_this_user_alone_and_logs_carry_no_key(operator, tmp_path, logged):
    service = operator(api_keys=("sk-good-secret0001",))
    _api(service.url, "POST", json={"keys": NEW_A})
    mode = stat.S_IMODE(os.stat(tmp_path / "upstream_keys.sqlite3").st_mode)
    assert mode == 0o600, oct(mode)
    said = "\n".join(r.getMessage() for r in logged.records)
    assert NEW_A not in said and "sk-good-secret0001" not in said


def test_the_operator_manages_upstream_keys_on_the_page_in_chromium(operator, fake):
    """A real Chromium on the page: pastes, tests, disables, removes and names keys; each takes effect
    in the API, and no key is ever shown whole (the page's text, its HTML, the paste box)."""
    require(CHROMIUM, "Chromium (Debian package chromium)")
    node_modules("playwright-core")
    seeds = ("sk-good-seedkeyfromenv000001", "sk-good-seedkeyfromenv000002", "sk-broke-seedkeyfromenv00003")
    good, dead, phone = "sk-good-pastedfromaforum0000a0a", "sk-dead-pastedfromaforum0000d0d", "sk-good-pastedonaphone00000c0c"
    service = operator(api_keys=seeds)
    qwen = {"model": "Qwen/Qwen-Image", "messages": [{"role": "user", "content": "画一只狗 pic:3"}]}

    def broke_one_rests() -> bool:  # some use today, and a key resting for balance to word
        assert post_chat(service.url, qwen, key=SERVICE_KEY, timeout=60).status_code == 200
        return {k["key"]: k["state"] for k in _listed(service.url)}[mask_key(seeds[2])] == "resting"

    assert wait_until(broke_one_rests, timeout=20, interval=0.1)
    names = {
        "good": good,
        "dead": dead,
        "phone": phone,
        "goodMasked": mask_key(good),
        "deadMasked": mask_key(dead),
        "phoneMasked": mask_key(phone),
        "restingMasked": mask_key(seeds[2]),
        "remove": mask_key(seeds[0]),
        "disable": mask_key(seeds[1]),
    }
    shots = ROOT / "artifacts"
    shots.mkdir(exist_ok=True)
    result = subprocess.run(
        ["node", str(JS_DIR / "upstream_keys_check.mjs"), service.url, ADMIN, str(shots), json.dumps(names)],
        capture_output=True,
        text=True,
        timeout=180,
        env={"CHROMIUM": CHROMIUM, "PATH": "/usr/bin:/bin:/usr/local/bin"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    # What the page said at each step.
    assert "no longer tells accounts or balances" in out["balances"], out["balances"]
    assert "key 1" in out["refused"] and "Nothing was added" in out["refused"], out["refused"]
    assert f"已添加 2 个 (added): {mask_key(good)}, {mask_key(dead)} (team)" in out["pasted"], out["pasted"]
    assert "已存在 0 个" in out["pasted"] and out["boxAfterAdd"] == ""
    assert "自己的账户 own account" in out["goodRow"] and "页面 page" in out["goodRow"] and "team" in out["deadRow"]
    assert "resting (balance) · 下次试用 next try in" in out["restingRow"] and "API_KEYS" in out["restingRow"], out["restingRow"]
    assert "SiliconFlow takes this key" in out["testedGood"]
    assert "dead (401)" in out["testedDead"] and "until enabled, or until a test passes" in out["testedDead"], out["testedDead"]
    assert "SiliconFlow did not take the key" in out["testedDead"], out["testedDead"]
    assert "已停用 disabled" in out["disabledRow"] and "启用 enable" in out["disabledRow"]
    assert "friends" in out["namedRow"] and "own account" not in out["namedRow"]
    assert "已添加 1 个 (added)" in out["phonePasted"]
    assert "today: calls / failed / pictures / ¥" in out["desktopHead"]
    assert len(out["desktopDialogs"]) == 1 and mask_key(seeds[0]) in out["desktopDialogs"][0]  # remove asks first
    for view in ("desktop", "phone"):
        assert not out[f"{view}Overflow"] and out[f"{view}KeysFit"] and out[f"{view}Errors"] == [], out
        assert (shots / f"upstream-keys-{view}.png").stat().st_size > 10_000
    # Each action took effect, as the API tells it.
    listed = {k["key"]: k for k in _listed(service.url)}
    assert mask_key(seeds[0]) not in listed
    assert listed[mask_key(seeds[1])]["state"] == "disabled"
    assert listed[mask_key(good)]["account"] == "friends" and listed[mask_key(good)]["state"] == "ok"
    assert listed[mask_key(dead)]["account"] == "team" and listed[mask_key(dead)]["state"] == "dead"
    assert listed[mask_key(phone)]["source"] == "page"
    assert [c for c in fake.state.calls if c.path == "/v1/models" and c.key == good]  # the test asked SiliconFlow
    # Never whole: not in what the page showed, not in its HTML, not left in the paste box.
    for whole in (*seeds, good, dead, phone):
        for shown in (*out["texts"], *out["htmls"]):
            assert whole not in shown
    assert out["boxes"] == ["", "", "", ""] and ADMIN not in out["url"]


def _start(fake, production_bin, **env: str) -> Gunicorn:
    server = Gunicorn(
        {"API_BASE_URL": fake.url, "PROMPT_EXPANSION": "false", "ADMIN_KEY": ADMIN, "API_KEY": SERVICE_KEY, **env},
        production_bin,
    )
    if not server.wait_until_up():
        pytest.fail("gunicorn did not start: " + server.stop()[-2000:])
    return server


def test_keys_pasted_on_one_instance_draw_on_every_worker_of_another_within_seconds(fake, production_bin, redis_server):
    """Two instances as the Procfile runs them (two workers each) sharing Redis: two keys pasted on
    the first draw on the second within a few seconds, on whichever worker answers."""
    env = {"API_KEYS": "sk-good-first0001", "REDIS_URL": redis_server.url}
    first = _start(fake, production_bin, **env)
    second = _start(fake, production_bin, **env)
    try:
        assert _api(first.url, "POST", json={"keys": f"{NEW_A},{NEW_B}"}).status_code == 201

        def both_drew_on_the_second() -> bool:
            answer_text(second.url, "画一只猫 pic:3", stream=False, key=SERVICE_KEY)
            return bool(_drawn_with(fake, NEW_A) and _drawn_with(fake, NEW_B))

        assert wait_until(both_drew_on_the_second, timeout=10, interval=0.2)

        def every_worker_drew_with_both(server: Gunicorn) -> bool:
            answer_text(server.url, "画一只狗 pic:3", stream=False, key=SERVICE_KEY)
            drew: dict[str, set[str]] = {}
            for pid, last4 in DREW.findall(server.log()):
                drew.setdefault(pid, set()).add(last4)
            return len(drew) == 2 and all({"0a0a", "0b0b"} <= keys for keys in drew.values())

        for server in (first, second):
            assert wait_until(lambda server=server: every_worker_drew_with_both(server), timeout=20, interval=0.05), server.log()[
                -3000:
            ]
    finally:
        first.stop()
        second.stop()
