"""The Videos API surface (OpenAI's `client.videos.*`): `POST /v1/videos`, `GET /v1/videos/{id}`,
`GET /v1/videos/{id}/content`, `GET /v1/videos`, `DELETE /v1/videos/{id}`.

A create validates and draws through the pipeline like every surface (a Job with `follow=False`:
the drawing ends once SiliconFlow has taken the job and it is recorded); the
process's VideoWorker polls and keeps it in the background. Reads answer from the record, so any
worker (and, with Redis, any instance) answers for any job. English throughout.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from flask import Blueprint, Response, g, redirect, request
from werkzeug.wsgi import wrap_file

from api import context, errors
from api.bodies import form_numbers, json_object, multipart_form, whole_number, with_pictures_limit
from core.errors import ApiError, UploadError
from drawing import pipeline, reasons
from drawing.chat_words import video_page
from drawing.events import Broken, ImageFailed, ImageRef, Job, PromptReady, Refused, VideoFailed, VideoSubmitted
from drawing.metering import Meter
from drawing.pipeline import EXPANSION_INPUT_CHARS, Services
from drawing.reasons import en
from drawing.video_jobs import VideoWorker
from parsing import SEED_MAX, DrawRequest
from siliconflow.families import DEFAULT_VIDEO_MODELS, VIDEO_SECONDS, VIDEO_SIZES, family
from storage.pictures import CACHE_FOREVER
from storage.video_records import ALL, COMPLETED, FAILED, IN_PROGRESS, QUEUED, VideoJob

log = logging.getLogger("siliconflow_proxy")

bp = Blueprint("videos", __name__)

POLL_AFTER_MS = "2000"  # told to clients (openai-poll-after-ms): the record changes every few seconds at most


def video_object(job: VideoJob) -> dict[str, Any]:
    """A Video object as the OpenAI SDK reads it (CONTRACTS.md section 4)."""
    body: dict[str, Any] = {
        "id": job.id,
        "object": "video",
        "model": job.model,
        "status": job.status,
        "progress": job.progress,
        "created_at": job.created_at,
        "completed_at": job.completed_at,
        "expires_at": job.expires_at,
        "prompt": job.prompt,
        "size": job.size,
        "seconds": job.seconds,
        "remixed_from_video_id": None,
        "error": job.error,
    }
    if job.notes:
        body["notes"] = job.notes
    if job.position is not None:
        body["queue_position"] = job.position
    return body


def _answer(body: dict[str, Any], status: int = 200) -> Response:
    response = context.json_response(body, status)
    response.headers["openai-poll-after-ms"] = POLL_AFTER_MS
    return response


def _worker(services: Services) -> VideoWorker:
    if services.videos is None:
        raise ApiError(503, "Video is not available on this service.", code="videos_unavailable")
    return services.videos


@bp.post("/v1/videos")
def create_video() -> Response:
    services = context.current()
    settings = services.settings
    worker = _worker(services)
    picture_url: str | None = None
    picture_data: bytes | None = None
    if (request.mimetype or "") == "multipart/form-data":
        form, files = multipart_form(with_pictures_limit(settings))
        body: dict[str, Any] = form_numbers(dict(form.items()), ("seed",))
        if "input_reference" in files:
            picture_data = files["input_reference"].read()
    else:
        body = json_object(with_pictures_limit(settings))
        reference = body.get("input_reference")
        if reference is not None:
            if isinstance(reference, dict):
                reference = reference.get("image_url") or reference.get("url")
            if not isinstance(reference, str) or not reference.strip():
                raise ApiError(
                    400, "'input_reference' must be a picture: a file, a data: URI or an http(s) link.", param="input_reference"
                )
            picture_url = reference
    record = submit(body, picture_url, picture_data, services, worker)
    return _answer(video_object(record))


# What the fields are called in each shape, for the errors that name them.
OPENAI_NAMES = {"size": "size", "picture": "input_reference"}
SILICONFLOW_NAMES = {"size": "image_size", "picture": "image"}


def submit(
    body: dict[str, Any],
    picture_url: str | None,
    picture_data: bytes | None,
    services: Services,
    worker: VideoWorker,
    names: dict[str, str] = OPENAI_NAMES,
) -> VideoJob:
    """A video job from a read body (`prompt`, `model`, `size`, `seconds`, `seed`, `negative_prompt`)
    and its first frame, checked, its quota taken, submitted once through the pool and recorded:
    the one way a job is made through the Videos API and SiliconFlow's own paths alike."""
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ApiError(400, "'prompt' is required: a description of the video.", param="prompt")
    has_picture = picture_data is not None or picture_url is not None
    model = _video_model(body.get("model"), has_picture, services, names["picture"])
    size = body.get("size") or VIDEO_SIZES[0]
    if size not in VIDEO_SIZES:
        raise ApiError(
            400,
            f"'{names['size']}' {str(size)[:40]!r} is not one {model} makes: use one of {', '.join(VIDEO_SIZES)}.",
            param=names["size"],
        )
    notes = []
    seconds = body.get("seconds")
    if seconds is not None and str(seconds) != VIDEO_SECONDS:
        if not (str(seconds).isascii() and str(seconds).isdigit() and len(str(seconds)) <= 4) or int(str(seconds)) < 1:
            raise ApiError(400, "'seconds' must be a whole number of seconds, such as \"5\".", param="seconds")
        notes.append(f"{model} makes {VIDEO_SECONDS}-second clips: 'seconds' {seconds} was answered with {VIDEO_SECONDS}.")
    seed = whole_number(body, "seed", 0, SEED_MAX)
    negative = body.get("negative_prompt")
    if negative is not None and not isinstance(negative, str):
        raise ApiError(400, "'negative_prompt' must be a string.", param="negative_prompt")
    prompt = prompt.strip()[:EXPANSION_INPUT_CHARS]
    context.can_draw(prompt, services)
    # Everything that can refuse comes before anything is fetched: an over-quota key makes no download.
    reservation = context.take_quota("videos", 1, partial=False)
    inputs = (ImageRef("upload", 1, url=picture_url, data=picture_data),) if has_picture else ()
    job = Job(
        g.request_id,
        model,
        prompt,
        DrawRequest(prompt=prompt, count=1, size=size, seed=seed, negative_prompt=negative or None),
        context.public_base(services.settings),
        inputs=inputs,
        owner=_caller(),
        meter=Meter(reservation, on_drawn=context.on_drawn()),  # what SiliconFlow took counts, as for chat
        follow=False,  # the job is polled and kept in the background; the client polls its record
        record_notes=tuple(notes),
    )
    video_id, failures, unusable = None, [], None
    for event in pipeline.guarded(pipeline.draw(job, services), job.request_id):  # the pipeline closes the meter
        if isinstance(event, PromptReady):
            unusable = next((note for note in event.notes if note.code == "input_unusable"), None)
        elif isinstance(event, VideoSubmitted):
            video_id = event.video_id
        elif isinstance(event, VideoFailed | ImageFailed):
            failures.append((event.kind, event.reason))
        elif isinstance(event, Refused):
            raise ApiError(
                400, f"The prompt contains a word this service does not draw: '{event.keyword}'.", code="content_policy_violation"
            )
        elif isinstance(event, Broken):
            raise ApiError(500, "The video service failed. It has been logged; please try again.", code="internal_error")
    record = worker.jobs.get(video_id) if video_id else None
    if record is None:
        if unusable is not None:
            why = reasons.en(unusable.get("why"))
            raise ApiError(400, f"'{names['picture']}' cannot be used: {why}.", param=names["picture"])
        raise errors.failed(failures, what="the video job", verb="take")
    log.info("req=%s video %s submitted model=%s size=%s input=%s", g.request_id, record.id, model, size, has_picture)
    return record


def _video_model(value: Any, has_picture: bool, services: Services, picture: str = "input_reference") -> str:
    if value is None or value == "":
        offered = [m for m in services.catalog.models() if family(m).video] or list(DEFAULT_VIDEO_MODELS)
        wanted = [m for m in offered if family(m).needs_input == has_picture]
        return (wanted or offered)[0]
    model = context.resolve_model(value, services)
    if context.is_alias(value, services) and family(model).video and family(model).needs_input != has_picture:
        # An alias (sora-2) takes a first frame or not, as OpenAI's model does: the video model that fits.
        offered = [m for m in services.catalog.models() if family(m).video] or list(DEFAULT_VIDEO_MODELS)
        model = next((m for m in offered if family(m).needs_input == has_picture), model)
    if not family(model).video:
        video = ", ".join(m for m in DEFAULT_VIDEO_MODELS)
        raise ApiError(400, f"'{model}' draws pictures, not videos: use a video model ({video}).", param="model")
    if family(model).needs_input and not has_picture:
        raise ApiError(400, f"{model} makes a video from a picture: send it as '{picture}'.", param=picture)
    if has_picture and not family(model).needs_input:
        raise ApiError(
            400,
            f"{model} makes videos from words only: leave out '{picture}', or use an image-to-video model.",
            param=picture,
        )
    return model


def _caller() -> str | None:
    """The user key asking (None: the operator's key, or an open service): it sees its own jobs only."""
    user = g.get("user")
    return user.id if user is not None else None


def _job(video_id: str, services: Services, *, anyone: bool = False, param: str = "video_id") -> VideoJob:
    job = _worker(services).jobs.get(video_id) if video_id.startswith("video_") and len(video_id) <= 64 else None
    if job is not None and not anyone and _caller() is not None and job.owner != _caller():
        job = None  # another person's job: as if it did not exist
    if job is None:
        raise ApiError(404, f"No video with id '{video_id[:64]}'.", param=param, code="not_found")
    return job


@bp.get("/v1/videos/<video_id>")
def get_video(video_id: str) -> Response:
    return _answer(video_object(_job(video_id, context.current())))


@bp.get("/v1/videos/<video_id>/content")
def video_content(video_id: str) -> Response:
    services = context.current()
    job = _job(video_id, services)
    variant = request.args.get("variant", "video")
    if variant not in ("video", "thumbnail", "spritesheet"):
        raise ApiError(400, "'variant' must be 'video', 'thumbnail' or 'spritesheet'.", param="variant")
    if variant != "video":
        raise ApiError(404, f"SiliconFlow makes no {variant} for its videos: only variant=video exists.", code="not_found")
    if job.status != COMPLETED:
        raise ApiError(
            404, f"Video '{job.id}' is {job.status.replace('_', ' ')}: its content exists once it is completed.", code="not_ready"
        )
    if job.kept and services.store is not None:
        try:
            kept = services.store.open(job.kept)
        except UploadError as exc:
            raise ApiError(
                503, f"The video store cannot be reached now ({en(exc.reason)}).", code="store_unavailable", retry_after=10
            ) from None
        if kept is not None:
            response = Response(wrap_file(request.environ, kept.body), mimetype="video/mp4", direct_passthrough=True)
            response.content_length = kept.size
            response.headers["Cache-Control"] = CACHE_FOREVER
            return response.make_conditional(
                request, accept_ranges=kept.seekable, complete_length=kept.size if kept.seekable else None
            )
    if job.url and (job.expires_at or 0) > time.time():
        return redirect(job.url, 302)
    raise ApiError(
        404, f"Video '{job.id}' is no longer available: nothing kept it and SiliconFlow's link has expired.", code="expired"
    )


@bp.get("/videos/<video_id>")
def later_link(video_id: str) -> Response:
    """A chat answer's "get it later" link, for a person in a browser (no key: the id is 128 random
    bits, as a kept picture's name is its hash): the kept MP4 once it is done, else where it stands."""
    services = context.current()
    job = _job(video_id, services, anyone=True)  # a link in a chat answer: the id is the capability
    if job.status == COMPLETED:
        link = services.store.link(job.kept, context.public_base(services.settings)) if job.kept and services.store else None
        if link or (job.url and (job.expires_at or 0) > time.time()):
            return redirect(link or job.url or "", 302)
    words = video_page(job.status, job.progress, (job.error or {}).get("message", ""))
    waiting = job.status in ("queued", "in_progress")
    response = Response(words + "\n", status=200 if waiting else 410, mimetype="text/plain; charset=utf-8")
    if waiting:
        response.headers["Refresh"] = "10"  # a browser looks again by itself
    return response


@bp.get("/v1/videos")
def list_videos() -> Response:
    services = context.current()
    try:
        limit = int(request.args.get("limit", "20"))
    except ValueError:
        limit = 0
    if not 1 <= limit <= 100:
        raise ApiError(400, "'limit' must be a whole number from 1 to 100.", param="limit")
    order = request.args.get("order", "desc")
    if order not in ("asc", "desc"):
        raise ApiError(400, "'order' must be 'asc' or 'desc'.", param="order")
    owner = _caller()
    jobs, more = _worker(services).jobs.newest(limit, request.args.get("after"), order == "asc", ALL if owner is None else owner)
    data = [video_object(job) for job in jobs]
    return context.json_response(
        {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": more,
        }
    )


@bp.delete("/v1/videos/<video_id>")
def delete_video(video_id: str) -> Response:
    services = context.current()
    job = _job(video_id, services)
    try:
        _worker(services).delete(job)  # its kept clip too: the /images/ link needs no key
    except UploadError:
        raise ApiError(
            503,
            f"Video '{job.id}' was not deleted: its clip cannot be removed from the video store now. Try again shortly.",
            code="store_unavailable",
            retry_after=10,
        ) from None
    log.info("req=%s video %s deleted", g.request_id, job.id)
    return context.json_response({"id": job.id, "object": "video.deleted", "deleted": True})


# --- SiliconFlow's own video API ---------------------------------------------------------------------

# A job's status in SiliconFlow's words (CONTRACTS.md section 1: video).
_STATUS = {QUEUED: "InQueue", IN_PROGRESS: "InProgress", COMPLETED: "Succeed", FAILED: "Failed"}


@bp.post("/v1/video/submit")
def siliconflow_submit() -> Response:
    """SiliconFlow's own video submit, for its clients (LobeChat's SiliconCloud video runtime,
    plugins): a thin adapter over the Videos API's jobs, with the same key, quota, owner and kept
    clip. Answers `{"requestId"}`: the job's id, which `/v1/videos/{id}` answers for too."""
    services = context.current()
    worker = _worker(services)
    body = json_object(with_pictures_limit(services.settings))
    picture = body.get("image")
    if picture is not None and (not isinstance(picture, str) or not picture.strip()):
        raise ApiError(400, "'image' must be a picture: a data:image/…;base64 URI or an http(s) link.", param="image")
    fields = {name: body.get(name) for name in ("prompt", "model", "seed", "negative_prompt")}
    record = submit(fields | {"size": body.get("image_size")}, picture, None, services, worker, SILICONFLOW_NAMES)
    return context.json_response({"requestId": record.id})


@bp.post("/v1/video/status")
def siliconflow_status() -> Response:
    """SiliconFlow's own status (POST `{"requestId"}`): the job's record in SiliconFlow's words,
    `Succeed` with the kept clip's link once it is done. A user key sees its own jobs only."""
    services = context.current()
    body = json_object()
    request_id = body.get("requestId")
    if not isinstance(request_id, str) or not request_id.strip():
        raise ApiError(400, "'requestId' is required: the id /v1/video/submit answered.", param="requestId")
    job = _job(request_id.strip(), services, param="requestId")
    return context.json_response(siliconflow_status_body(job, services))


def siliconflow_status_body(job: VideoJob, services: Services) -> dict[str, Any]:
    """`{"status", "reason", "position", "results"}` as SiliconFlow answers it; `results` carries the
    clip (the kept one: lasting, where SiliconFlow's own link lasts an hour), its seed and timing."""
    status = _STATUS.get(job.status, "InProgress")
    reason = (job.error or {}).get("message", "") if job.status == FAILED else ""
    results = None
    if job.status == COMPLETED:
        base = context.public_base(services.settings)
        link = services.store.link(job.kept, base) if job.kept and services.store is not None else None
        if link is None and job.url and (job.expires_at or 0) > time.time():
            link = job.url  # nothing kept it: SiliconFlow's own link, while it lasts
        if link is None:
            status, reason = "Failed", "the clip is no longer available: nothing kept it and SiliconFlow's link has expired"
        else:
            inference = max((job.completed_at or job.created_at) - job.created_at, 0)
            results = {"videos": [{"url": link}], "timings": {"inference": inference}, "seed": job.seed}
    return {"status": status, "reason": reason, "position": job.position or 0, "results": results}
