"""The one contract between the drawing core and its surfaces: a `Job` in, events out.

The pipeline (pipeline.py) turns a `Job` into a stream of the events below and never words
anything; every surface (the chat adapter, the Images adapter) iterates that stream in its own
request and says what it means in its own words (chat_words.py: Chinese for chat, English for the
APIs). Why something did not work travels as a `Reason`, a kind and its parameters, never as a
sentence, so each surface can word it, and a test can ask what happened without parsing text.

This module imports only the failure kinds and reasons (core/errors.py), and types for annotations.

    Job ──draw()──▶ Refused
                    PromptReady ─ Submitted ─ (Queued | KeepAlive | ImageReady | ImageFailed)* ─ Done
                    Broken (a bug cut the answer short)
"""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from core.errors import Failure, Reason

if TYPE_CHECKING:
    from parsing import DrawRequest
    from uploaders import Links


class Meter(Protocol):
    """What a job's meter does for the pipeline (drawing/metering.py has the one there is)."""

    def drawn(self, key_id: str, model: str) -> None:
        """SiliconFlow drew a picture, or took a video job, with the key `key_id`: it is paid for."""

    def track(self, future: Future) -> None:
        """Work that may still call `drawn()`."""

    def close(self) -> None:
        """The answer is over."""


@dataclass(frozen=True)
class ImageRef:
    """An input picture: where it is (a data: URI or an http(s) link) or its bytes, and which it
    is, for the words (`reasons.picture_name`)."""

    source: str  # attached (to the chat turn) | last (the last picture drawn here) | upload (a file) | field (image2…)
    number: int = 0  # attached and uploaded pictures are numbered from 1
    url: str | None = None
    data: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Job:
    """One drawing: what to draw and how the answer wants it."""

    request_id: str
    model: str
    text: str  # what the user typed, tokens included: moderated
    draw: DrawRequest
    public_base: str | None = None  # where this service is reached, for links to stored images
    expand: bool = False  # rewrite the prompt with the chat model first
    previous: str | None = None  # the last picture's prompt, when this turn changes that picture
    fields: dict[str, Any] = field(default_factory=dict)  # more SiliconFlow fields the client gave
    want_bytes: bool = False  # the answer carries the pictures themselves (Images API b64_json)
    inputs: tuple[ImageRef, ...] = ()  # pictures to draw from (an edit, or image-to-image)
    owner: str | None = None  # the user key's id: waiting pictures take turns by person
    meter: Meter | None = field(default=None, compare=False)  # counts what SiliconFlow drew, as it draws it
    follow: bool = True  # a video drawing follows its jobs to the end (chat); False: it ends once they are taken
    record_notes: tuple[str, ...] = ()  # English notes a video job's record shows (the Videos API's answer)


@dataclass(frozen=True)
class Outcome:
    """One picture's end: its links, or why it failed."""

    index: int
    links: Links | None = None
    reason: Reason | None = None
    kind: Failure | None = None
    seed: int | None = None  # the seed sent, else the one the upstream says it used


@dataclass(frozen=True)
class Expansion:
    prompt: str  # what will be drawn
    failed: Reason | None = None  # why the chat model's rewrite was not used (the user's text is)
    skipped: Reason | None = None  # why it was not asked at all


# --- events ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Refused:
    keyword: str  # a banned word
    where: str = "request"  # request (this turn or the prompt it changes) | expanded (the chat model's rewrite)


@dataclass(frozen=True)
class Preparing:
    """Work before the prompt is known has begun: the chat model rewrites it, input pictures are read."""

    expanding: bool
    pictures: int  # input pictures being read


@dataclass(frozen=True)
class PromptReady:
    """What will be drawn: the prompt after expansion, and the request as parsed."""

    job: Job
    prompt: str
    seeds: list[int] | None
    notes: tuple[Reason, ...]
    expansion: Expansion | None


@dataclass(frozen=True)
class Submitted:
    """Every picture is on its way upstream (or in line for a key)."""


@dataclass(frozen=True)
class Queued:
    waiting: int  # this request's pictures waiting for a key
    ahead: int  # requests served before this one's next picture
    next_in: float | None  # seconds until a key is expected to be free
    cooling: int = 0  # keys out (cooling after errors, dead, broke): then not only budgets are the cause


@dataclass(frozen=True)
class ImageReady:
    outcome: Outcome


@dataclass(frozen=True)
class ImageFailed:
    index: int
    reason: Reason
    kind: Failure | None = None
    outcome: Outcome | None = None


@dataclass(frozen=True)
class VideoSubmitted:
    """A video job was taken by SiliconFlow (it takes minutes); `video_id` answers at /v1/videos/{id}."""

    index: int
    video_id: str
    link: str | None = None  # where a person gets it later, should this answer end first (/videos/{id})


@dataclass(frozen=True)
class VideoProgress:
    index: int
    status: str  # queued | in_progress
    position: int | None  # in SiliconFlow's queue, when it says
    elapsed: float  # seconds since it was submitted


@dataclass(frozen=True)
class VideoReady:
    index: int
    video_id: str
    url: str  # the kept MP4 (or the upstream's link, which expires, when nothing keeps it)
    poster: str | None = None  # a picture to show that links to it (an image-to-video's first frame)
    seed: int | None = None
    notes: tuple[Reason, ...] = ()


@dataclass(frozen=True)
class VideoFailed:
    index: int
    reason: Reason
    kind: Failure | None = None


@dataclass(frozen=True)
class Done:
    delivered: int
    count: int
    videos: bool = False


@dataclass(frozen=True)
class KeepAlive:
    """Still working: an SSE comment on the wire, a space before JSON."""


@dataclass(frozen=True)
class Broken:
    """A bug cut the answer short (logged); the client gets a plain line, not a broken response."""


KEEPALIVE = KeepAlive()


def close(source: Any) -> None:
    """Close an iterator that is a generator (a link in a chain of them): a generator that only
    stops being iterated is closed when it is collected, which a reference cycle can put off for
    good, and a closed drawing is what stops its pictures not begun. Lists have nothing to close."""
    closer = getattr(source, "close", None)
    if closer is not None:
        closer()


Event = (
    Refused
    | Preparing
    | PromptReady
    | Submitted
    | Queued
    | ImageReady
    | ImageFailed
    | VideoSubmitted
    | VideoProgress
    | VideoReady
    | VideoFailed
    | Done
    | KeepAlive
    | Broken
)
