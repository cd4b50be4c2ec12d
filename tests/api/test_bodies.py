"""Request bodies (bodies.py and the routes' reading of them): broken framing, text posing as a
picture, and the memory large bodies may hold in one worker, over real HTTP and raw sockets."""

from __future__ import annotations

import base64
import http.client
import json
import socket
import threading
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

import pytest
import requests

from api.bodies import picture_bytes
from tests.fake_siliconflow import png
from tests.servers import Gunicorn

EDIT = "Qwen/Qwen-Image-Edit-2509"
PATHS = {
    "/v1/chat/completions": "application/json",
    "/v1/images/generations": "application/json",
    "/v1/images/edits": "multipart/form-data; boundary=xyz",
}
BROKEN_CHUNKS = {
    "a chunk size that is not hex": b"zz\r\n{}\r\n0\r\n\r\n",
    "a chunk extension with a bare CR": b"2;a\rb\r\n{}\r\n0\r\n\r\n",
    "a chunk extension that is no token": b"2;[x]\r\n{}\r\n0\r\n\r\n",
    "a chunk without its CRLF": b"2\r\n{}XX0\r\n\r\n",
}


def _raw_post(port: int, path: str, framing: bytes, *, half_close: bool = False) -> tuple[int, dict, dict]:
    """POST `framing` as a chunked body on a raw socket: (status, headers, JSON) of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {PATHS[path]}\r\n"
            "Transfer-Encoding: chunked\r\n\r\n".encode()
            + framing
        )
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        answer = http.client.HTTPResponse(sock)
        answer.begin()
        return answer.status, dict(answer.getheaders()), json.loads(answer.read())


def _assert_framing_error(status: int, headers: dict, body: dict) -> None:
    assert status == 400, body
    assert headers["Content-Type"] == "application/json"
    error = body["error"]
    assert error["type"] == "invalid_request_error" and "framing" in error["message"] and "chunked" in error["message"]


@pytest.fixture(scope="module")
def gunicorn(_fake_server, production_bin):
    server = Gunicorn(
        {
            "API_BASE_URL": _fake_server.url,
            "API_KEYS": "sk-good-body1",
            "WEB_CONCURRENCY": "1",
            "MAX_IMAGE_MB": "1",
            "PICTURE_BODIES_MB": "2.5",
            "PROMPT_EXPANSION": "false",
        },
        production_bin,
    )
    assert server.wait_until_up(), server.log()
    yield server
    log = server.stop()
    assert "Traceback" not in log, log


# --- broken framing is a 400 that says so ------------------------------------------------------------------


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("case", BROKEN_CHUNKS)
def test_broken_chunked_framing_is_a_400_under_gunicorn(gunicorn, path, case):
    _assert_framing_error(*_raw_post(gunicorn.port, path, BROKEN_CHUNKS[case]))


@pytest.mark.parametrize("path", PATHS)
def test_a_chunked_body_cut_short_is_a_400_under_gunicorn(gunicorn, path):
    _assert_framing_error(*_raw_post(gunicorn.port, path, b"10\r\n{}", half_close=True))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("case", ["a chunk size that is not hex", "a chunk without its CRLF"])
def test_broken_chunked_framing_is_a_400_under_the_development_server(service, path, case):
    port = int(service.url.rsplit(":", 1)[1])
    _assert_framing_error(*_raw_post(port, path, BROKEN_CHUNKS[case]))


def test_the_service_answers_normally_after_broken_framing(gunicorn):
    _raw_post(gunicorn.port, "/v1/chat/completions", BROKEN_CHUNKS["a chunk size that is not hex"])
    assert requests.get(f"{gunicorn.url}/health", timeout=10).status_code == 200


# --- only pictures count as pictures -----------------------------------------------------------------------


def _chat(content: list[dict]) -> bytes:
    return json.dumps({"model": "Kwai-Kolors/Kolors", "messages": [{"role": "user", "content": content}]}).encode()


def _picture_part(uri: str) -> dict:
    return {"type": "image_url", "image_url": {"url": uri}}


@pytest.mark.parametrize(
    "posing",
    [
        "\\u0041" * 500_000,  # "AAAA…": base64 once unescaped, 3 MB of text on the wire
        "\\u732b\\u732b\\u732b\\u732b" * 125_000,  # 猫猫猫猫…: any text at all
        base64.b64encode(b"plain text, no picture. " * 100_000).decode(),  # real base64 of something else
    ],
)
def test_text_posing_as_a_data_uri_counts_as_text(serve, fake, posing):
    service = serve(max_image_mb=1)  # room for 1 MB of text and three 1 MB pictures: 5 MB
    body = _chat([{"type": "text", "text": "画一只猫"}, {"type": "image_url", "image_url": {"url": "X"}}])
    body = body.replace(b'"X"', b'"data:image/png;base64,' + posing.encode() + b'"')
    assert 2 * 2**20 < len(body) < 5 * 2**20
    response = requests.post(
        f"{service.url}/v1/chat/completions", data=body, timeout=60, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 413, response.text[:200]
    assert "besides its pictures" in response.json()["error"]["message"]
    assert fake.state.drawing_calls() == []


def test_a_real_picture_with_escaped_slashes_counts_as_a_picture(serve, fake):
    service = serve(max_image_mb=1, prompt_expansion=False)
    uri = "data:image/png;base64," + base64.b64encode(png(32, 32, b"x") + bytes(900_000)).decode()
    body = _chat([{"type": "text", "text": "换成蓝色"}, _picture_part(uri), _picture_part(uri)])
    body = body.replace(b"/", b"\\/")  # as PHP's json_encode sends it
    assert len(body) > 2 * 2**20
    response = requests.post(
        f"{service.url}/v1/chat/completions", data=body, timeout=60, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 200, response.text[:300]
    assert len(fake.state.image_calls()) == 1


@pytest.mark.parametrize(
    "raw, counted",
    [
        (b'{"u": "data:image/png;base64,' + base64.b64encode(png(8, 8, b"a")) + b'"}', True),
        (b'{"u": "data:image\\/jpeg;base64,' + base64.b64encode(b"\xff\xd8\xff" + bytes(30)).replace(b"/", b"\\/") + b'"}', True),
        (b'{"u": "data:image/png;base64,\\u0041AAA"}', False),
        (b'{"u": "data:image/png;base64,' + base64.b64encode(png(8, 8, b"a"))[:-1] + b'"}', False),  # not a multiple of 4
        (b'{"u": "data:image/png;base64,' + base64.b64encode(b"GIF89a" + bytes(10)) + b'AAAA"}', False),  # "=" inside
        (b'{"u": "x \\"data:image/png;base64,' + base64.b64encode(png(8, 8, b"a")) + b'"}', False),  # inside a string
        # The Responses API's earlier answers sent back: an image_generation_call's base64 result.
        (b'{"type": "image_generation_call", "result": "' + base64.b64encode(png(8, 8, b"a")) + b'"}', True),
        (b'{"result":"' + base64.b64encode(b"plain text, no picture at all") + b'"}', False),
        (b'{"t": "x \\"result\\": \\"' + base64.b64encode(png(8, 8, b"a")) + b'"}', False),  # inside a string
    ],
)
def test_what_counts_as_a_picture(raw, counted):
    assert bool(picture_bytes(raw)) is counted


# --- large bodies in flight: a worker holds at most PICTURE_BODIES_MB ----------------------------------------


def _large_edit() -> dict:
    uri = "data:image/png;base64," + base64.b64encode(png(32, 32, b"x") + bytes(700_000)).decode()
    return {
        "model": EDIT,
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "把它们合成一张"}, _picture_part(uri), _picture_part(uri)]}
        ],
    }  # about 1.9 MB


def _assert_busy(response: requests.Response) -> None:
    assert response.status_code == 503, response.text[:300]
    error = response.json()["error"]
    assert error["type"] == "server_error" and error["code"] == "server_busy"
    assert "retry" in error["message"].lower()
    assert int(response.headers["Retry-After"]) > 0


def test_a_large_request_past_the_workers_budget_is_a_503_to_retry(serve, fake):
    fake.state.gate = threading.Event()
    service = serve(max_image_mb=1, picture_bodies_mb=2.5, prompt_expansion=False)
    body = _large_edit()
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(requests.post, f"{service.url}/v1/chat/completions", json=body, timeout=60)
        assert fake.state.arrived.wait(30)  # the first edit holds its pictures, waiting on the upstream
        _assert_busy(requests.post(f"{service.url}/v1/chat/completions", json=body, timeout=60))
        small = pool.submit(requests.post, f"{service.url}/v1/images/generations", json={"prompt": "a fox"}, timeout=60)
        fake.state.gate.set()
        assert first.result().status_code == 200
        assert small.result().status_code == 200  # bodies of 1 MB or less are not held


def test_concurrent_large_requests_under_gunicorn_are_each_answered(gunicorn, _fake_server):
    state = _fake_server.state
    state.reset()
    state.gate = threading.Event()
    body = _large_edit()
    try:
        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(requests.post, f"{gunicorn.url}/v1/chat/completions", json=body, timeout=60) for _ in range(4)]
            assert state.arrived.wait(30)
            done: set = set()
            for _ in futures:  # the three refused are answered while the first still waits
                if len(done) >= 3:
                    break
                done, _ = wait(futures, timeout=60, return_when=FIRST_COMPLETED)
            for future in done:
                _assert_busy(future.result())
            state.gate.set()
            statuses = sorted(future.result().status_code for future in futures)
        assert statuses == [200, 503, 503, 503]
        assert requests.post(f"{gunicorn.url}/v1/chat/completions", json=body, timeout=60).status_code == 200
    finally:
        state.reset()


NOT_WHOLE = ["Infinity", "-Infinity", "NaN", "1e400", "12.9", "true", '"abc"', "-1", "99999999999999999999"]


@pytest.mark.parametrize("value", NOT_WHOLE)
@pytest.mark.parametrize(
    ("path", "field", "body"),
    [
        ("/v1/videos", "seed", '{"prompt": "a cat", "model": "Wan-AI/Wan2.2-T2V-A14B", "seed": %s}'),
        ("/v1/images/generations", "seed", '{"prompt": "a cat", "seed": %s}'),
        ("/v1/images/generations", "n", '{"prompt": "a cat", "n": %s}'),
        ("/v1/images/generations", "num_inference_steps", '{"prompt": "a cat", "num_inference_steps": %s}'),
    ],
)
def test_a_number_that_is_not_a_whole_number_in_range_is_a_clear_400(service, fake, path, field, body, value):
    """Not a 500 with an OverflowError, and 12.9 or true never taken as 12 or 1."""
    response = requests.post(
        f"{service.url}{path}", data=body.replace("%s", value), headers={"Content-Type": "application/json"}, timeout=30
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert field in error["message"] or "not a JSON number" in error["message"], error
    assert not fake.state.drawing_calls() and not fake.state.videos


@pytest.mark.parametrize("value", ["Infinity", "nan", "1e400", "12.9", "true", "abc", "-1"])
@pytest.mark.parametrize(("path", "field"), [("/v1/videos", "seed"), ("/v1/images/edits", "n"), ("/v1/images/edits", "seed")])
def test_a_form_field_that_is_not_a_whole_number_in_range_is_a_clear_400(service, fake, path, field, value):
    form = {"prompt": "a cat", field: value}
    files = {"image": ("a.png", png(16, 16, b"x"), "image/png")} if "edits" in path else None
    if "videos" in path:
        form["model"] = "Wan-AI/Wan2.2-T2V-A14B"
    response = requests.post(f"{service.url}{path}", data=form, files=files or {"unused": ("", b"")}, timeout=30)
    assert response.status_code == 400, response.text
    assert field in response.json()["error"]["message"]
    assert not fake.state.drawing_calls() and not fake.state.videos


@pytest.mark.parametrize(("field", "value"), [("guidance_scale", "Infinity"), ("guidance_scale", "NaN"), ("cfg", "1e400")])
def test_a_fractional_field_that_is_not_a_finite_number_in_range_is_a_clear_400(service, fake, field, value):
    response = requests.post(
        f"{service.url}/v1/images/generations",
        data=f'{{"prompt": "a cat", "{field}": {value}}}',
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    assert response.status_code == 400, response.text
    assert not fake.state.drawing_calls()


def test_whole_numbers_as_text_and_json_are_both_taken(service, fake):
    made = requests.post(f"{service.url}/v1/images/generations", json={"prompt": "a cat", "seed": 42, "n": 1}, timeout=30).json()
    assert made["data"]
    sent = requests.post(
        f"{service.url}/v1/images/edits",
        data={"prompt": "make it blue", "n": "1", "seed": "7", "model": "Qwen/Qwen-Image-Edit"},
        files={"image": ("a.png", png(16, 16, b"x"), "image/png")},
        timeout=30,
    )
    assert sent.status_code == 200, sent.text
    assert [c.body["seed"] for c in fake.state.image_calls()] == [42, 7]
