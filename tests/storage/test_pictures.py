"""Links that last everywhere: pictures kept by default on the service's disk, or in a real
S3-compatible bucket (moto's standalone server) shared by every instance; a failing bucket costs a
line, not an answer."""

from __future__ import annotations

import re

import pytest
import requests

from tests.helpers import chat_body, images_in, post_chat, wait_until
from tests.servers import Gunicorn, MotoS3, free_port

IMAGE_LINK = re.compile(r"/images/([0-9a-f]{64}\.png)$")


def _answer(url: str, text: str = "画一只猫") -> str:
    response = post_chat(url, chat_body(text), timeout=60)
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["message"]["content"]


def _started(env: dict[str, str], production_bin, **kwargs) -> Gunicorn:
    server = Gunicorn({"PROMPT_EXPANSION": "false", **env}, production_bin, **kwargs)
    if not server.wait_until_up():
        pytest.fail("gunicorn did not start: " + server.stop()[-3000:])
    return server


def _health(url: str) -> dict:
    return requests.get(f"{url}/health", timeout=10).json()


# --- kept by default ------------------------------------------------------------------------------


def test_a_newcomers_set_up_keeps_every_picture_past_the_upstreams_hour_and_a_restart(fake, production_bin, tmp_path):
    """Nothing configured but the keys: the Procfile's command keeps pictures under data/ in its
    working directory, and the links still load once the upstream's have expired, after a restart."""
    env = {"API_BASE_URL": fake.url, "API_KEYS": "sk-good-new1"}
    server = _started(env, production_bin, cwd=tmp_path)
    try:
        content = _answer(server.url)
        [link] = images_in(content).values()
        assert link.startswith(f"{server.url}/images/"), content
        name = IMAGE_LINK.search(link)[1]
        assert requests.get(link, timeout=30).status_code == 200  # served as it arrives, kept behind it
        assert wait_until((tmp_path / "data" / "images" / name).exists, 10)
        assert (tmp_path / "data" / "images" / name).read_bytes().startswith(b"\x89PNG")
        assert _health(server.url)["pictures"]["state"] == "ok"
    finally:
        log = server.stop()
    assert f"Images are kept by: the built-in store ({tmp_path}/data/images)" in log
    fake.state.expired = True  # the upstream's hour is over
    again = _started(env, production_bin, cwd=tmp_path)
    try:
        served = requests.get(f"{again.url}/images/{name}", timeout=10)
        assert served.status_code == 200 and served.content.startswith(b"\x89PNG")
        assert served.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    finally:
        again.stop()


def test_off_keeps_nothing_and_says_so(fake, production_bin, tmp_path):
    server = _started(
        {"API_BASE_URL": fake.url, "API_KEYS": "sk-good-off1", "IMAGE_STORE_DIR": "off"}, production_bin, cwd=tmp_path
    )
    try:
        [link] = images_in(_answer(server.url)).values()
        assert link.startswith(f"{fake.url}/outputs")
        assert not (tmp_path / "data" / "images").exists()  # (data/ holds the video jobs' record)
    finally:
        log = server.stop()
    assert "Images are kept by: nobody (upstream links expire in 1 hour)" in log


def test_a_default_place_that_cannot_be_written_warns_and_still_draws(fake, production_bin, tmp_path):
    (tmp_path / "data").write_text("a file where the directory would be")
    server = _started({"API_BASE_URL": fake.url, "API_KEYS": "sk-good-ro01"}, production_bin, cwd=tmp_path)
    try:
        [link] = images_in(_answer(server.url)).values()
        assert link.startswith(f"{fake.url}/outputs")
    finally:
        log = server.stop()
    assert "Pictures are not kept: cannot create or write to" in log and "IMAGE_STORE_DIR=off" in log


# --- S3 -------------------------------------------------------------------------------------------


def test_s3_keeps_each_picture_as_an_object_and_the_service_serves_it(serve, s3):
    bucket = s3.bucket()
    service = serve({"S3_BUCKET": bucket, "S3_PREFIX": "/pictures/"})
    content = _answer(service.url, "画一只猫 pic:2")
    links = list(images_in(content).values())
    assert len(links) == 2 and all(link.startswith(f"{service.url}/images/") for link in links), content
    names = [IMAGE_LINK.search(link)[1] for link in links]
    for link in links:  # shown at once, kept behind them: each read as it arrives
        assert requests.get(link, timeout=30).status_code == 200
    for name in names:
        assert wait_until(lambda name=name: _object_there(s3, bucket, f"pictures/{name}"), 10)
        head = s3.client().head_object(Bucket=bucket, Key=f"pictures/{name}")
        assert head["ContentType"] == "image/png"
        assert head["CacheControl"] == "public, max-age=31536000, immutable"
    served = requests.get(links[0], timeout=10)
    body = s3.client().get_object(Bucket=bucket, Key=f"pictures/{names[0]}")["Body"].read()
    assert served.status_code == 200 and served.content == body and served.headers["Content-Type"] == "image/png"
    assert requests.get(links[0], headers={"If-None-Match": served.headers["ETag"]}, timeout=10).status_code == 304
    assert requests.get(f"{service.url}/images/{'0' * 64}.png", timeout=10).status_code == 404
    health = _health(service.url)
    assert health["pictures"] == {
        "kind": "s3",
        "where": f"s3://{bucket}/pictures/",
        "links": "this service's /images/",
        "state": "ok",
    }
    # The Images API's url comes from the same keeper.
    answer = requests.post(f"{service.url}/v1/images/generations", json={"prompt": "a cat"}, timeout=30).json()
    assert IMAGE_LINK.search(answer["data"][0]["url"]) and answer["data"][0]["url"].startswith(service.url)


def test_with_a_public_base_url_links_point_at_the_bucket(serve, s3):
    bucket = s3.bucket(public=True)
    public = f"{s3.url}/{bucket}"  # moto serves a path-style public URL, as a public bucket would
    service = serve({"S3_BUCKET": bucket, "S3_PREFIX": "p", "S3_PUBLIC_BASE_URL": public})
    [link] = images_in(_answer(service.url)).values()
    assert re.fullmatch(rf"{re.escape(public)}/p/[0-9a-f]{{64}}\.png", link), link
    fetched = requests.get(link, timeout=10)
    assert fetched.status_code == 200 and fetched.content.startswith(b"\x89PNG")
    # An edit of that picture reads it back from the bucket (the link is ours, not fetched).
    edited = post_chat(
        service.url,
        {
            "model": "Qwen/Qwen-Image-Edit",
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "换成蓝色"}, {"type": "image_url", "image_url": {"url": link}}],
                }
            ],
        },
        timeout=60,
    ).json()["choices"][0]["message"]["content"]
    assert len(images_in(edited)) == 1, edited


@pytest.mark.parametrize("public", [False, True])
def test_two_instances_with_no_shared_disk_serve_each_others_pictures(fake, production_bin, s3, tmp_path, public):
    bucket = s3.bucket(public=public)
    extra = {"S3_PUBLIC_BASE_URL": f"{s3.url}/{bucket}"} if public else {}
    env = {"API_BASE_URL": fake.url, "API_KEYS": "sk-good-two1", **s3.env(bucket, **extra)}
    for place in ("a", "b"):
        (tmp_path / place).mkdir()
    first, second = _started(env, production_bin, cwd=tmp_path / "a"), _started(env, production_bin, cwd=tmp_path / "b")
    try:
        [link] = images_in(_answer(first.url)).values()
        name = link.rsplit("/", 1)[1]
        if public:
            assert link.startswith(f"{s3.url}/{bucket}/")
        else:
            assert link == f"{first.url}/images/{name}"
        from_second = requests.get(f"{second.url}/images/{name}", timeout=10)
        assert from_second.status_code == 200 and from_second.content == requests.get(link, timeout=10).content
        assert not list(tmp_path.glob("*/data/images/*"))  # no disk used for pictures
    finally:
        first.stop()
        log = second.stop()
    assert f"Images are kept by: S3 (s3://{bucket}/)" in log


def test_a_bucket_that_stops_answering_costs_a_line_and_is_used_again_when_back(serve, s3, fake):
    bucket = s3.bucket()
    service = serve({"S3_BUCKET": bucket, "UPLOAD_TIMEOUT": "1"})
    assert images_in(_answer(service.url))[1].startswith(f"{service.url}/images/")
    s3.pause()
    try:
        # Its link is shown before the bucket fails it; it then sends people to the upstream's link.
        [promised] = images_in(_answer(service.url)).values()
        assert requests.get(promised, timeout=30).content.startswith(b"\x89PNG")
        assert wait_until(lambda: _health(service.url)["pictures"]["state"] == "failing", 10)
        # While the bucket fails, a picture is kept first, and the answer says why it was not.
        content = _answer(service.url)
        [link] = images_in(content).values()
        assert link.startswith(f"{fake.url}/outputs"), content  # the picture is there: the upstream's link
        assert "图片未能保存到对象存储：存储服务暂时无法连接" in content
        health = _health(service.url)
        assert health["status"] == "degraded" and health["pictures"]["state"] == "failing"
        assert "could not be reached" in health["pictures"]["why"]
    finally:
        s3.resume()
    assert images_in(_answer(service.url, "画一只狗"))[1].startswith(f"{service.url}/images/")
    assert wait_until(lambda: _health(service.url)["pictures"]["state"] == "ok", 5)


def test_a_missing_bucket_is_named_at_start_up_and_the_service_starts_anyway(fake, production_bin, s3):
    server = _started({"API_BASE_URL": fake.url, "API_KEYS": "sk-good-nob1", **s3.env("no-such-bucket-here")}, production_bin)
    try:
        health = _health(server.url)
        assert health["status"] == "degraded" and "the bucket no-such-bucket-here does not exist" in health["pictures"]["why"]
        content = _answer(server.url)
        assert len(images_in(content)) == 1 and "存储桶 no-such-bucket-here 不存在（S3_BUCKET）" in content
    finally:
        log = server.stop()
    [line] = [line for line in log.splitlines() if "S3 bucket no-such-bucket-here at" in line]
    assert "check S3_BUCKET" in line and "testing-secret" not in log


def test_refused_credentials_and_an_unreachable_endpoint_name_what_to_fix(serve, s3, logged, monkeypatch):
    guarded = MotoS3(auth=True)  # checks signatures, and knows no key
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", guarded.url)
        service = serve({"S3_BUCKET": "any-bucket"})
        [line] = logged.lines("S3 bucket any-bucket at")
        assert "check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY" in line
        content = _answer(service.url)
        assert len(images_in(content)) == 1 and "存储服务拒绝了凭据" in content
    finally:
        guarded.close()
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{free_port()}")  # nobody listens
    serve({"S3_BUCKET": "far-bucket", "UPLOAD_TIMEOUT": "1"})
    [line] = logged.lines("S3 bucket far-bucket at")
    assert "check AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL" in line
    assert all("testing-secret" not in r.getMessage() for r in logged.records)


def test_the_default_place_is_the_platforms_persistent_disk_where_there_is_one(tmp_path, monkeypatch):
    from config import Settings, default_data_dir

    monkeypatch.chdir(tmp_path)
    assert default_data_dir({}) == str(tmp_path / "data")
    # A HuggingFace Space: its persistent storage when mounted at /data, else the container's disk.
    import config

    real_isdir = config.os.path.isdir
    monkeypatch.setattr(config.os.path, "isdir", lambda path: path == "/data" or real_isdir(path))
    monkeypatch.setattr(config.os, "access", lambda path, mode: path == "/data")
    assert default_data_dir({"SPACE_ID": "someone/draw"}) == "/data"
    assert default_data_dir({}) == str(tmp_path / "data")  # not a Space: /data is someone else's
    monkeypatch.setattr(config.os, "access", lambda path, mode: False)
    assert default_data_dir({"SPACE_ID": "someone/draw"}) == str(tmp_path / "data")
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    settings = Settings.from_env({})
    assert settings.store_directory == str(tmp_path / "data" / "images") and settings.store_is_default
    assert Settings.from_env({"IMAGE_STORE_DIR": "off"}).store_directory is None
    assert Settings.from_env({"DATA_DIR": "/srv/draw"}).store_directory == "/srv/draw/images"
    assert Settings.from_env({"S3_PREFIX": "/pics/"}).s3_prefix == "pics/"


# --- a picture's size, read from its header --------------------------------------------------------


def test_dimensions_are_read_from_each_kind_of_picture_header():
    import struct

    from storage.pictures import dimensions
    from tests.fake_siliconflow import png

    jpeg = (
        b"\xff\xd8"
        + b"\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"  # APP0, skipped
        + b"\xff\xc0\x00\x11\x08"
        + struct.pack(">HH", 600, 800)  # SOF0: height, then width
        + b"\x03\x01\x22\x00\x02\x11\x01\x03\x11\x01"
    )
    gif = b"GIF89a" + struct.pack("<HH", 320, 200) + b"\x00" * 8
    webp_extended = b"RIFF\x00\x00\x00\x00WEBPVP8X\x0a\x00\x00\x00\x00\x00\x00\x00"
    webp_extended += (1279).to_bytes(3, "little") + (719).to_bytes(3, "little")  # sides less one
    assert dimensions(png(96, 48, b"x")) == (96, 48)
    assert dimensions(jpeg) == (800, 600)
    assert dimensions(gif) == (320, 200)
    assert dimensions(webp_extended) == (1280, 720)
    assert dimensions(b"\xff\xd8\xff") is None and dimensions(b"not a picture") is None and dimensions(b"") is None


def _object_there(s3, bucket: str, key: str) -> bool:
    try:
        s3.client().head_object(Bucket=bucket, Key=key)
    except Exception:  # noqa: BLE001 - botocore's 404
        return False
    return True
