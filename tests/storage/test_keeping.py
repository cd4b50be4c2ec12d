"""Links that last, shown the moment SiliconFlow answers (keeping.py): the picture is kept behind
the link while anyone who opens it gets the bytes as they arrive, one download for both; only a
whole picture is kept; a failed keep sends people to SiliconFlow's link; every worker and every
instance sharing a bucket answers for it. Over real HTTP, the fake's picture downloads held open
(`picture_gate`) where a test must see what happens before the picture has arrived."""

from __future__ import annotations

import base64
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.fake_siliconflow import padded, png
from tests.helpers import answer_text, images_in, post_chat, stream_chunks

PICTURE = 1_500_000  # bytes: a 1024x1024 PNG


@pytest.fixture
def held(fake):
    """Picture downloads send their headers, then wait until the test lets them go on."""
    fake.state.picture_gate = threading.Event()
    fake.state.picture_bytes = PICTURE
    fake.state.picture_bytes_per_second = 0  # at once, once let go
    yield fake.state.picture_gate
    fake.state.picture_gate.set()


def _kept(tmp_path, **overrides):
    return {"image_store_dir": str(tmp_path / "kept"), "data_dir": str(tmp_path / "data"), **overrides}


def _expected(fake) -> bytes:
    """The bytes the fake serves for the last picture it drew (made from its link's name)."""
    return padded(png(64, 64, fake.state.picture_names[-1].encode()), PICTURE)


def test_the_lasting_link_is_in_the_answer_before_the_picture_has_arrived(serve, fake, held, tmp_path):
    service = serve(**_kept(tmp_path), prompt_expansion=False)
    content = answer_text(service.url, "画一只猫", stream=True)  # the download is still held
    [link] = images_in(content).values()
    assert link.startswith(f"{service.url}/images/") and "图片未能保存" not in content
    assert not list((tmp_path / "kept").glob("*.png"))  # nothing kept yet: the answer did not wait
    held.set()


def test_the_link_serves_the_picture_as_it_arrives_with_one_download(serve, fake, held, tmp_path):
    service = serve(**_kept(tmp_path), prompt_expansion=False)
    [link] = images_in(answer_text(service.url, "画一只猫", stream=False)).values()
    with ThreadPoolExecutor(1) as pool:
        opened = pool.submit(requests.get, link, timeout=30)  # opened while the picture is on its way
        assert fake.state.arrived.wait(10)
        held.set()
        answer = opened.result()
    assert answer.status_code == 200 and answer.headers["Content-Type"] == "image/png"
    assert answer.content == _expected(fake) and len(answer.content) == PICTURE
    assert fake.state.picture_downloads == 1  # the reader and the keeper shared one download


def test_a_kept_picture_outlives_siliconflows_link(serve, fake, tmp_path):
    fake.state.picture_bytes = PICTURE
    service = serve(**_kept(tmp_path), prompt_expansion=False)
    [link] = images_in(answer_text(service.url, "画一只猫", stream=False)).values()
    first = requests.get(link, timeout=30).content  # waits for the keep if it is still going on
    fake.state.expired = True  # an hour later: SiliconFlow's link answers 403
    again = requests.get(link, timeout=30)
    assert again.status_code == 200 and again.content == first == _expected(fake)
    assert again.headers["Cache-Control"].endswith("immutable")


def test_a_keep_that_fails_part_way_leaves_nothing_behind_the_name(serve, fake, tmp_path):
    fake.state.picture_bytes, fake.state.picture_cut = PICTURE, 500_000  # SiliconFlow's storage hangs up
    service = serve(**_kept(tmp_path), prompt_expansion=False)
    [link] = images_in(answer_text(service.url, "画一只猫", stream=False)).values()
    assert link.startswith(f"{service.url}/images/")

    def tried() -> requests.Response:
        return requests.get(link, timeout=30, allow_redirects=False)

    answer = _after_the_keep(tried)
    assert answer.status_code == 302 and answer.headers["Location"].startswith(f"{fake.url}/outputs")
    assert answer.headers["Cache-Control"] == "no-store"
    assert not list((tmp_path / "kept").glob("*.png"))  # no half picture under a lasting name


def _after_the_keep(get):
    """The link's answer once the keep has ended: a read that began while it went on was cut."""
    for _ in range(3):
        try:
            answer = get()
        except requests.RequestException:
            continue  # opened during the keep, cut when it failed: as a browser sees a broken image
        if answer.status_code != 200:
            return answer
    pytest.fail("the link kept answering 200 for a picture that was never whole")


def test_another_worker_of_the_instance_serves_a_picture_this_one_is_keeping(serve, fake, held, tmp_path):
    settings = _kept(tmp_path, prompt_expansion=False)
    keeping, other = serve(**settings), serve(**settings)  # two workers: one data directory, one store
    [link] = images_in(answer_text(keeping.url, "画一只猫", stream=False)).values()
    elsewhere = link.replace(keeping.url, other.url)
    with ThreadPoolExecutor(1) as pool:
        opened = pool.submit(requests.get, elsewhere, timeout=30)
        assert fake.state.arrived.wait(10)
        held.set()
        answer = opened.result()
    assert answer.status_code == 200 and answer.content == _expected(fake)
    assert fake.state.picture_downloads == 1


def test_instances_sharing_a_bucket_serve_each_others_links(serve, fake, s3, tmp_path):
    fake.state.picture_bytes = PICTURE
    bucket = s3.bucket()
    first = serve({"S3_BUCKET": bucket, "DATA_DIR": str(tmp_path / "a")}, prompt_expansion=False)
    second = serve({"S3_BUCKET": bucket, "DATA_DIR": str(tmp_path / "b")}, prompt_expansion=False)
    [link] = images_in(answer_text(first.url, "画一只猫", stream=False)).values()
    assert link.startswith(f"{first.url}/images/")
    answer = requests.get(link.replace(first.url, second.url), timeout=30)  # kept by the first, or waited for
    assert answer.status_code == 200 and answer.content == _expected(fake)
    fake.state.expired = True
    assert requests.get(link, timeout=30).content == answer.content


def test_the_images_apis_links_are_ready_when_siliconflow_answers(serve, fake, held, tmp_path):
    service = serve(**_kept(tmp_path), prompt_expansion=False)
    answer = requests.post(f"{service.url}/v1/images/generations", json={"prompt": "a cat", "n": 2}, timeout=30)
    assert answer.status_code == 200, answer.text
    links = [item["url"] for item in answer.json()["data"]]
    assert len(links) == 2 and all(link.startswith(f"{service.url}/images/") for link in links)
    held.set()
    for link in links:
        assert requests.get(link, timeout=30).status_code == 200


def test_b64_json_and_a_chat_edit_of_a_picture_being_kept_get_its_bytes(serve, fake, tmp_path):
    fake.state.picture_bytes = PICTURE
    service = serve(**_kept(tmp_path), prompt_expansion=False)
    answer = requests.post(
        f"{service.url}/v1/images/generations", json={"prompt": "a cat", "response_format": "b64_json"}, timeout=30
    )
    assert len(base64.b64decode(answer.json()["data"][0]["b64_json"])) == PICTURE
    first = answer_text(service.url, "画一只猫", stream=False)
    history = [{"role": "user", "content": "画一只猫"}, {"role": "assistant", "content": first}]
    body = {"model": "Qwen/Qwen-Image-Edit-2509", "messages": [*history, {"role": "user", "content": "换成蓝色"}]}
    chunks, _ = stream_chunks(post_chat(service.url, {**body, "stream": True}, stream=True))
    edit = fake.state.image_calls()[-1].body
    assert edit["model"] == "Qwen/Qwen-Image-Edit-2509" and edit["image"].startswith("data:image/png;base64,")
    assert len(base64.b64decode(edit["image"].split(",", 1)[1])) == PICTURE  # the kept picture, whole


def _never_whole(link: str, during) -> None:
    """Opened while the keep goes on (`during` has started it): a redirect, or an answer cut short
    of its announced length. Never a finished 200 of bytes the service then refuses to keep."""
    try:
        answer = requests.get(link, timeout=30, allow_redirects=False)
    except requests.RequestException:
        return  # cut: the client knows the picture is not whole
    during()
    assert answer.status_code in (302, 404), (answer.status_code, answer.headers)


def test_an_error_page_served_as_a_picture_is_never_delivered_as_one(serve, fake, tmp_path):
    fake.state.picture_bytes, fake.state.picture_lies = PICTURE, True  # HTML, declared image/png
    service = serve(**_kept(tmp_path), prompt_expansion=False)
    [link] = images_in(answer_text(service.url, "画一只猫", stream=False)).values()
    _never_whole(link, lambda: None)
    answer = requests.get(link, timeout=30, allow_redirects=False)
    assert answer.status_code == 302 and not list((tmp_path / "kept").glob("*.png"))


def test_a_download_cut_before_its_first_bytes_is_a_redirect_not_an_error_page(serve, fake, tmp_path):
    fake.state.picture_bytes, fake.state.picture_cut = PICTURE, 8  # hangs up after 8 bytes
    service = serve(**_kept(tmp_path), prompt_expansion=False)
    [link] = images_in(answer_text(service.url, "画一只猫", stream=False)).values()
    answer = requests.get(link, timeout=30, allow_redirects=False)
    assert answer.status_code == 302 and answer.headers["Location"].startswith(f"{fake.url}/outputs")


def test_a_download_without_a_length_cut_short_is_not_kept_as_if_whole(serve, fake, tmp_path):
    fake.state.picture_bytes, fake.state.picture_cut, fake.state.picture_no_length = PICTURE, 500_000, True
    service = serve(**_kept(tmp_path), prompt_expansion=False)
    [link] = images_in(answer_text(service.url, "画一只猫", stream=False)).values()
    answer = requests.get(link, timeout=30, allow_redirects=False)  # waited for: no length to hold it to
    assert answer.status_code == 302 and not list((tmp_path / "kept").glob("*.png"))


def test_a_whole_download_without_a_length_is_kept_and_served(serve, fake, tmp_path):
    fake.state.picture_bytes, fake.state.picture_no_length = PICTURE, True
    service = serve(**_kept(tmp_path), prompt_expansion=False)
    [link] = images_in(answer_text(service.url, "画一只猫", stream=False)).values()
    answer = requests.get(link, timeout=30)
    assert answer.status_code == 200 and answer.content == _expected(fake)
    assert answer.headers["X-Content-Type-Options"] == "nosniff"
