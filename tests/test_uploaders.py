"""Links that last: Lsky Pro, Sink short links and the built-in store, over real HTTP with fakes."""

from __future__ import annotations

import json
import re
import socket
import threading

import pytest
import requests

from core.errors import UploadError
from tests.fake_siliconflow import padded, png
from tests.helpers import chat_body, images_in, post_chat, sse_events, wait_until
from uploaders import fetch_picture, upload_to_lsky

LINK = re.compile(r"\[([^\]]+)\]\((\S+?)\)")


def _answer(service, text: str = "画一只猫", **kwargs) -> str:
    response = post_chat(service.url, chat_body(text), **kwargs)
    assert response.status_code == 200
    return response.json()["choices"][0]["message"]["content"]


def _links(content: str) -> dict[str, str]:
    return {label: url for label, url in LINK.findall(content) if not label.startswith("image")}


@pytest.fixture
def with_lsky(serve, lsky):
    def start(token: str = "1|good-token", **overrides):
        overrides.setdefault("prompt_expansion", False)
        return serve(use_lsky_pro=True, lsky_pro_url=lsky.url, lsky_pro_token=token, **overrides)

    return start


def test_lsky_upload_gives_the_markdown_image_a_permanent_link(with_lsky, lsky, fake):
    service = with_lsky(lsky_strategy_id=2)
    content = _answer(service)
    [image_url] = images_in(content).values()
    assert image_url.startswith(f"{lsky.url}/i/")
    links = _links(content)
    assert links["永久链接"] == image_url
    assert links["上游原图"].startswith(f"{fake.url}/outputs")  # the temporary link is still shown
    [upload] = lsky.uploads
    assert upload.token == "1|good-token" and upload.accept == "application/json"
    assert upload.mimetype == "image/png" and re.fullmatch(r"[0-9a-f]{64}\.png", upload.filename)
    assert upload.strategy_id == "2"
    served = requests.get(image_url, timeout=5)
    assert served.content == upload.data and served.content.startswith(b"\x89PNG")


@pytest.mark.parametrize(
    "token, words",
    [
        ("1|quota", "每分钟内你最多可以上传 20 张图片"),
        ("1|nospace", "储存空间不足"),
        ("1|disabled", "管理员未启用 API"),
        ("1|busy", "429"),
        ("1|huge", "413"),
        ("1|garbage", "无法解析"),
        ("wrong-token", "令牌无效"),
        ("1|hang", "没有响应"),
    ],
)
def test_every_lsky_failure_keeps_the_upstream_link_and_says_why(with_lsky, lsky, fake, token, words):
    lsky.hang_seconds = 3.0
    service = with_lsky(token, upload_timeout=0.5)
    content = _answer(service)
    [image_url] = images_in(content).values()
    assert image_url.startswith(f"{fake.url}/outputs")
    assert "蓝空图床上传失败" in content and words in content
    assert "1/1" in content
    assert token not in content


def test_a_302_to_the_login_page_is_a_failure_not_followed(lsky):
    # Only reachable when something strips our Accept header; the client must not follow it.
    lsky.always_redirect = True
    picture = fetch_picture(requests.Session(), "data:image/png;base64,iVBORw0KGgo=", 5, 2**20)
    with pytest.raises(UploadError, match="302"):
        upload_to_lsky(requests.Session(), lsky.url, "1|good-token", picture, 5)


def test_without_accept_json_a_bad_token_would_be_a_302(lsky):
    # The trap the client avoids: the fake answers as Lsky does when Accept is missing.
    response = requests.post(
        f"{lsky.url}/api/v1/upload",
        files={"file": ("a.png", b"x", "image/png")},
        headers={"Authorization": "Bearer nope"},
        allow_redirects=False,
        timeout=5,
    )
    assert response.status_code == 302 and response.headers["Location"].endswith("/login")


def test_data_uri_images_are_decoded_and_uploaded(with_lsky, lsky):
    service = with_lsky(api_keys=("sk-datauri-0001",))
    content = _answer(service)
    [upload] = lsky.uploads
    assert upload.data.startswith(b"\x89PNG") and upload.mimetype == "image/png"
    assert list(images_in(content).values())[0].startswith(f"{lsky.url}/i/")


@pytest.mark.parametrize(
    "key, words",
    [("sk-notimage-0001", "不是图片"), ("sk-bigimage-0001", "超过 1 MB")],
)
def test_what_is_not_a_small_image_is_not_uploaded(with_lsky, lsky, fake, key, words):
    service = with_lsky(api_keys=(key,), max_image_mb=1)
    content = _answer(service)
    assert "图片未能转存" in content and words in content
    assert lsky.uploads == []
    assert list(images_in(content).values())[0].startswith(f"{fake.url}/outputs")


def test_uploads_run_in_parallel_with_each_other(with_lsky, lsky, fake):
    lsky.latency = 0.5
    fake.state.image_latency = 0.2
    service = with_lsky()
    content = _answer(service, "画一只猫 pic:4")
    assert len(images_in(content)) == 4
    uploads = lsky.uploads
    assert len(uploads) == 4
    assert max(u.start for u in uploads) < min(u.end for u in uploads), "uploads ran one after another"


def test_a_slow_upload_delays_only_its_own_image(with_lsky, lsky):
    lsky.slow_first = 2.0
    service = with_lsky()
    response = post_chat(service.url, chat_body("画一只猫 pic:2", stream=True), stream=True)
    seen, events = "", sse_events(response)
    for payload in events:
        seen += json.loads(payload)["choices"][0]["delta"].get("content") or ""
        if images_in(seen):
            break
    assert lsky.uploads[0].end == 0.0, "the first image waited for the slow upload of the other"
    rest = "".join(json.loads(p)["choices"][0]["delta"].get("content") or "" for p in events if p != "[DONE]")
    assert len(images_in(seen + rest)) == 2


# --- short links ---------------------------------------------------------------------------------


@pytest.fixture
def with_sink(serve, sink):
    def start(token: str = "sink-site-token", **overrides):
        overrides.setdefault("prompt_expansion", False)
        return serve(use_shortlink=True, shortlink_base_url=sink.url, shortlink_api_key=token, **overrides)

    return start


def test_the_long_temporary_link_is_shortened(with_sink, sink, fake):
    content = _answer(with_sink())
    [created] = sink.created
    assert created["url"].startswith(f"{fake.url}/outputs") and len(created["url"]) > 100
    assert re.fullmatch(r"[a-z0-9]+", created["slug"])
    download = _links(content)["下载第 1 张"]
    assert download == f"{sink.url}/{created['slug']}"
    assert list(images_in(content).values())[0] == created["url"]  # the image itself stays direct


def test_a_slug_clash_is_retried_with_a_new_slug(with_sink, sink):
    sink.clash_next = 2
    content = _answer(with_sink())
    assert sink.attempts == 3 and len(sink.created) == 1
    assert _links(content)["下载第 1 张"] == f"{sink.url}/{sink.created[0]['slug']}"


@pytest.mark.parametrize("setup, words", [("fail", "500"), ("hang", "没有响应"), ("clash", "冲突")])
def test_short_link_failures_keep_the_long_link(with_sink, sink, fake, setup, words):
    sink.fail = setup == "fail"
    sink.hang_seconds = 3.0 if setup == "hang" else 0.0
    sink.clash_next = 10 if setup == "clash" else 0
    content = _answer(with_sink(upload_timeout=0.5))
    assert _links(content)["下载第 1 张"].startswith(f"{fake.url}/outputs")
    assert "短链接生成失败" in content and words in content


def test_short_urls_are_left_alone(serve, sink, tmp_path):
    service = serve(
        use_shortlink=True,
        shortlink_base_url=sink.url,
        shortlink_api_key="sink-site-token",
        image_store_dir=str(tmp_path),
        public_base_url="https://img.example.com",
        api_keys=("sk-datauri-0001",),
        prompt_expansion=False,
    )
    _answer(service)
    assert sink.attempts == 0  # a data: URI and the store's short link need no shortening


# --- the built-in store ---------------------------------------------------------------------------


def test_store_keeps_the_image_and_serves_it(serve, fake, tmp_path):
    service = serve({"PUBLIC_BASE_URL": "https://img.example.com/", "IMAGE_STORE_DIR": str(tmp_path)})
    content = _answer(service)
    [image_url] = images_in(content).values()
    assert re.fullmatch(r"https://img\.example\.com/images/[0-9a-f]{64}\.png", image_url)
    name = image_url.rsplit("/", 1)[1]
    served = requests.get(f"{service.url}/images/{name}", timeout=30)  # as it arrives; kept behind it
    assert served.status_code == 200 and served.headers["Content-Type"] == "image/png", served.text
    # A reader has every byte as soon as the download does; the store has it once it is written.
    assert wait_until((tmp_path / name).exists, 10)
    assert (tmp_path / name).read_bytes().startswith(b"\x89PNG")
    assert "max-age=31536000" in served.headers["Cache-Control"]
    assert served.content == (tmp_path / name).read_bytes()


def test_store_links_follow_the_proxy_headers(serve, fake, tmp_path):
    service = serve(image_store_dir=str(tmp_path))
    headers = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "draw.example.org"}
    response = requests.post(f"{service.url}/v1/chat/completions", json=chat_body("画一只猫"), headers=headers, timeout=30)
    [image_url] = images_in(response.json()["choices"][0]["message"]["content"]).values()
    assert image_url.startswith("https://draw.example.org/images/")
    plain = _answer(service)
    assert list(images_in(plain).values())[0].startswith(f"{service.url}/images/")


def test_store_is_a_fallback_when_lsky_fails(with_lsky, lsky, tmp_path):
    service = with_lsky("1|quota", image_store_dir=str(tmp_path), public_base_url="https://img.example.com")
    content = _answer(service)
    assert list(images_in(content).values())[0].startswith("https://img.example.com/images/")
    assert "蓝空图床上传失败" in content


@pytest.mark.parametrize(
    "path",
    [
        "/images/../config.py",
        "/images/..%2Fconfig.py",
        "/images/%2e%2e%2fconfig.py",
        "/images/%2e%2e/%2e%2e/etc/passwd",
        "/images/..%5cconfig.py",
        "/images/",
        "/images",
        "/images/.incoming-x",
        "/images/" + "0" * 64 + ".png",
        "/images/" + "0" * 64 + ".png/../../config.py",
    ],
)
def test_store_refuses_anything_but_stored_names(serve, tmp_path, path):
    (tmp_path / "secret.txt").write_text("nope")
    service = serve(image_store_dir=str(tmp_path))
    _answer(service)
    with socket.create_connection(("127.0.0.1", int(service.url.rsplit(":", 1)[1])), timeout=5) as sock:
        # A raw request line: clients would normalise the dots away before sending.
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    status = int(raw.split(b" ", 2)[1])
    assert status == 404, raw[:300]
    assert b"import" not in raw and b"nope" not in raw and b"root:" not in raw


def test_no_store_configured_means_no_images_route(service):
    assert requests.get(f"{service.url}/images/" + "0" * 64 + ".png", timeout=5).status_code == 404


def test_lsky_gets_the_picture_as_it_downloads_not_after(serve, fake, lsky):
    """Lsky's link must exist before it is shown, so the answer waits: but for one transfer, the
    upload beginning with the download's first bytes, not for a download and then an upload."""
    fake.state.picture_bytes, fake.state.picture_bytes_per_second = 1_500_000, 0
    fake.state.picture_gate = threading.Event()  # the download's headers come, its body waits
    service = serve(use_lsky_pro=True, lsky_pro_url=lsky.url, lsky_pro_token="1|good-token", prompt_expansion=False)
    answers: list[str] = []
    asking = threading.Thread(target=lambda: answers.append(_answer(service)))
    asking.start()
    try:
        assert wait_until(lambda: lsky.begun == 1, 10)  # the upload has begun; the picture has not arrived
        assert lsky.uploads == []
    finally:
        fake.state.picture_gate.set()
        asking.join(30)
    [upload] = lsky.uploads
    assert upload.data == padded(png(64, 64, fake.state.picture_names[-1].encode()), 1_500_000)
    assert upload.mimetype == "image/png" and "[永久链接]" in answers[0]
