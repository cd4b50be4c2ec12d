"""The Images API surface: `POST /v1/images/generations` and `/v1/images/edits`.

The routes validate the request and make a `Job`; the Images adapter (image_answers.py) draws it
and answers. Two shapes are read on the same paths:
- OpenAI's (`prompt`, `model`, `n`, `size`, `response_format`, `stream`, …), as the openai SDKs, the
  AI SDK, Open WebUI and one-api send it;
- SiliconFlow's own, recognised by its fields (`image_size`, `batch_size`, `image`…): Cherry Studio's
  painting page, LobeChat's SiliconCloud images, Dify and AstrBot plugins. Every field is honoured
  where the model takes it (`batch_size` N draws N pictures spread over the pool, as `pic:N`), and
  the answer carries SiliconFlow's `images`, `seed` and `timings` beside OpenAI's `data`.
A model may be named by an alias (MODEL_ALIASES: `gpt-image-1`, `dall-e-3`…); what is drawn and
said is the model it stands for.
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
from drawing import reasons
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
# The fields that say a body is SiliconFlow's own (CONTRACTS.md sections 1 and 8), not OpenAI's.
NATIVE_FIELDS = (
    "image_size",
    "batch_size",
    "num_inference_steps",
    "guidance_scale",
    "cfg",
    "image",
    "image2",
    "image3",
    "negative_prompt",
    "seed",
    "prompt_enhancement",
)
_INPUT_FIELDS = ("image", "image2", "image3")
# Names whose OpenAI models answer b64_json by default (the AI SDK sends them no response_format).
_B64_NAMES = ("gpt-image-", "chatgpt-image-")


@bp.post("/v1/images/generations")
def images_generations() -> Response:
    """The OpenAI Images API (Open WebUI, one-api/new-api channels, the SDKs), and SiliconFlow's
    own body on the same path (Cherry Studio's painting page and other SiliconFlow clients)."""
    services = context.current()
    body = json_object(with_pictures_limit(services.settings))  # SiliconFlow's `image` fields carry pictures
    native = any(body.get(name) is not None for name in NATIVE_FIELDS)
    model = context.resolve_model(body.get("model"), services)
    inputs = _native_inputs(body, model, services) if native else ()
    if native:
        body = _native_body(body, model, services.settings.max_images_per_request)
    return _images(body, model, inputs, services, native=native)


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
    native: bool = False,
) -> Response:
    """Generations and edits, once read: validated, then drawn and answered as asked."""
    settings = services.settings
    if family(model).video:
        raise ApiError(400, f"{model} makes videos, not pictures: use POST /v1/videos.", param="model")
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ApiError(400, "'prompt' is required: a description of the picture.", param="prompt")
    n = whole_number(body, "n", 1, settings.max_images_per_request, default=1)
    form = _form(body, edit=edit, native=native)
    wants_expansion = body.get("prompt_expansion", False)
    if not isinstance(wants_expansion, bool):
        raise ApiError(400, "'prompt_expansion' must be true or false.", param="prompt_expansion")
    size = body["image_size"] if native and body.get("image_size") else _images_size(body.get("size"), model)
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
        "req=%s images model=%s n=%d size=%s format=%s%s%s inputs=%d",
        job.request_id,
        model,
        n,
        draw.size,
        form.response_format,
        " stream" if form.stream else "",
        " (SiliconFlow's shape)" if native else "",
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


def _form(body: dict[str, Any], *, edit: bool, native: bool) -> Form:
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
        return Form("b64_json", "image_edit" if edit else "image_generation", native)
    if not asked:
        named = body.get("model")
        asked = "both" if edit or (isinstance(named, str) and named.startswith(_B64_NAMES)) else "url"
    return Form(asked, None, native)


def _native_body(body: dict[str, Any], model: str, most: int) -> dict[str, Any]:
    """SiliconFlow's fields read as OpenAI's: `batch_size` is the count, `image_size` the size (the
    model's nearest, or none for a model that follows its input), `prompt_enhancement` the prompt
    expansion. Each checked, with a 400 naming it."""
    read = dict(body)
    batch = whole_number(body, "batch_size", 1, most)  # MAX_IMAGES_PER_REQUEST: pictures spread over keys
    if batch is not None:
        read["n"] = batch
    size = body.get("image_size")
    if size is not None:
        match = re.fullmatch(r"(\d{2,5})[x*](\d{2,5})", size) if isinstance(size, str) else None
        if not match:
            raise ApiError(400, "'image_size' must be WIDTHxHEIGHT, like '1024x1024'.", param="image_size")
        read["image_size"] = pick_size(model, (int(match[1]), int(match[2])), explicit=True)
    enhance = body.get("prompt_enhancement")
    if enhance is not None:
        if not isinstance(enhance, bool):
            raise ApiError(400, "'prompt_enhancement' must be true or false.", param="prompt_enhancement")
        read.setdefault("prompt_expansion", enhance)
    return read


def _native_inputs(body: dict[str, Any], model: str, services: Services) -> tuple[ImageRef, ...]:
    """SiliconFlow's `image`, `image2`, `image3`: data: URIs (read here) or http(s) links (fetched
    under the address rule with the drawing), each in the field the model takes it in."""
    given = [(number, name, body[name]) for number, name in enumerate(_INPUT_FIELDS, 1) if body.get(name) is not None]
    if not given:
        return ()
    takes = family(model)
    if not takes.inputs:
        editors = [m for m in services.catalog.models() if family(m).edits][:3]
        raise ApiError(
            400,
            f"{model} takes no input picture: leave out '{given[0][1]}', or use a model that does "
            f"({', '.join(editors) or 'Qwen/Qwen-Image-Edit-2509'}).",
            param=given[0][1],
        )
    if len(given) > len(takes.inputs):
        raise ApiError(
            400, f"{model} takes at most {len(takes.inputs)} input picture(s): {len(given)} were given.", param=given[-1][1]
        )
    refs = []
    for number, name, value in given:
        if not isinstance(value, str) or not value.startswith(("data:", "http://", "https://")):
            raise ApiError(400, f"'{name}' must be a picture as a data:image/…;base64 URI or an http(s) link.", param=name)
        if value.startswith("data:"):
            try:
                picture = input_picture(services.session, services.settings, None, value, None)
            except UploadError as exc:
                raise ApiError(400, f"'{name}' cannot be used: {reasons.en(exc.reason)}.", param=name) from None
            refs.append(ImageRef("field", number, data=picture.data))
        else:
            refs.append(ImageRef("field", number, url=value))
    return tuple(refs)


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
