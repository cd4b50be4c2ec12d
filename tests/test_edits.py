"""Editing pictures: POST /v1/images/edits with the real clients, pictures in chat (data: and
links), the last picture as an edit's input, and fetching a user's link safely."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import subprocess

import openai
import pytest
import requests

from core.errors import AddressRefused
from drawing.reasons import zh
from siliconflow.outbound import AddressRule
from tests.fake_hosts import ForwardProxy
from tests.fake_siliconflow import png
from tests.helpers import answer_text, images_in
from tests.test_clients import LEGACY_SCRIPT

EDIT, EDIT1, KONTEXT = "Qwen/Qwen-Image-Edit-2509", "Qwen/Qwen-Image-Edit", "black-forest-labs/FLUX.1-Kontext-dev"
RED, BLUE, GREEN = png(32, 32, b"red"), png(32, 32, b"blue"), png(32, 32, b"green")


def data_url(picture: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(picture).decode()


def sent(call, field: str = "image") -> bytes:
    """The picture an upstream call carried in `field` (a data URI, as SiliconFlow takes it)."""
    value = call.body[field]
    assert value.startswith("data:image/png;base64,"), value[:40]
    return base64.b64decode(value.split(",", 1)[1])


def client(service) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{service.url}/v1", api_key="x", max_retries=0, timeout=60)


def ask_with_images(
    service,
    text: str,
    urls: list[str],
    *,
    model: str = EDIT,
    stream: bool = False,
    history: list[dict] | None = None,
    extra_parts: list[dict] | None = None,
    before: list[dict] | None = None,
    session: requests.Session | None = None,
) -> str:
    content = [
        *(before or []),
        {"type": "text", "text": text},
        *[{"type": "image_url", "image_url": {"url": u}} for u in urls],
        *(extra_parts or []),
    ]
    body = {"model": model, "stream": stream, "messages": [*(history or []), {"role": "user", "content": content}]}
    response = (session or requests).post(f"{service.url}/v1/chat/completions", json=body, stream=stream, timeout=60)
    assert response.status_code == 200, response.text
    if stream:
        from tests.helpers import content_of, stream_chunks

        return content_of(stream_chunks(response)[0])
    return response.json()["choices"][0]["message"]["content"]


# --- POST /v1/images/edits -----------------------------------------------------------------------------


@pytest.mark.parametrize("response_format", ["url", "b64_json"])
def test_openai_v1_images_edit(serve, fake, response_format):
    service = serve()
    result = client(service).images.edit(
        image=("cat.png", RED, "image/png"), prompt="把猫换成蓝色", n=2, response_format=response_format
    )
    assert len(result.data) == 2
    if response_format == "url":
        assert all(requests.get(item.url, timeout=5).content.startswith(b"\x89PNG") for item in result.data)
    else:
        assert all(base64.b64decode(item.b64_json).startswith(b"\x89PNG") for item in result.data)
    calls = fake.state.image_calls()
    assert len(calls) == 2 and {c.body["model"] for c in calls} == {EDIT}  # the default edit model
    assert all(sent(c) == RED and "image_size" not in c.body and c.body["prompt"] == "把猫换成蓝色" for c in calls)


def test_an_edit_as_open_webui_sends_it(serve, fake):
    """Open WebUI 0.12 (routers/images.py): form fields as text, files as image[] for a list,
    a size the edit model does not take, and b64_json."""
    service = serve()
    response = requests.post(
        f"{service.url}/v1/images/edits",
        timeout=60,
        data={
            "model": EDIT,
            "prompt": "换成蓝色",
            "n": "1",
            "size": "1024x1024",
            "background": "auto",
            "response_format": "b64_json",
        },
        files=[("image[]", ("image.png", RED, "image/png"))],
    )
    assert response.status_code == 200, response.text
    assert base64.b64decode(response.json()["data"][0]["b64_json"]).startswith(b"\x89PNG")
    [call] = fake.state.image_calls()
    assert sent(call) == RED and "image_size" not in call.body


def test_kontext_pro_takes_input_image_and_an_aspect_ratio(serve, fake):
    service = serve(models=("black-forest-labs/FLUX.1-Kontext-pro",))
    content = ask_with_images(service, "换成蓝色 16:9", [data_url(RED)], model="black-forest-labs/FLUX.1-Kontext-pro")
    [call] = fake.state.image_calls()
    assert sent(call, "input_image") == RED and call.body["aspect_ratio"] == "16:9" and "image" not in call.body
    assert len(images_in(content)) == 1


def test_several_pictures_go_to_image_image2_image3_in_order(serve, fake):
    service = serve()
    client(service).images.edit(
        model=EDIT,
        prompt="把三张合成一张",
        image=[("a.png", RED, "image/png"), ("b.png", BLUE, "image/png"), ("c.png", GREEN, "image/png")],
    )
    [call] = fake.state.image_calls()
    assert (sent(call, "image"), sent(call, "image2"), sent(call, "image3")) == (RED, BLUE, GREEN)


@pytest.mark.parametrize(
    "case, status, words",
    [
        ("mask", 400, "'mask' is not taken"),
        ("four", 400, "takes at most 3"),
        ("none", 400, "'image' is required"),
        ("text", 400, "not a PNG, JPEG, WebP or GIF"),
        ("huge", 413, "larger than 20 MB"),
        ("t2i", 400, "does not take an input picture"),
        ("json", 400, "multipart/form-data"),
    ],
)
def test_bad_edits_are_told_what_to_fix(serve, fake, case, status, words):
    service = serve()
    files: list = [("image", ("cat.png", RED, "image/png"))]
    data = {"prompt": "换成蓝色", "model": EDIT}
    if case == "mask":
        files.append(("mask", ("mask.png", RED, "image/png")))
    elif case == "four":
        files = [("image[]", (f"{i}.png", RED, "image/png")) for i in range(4)]
    elif case == "none":
        files = [("other", ("x.png", RED, "image/png"))]
    elif case == "text":
        files = [("image", ("notes.txt", b"just some text", "text/plain"))]
    elif case == "huge":
        files = [("image", ("big.png", b"\x89PNG\r\n\x1a\n" + bytes(30 * 2**20), "image/png"))]
    elif case == "t2i":
        data["model"] = "Qwen/Qwen-Image"
    if case == "json":
        response = requests.post(f"{service.url}/v1/images/edits", json=data, timeout=60)
    else:
        response = requests.post(f"{service.url}/v1/images/edits", data=data, files=files, timeout=60)
    assert response.status_code == status, response.text
    assert words in response.json()["error"]["message"]
    assert fake.state.image_calls() == []


def test_an_edit_model_without_a_picture_in_generations_is_a_400(serve, fake):
    service = serve()
    response = requests.post(f"{service.url}/v1/images/generations", json={"prompt": "换成蓝色", "model": EDIT}, timeout=30)
    assert response.status_code == 400 and "needs an input picture" in response.json()["error"]["message"]
    assert fake.state.image_calls() == []


# --- pictures in chat ------------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_a_picture_in_chat_is_the_edit_models_input(serve, fake, stream):
    service = serve()
    content = ask_with_images(service, "把猫换成蓝色", [data_url(RED)], stream=stream)
    [call] = fake.state.image_calls()
    assert sent(call) == RED and call.body["prompt"] == "把猫换成蓝色"  # an edit's instruction, not expanded
    assert "按附图 1 修改" in content and len(images_in(content)) == 1 and fake.state.chat_calls() == []


def test_a_picture_link_in_chat_is_fetched_and_sent_as_data(serve, fake):
    service = serve()
    link = images_in(answer_text(service.url, "画一只猫", stream=False))[1]  # a picture on the upstream's host
    picture = requests.get(link, timeout=5).content
    ask_with_images(service, "换成蓝色", [link])
    assert sent(fake.state.image_calls()[-1]) == picture


def test_more_pictures_than_the_model_takes_says_which_were_left_out(serve, fake):
    service = serve()
    content = ask_with_images(service, "换成蓝色", [data_url(RED), data_url(BLUE)], model=EDIT1)
    [call] = fake.state.image_calls()
    assert sent(call) == RED and "image2" not in call.body
    assert f"附图 2 没有使用：{EDIT1} 最多接受 1 张图片" in content


def test_kolors_takes_a_picture_for_image_to_image(serve, fake):
    service = serve(prompt_expansion=False)
    content = ask_with_images(service, "水彩风格的猫", [data_url(RED)], model="Kwai-Kolors/Kolors")
    [call] = fake.state.image_calls()
    assert sent(call) == RED and call.body["image_size"] == "1024x1024" and "以附图 1 为底图" in content


def test_a_model_without_picture_inputs_says_the_picture_was_not_used(serve, fake):
    service = serve(prompt_expansion=False)
    content = ask_with_images(service, "一只猫", [data_url(RED)], model="Qwen/Qwen-Image")
    [call] = fake.state.image_calls()
    assert "image" not in call.body and "Qwen/Qwen-Image 不接受输入图片，附图 1 没有使用" in content


@pytest.mark.parametrize(
    "part, words",
    [
        ({"type": "image_url", "image_url": {"url": "data:image/png;base64,!!!not-base64!!!"}}, "base64"),
        (
            {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(b"plain text").decode()}},
            "不是 PNG",
        ),
        ({"type": "input_audio", "input_audio": {"data": "AAAA"}}, "无法使用的内容（input_audio）"),
        ({"type": "image_url", "image_url": {}}, "没有图片地址"),
    ],
)
def test_a_bad_part_is_said_and_the_rest_is_drawn(serve, fake, part, words):
    service = serve()
    content = ask_with_images(service, "换成蓝色", [data_url(RED)], extra_parts=[part])
    assert words in content and len(images_in(content)) == 1
    assert sent(fake.state.image_calls()[0]) == RED


def test_a_picture_over_max_image_mb_is_said(serve, fake):
    service = serve(max_image_mb=1)
    big = b"\x89PNG\r\n\x1a\n" + bytes(int(1.5 * 2**20))
    content = ask_with_images(service, "换成蓝色", [data_url(big), data_url(RED)], model=EDIT)
    assert "附图 1 没有使用：图片超过 1 MB" in content and sent(fake.state.image_calls()[0]) == RED


@pytest.mark.parametrize("stream", [False, True])
def test_pictures_in_chat_through_openai_v1(serve, fake, stream):
    service = serve()
    messages = [
        {
            "role": "user",
            "content": [{"type": "text", "text": "换成蓝色"}, {"type": "image_url", "image_url": {"url": data_url(RED)}}],
        }
    ]
    answer = client(service).chat.completions.create(model=EDIT, messages=messages, stream=stream)
    content = "".join(c.choices[0].delta.content or "" for c in answer) if stream else answer.choices[0].message.content
    assert len(images_in(content)) == 1 and sent(fake.state.image_calls()[0]) == RED


@pytest.mark.parametrize("mode", ["plain", "stream"])
def test_pictures_in_chat_through_legacy_openai(serve, fake, legacy_python, mode):
    service = serve()
    messages = [
        {
            "role": "user",
            "content": [{"type": "text", "text": "换成蓝色"}, {"type": "image_url", "image_url": {"url": data_url(RED)}}],
        }
    ]
    script = LEGACY_SCRIPT.read_text().replace('model="Kwai-Kolors/Kolors"', f'model="{EDIT}"')
    result = subprocess.run(
        [legacy_python, "-c", script, service.url, "x", mode, json.dumps(messages)], capture_output=True, text=True, timeout=120
    )
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(images_in(out["content"])) == 1 and sent(fake.state.image_calls()[0]) == RED


# --- the last picture -------------------------------------------------------------------------------------


def test_the_last_picture_is_the_input_when_none_is_attached(serve, fake):
    service = serve(prompt_expansion=False)
    first = answer_text(service.url, "画一只猫", stream=False)
    picture = requests.get(images_in(first)[1], timeout=5).content
    history = [{"role": "user", "content": "画一只猫"}, {"role": "assistant", "content": first}]
    content = answer_text(
        service.url, "把它换成蓝色", stream=False, model=EDIT, messages=[*history, {"role": "user", "content": "把它换成蓝色"}]
    )
    call = fake.state.image_calls()[-1]
    assert call.body["model"] == EDIT and sent(call) == picture and call.body["prompt"] == "把它换成蓝色"
    assert "按上一张图片修改" in content and len(images_in(content)) == 1


def test_a_picture_kept_here_is_read_from_disk(serve, fake, tmp_path):
    # Links to kept pictures name a host nothing listens on: only the disk can give the picture.
    service = serve(image_store_dir=str(tmp_path), public_base_url="http://127.0.0.1:9", prompt_expansion=False)
    first = answer_text(service.url, "画一只猫", stream=False)
    link = images_in(first)[1]
    assert link.startswith("http://127.0.0.1:9/images/")
    history = [{"role": "user", "content": "画一只猫"}, {"role": "assistant", "content": first}]
    answer_text(service.url, "换成蓝色", stream=False, model=EDIT, messages=[*history, {"role": "user", "content": "换成蓝色"}])
    assert sent(fake.state.image_calls()[-1]) == (tmp_path / link.rsplit("/", 1)[1]).read_bytes()


def test_an_edit_model_with_no_picture_anywhere_says_so(serve, fake):
    service = serve()
    content = answer_text(service.url, "换成蓝色", stream=False, model=EDIT)
    assert "需要一张输入图片" in content and "0/1" in content and fake.state.image_calls() == []


# --- fetching a user's link safely ---------------------------------------------------------------------


def _refused_links(fake, internal) -> list[tuple[str, str]]:
    port = internal.server_address[1]
    fake.state.redirect_to = f"http://127.0.0.1:{port}/after-redirect.png"
    return [
        (f"http://127.0.0.1:{port}/x.png", "本机地址"),
        (f"http://localhost:{port}/x.png", "本机地址"),  # a name that resolves to loopback
        (f"http://[::1]:{port}/x.png", "本机地址"),
        (f"http://127.1:{port}/x.png", "本机地址"),
        (f"{fake.url}/outputs%2Fx-redirect.png", "本机地址"),  # a link allowed at first, redirected to loopback
        ("file:///etc/passwd", "只能使用 http(s)"),
        (f"gopher://127.0.0.1:{port}/_GET", "只能使用 http(s)"),
        (f"ftp://127.0.0.1:{port}/x.png", "只能使用 http(s)"),
    ]


def test_links_to_this_machine_are_refused_without_a_connection(serve, fake, internal):
    service = serve()
    for link, words in _refused_links(fake, internal):
        content = ask_with_images(service, "换成蓝色", [link])
        assert words in content and "附图 1 没有使用" in content, (link, content)
    assert internal.hits == []  # nothing reached the target
    assert fake.state.image_calls() == []  # no usable picture: no edit was sent


@pytest.mark.parametrize(
    "address, words",
    [
        ("10.1.2.3", "内网地址"),
        ("192.168.0.1", "内网地址"),
        ("172.16.5.4", "内网地址"),
        ("169.254.169.254", "链路本地地址"),
        ("100.64.0.1", "运营商内网地址"),
        ("0.0.0.0", "保留地址"),
        ("::ffff:10.0.0.1", "内网地址"),
        ("fd00::1", "内网地址"),
        ("224.0.0.1", "保留地址"),
        ("2002:7f00:1::", "本机地址"),  # 6to4 around 127.0.0.1
        ("2002:a00:1::", "内网地址"),  # 6to4 around 10.0.0.1
        ("64:ff9b::a9fe:a9fe", "链路本地地址"),  # NAT64 around 169.254.169.254
    ],
)
def test_private_addresses_are_refused_before_any_connection(address, words):
    """Checked on the rule itself: an IP literal resolves without a packet, and a test must never
    send one to a private network."""
    with pytest.raises(AddressRefused) as refused:
        AddressRule().address_for(address, 80)
    assert words in zh(refused.value.reason)


def test_allow_private_image_urls_lets_a_lan_picture_in(serve, fake, internal):
    service = serve(allow_private_image_urls=True)
    ask_with_images(service, "换成蓝色", [f"http://127.0.0.1:{internal.server_address[1]}/lan.png"])
    assert internal.hits == ["/lan.png"] and len(fake.state.image_calls()) == 1


def test_a_link_that_is_not_a_picture_is_said(serve, fake):
    service = serve()
    content = ask_with_images(service, "换成蓝色", [f"{fake.url}/outputs%2Fpage.html"])
    assert "附图 1 没有使用：链接返回的不是图片" in content


def test_the_upload_limits_fit_the_body_limit():
    """A multipart edit with three pictures of MAX_IMAGE_MB fits the body the service reads."""
    from api.bodies import with_pictures_limit as _with_pictures_limit
    from config import Settings

    settings = Settings.from_env({})
    assert _with_pictures_limit(settings) > 3 * settings.max_image_mb * 2**20 * 4 / 3


# --- what an attack on the first version found -----------------------------------------------------------


def test_a_large_chat_body_must_be_large_by_its_pictures(serve, fake):
    """Chat may be large to carry pictures; text and structure stay within the 1 MB they had."""
    service = serve(prompt_expansion=False)
    structure = (
        b'{"model":"Kwai-Kolors/Kolors","messages":[{"role":"user","content":"cat"}],"x":[' + b"[]," * 1_000_000 + b"[]]}"
    )  # 3 MB, no picture anywhere
    response = requests.post(
        f"{service.url}/v1/chat/completions", data=structure, timeout=60, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 413 and "besides its pictures" in response.json()["error"]["message"]
    big = png(32, 32, b"big") + bytes(3 * 2**20)  # a 3 MB picture: the body is large by it, and taken
    content = ask_with_images(service, "换成蓝色", [data_url(big)])
    assert len(images_in(content)) == 1 and sent(fake.state.image_calls()[0]) == big


def test_many_links_make_a_few_fetches(serve, fake, internal):
    service = serve(allow_private_image_urls=True)  # only so that the test's host, on 127.0.0.1, counts
    links = [internal.url(f"/missing-{i}.png") for i in range(50)]
    content = ask_with_images(service, "换成蓝色", links, model=EDIT1)
    assert len(internal.hits) == 3  # the one picture the model takes, and two more tries
    assert "附图 4、附图 5、…附图 50（共 47 张）没有使用：前面的图片已试过 3 张" in content
    assert fake.state.image_calls() == [] and "需要一张输入图片" in content


@pytest.mark.parametrize("path, used", [("/bad-length.png", "附图 1"), ("/bad-redirect.png", "附图 2")])
def test_a_host_answering_nonsense_loses_at_most_its_own_picture(serve, fake, internal, path, used):
    """A Content-Length that is not a number (the bytes are counted anyway), a redirect to a URL
    that cannot be parsed: the rest of the message is drawn."""
    service = serve(allow_private_image_urls=True)
    content = ask_with_images(service, "换成蓝色", [internal.url(path), data_url(BLUE)], model=EDIT1)
    assert f"按{used} 修改" in content and "内部错误" not in content and len(images_in(content)) == 1
    if used == "附图 2":
        assert "附图 1 没有使用：下载图片失败" in content and sent(fake.state.image_calls()[0]) == BLUE


def test_the_answer_names_the_picture_that_was_used(serve, fake):
    service = serve(prompt_expansion=False)
    content = ask_with_images(service, "换成蓝色", [data_url(b"not a picture"), data_url(BLUE)], model=EDIT1)
    assert "按附图 2 修改" in content and "附图 1 没有使用" in content and sent(fake.state.image_calls()[0]) == BLUE


def test_behind_http_proxy_the_address_rule_still_holds(serve, fake, internal, monkeypatch):
    proxy = ForwardProxy()
    monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{proxy.server_address[1]}")
    for name in ("no_proxy", "NO_PROXY", "HTTP_PROXY"):
        monkeypatch.delenv(name, raising=False)
    try:
        refused, allowed = serve(), serve(allow_private_image_urls=True)
        for service in (refused, allowed):
            ask_with_images(service, "换成蓝色", [internal.url("/secret.png")], session=_no_env())
    finally:
        proxy.shutdown()
        proxy.server_close()
    # Refused before the proxy was asked; the LAN set-up's fetch went through the proxy.
    assert proxy.asked.count(internal.url("/secret.png")) == 1 and internal.hits == ["/secret.png"]
    assert any("/v1/images/generations" in url for url in proxy.asked)  # SiliconFlow's calls used it too


def test_the_operators_netrc_logins_are_not_sent_with_a_link(serve, fake, internal, tmp_path, monkeypatch):
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login operator password hunter2\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    service = serve(allow_private_image_urls=True)
    ask_with_images(service, "换成蓝色", [internal.url("/x.png")])
    assert internal.hits == ["/x.png"] and "Authorization" not in internal.headers_seen[0]


def test_an_upper_case_scheme_is_a_link_like_any_other(serve, fake):
    service = serve(prompt_expansion=False)
    link = images_in(answer_text(service.url, "画一只猫", stream=False))[1]
    picture = requests.get(link, timeout=5).content
    ask_with_images(service, "换成蓝色", [link.replace("http://", "HTTP://", 1)])
    assert sent(fake.state.image_calls()[-1]) == picture


def test_open_webuis_attached_files_block_is_not_drawn(serve, fake):
    """Open WebUI 0.12 (utils/middleware.py add_file_context) puts its files before the text."""
    service = serve(prompt_expansion=False)
    block = (
        '<attached_files>\n<file type="file" id="9f1c" url="9f1c" content_type="image/png" name="cat.png"/>\n'
        "</attached_files>\n\n"
    )
    content = ask_with_images(
        service, "换成水彩风格", [data_url(RED)], extra_parts=[], history=None, before=[{"type": "text", "text": block}]
    )
    [call] = fake.state.image_calls()
    assert call.body["prompt"] == "换成水彩风格" and "attached_files" not in content


def test_an_edit_model_says_a_size_it_cannot_use(serve, fake):
    service = serve()
    content = ask_with_images(service, "换成蓝色 16:9", [data_url(RED)])
    assert f"{EDIT} 画出的图跟随输入图片的尺寸，16:9 没有使用" in content
    assert "image_size" not in fake.state.image_calls()[0].body


def test_upstream_model_ids_that_are_not_ids_are_not_offered(serve, fake):
    fake.state.extra_models = ("", "  ", "Qwen/Qwen-Image-Edit-evil\n\n# hi", "<b>x</b>", "a" * 300, "vendor/New-Model-2")
    service = serve()
    ids = [m["id"] for m in requests.get(f"{service.url}/v1/models", timeout=30).json()["data"]]
    assert "vendor/New-Model-2" in ids and all(i and "\n" not in i and "<" not in i and len(i) < 200 for i in ids)


@pytest.mark.parametrize(
    "case, status, words",
    [
        ("no boundary", 400, "has no boundary"),
        ("wrong boundary", 400, "no part matched its boundary"),
        ("many parts", 413, "more than 64 parts"),
        ("long prompt", 413, "text field larger than 1024 KB"),
    ],
)
def test_a_broken_multipart_edit_is_told_what_to_fix(serve, fake, case, status, words):
    service = serve()
    url = f"{service.url}/v1/images/edits"
    picture = b'--XyZ\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n' + RED + b"\r\n--XyZ--\r\n"
    if case == "no boundary":
        response = requests.post(url, data=picture, headers={"Content-Type": "multipart/form-data"}, timeout=30)
    elif case == "wrong boundary":
        response = requests.post(url, data=picture, headers={"Content-Type": "multipart/form-data; boundary=Other"}, timeout=30)
    else:
        data = {"prompt": "x" * (2 * 2**20) if case == "long prompt" else "换成蓝色", "model": EDIT}
        if case == "many parts":
            data |= {f"extra{i}": "1" for i in range(70)}
        response = requests.post(url, data=data, files=[("image", ("a.png", RED, "image/png"))], timeout=30)
    assert response.status_code == status, response.text
    assert words in response.json()["error"]["message"] and fake.state.image_calls() == []


def _no_env() -> requests.Session:
    session = requests.Session()
    session.trust_env = False  # the test's own requests go straight to the service, not through the proxy
    return session


def _noisy_png(width: int, height: int) -> bytes:
    """A real PNG that does not compress: over werkzeug's 500 KB in-memory limit for a part."""
    import struct
    import zlib

    rows = b"".join(b"\x00" + os.urandom(width * 3) for _ in range(height))

    def part(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + part(b"IHDR", header) + part(b"IDAT", zlib.compress(rows, 0)) + part(b"IEND", b"")


def test_an_edit_larger_than_memory_parts_is_drawn_when_the_temporary_disk_is_full(serve, fake, monkeypatch):
    """werkzeug puts a part over 500 KB in a temporary file: a full temporary disk was a 500 for
    an upload the service holds in memory anyway."""
    import tempfile

    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    disk = tempfile.mkdtemp(prefix="full-tmp-")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", disk], check=True)
    try:
        with open(os.path.join(disk, "filler"), "wb", buffering=0) as out:
            with contextlib.suppress(OSError):
                while True:
                    out.write(b"\0" * 4096)
        monkeypatch.setattr(tempfile, "tempdir", disk)
        service = serve()
        picture = _noisy_png(600, 600)
        assert len(picture) > 1_000_000
        response = requests.post(
            f"{service.url}/v1/images/edits",
            timeout=60,
            data={"model": EDIT, "prompt": "换成蓝色"},
            files=[("image", ("big.png", picture, "image/png"))],
        )
        assert response.status_code == 200, response.text
        [call] = fake.state.image_calls()
        assert sent(call) == picture
    finally:
        subprocess.run(["umount", "-l", disk], check=True)
        os.rmdir(disk)


@pytest.mark.parametrize("prompt", ["???", "make it", "改成"])
def test_an_edit_with_nothing_to_change_is_the_requests_fault_not_siliconflows(serve, fake, prompt):
    service = serve()
    response = requests.post(
        f"{service.url}/v1/images/edits",
        timeout=60,
        data={"model": EDIT, "prompt": prompt},
        files=[("image", ("cat.png", RED, "image/png"))],
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_request" and "SiliconFlow" not in error["message"]
    assert "nothing to change" in error["message"]
    assert fake.state.image_calls() == []


def test_an_upstream_refusal_is_said_once(serve, fake):
    service = serve(api_keys=("sk-verbose",))
    response = requests.post(f"{service.url}/v1/images/generations", json={"prompt": "a cat"}, timeout=60)
    assert response.status_code == 400
    message = response.json()["error"]["message"]
    assert message.count("SiliconFlow") == 1 and message.startswith("SiliconFlow refused the request (400)"), message


def test_an_edit_form_can_turn_prompt_expansion_on(serve, fake):
    service = serve(prompt_expansion=False)
    response = requests.post(
        f"{service.url}/v1/images/edits",
        timeout=60,
        data={"model": EDIT, "prompt": "换成蓝色", "prompt_expansion": "true"},
        files=[("image", ("cat.png", RED, "image/png"))],
    )
    assert response.status_code == 200, response.text
    assert fake.state.chat_calls()  # the chat model rewrote the instruction
