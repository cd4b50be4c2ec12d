"""The SiliconFlow client alone, against the fake SiliconFlow over real HTTP: each answer becomes
an image or a typed failure (its kind and reason), never a Python exception text."""

from __future__ import annotations

import pytest

from core.errors import Failure, UpstreamError
from siliconflow.client import account_info, generate_image, image_models
from siliconflow.outbound import make_http

PAYLOAD = {"model": "Kwai-Kolors/Kolors", "prompt": "a cat", "image_size": "1024x1024", "batch_size": 1}


@pytest.fixture(scope="module")
def http():
    return make_http(4)


def test_an_image_answer_is_its_link(fake, http):
    image = generate_image(http, fake.url, "sk-good-up01", PAYLOAD, 10, 1 << 20)
    assert image.url.startswith(fake.url) and fake.state.image_calls()[0].body == PAYLOAD


@pytest.mark.parametrize(
    "key, kind, code",
    [
        ("sk-dead-up01", Failure.AUTH, "key_invalid"),
        ("sk-broke-up01", Failure.BALANCE, "no_balance"),
        ("sk-limited-up1", Failure.RATE_LIMIT, "rate_limited"),
        ("sk-overload-up1", Failure.SERVER, "upstream_unavailable"),
        ("sk-gateway-up1", Failure.TIMEOUT, "gateway_timeout"),
        ("sk-html-up0001", Failure.BAD_RESPONSE, "not_json"),
        ("sk-empty-up001", Failure.BAD_RESPONSE, "no_image"),
        ("sk-htmldata-u1", Failure.BAD_RESPONSE, "bad_image_link"),
    ],
)
def test_each_failure_has_its_kind_and_reason(fake, http, key, kind, code):
    with pytest.raises(UpstreamError) as failed:
        generate_image(http, fake.url, key, PAYLOAD, 10, 1 << 20)
    assert (failed.value.kind, failed.value.reason.code) == (kind, code)


def test_a_withdrawn_model_is_named_as_such(fake, http):
    with pytest.raises(UpstreamError) as failed:
        generate_image(http, fake.url, "sk-good-up02", PAYLOAD | {"model": "gone/model"}, 10, 1 << 20)
    assert (failed.value.kind, failed.value.reason.code) == (Failure.BAD_REQUEST, "model_gone")


def test_a_slow_upstream_is_a_timeout_within_its_time(fake, http):
    fake.state.hang_seconds = 3
    with pytest.raises(UpstreamError) as failed:
        generate_image(http, fake.url, "sk-hang-up0001", PAYLOAD, 0.5, 1 << 20)
    assert failed.value.reason == failed.value.reason.of("upstream_timeout", seconds=0.5)


def test_account_info_and_the_model_list(fake, http):
    with pytest.raises(UpstreamError) as gone:  # SiliconFlow stopped /v1/user/info
        account_info(http, fake.url, "sk-good-acctZ-1", 5)
    assert gone.value.status == 410
    fake.state.user_info = True  # another deployment, where it still answers
    info = account_info(http, fake.url, "sk-good-acctZ-1", 5)
    assert info.account == "Z" and info.funded
    assert "Kwai-Kolors/Kolors" in image_models(http, fake.url, "sk-good-up03", 5)
