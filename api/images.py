"""The Images API surface: `POST /v1/images/generations` and `/v1/images/edits`.

The routes validate OpenAI's fields (`prompt`, `model`, `n`, `size`, `response_format`, `stream`, …,
as the openai SDKs, the AI SDK, Open WebUI and one-api send them) and make a `Job`; the Images
adapter (image_answers.py) draws it and answers. A model may be named by an alias (MODEL_ALIASES:
`gpt-image-1`, `dall-e-3`…); what is drawn and said is the model it stands for.
"""

from __future__ import annotations

import logging
import re
from dataclasses import replace
from typing import Any

from flask import Blueprint, Response, g

from api import context
from api.bodies import finite_number, form_numbers, json_object, multipart_form, whole_number, with_pictures_limit
from api.image_answers import Form, answer
from core.errors import ApiError, UploadError
from drawing.events import ImageRef, Job
from drawing.metering import Meter
from drawing.pipeline import EXPANSION_INPUT_CHARS, Services
from parsing import SEED_MAX, DrawRequest, parse, pick_size
from siliconflow.families import family
from uploaders import input_picture

log = logging.getLogger("siliconflow_proxy")

bp = Blueprint("images", __name__)


# SiliconFlow fields passed through when given: (whole number?, lowest, highest)
_IMAGE_EXTRAS: dict[str, tuple[bool, float, float]] = {
    "seed": (True, 0, SEED_MAX),
    "num_inference_steps": (True, 1, 100),
    "guidance_scale": (False, 0, 20),
    "cfg": (False, 0.1, 20),
}
# Names whose OpenAI models answer b64_json by default (the AI SDK sends them no response_format).
_B64_NAMES = ("gpt-image-", "chatgpt-image-")


@bp.post("/v1/images/generations")
def images_generations() -> Response:
    """The OpenAI Images API, for Open WebUI, Cherry Studio and one-api/new-api channels, the SDKs."""
    services = context.current()
    body = json_object()
    return _images(body, context.resolve_model(body.get("model"), services), (), services)


@bp.post("/v1/images/edits")
def images_edits() -> Response:
    """OpenAI image edits, multipart as `client.images.edit(...)`, the AI SDK and Open WebUI send
    them: the picture(s) in `image` or repeated `image[]`, the instruction in `prompt`, then as
    generations."""
    services = context.current()
    settings = services.settings
    form, files = multipart_form(with_pictures_limit(settings))
    body = form_numbers({name: _switch(value) if name in _SWITCH_FIELDS else value for name, value in form.items()}, _NUMBERS)
    asked = body.get("model")
    model = context.resolve_model(asked, services, default=services.catalog.default_editor())
    if context.is_alias(asked, services) and not family(model).edits:
        # OpenAI's gpt-image-1 draws and edits; here one model draws and another edits.
        model = services.catalog.default_editor() or model
    takes = family(model)
    editors = [m for m in services.catalog.models() if family(m).edits][:4]
    if not takes.edits:
        raise ApiError(
            400,
            f"'{model}' does not take an input picture. Use a model that edits, such as "
            f"{', '.join(editors) or 'Qwen/Qwen-Image-Edit-2509'}.",
            param="model",
        )
    if "mask" in files or "mask" in form:
        raise ApiError(
            400,
            f"'mask' is not taken: {model} edits from the prompt alone. Say in the prompt which "
            'part to change ("make the sky blue").',
            param="mask",
        )
    uploads = files.getlist("image") + files.getlist("image[]")
    if not uploads:
        raise ApiError(
            400, "'image' is required: the picture to edit, as a file part named image (or image[] for several).", param="image"
        )
    if len(uploads) > len(takes.inputs):
        raise ApiError(400, f"'image' holds {len(uploads)} pictures; {model} takes at most {len(takes.inputs)}.", param="image")
    inputs = []
    for number, upload in enumerate(uploads, 1):
        data = upload.read()
        try:
            input_picture(services.session, settings, None, None, data)
        except UploadError:
            name = (upload.filename or "unnamed")[:60]
            if len(data) > settings.max_image_mb * 2**20:
                raise ApiError(
                    413, f"'image' file {number} ({name}) is larger than {settings.max_image_mb:g} MB.", param="image"
                ) from None
            raise ApiError(
                400, f"'image' file {number} ({name}) is not a PNG, JPEG, WebP or GIF picture.", param="image"
            ) from None
        inputs.append(ImageRef("upload", number, data=data))
    return _images(body, model, tuple(inputs), services, edit=True)


_SWITCH_FIELDS = ("prompt_expansion", "stream")
_NUMBERS = ("n", "seed", "num_inference_steps", "guidance_scale", "cfg", "partial_images")


def _switch(value: str) -> Any:
    """A multipart field's text as the true or false it spells (the form carries only text)."""
    return {"true": True, "1": True, "yes": True, "on": True, "false": False, "0": False, "no": False, "off": False}.get(
        value.strip().lower(), value
    )


def _images(
    body: dict[str, Any],
    model: str,
    inputs: tuple[ImageRef, ...],
    services: Services,
    *,
    edit: bool = False,
) -> Response:
    """Generations and edits, once read: validated, then drawn and answered as asked."""
    settings = services.settings
    if family(model).video:
        raise ApiError(400, f"{model} makes videos, not pictures: use POST /v1/videos.", param="model")
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ApiError(400, "'prompt' is required: a description of the picture.", param="prompt")
    n = whole_number(body, "n", 1, settings.max_images_per_request, default=1)
    form = _form(body, edit=edit)
    wants_expansion = body.get("prompt_expansion", False)
    if not isinstance(wants_expansion, bool):
        raise ApiError(400, "'prompt_expansion' must be true or false.", param="prompt_expansion")
    size = _images_size(body.get("size"), model)
    extras = _images_extras(body)
    negative = body.get("negative_prompt")
    if negative is not None and not isinstance(negative, str):
        raise ApiError(400, "'negative_prompt' must be a string.", param="negative_prompt")
    context.can_draw(prompt.strip()[:EXPANSION_INPUT_CHARS], services)  # what is sent of it
    draw = _typed(
        prompt,
        model,
        DrawRequest(prompt=prompt.strip(), count=n, size=size, seed=extras.pop("seed", None), negative_prompt=negative or None),
        settings.max_images_per_request,
    )
    n = draw.count
    reservation = context.take_quota("images", n, partial=False)  # all asked or a 429 saying when it resets
    job = Job(
        g.request_id,
        model,
        prompt,
        draw,
        context.public_base(settings),
        expand=wants_expansion,
        fields=extras,
        want_bytes=form.wants_bytes,
        inputs=inputs,
        owner=g.user.id if g.get("user") else None,
        meter=Meter(reservation, context.on_drawn()),
    )
    log.info(
        "req=%s images model=%s n=%d size=%s format=%s%s inputs=%d",
        job.request_id,
        model,
        n,
        draw.size,
        form.response_format,
        " stream" if form.stream else "",
        len(inputs),
    )
    meter = job.meter
    assert meter is not None
    try:
        response = answer(job, form, services)
    except BaseException:  # a quick failure answered as an error: nothing more is drawn for it
        meter.close()
        raise
    response.call_on_close(meter.close)  # answered or hung up: the quota settles once the drawing has ended
    return response


def _form(body: dict[str, Any], *, edit: bool) -> Form:
    """How the answer is wanted. Without `response_format`: both the link and the bytes for an edit
    and for the gpt-image names (OpenAI answers those with b64_json, and the AI SDK reads only
    that; the openai SDK's users read `url`), the link alone otherwise."""
    stream = body.get("stream", False)
    if stream is not None and not isinstance(stream, bool):
        raise ApiError(400, "'stream' must be true or false.", param="stream")
    whole_number(body, "partial_images", 0, 3)  # taken; SiliconFlow makes no partial images, so none is sent
    asked = body.get("response_format")
    if asked not in (None, "", "url", "b64_json"):
        raise ApiError(400, "'response_format' must be 'url' or 'b64_json'.", param="response_format")
    if stream:
        if asked == "url":
            raise ApiError(
                400,
                "A streamed answer carries each picture as b64_json: leave out 'response_format', or set it to 'b64_json'.",
                param="response_format",
            )
        return Form("b64_json", "image_edit" if edit else "image_generation")
    if not asked:
        named = body.get("model")
        asked = "both" if edit or (isinstance(named, str) and named.startswith(_B64_NAMES)) else "url"
    return Form(asked, None)


def _typed(prompt: str, model: str, fields: DrawRequest, most: int) -> DrawRequest:
    """The drawing asked: what the user typed in the prompt (the chat's mini-language: `pic:N`,
    `16:9`, `1024x768`, `seed:7`, `--no …`) wins over the request's fields, which a chat UI fills
    with its own defaults (Open WebUI sends n=1 and its size whatever the user typed); the tokens
    are not drawn as words. A shape word left in the prompt ("a portrait of a man") is the
    picture's, not a size."""
    typed = parse(prompt.strip(), model, most)
    if typed.asked_count is not None and typed.asked_count > most:
        asked = typed.asked_count
        raise ApiError(400, f"The prompt asks for {asked} pictures; this service draws at most {most} at a time.", param="prompt")
    if any(note.code == "seed_range" for note in typed.notes):
        raise ApiError(400, f"The prompt's seed must be a whole number from 0 to {SEED_MAX}.", param="prompt")
    if not typed.prompt.strip(" ,，.。"):
        raise ApiError(
            400, "'prompt' holds only drawing options (like 'pic:2' or '16:9'): describe the picture too.", param="prompt"
        )
    shape_typed = typed.asked_shape is not None and typed.asked_size is not None and typed.asked_size not in typed.prompt
    return replace(
        fields,
        prompt=typed.prompt.strip(),
        count=typed.count if typed.asked_count is not None else fields.count,
        size=typed.size if shape_typed else fields.size,
        asked_size=typed.asked_size if shape_typed else None,
        asked_shape=typed.asked_shape if shape_typed else None,
        seed=typed.seed if typed.seed is not None else fields.seed,
        negative_prompt=typed.negative_prompt or fields.negative_prompt,
    )


def _images_size(value: Any, model: str) -> str | None:
    if value in (None, "", "auto"):
        return pick_size(model, None)
    match = re.fullmatch(r"(\d{2,5})x(\d{2,5})", value) if isinstance(value, str) else None
    if not match:
        raise ApiError(400, "'size' must be 'auto' or WIDTHxHEIGHT, like '1024x1024' or '1024x1792'.", param="size")
    return pick_size(model, (int(match[1]), int(match[2])), explicit=True)


def _images_extras(body: dict[str, Any]) -> dict[str, Any]:
    extras = {}
    for name, (whole, low, high) in _IMAGE_EXTRAS.items():
        value = whole_number(body, name, int(low), int(high)) if whole else finite_number(body, name, low, high)
        if value is not None:
            extras[name] = value
    return extras
