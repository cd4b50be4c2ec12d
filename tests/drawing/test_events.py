"""The one contract between the drawing and its surfaces: a `Job` in, typed events out, in the
order a user should hear of them, each picture (or video) ending once, `Done` last and counting what
was delivered, why carried as a `Reason` (never a sentence); every event has words in the chat."""

from __future__ import annotations

import dataclasses
import re
import typing

import pytest

from core.errors import Failure, Reason
from drawing import chat_words, pipeline, reasons
from drawing import events as ev
from parsing import parse
from uploaders import Links

T2V = "Wan-AI/Wan2.2-T2V-A14B"
PICTURES = re.compile(r"(Preparing )?PromptReady ((ImageFailed )*|Submitted ((Queued|ImageReady|ImageFailed) )*)Done")
VIDEOS = re.compile(r"(Preparing )?PromptReady Submitted (VideoSubmitted )*((VideoProgress|VideoReady|VideoFailed) )*Done")


def _job(text: str, model: str = "Kwai-Kolors/Kolors", **fields) -> ev.Job:
    return ev.Job("req-events", model, text, parse(text, model, 4), **fields)


def _heard(events: list) -> str:
    return " ".join(type(event).__name__ for event in events if not isinstance(event, ev.KeepAlive))


def _holds_the_contract(events: list, job: ev.Job) -> ev.Done:
    """The invariants every drawing's events keep; the Done that ends them."""
    order = VIDEOS if "Video" in _heard(events) else PICTURES
    assert order.fullmatch(_heard(events)), _heard(events)
    *_, done = events
    ended = [e.index if not isinstance(e, ev.ImageReady) else e.outcome.index for e in events if _ends(e)]
    assert sorted(ended) == list(range(1, job.draw.count + 1))  # each picture ends once, none is lost
    delivered = sum(isinstance(e, ev.ImageReady | ev.VideoReady) for e in events)
    assert (done.delivered, done.count, done.videos) == (delivered, job.draw.count, order is VIDEOS)
    for event in events:
        for reason in (getattr(event, "reason", None), *getattr(event, "notes", ())):
            assert reason is None or (isinstance(reason, Reason) and reason.code in reasons.REASONS), event
    return done


def _ends(event) -> bool:
    return isinstance(event, ev.ImageReady | ev.ImageFailed | ev.VideoReady | ev.VideoFailed)


@pytest.mark.parametrize(
    "keys, text, delivered",
    [
        (("sk-good-ev000001", "sk-good-ev000002"), "一只猫 pic:3", 3),
        (("sk-dead-ev000001",), "一只猫 pic:2", 0),
        (("sk-good-ev000003", "sk-dead-ev000004"), "一只猫 pic:4", 4),
    ],
)
def test_a_drawings_events_keep_the_contract(serve, fake, keys, text, delivered):
    service = serve(api_keys=keys, prompt_expansion=False, max_key_attempts=2)
    job = _job(text)
    events = list(pipeline.draw(job, service.services))
    assert _holds_the_contract(events, job).delivered == delivered
    assert all(e.kind is not None for e in events if isinstance(e, ev.ImageFailed))


def test_the_rewrite_is_said_to_begin_before_the_prompt_is_known(serve, fake):
    fake.state.expansion_mode = "helpful"
    service = serve(prompt_expansion=True)
    job = _job("一只猫", expand=True)
    events = list(pipeline.draw(job, service.services))
    assert events[0] == ev.Preparing(expanding=True, pictures=0) and _holds_the_contract(events, job).delivered == 1


def test_an_edit_without_a_picture_fails_each_picture_as_the_users_to_fix(serve, fake):
    job = _job("换成蓝色 pic:2", model="Qwen/Qwen-Image-Edit-2509")
    events = list(pipeline.draw(job, serve().services))
    _holds_the_contract(events, job)
    assert {(e.index, e.kind) for e in events if isinstance(e, ev.ImageFailed)} == {(1, Failure.INPUT), (2, Failure.INPUT)}
    assert fake.state.drawing_calls() == []


def test_a_refusal_is_the_only_event(serve, fake):
    assert list(pipeline.draw(_job("一只猫", previous="nude"), serve().services)) == [ev.Refused("nude", "request")]


@pytest.mark.parametrize("fails", [False, True], ids=["made", "refused by SiliconFlow"])
def test_a_video_jobs_events_keep_the_contract(serve, fake, fails):
    fake.state.video_queue_seconds, fake.state.video_seconds = 0.2, 0.3
    fake.state.video_fail = "content moderation" if fails else ""
    service = serve(prompt_expansion=False, video_poll_seconds=0.05, heartbeat_seconds=0.1)
    service.services.videos.ensure_running()
    job = _job("一只猫在奔跑", model=T2V)
    events = list(pipeline.draw(job, service.services))
    done = _holds_the_contract(events, job)
    assert done.delivered == (0 if fails else 1) and any(isinstance(e, ev.VideoSubmitted) for e in events)


# --- the events themselves ----------------------------------------------------------------------------


def _events_defined() -> set[type]:
    return {
        cls
        for _, cls in vars(ev).items()
        if isinstance(cls, type) and dataclasses.is_dataclass(cls) and cls.__module__ == ev.__name__
    } - {ev.Job, ev.ImageRef, ev.Outcome, ev.Expansion}


LINKS = Links("https://x.example/a.png", None, "https://x.example/a.png", ())
SAMPLES = {
    ev.Refused: ev.Refused("nude"),
    ev.Preparing: ev.Preparing(True, 1),
    ev.PromptReady: ev.PromptReady(_job("一只猫"), "一只猫", None, (), None),
    ev.Submitted: ev.Submitted(),
    ev.Queued: ev.Queued(1, 0, 5.0),
    ev.ImageReady: ev.ImageReady(ev.Outcome(1, LINKS)),
    ev.ImageFailed: ev.ImageFailed(1, Reason.of("no_image")),
    ev.VideoSubmitted: ev.VideoSubmitted(1, "video_1"),
    ev.VideoProgress: ev.VideoProgress(1, "queued", 2, 3.0),
    ev.VideoReady: ev.VideoReady(1, "video_1", "https://x.example/c.mp4"),
    ev.VideoFailed: ev.VideoFailed(1, Reason.of("video_refused", why="-")),
    ev.Done: ev.Done(1, 1),
    ev.KeepAlive: ev.KEEPALIVE,
    ev.Broken: ev.Broken(),
}


def test_every_event_is_in_the_contract_and_the_chat_has_words_for_it():
    assert _events_defined() == set(typing.get_args(ev.Event)) == set(SAMPLES)
    for kind, event in SAMPLES.items():
        said = list(chat_words.chat([event]))
        assert said == [None] if kind is ev.KeepAlive else said and all(said), kind


@pytest.mark.parametrize("event", list(SAMPLES.values()), ids=[kind.__name__ for kind in SAMPLES])
def test_an_event_cannot_be_changed_once_sent(event):
    field = next(iter(dataclasses.fields(event)), None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(event, field.name if field else "anything", None)


def test_a_jobs_meter_does_not_make_it_another_job():
    class Meter:
        def drawn(self, key_id: str, model: str) -> None: ...
        def track(self, future) -> None: ...
        def close(self) -> None: ...

    assert _job("一只猫", meter=Meter()) == _job("一只猫", meter=None) != _job("一只狗")


def test_close_ends_a_chain_of_generators_and_leaves_a_list_alone():
    ended = []

    def source():
        try:
            yield ev.Submitted()
            yield ev.Done(0, 1)
        finally:
            ended.append(True)

    chain = source()
    next(chain)
    ev.close(chain)
    ev.close([ev.Done(0, 1)])
    assert ended == [True] and list(chain) == []
