"""The OpenAI Images API (POST /v1/images/generations) and CORS, with the real clients."""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path

import openai
import pytest
import requests

from tests.conftest import SERVICE_KEY
from tests.helpers import wait_until
from tests.js_env import JS_DIR, node_modules
from tests.test_clients import LEGACY_SCRIPT

FRAME_PATH = Path(__file__).parent.parent / "data" / "frame.png"  # a real PNG (ffmpeg's test source)
FRAME = FRAME_PATH.read_bytes()


@pytest.fixture
def locked(serve):
    return serve(api_key=SERVICE_KEY)


def client(service, key: str = SERVICE_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{service.url}/v1", api_key=key, max_retries=0, timeout=30)


def test_openai_v1_images_generate_urls(locked, fake):
    result = client(locked).images.generate(model="Qwen/Qwen-Image", prompt="a red fox", n=2, size="1792x1024")
    assert len(result.data) == 2
    for item in result.data:
        picture = requests.get(item.url, timeout=5)
        assert picture.content.startswith(b"\x89PNG")
    calls = fake.state.image_calls()
    assert {c.body["image_size"] for c in calls} == {"1664x928"}  # OpenAI's landscape, mapped for Qwen
    assert {c.body["prompt"] for c in calls} == {"a red fox"}  # no expansion unless asked
    assert len({c.key for c in calls}) == 2 and fake.state.chat_calls() == []


def test_openai_v1_images_generate_b64_json(locked):
    result = client(locked).images.generate(prompt="a red fox", response_format="b64_json")
    [item] = result.data
    assert base64.b64decode(item.b64_json).startswith(b"\x89PNG")
    assert item.url is None


def test_default_model_extras_and_expansion(locked, fake):
    body = {
        "prompt": "a fox",
        "seed": 7,
        "negative_prompt": "blur",
        "num_inference_steps": 30,
        "guidance_scale": 5.5,
        "prompt_expansion": True,
    }
    response = requests.post(
        f"{locked.url}/v1/images/generations", json=body, headers={"Authorization": f"Bearer {SERVICE_KEY}"}, timeout=30
    )
    assert response.status_code == 200
    [item] = response.json()["data"]
    [call] = fake.state.image_calls()
    assert call.body["model"] == "Kwai-Kolors/Kolors"  # the first of the model list
    assert (call.body["seed"], call.body["negative_prompt"], call.body["num_inference_steps"], call.body["guidance_scale"]) == (
        7,
        "blur",
        30,
        5.5,
    )
    assert call.body["prompt"].startswith("A detailed illustration of a fox")
    assert item["revised_prompt"] == call.body["prompt"]


@pytest.mark.parametrize(
    "body, param",
    [
        ({}, "prompt"),
        ({"prompt": "  "}, "prompt"),
        ({"prompt": "fox", "n": 0}, "n"),
        ({"prompt": "fox", "n": 99}, "n"),
        ({"prompt": "fox", "n": "2"}, "n"),
        ({"prompt": "fox", "size": "huge"}, "size"),
        ({"prompt": "fox", "response_format": "png"}, "response_format"),
        ({"prompt": "fox", "seed": -1}, "seed"),
        ({"prompt": "fox", "guidance_scale": "high"}, "guidance_scale"),
        ({"prompt": "fox", "model": "midjourney-v6"}, "model"),
        ({"prompt": "fox", "stream": "yes"}, "stream"),
        ({"prompt": "fox", "stream": True, "partial_images": 9}, "partial_images"),
        ({"prompt": "fox", "stream": True, "response_format": "url"}, "response_format"),
        ({"prompt": "fox", "batch_size": 99}, "batch_size"),
        ({"prompt": "fox", "image_size": "big"}, "image_size"),
        ({"prompt": "fox", "prompt_enhancement": "yes"}, "prompt_enhancement"),
        ({"prompt": "fox", "model": "Kwai-Kolors/Kolors", "image": "a cat"}, "image"),
        ({"prompt": "fox", "model": "Kwai-Kolors/Kolors", "image": "data:image/png;base64,aGVsbG8="}, "image"),
        ({"prompt": "fox", "model": "Qwen/Qwen-Image", "image": "https://example.com/cat.png"}, "image"),
        ({"prompt": "fox", "model": "Kwai-Kolors/Kolors", "image": "https://a.example/1", "image2": "https://a.b/2"}, "image2"),
        ({"prompt": "a nude fox"}, "prompt"),
    ],
)
def test_bad_image_requests_answer_400(locked, fake, body, param):
    response = requests.post(
        f"{locked.url}/v1/images/generations", json=body, headers={"Authorization": f"Bearer {SERVICE_KEY}"}, timeout=10
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == param and error["message"]
    assert fake.state.image_calls() == []


@pytest.mark.parametrize(
    "keys, status, error_class",
    [
        (("sk-limited-only001",), 429, openai.RateLimitError),
        (("sk-dead-only00001", "sk-broke-only0001"), 503, openai.InternalServerError),
        (("sk-overload-only01",), 502, openai.InternalServerError),
    ],
)
def test_no_image_made_is_an_error_with_a_fitting_status(serve, keys, status, error_class):
    # A short REQUEST_TIMEOUT: a rate-limited account would otherwise be waited for.
    service = serve(api_keys=keys, max_key_attempts=1, request_timeout=5)
    with pytest.raises(error_class) as caught:
        client(service).images.generate(prompt="a fox", n=1)
    assert caught.value.status_code == status


def test_unknown_upstream_model_is_a_400(serve):
    service = serve(models=("prompthero/openjourney",))
    with pytest.raises(openai.BadRequestError, match="SiliconFlow 20012"):
        client(service).images.generate(prompt="a fox")


def test_some_images_failing_still_returns_the_rest(serve):
    service = serve(api_keys=("sk-good-part0001", "sk-overload-part1"), max_key_attempts=1)
    result = client(service).images.generate(prompt="a fox", n=2)
    assert 1 <= len(result.data) <= 2


def test_images_use_permanent_links_when_configured(serve, tmp_path):
    service = serve(image_store_dir=str(tmp_path), public_base_url="https://img.example.com")
    [item] = client(service).images.generate(prompt="a fox").data
    assert item.url.startswith("https://img.example.com/images/")


def test_openai_v1_wrong_key(locked):
    with pytest.raises(openai.AuthenticationError):
        client(locked, key="wrong").images.generate(prompt="a fox")


def test_legacy_image_create(legacy_python, locked, fake):
    result = subprocess.run(
        [legacy_python, str(LEGACY_SCRIPT), locked.url, SERVICE_KEY, "image", "a red fox"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(out["urls"]) == 2
    assert len({c.key for c in fake.state.image_calls()}) == 2


# --- CORS ------------------------------------------------------------------------------------------

SDK_HEADERS = (
    "authorization,content-type,x-stainless-arch,x-stainless-lang,x-stainless-os,"
    "x-stainless-package-version,x-stainless-retry-count,x-stainless-runtime,"
    "x-stainless-runtime-version,x-stainless-timeout"
)


def test_preflight_allows_what_the_js_sdk_sends(locked):
    response = requests.options(
        f"{locked.url}/v1/chat/completions",
        headers={
            "Origin": "https://chat.example.com",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": SDK_HEADERS,
        },
        timeout=5,
    )
    assert response.status_code == 200  # no key needed for a preflight
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert "POST" in response.headers["Access-Control-Allow-Methods"]
    allowed = {h.strip().lower() for h in response.headers["Access-Control-Allow-Headers"].split(",")}
    assert set(SDK_HEADERS.split(",")) <= allowed


def test_cors_headers_on_answers_and_errors(locked):
    origin = {"Origin": "https://chat.example.com"}
    assert requests.get(f"{locked.url}/v1/models", headers=origin, timeout=5).headers["Access-Control-Allow-Origin"] == "*"
    error = requests.get(f"{locked.url}/v1/models", headers={**origin, "Authorization": "Bearer x"}, timeout=5)
    assert error.status_code == 401 and error.headers["Access-Control-Allow-Origin"] == "*"


def test_cors_origins_can_be_limited(serve):
    service = serve({"CORS_ORIGINS": "https://chat.example.com, https://other.example.com"})
    allowed = requests.get(f"{service.url}/v1/models", headers={"Origin": "https://chat.example.com"}, timeout=5)
    assert allowed.headers["Access-Control-Allow-Origin"] == "https://chat.example.com"
    assert "Origin" in allowed.headers["Vary"]
    refused = requests.get(f"{service.url}/v1/models", headers={"Origin": "https://evil.example.com"}, timeout=5)
    assert "Access-Control-Allow-Origin" not in refused.headers


def test_b64_json_with_a_store_behind_a_proxy_does_not_fetch_its_own_public_link(serve, tmp_path):
    # The public link points at a proxy this server cannot reach from inside; the bytes it just
    # stored are what b64_json must return.
    service = serve(image_store_dir=str(tmp_path), public_base_url="https://img.example.invalid")
    [item] = client(service).images.generate(prompt="a fox", response_format="b64_json").data
    data = base64.b64decode(item.b64_json)
    assert data.startswith(b"\x89PNG")
    assert [p.read_bytes() for p in tmp_path.glob("*.png")] == [data]


def test_concurrent_generations_do_not_starve_the_pool_they_draw_with(serve, fake):
    """The Images adapter draws in its own request: with 4 upstream workers, 12 generations at
    once all succeed (it used to hold an executor slot while its pictures waited for one)."""
    from concurrent.futures import ThreadPoolExecutor

    fake.state.image_latency = 0.2
    service = serve(upstream_workers=4, heartbeat_seconds=0.5, request_timeout=30)
    with ThreadPoolExecutor(12) as pool:
        answers = list(
            pool.map(
                lambda _: requests.post(f"{service.url}/v1/images/generations", json={"prompt": "a fox"}, timeout=60), range(12)
            )
        )
    bodies = [json.loads(answer.content) for answer in answers]
    assert all(answer.status_code == 200 for answer in answers)
    assert all("data" in body and len(body["data"]) == 1 for body in bodies), bodies


# --- the chat's mini-language in an Images API prompt ----------------------------------------------


def test_open_webuis_image_button_with_the_mini_language(serve, fake):
    """Open WebUI's legacy image button sends what the user typed, n=1 and its own default size."""
    service = serve()
    body = {
        "model": "Kwai-Kolors/Kolors",
        "prompt": "画一只可爱的猫咪，9:16比例 pic:2",
        "n": 1,
        "size": "512x512",
        "response_format": "b64_json",
    }
    response = requests.post(f"{service.url}/v1/images/generations", json=body, timeout=60)
    assert response.status_code == 200, response.text
    assert len(response.json()["data"]) == 2 and all(item["b64_json"] for item in response.json()["data"])
    calls = fake.state.image_calls()
    assert len(calls) == 2 and {c.body["image_size"] for c in calls} == {"720x1280"}
    assert {c.body["prompt"] for c in calls} == {"画一只可爱的猫咪"}  # no "pic:2", no "9:16比例" drawn as words


def test_fields_decide_what_the_prompt_does_not_say(serve, fake):
    service = serve()
    body = {"model": "Kwai-Kolors/Kolors", "prompt": "a portrait of an old man seed:42", "n": 2, "size": "1024x1024"}
    response = requests.post(f"{service.url}/v1/images/generations", json=body, timeout=60)
    assert response.status_code == 200, response.text
    calls = fake.state.image_calls()
    assert len(calls) == 2 and {c.body["image_size"] for c in calls} == {"1024x1024"}  # "portrait" is the picture's
    assert {c.body["prompt"] for c in calls} == {"a portrait of an old man"} and {c.body["seed"] for c in calls} >= {42}


@pytest.mark.parametrize(
    "prompt, says",
    [("pic:2 16:9", "describe the picture"), ("一只猫 pic:99", "at most"), ("一只猫 seed:99999999999", "seed")],
)
def test_a_prompt_whose_options_cannot_be_drawn_is_a_clear_400(serve, fake, prompt, says):
    service = serve()
    response = requests.post(f"{service.url}/v1/images/generations", json={"prompt": prompt}, timeout=60)
    assert response.status_code == 400 and says in response.json()["error"]["message"], response.text
    assert fake.state.image_calls() == []


@pytest.mark.parametrize(
    "follow_up, count, words",
    [("换成水彩风格", 2, "水彩风格"), ("再来一张", 1, None), ("再来两张，换成蓝色", 2, "蓝色")],
)
def test_open_webuis_image_button_keeps_what_a_follow_up_follows(serve, fake, follow_up, count, words):
    """In image-button mode Open WebUI asks for an image prompt with its own template quoting the
    chat, then sends that prompt to the Images API: a follow-up keeps the subject, ratio and count."""
    from tests.ui_templates import open_webui_templates, parse_like_open_webui, render_open_webui

    service = serve()
    history = [
        {"role": "user", "content": "画一只可爱的猫咪，9:16比例 pic:2"},
        {"role": "assistant", "content": "图片已经画好，就在上面。"},
        {"role": "user", "content": follow_up},
    ]
    task = render_open_webui(open_webui_templates()["DEFAULT_IMAGE_PROMPT_GENERATION_PROMPT_TEMPLATE"], history)
    chat = requests.post(
        f"{service.url}/v1/chat/completions",
        json={"model": "Kwai-Kolors/Kolors", "messages": [{"role": "user", "content": task}]},
        timeout=60,
    )
    prompt = parse_like_open_webui(chat.json()["choices"][0]["message"]["content"])["prompt"]
    body = {"model": "Kwai-Kolors/Kolors", "prompt": prompt, "n": 1, "size": "512x512", "response_format": "b64_json"}
    response = requests.post(f"{service.url}/v1/images/generations", json=body, timeout=60)
    assert response.status_code == 200 and len(response.json()["data"]) == count, (prompt, response.text)
    calls = fake.state.image_calls()
    assert len(calls) == count and {c.body["image_size"] for c in calls} == {"720x1280"}, prompt
    for call in calls:
        assert "可爱的猫咪" in call.body["prompt"] and (words is None or words in call.body["prompt"]), call.body["prompt"]
        assert "pic:" not in call.body["prompt"] and "再来" not in call.body["prompt"]


# --- OpenAI's model names (MODEL_ALIASES) ----------------------------------------------------------


def test_gpt_image_1_draws_on_the_model_it_stands_for_and_answers_as_openai_does(locked, fake):
    result = client(locked).images.generate(model="gpt-image-1", prompt="a red fox", size="1536x1024")
    [item] = result.data
    assert base64.b64decode(item.b64_json).startswith(b"\x89PNG")  # what OpenAI's gpt-image-1 answers
    assert item.url and requests.get(item.url, timeout=5).content == base64.b64decode(item.b64_json)  # and the link
    [call] = fake.state.image_calls()
    assert call.body["model"] == "Qwen/Qwen-Image" and call.body["image_size"] == "1584x1056"


def test_an_alias_sent_to_edits_edits_with_an_edit_model(locked, fake):
    edited = client(locked).images.edit(model="gpt-image-1", image=("in.png", FRAME, "image/png"), prompt="make it blue")
    assert base64.b64decode(edited.data[0].b64_json).startswith(b"\x89PNG")
    [call] = fake.state.image_calls()
    assert call.body["model"] == locked.services.catalog.default_editor() and call.body["image"].startswith("data:image/png")


def test_an_operators_alias_is_taken_by_the_images_api(serve, fake):
    service = serve({"MODEL_ALIASES": "dall-e-3=Kwai-Kolors/Kolors"})
    result = client(service).images.generate(model="dall-e-3", prompt="a red fox", n=2)
    assert len(result.data) == 2 and all(item.url for item in result.data)  # dall-e-3: links, as OpenAI's
    assert {c.body["model"] for c in fake.state.image_calls()} == {"Kwai-Kolors/Kolors"}


# --- what an answer carries when no response_format is asked ---------------------------------------


def test_an_edit_without_response_format_carries_the_link_and_the_bytes(locked, fake):
    edited = client(locked).images.edit(
        model="Qwen/Qwen-Image-Edit-2509", image=("in.png", FRAME, "image/png"), prompt="make the sky blue"
    )
    [item] = edited.data
    assert requests.get(item.url, timeout=5).content == base64.b64decode(item.b64_json)  # both, the same picture
    drawn = client(locked).images.generate(model="Kwai-Kolors/Kolors", prompt="a fox")
    assert drawn.data[0].url and drawn.data[0].b64_json is None  # a generation: the link, as before


def test_the_ai_sdk_edits_and_generates_through_the_images_api(serve, fake):
    node_modules("ai")
    service = serve(api_key=SERVICE_KEY)
    result = subprocess.run(
        ["node", str(JS_DIR / "ai_sdk_images_check.mjs"), service.url, SERVICE_KEY, str(FRAME_PATH)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["edit"] == [{"bytes": out["edit"][0]["bytes"], "mediaType": "image/png", "png": True}], out
    assert len(out["gptImage"]) == 1 and out["gptImage"][0]["png"], out
    assert len(out["kolors"]) == 2 and all(picture["png"] for picture in out["kolors"]), out
    models = [c.body["model"] for c in fake.state.image_calls()]
    assert sorted(models) == sorted(["Qwen/Qwen-Image-Edit-2509", "Qwen/Qwen-Image", "Kwai-Kolors/Kolors", "Kwai-Kolors/Kolors"])


# --- SiliconFlow's own body on the same path -------------------------------------------------------


def test_a_cherry_studio_siliconflow_body_draws_batch_size_pictures_with_lasting_links(serve, fake, tmp_path):
    """Cherry Studio's painting page (SiliconFlow provider) sends SiliconFlow's own body and reads
    `images[].url`: batch_size 2 is two pictures spread over two keys, each kept."""
    service = serve(image_store_dir=str(tmp_path), public_base_url="http://127.0.0.1:1")
    body = {
        "model": "Kwai-Kolors/Kolors",
        "prompt": "一只可爱的猫咪",
        "negative_prompt": "blurry",
        "image_size": "768x1024",
        "batch_size": 2,
        "seed": 4242,
        "num_inference_steps": 25,
        "guidance_scale": 7.5,
        "prompt_enhancement": False,
    }
    response = requests.post(f"{service.url}/v1/images/generations", json=body, timeout=30)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert len(answer["images"]) == 2 and len(answer["data"]) == 2
    for item in answer["images"]:  # shown at once, kept behind the links: each read as it arrives
        assert requests.get(item["url"].replace("http://127.0.0.1:1", service.url), timeout=30).status_code == 200
    assert wait_until(lambda: len(list(tmp_path.glob("*.png"))) == 2, 10)
    kept = sorted(p.name for p in tmp_path.glob("*.png"))
    assert sorted(item["url"].rsplit("/", 1)[1] for item in answer["images"]) == kept  # the lasting links
    assert answer["seed"] == 4242 and isinstance(answer["timings"]["inference"], float)
    calls = fake.state.image_calls()
    assert len(calls) == 2 and len({c.key for c in calls}) == 2  # spread over the pool, one picture a call
    for call in calls:
        assert call.body["batch_size"] == 1 and call.body["image_size"] == "768x1024"
        assert (call.body["negative_prompt"], call.body["num_inference_steps"], call.body["guidance_scale"]) == (
            "blurry",
            25,
            7.5,
        )
    assert sorted(c.body["seed"] for c in calls) == [4242, 4243] and fake.state.chat_calls() == []


def test_siliconflows_image_fields_reach_the_edit_model_in_order(serve, fake):
    service = serve(allow_private_image_urls=True)  # the second picture is a link on the fake (on this machine)
    frame = "data:image/png;base64," + base64.b64encode(FRAME).decode()
    link = f"{fake.url}/outputs/second.png"
    body = {"model": "Qwen/Qwen-Image-Edit-2509", "prompt": "把图1的猫放进图2", "image": frame, "image2": link, "cfg": 4.0}
    response = requests.post(f"{service.url}/v1/images/generations", json=body, timeout=30)
    assert response.status_code == 200, response.text
    assert response.json()["images"][0]["url"]
    [call] = fake.state.image_calls()
    assert call.body["image"] == frame and call.body["image2"].startswith("data:image/png;base64,")
    assert call.body["cfg"] == 4.0 and "image_size" not in call.body  # the edit follows its input's size


def test_an_image_link_that_cannot_be_used_is_a_400_before_anything_is_drawn(serve, fake, internal):
    service = serve()  # a link to this machine (not the upstream's own host) is refused by the address rule
    body = {"model": "Kwai-Kolors/Kolors", "prompt": "a cat", "image": internal.url("/cat.png")}
    response = requests.post(f"{service.url}/v1/images/generations", json=body, timeout=30)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "image" and error["message"].startswith("An input picture cannot be used: 'image' not used")
    assert fake.state.image_calls() == [] and internal.hits == []


def test_prompt_enhancement_is_the_prompt_expansion(serve, fake):
    service = serve()
    body = {"model": "Kwai-Kolors/Kolors", "prompt": "a cat", "image_size": "1024x1024", "prompt_enhancement": True}
    response = requests.post(f"{service.url}/v1/images/generations", json=body, timeout=30)
    assert response.status_code == 200, response.text
    [call] = fake.state.image_calls()
    assert call.body["prompt"].startswith("A detailed illustration of a cat") and len(fake.state.chat_calls()) == 1
