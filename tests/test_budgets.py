"""Budgets per account and model, learned rests, and the round-robin line, over real HTTP against a
fake SiliconFlow that meters every account per model in a sliding window (scaled down: seconds,
not a minute)."""

from __future__ import annotations

import threading
import time

import requests

from tests.helpers import answer_text, images_in, wait_until

A1, A2, B1, B2 = "sk-good-acctA-1", "sk-good-acctA-2", "sk-good-acctB-1", "sk-good-acctB-2"
# As the operator declares them (SiliconFlow no longer tells which keys share an account).
DECLARED = (f"A/{A1}", f"A/{A2}", f"B/{B1}", f"B/{B2}")


def _at_once(url: str, texts: list[str], stream: bool = False) -> tuple[list[str], float]:
    answers: list[str] = [""] * len(texts)

    def ask(i: int) -> None:
        answers[i] = answer_text(url, texts[i], stream=stream)

    started = time.monotonic()
    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(texts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return answers, time.monotonic() - started


def test_with_a_budget_no_call_is_refused_and_every_image_arrives(serve, fake):
    fake.state.rate_limit = (2, 1.0)
    service = serve(api_keys=DECLARED, image_rate_limit=((2, 1.0),), prompt_expansion=False)
    answers, seconds = _at_once(service.url, ["画一只猫 pic:4", "画一只狗 pic:4"])
    assert [len(images_in(a)) for a in answers] == [4, 4]
    assert fake.state.refused == 0
    # Two accounts x 2 images a second: 8 images need two windows, the second starting at 1 s.
    assert seconds >= 1.0, seconds
    health = requests.get(f"{service.url}/health", timeout=5).json()
    assert health["accounts"]["total"] == 2 and health["accounts"]["declared"] == 2
    # /v1/user/info answers 410: asked at most once, by the first key, and then never again.
    assert len([c for c in fake.state.calls if c.path == "/v1/user/info"]) <= 1


def test_without_a_budget_each_account_is_refused_about_once_per_window(serve, fake):
    fake.state.rate_limit = (2, 1.0)
    service = serve(api_keys=DECLARED, rate_limit_rest=1.0, prompt_expansion=False, max_images_per_request=8)
    started = time.monotonic()
    answers, seconds = _at_once(service.url, ["画一只猫 pic:8", "画一只狗 pic:8"])
    assert [len(images_in(a)) for a in answers] == [8, 8]
    # The first burst is sent before any 429 has come back; after it, each account rests through
    # its window after a refusal, so two accounts are refused at most about twice per window.
    later = [at for at in fake.state.refused_at if at > started + 0.5]
    assert len(later) <= 2 * (seconds + 1), (len(later), seconds)


def test_a_later_pic_1_is_not_held_behind_all_of_an_earlier_pic_6(serve, fake):
    fake.state.rate_limit = (2, 1.0)
    service = serve(
        api_keys=("sk-good-solo-0001",), image_rate_limit=((2, 1.0),), prompt_expansion=False, max_images_per_request=8
    )
    done: dict[str, float] = {}

    def ask(name: str, text: str) -> None:
        started = time.monotonic()
        assert images_in(answer_text(service.url, text, stream=True))
        done[name] = time.monotonic() - started

    big = threading.Thread(target=ask, args=("big", "画一只猫 pic:6"))
    big.start()
    # The big one's first window is drawing and its other four images wait in line: then the small one asks.
    assert wait_until(lambda: service.services.pool.queue.waiting() == 4)
    ask("small", "画一只狗")
    big.join()
    # Round-robin by request: the small one is drawn in the next window (among the first four calls),
    # not after all of the big one's; 7 images at 2 a second, the last starting in the fourth window.
    prompts = [c.body["prompt"] for c in fake.state.image_calls()]
    assert any("狗" in p for p in prompts[:4]), prompts
    assert done["big"] >= 2.9 and fake.state.refused == 0


def test_a_waiting_stream_says_where_it_stands(serve, fake):
    fake.state.rate_limit = (1, 2.0)
    service = serve(api_keys=("sk-good-solo-0002",), image_rate_limit=((1, 2.0),), prompt_expansion=False, heartbeat_seconds=0.5)
    content = answer_text(service.url, "画一只猫 pic:2", stream=True)
    assert "⏳ 排队等候上游名额：本次还有 1 张在等" in content and "秒后空出" in content
    assert len(images_in(content)) == 2


def test_request_timeout_still_bounds_a_waiting_image_and_says_why(serve, fake):
    fake.state.rate_limit = (1, 30.0)
    service = serve(api_keys=("sk-good-solo-0003",), image_rate_limit=((1, 30.0),), prompt_expansion=False, request_timeout=2)
    content = answer_text(service.url, "画一只猫 pic:2", stream=False)
    assert len(images_in(content)) == 1 and "1/2" in content
    assert "张图片生成失败" in content and "REQUEST_TIMEOUT" in content and "秒后才空出" in content


def test_prompt_expansion_takes_no_image_budget(serve, fake):
    fake.state.rate_limit = (1, 30.0)
    # Had the expansion taken the one slot, the picture would wait 30 s and fail at REQUEST_TIMEOUT.
    service = serve(api_keys=("sk-good-solo-0004",), image_rate_limit=((1, 30.0),), request_timeout=5)
    content = answer_text(service.url, "画一只猫", stream=True)
    assert len(images_in(content)) == 1 and "REQUEST_TIMEOUT" not in content
    assert len(fake.state.chat_calls()) == 1 and fake.state.refused == 0


def test_where_user_info_still_answers_accounts_are_learned_and_shown_without_keys(serve, fake):
    fake.state.user_info = True  # another deployment, whose /v1/user/info still answers 200
    service = serve(api_keys=(A1, A2, B1, "sk-dead-acctC-1"))
    answer_text(service.url, "画一只猫", stream=False)
    health = requests.get(f"{service.url}/health", timeout=5)
    body = health.json()
    assert body["accounts"]["total"] == 3 and body["accounts"]["keys_with_unknown_account"] == 1
    assert body["keys"]["dead"] == 1  # found by the account look-up, before any image call
    assert "sk-" not in health.text
    assert {c.key for c in fake.state.image_calls()} <= {A1, A2, B1}
