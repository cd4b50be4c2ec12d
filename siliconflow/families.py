"""What each image model family takes, in one table; and which models SiliconFlow serves today.

SiliconFlow's model list carries no capabilities (shared/reference/CONTRACTS.md section 1), so the
sizes, fields and image inputs of each model family live here, and everyone asks `family(model)`:
the prompt parser for sizes, the upstream client for the fields it sends, the pipeline and the
routes for image inputs. `ModelCatalog` keeps the list of image models to offer, refreshed from
SiliconFlow in the background, with the built-in list when it cannot be asked.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass

from core.background import Background

log = logging.getLogger("siliconflow_proxy.families")

# The seed's own table, used for any model without a documented list of sizes.
SEED_SIZES: tuple[str, ...] = (
    "1024x1024",
    "512x1024",
    "1024x512",
    "768x512",
    "512x768",
    "768x1024",
    "1024x768",
    "1024x576",
    "576x1024",
)
KOLORS_SIZES = ("1024x1024", "960x1280", "768x1024", "720x1440", "720x1280")
QWEN_IMAGE_SIZES = ("1328x1328", "1664x928", "928x1664", "1472x1140", "1140x1472", "1584x1056", "1056x1584")
FLUX_SCHNELL_SIZES = ("1024x1024", "512x1024", "768x512", "768x1024", "1024x576", "576x1024")
SD21_SIZES = ("512x512", "512x1024", "768x512", "768x1024", "1024x576", "576x1024")
Z_IMAGE_SIZES = ("512x512", "768x1024", "1024x576", "576x1024")
FLUX2_SIZES = ("512x512", "768x1024", "1024x768", "576x1024", "1024x576")
# FLUX.1-dev, Pro FLUX.1-schnell, SDXL, SD3-medium take their listed sizes "and others up to
# 2,359,296 pixels", so an explicit size within that budget is sent as typed.
FREE_SIZES = KOLORS_SIZES + ("1024x576", "1024x768", "768x512", "1024x512")
FREE_MAX_PIXELS = 2_359_296
FREE_SIDE_RANGE = (256, 4096)
# FLUX.1-Kontext max/pro take an aspect ratio, not a size.
ASPECT_RATIOS = ("1:1", "16:9", "9:16", "4:3", "3:4", "3:2", "2:3", "21:9", "9:21")


@dataclass(frozen=True)
class Family:
    """What the models of one family take."""

    name: str
    sizes: tuple[str, ...]  # empty: the API takes no size (the output follows the input image)
    max_free_pixels: int = 0  # > 0: explicit sizes within this many pixels pass unchanged
    size_field: str = "image_size"  # "aspect_ratio" for Kontext max/pro, which take a ratio instead
    negative_prompt: bool = False  # takes `negative_prompt`
    batch_size: bool = False  # takes `batch_size` (one image per call is asked, spread over keys)
    inputs: tuple[str, ...] = ()  # fields for input images, in order (`image`, `image2`, `image3`)
    needs_input: bool = False  # an edit model: no input image, no picture
    video: bool = False  # a video model: /v1/video/submit, a job that takes minutes

    @property
    def edits(self) -> bool:
        return bool(self.inputs)


_SD = Family("Stable Diffusion", SEED_SIZES, negative_prompt=True, batch_size=True)
# Wan2.2 video (CONTRACTS.md: video): three sizes, about 5 s of video a clip; I2V takes the first frame.
VIDEO_SIZES = ("1280x720", "720x1280", "960x960")
VIDEO_SECONDS = "5"
FAMILIES: tuple[tuple[tuple[str, ...], Family], ...] = (
    # (substrings of the lower-cased model id, family): the first that matches wins
    (
        ("i2v",),
        Family("Wan image-to-video", VIDEO_SIZES, negative_prompt=True, inputs=("image",), needs_input=True, video=True),
    ),
    (("t2v",), Family("Wan text-to-video", VIDEO_SIZES, negative_prompt=True, video=True)),
    (
        ("qwen-image-edit-2509",),
        Family("Qwen-Image-Edit-2509", (), negative_prompt=True, inputs=("image", "image2", "image3"), needs_input=True),
    ),
    (("qwen-image-edit",), Family("Qwen-Image-Edit", (), negative_prompt=True, inputs=("image",), needs_input=True)),
    (("qwen-image",), Family("Qwen-Image", QWEN_IMAGE_SIZES)),
    (
        ("kontext-max", "kontext-pro"),
        Family("FLUX.1-Kontext max/pro", ASPECT_RATIOS, size_field="aspect_ratio", inputs=("input_image",), needs_input=True),
    ),
    (("kontext",), Family("FLUX.1-Kontext", (), inputs=("image",), needs_input=True)),
    (("kolors",), Family("Kolors", KOLORS_SIZES, negative_prompt=True, batch_size=True, inputs=("image",))),
    (("z-image",), Family("Z-Image", Z_IMAGE_SIZES)),
    (("flux.2",), Family("FLUX.2", FLUX2_SIZES)),
    (("pro/", "flux.1-dev"), Family("FLUX free size", FREE_SIZES, FREE_MAX_PIXELS)),
    (
        ("stable-diffusion-xl", "stable-diffusion-3-medium"),
        Family("SDXL free size", FREE_SIZES, FREE_MAX_PIXELS, negative_prompt=True, batch_size=True),
    ),
    (("flux.1-schnell",), Family("FLUX.1-schnell", FLUX_SCHNELL_SIZES)),
    (("stable-diffusion-3-5-large",), Family("SD 3.5 large", FLUX_SCHNELL_SIZES, negative_prompt=True, batch_size=True)),
    (("stable-diffusion-2-1",), Family("SD 2.1", SD21_SIZES, negative_prompt=True, batch_size=True)),
    (("stable-diffusion", "openjourney", "anything-v3", "waifu-diffusion", "photoreal"), _SD),
)
OTHER = Family("other", SEED_SIZES)


def family(model: str) -> Family:
    """The family of `model` by its id (CONTRACTS.md section 1); the seed's sizes for any other."""
    m = model.lower()
    for needles, found in FAMILIES:
        if any(needle in m for needle in needles):
            # FLUX.1-dev's "pro/" rule must not catch Kontext pro, nor "qwen-image" an edit model:
            # the order of FAMILIES sees to both.
            return found
    return OTHER


# Every image model the seed names, plus today's SiliconFlow image models. Today's come first:
# the first entry is the default when a client sends no model, so it should be one that answers.
DEFAULT_MODELS: tuple[str, ...] = (
    "Kwai-Kolors/Kolors",
    "Qwen/Qwen-Image",
    "Qwen/Qwen-Image-Edit-2509",
    "Qwen/Qwen-Image-Edit",
    "Tongyi-MAI/Z-Image-Turbo",
    "black-forest-labs/FLUX.1-Kontext-dev",
    "black-forest-labs/FLUX.1-schnell",
    "black-forest-labs/FLUX.1-dev",
    "black-forest-labs/FLUX.1",
    "stabilityai/stable-diffusion-xl-base-1.0",
    "stabilityai/stable-diffusion-2-1-base",
    "runwayml/stable-diffusion-v1-5",
    "CompVis/stable-diffusion-v1-4",
    "stabilityai/stable-diffusion-2-base",
    "prompthero/openjourney",
    "Linaqruf/anything-v3.0",
    "hakurei/waifu-diffusion",
    "dreamlike-art/dreamlike-photoreal-2.0",
)


# The video models offered when SiliconFlow's list cannot be asked.
DEFAULT_VIDEO_MODELS: tuple[str, ...] = ("Wan-AI/Wan2.2-T2V-A14B", "Wan-AI/Wan2.2-I2V-A14B")


# What a model's id looks like (SiliconFlow's ids: `org/name`, a `Pro/` prefix at most): ids that
# are offered to clients and shown in answers, and the models an alias may stand for.
MODEL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}(?:/[A-Za-z0-9][A-Za-z0-9._+:-]{0,95}){0,2}")
_ALIAS_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:+/-]{0,99}")

# OpenAI's model names, for clients that offer only those (Cherry Studio's new-api painting page
# offers gpt-image-1 and gpt-image-2; the AI SDK's defaults): what each draws with here. The best
# pictures for the names of OpenAI's best, the free model for the small ones, Wan2.2 for Sora.
DEFAULT_ALIASES: dict[str, str] = {
    "gpt-image-1": "Qwen/Qwen-Image",
    "gpt-image-1-mini": "Kwai-Kolors/Kolors",
    "gpt-image-2": "Qwen/Qwen-Image",
    "dall-e-3": "Qwen/Qwen-Image",
    "dall-e-2": "Kwai-Kolors/Kolors",
    "sora-2": "Wan-AI/Wan2.2-T2V-A14B",
}


def parse_aliases(raw: str) -> tuple[tuple[str, str], ...]:
    """MODEL_ALIASES: `name=model,…` over DEFAULT_ALIASES (empty: those alone; `off`: none), as
    (name, model) pairs. Raises ValueError naming the first bad entry: not `name=model`, a name or
    a model that is not an id, a name given twice, a name that is a model's own id, an alias of
    itself or of another alias."""
    value = raw.strip()
    if value.lower() in ("off", "none"):
        return ()
    aliases = dict(DEFAULT_ALIASES)
    given: set[str] = set()
    for entry in (part.strip() for part in value.split(",")):
        if not entry:
            continue
        name, sep, model = (piece.strip() for piece in entry.partition("="))
        shown = entry if len(entry) <= 80 else entry[:77] + "..."
        if not sep or not _ALIAS_NAME.fullmatch(name) or not MODEL_ID.fullmatch(model):
            raise ValueError(f"{shown!r} is not name=model, like gpt-image-1=Qwen/Qwen-Image")
        if name in given:
            raise ValueError(f"{name!r} is given twice")
        if name in (*DEFAULT_MODELS, *DEFAULT_VIDEO_MODELS):
            raise ValueError(f"{name!r} is a model's own id: an alias must be a name no model has")
        given.add(name)
        aliases[name] = model
    for name, model in aliases.items():
        if model == name or model in aliases:
            raise ValueError(f"{name}={model}: an alias must name a model, not an alias")
    return tuple(aliases.items())


class ModelCatalog:
    """The image models to offer: `configured` (MODELS) exactly when given; else SiliconFlow's
    own list (text-to-image and image-to-image), asked when first needed and every `refresh`
    seconds in the background, and the built-in list until it answers or when it cannot."""

    def __init__(
        self,
        configured: tuple[str, ...] | None,
        fetch: Callable[[], list[str]],
        *,
        refresh: float = 3600.0,
        fallback: tuple[str, ...] = (),
    ):
        self._configured, self._fetch, self._refresh = configured, fetch, refresh
        self._fallback = fallback or (*DEFAULT_MODELS, *DEFAULT_VIDEO_MODELS)
        self._models: tuple[str, ...] | None = None
        self._refresher = Background("model-catalog", self._run)

    def models(self) -> tuple[str, ...]:
        if self._configured:
            return self._configured
        self._ensure_running()
        return self._models or self._fallback

    def default(self) -> str:
        """The model for a request that names none: the first of ours SiliconFlow offers."""
        offered = self.models()
        pictures = [m for m in offered if not family(m).video]
        return next((m for m in DEFAULT_MODELS if m in pictures and not family(m).needs_input), (pictures or offered)[0])

    def default_editor(self) -> str | None:
        """The model for an edit that names none: the first offered edit model, else one that
        takes a picture at all (Kolors, image-to-image)."""
        offered = [m for m in self.models() if not family(m).video]
        return next((m for m in offered if family(m).needs_input), next((m for m in offered if family(m).edits), None))

    def _ensure_running(self) -> None:
        # The first request waits for one answer (bounded by the call's timeout).
        self._refresher.start(before=self._load)

    def _run(self, stopping: threading.Event) -> None:
        while not stopping.wait(self._refresh):
            self._load()

    def _load(self) -> None:
        try:
            found = self._fetch()
        except Exception as exc:  # SiliconFlow cannot be asked: the list we had, or the built-in one
            log.warning(
                "the image model list could not be fetched (%s); offering the %s",
                type(exc).__name__,
                "last list" if self._models else "built-in list",
            )
            return
        if found:
            ours = [m for m in (*DEFAULT_MODELS, *DEFAULT_VIDEO_MODELS) if m in found]
            self._models = tuple(ours + sorted(m for m in found if m not in ours))

    def stop(self) -> None:
        self._refresher.stop()
