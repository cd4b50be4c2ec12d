"""Model families (families.py): what each model takes (sizes, fields, input pictures), matched by
its id whatever the case, in the order that keeps look-alike ids apart; and the catalog of models
to offer: the operator's list exactly, else SiliconFlow's (over real HTTP from the fake), ours
first, the built-in list while it cannot be asked, the last list when it fails later."""

from __future__ import annotations

import pytest

from config import Settings
from core.errors import ConfigError
from siliconflow.client import image_models, video_models
from siliconflow.families import (
    ASPECT_RATIOS,
    DEFAULT_ALIASES,
    DEFAULT_MODELS,
    DEFAULT_VIDEO_MODELS,
    FREE_MAX_PIXELS,
    KOLORS_SIZES,
    QWEN_IMAGE_SIZES,
    SEED_SIZES,
    VIDEO_SIZES,
    ModelCatalog,
    family,
    parse_aliases,
)
from siliconflow.outbound import make_http
from tests.fake_siliconflow import EDIT_MODELS, IMAGE_MODELS
from tests.helpers import wait_until


@pytest.mark.parametrize(
    "model, name, sizes, inputs, needs_input",
    [
        ("Kwai-Kolors/Kolors", "Kolors", KOLORS_SIZES, ("image",), False),
        ("Qwen/Qwen-Image", "Qwen-Image", QWEN_IMAGE_SIZES, (), False),
        ("Qwen/Qwen-Image-Edit", "Qwen-Image-Edit", (), ("image",), True),
        ("Qwen/Qwen-Image-Edit-2509", "Qwen-Image-Edit-2509", (), ("image", "image2", "image3"), True),
        ("black-forest-labs/FLUX.1-Kontext-dev", "FLUX.1-Kontext", (), ("image",), True),
        ("black-forest-labs/FLUX.1-Kontext-pro", "FLUX.1-Kontext max/pro", ASPECT_RATIOS, ("input_image",), True),
        ("Pro/black-forest-labs/FLUX.1-schnell", "FLUX free size", None, (), False),
        ("black-forest-labs/FLUX.1-schnell", "FLUX.1-schnell", None, (), False),
        ("Wan-AI/Wan2.2-I2V-A14B", "Wan image-to-video", VIDEO_SIZES, ("image",), True),
        ("Wan-AI/Wan2.2-T2V-A14B", "Wan text-to-video", VIDEO_SIZES, (), False),
        ("someone/brand-new-model", "other", SEED_SIZES, (), False),
    ],
)
def test_each_model_is_read_as_its_family_and_look_alike_ids_are_kept_apart(model, name, sizes, inputs, needs_input):
    """Kontext pro is not FLUX.1-dev's "pro/" family, an edit model not Qwen-Image, the Pro/ build
    of schnell takes free sizes where the plain one does not."""
    found = family(model)
    assert (found.name, found.inputs, found.needs_input) == (name, inputs, needs_input)
    if sizes is not None:
        assert found.sizes == sizes
    assert family(model.upper()) == found  # ids are matched whatever their case


def test_what_a_family_takes_follows_siliconflows_contract():
    """The sizes each listed model accepts, and the fields for input pictures of each edit model,
    are those the upstream checks (as the fake SiliconFlow enforces them): nothing refused with 400."""
    for model, accepted in IMAGE_MODELS.items():
        assert family(model).sizes == accepted, model
    for model, fields in EDIT_MODELS.items():
        assert family(model).inputs == fields, model
    assert family("black-forest-labs/FLUX.1-Kontext-pro").size_field == "aspect_ratio"
    assert family("black-forest-labs/FLUX.1-dev").max_free_pixels == FREE_MAX_PIXELS


def test_only_the_families_that_take_them_get_a_negative_prompt_or_a_batch():
    assert family("Kwai-Kolors/Kolors").negative_prompt and family("Kwai-Kolors/Kolors").batch_size
    assert family("stabilityai/stable-diffusion-xl-base-1.0").batch_size
    assert not family("Qwen/Qwen-Image").negative_prompt and not family("Qwen/Qwen-Image").batch_size
    assert not family("black-forest-labs/FLUX.1-schnell").negative_prompt
    assert family("Wan-AI/Wan2.2-T2V-A14B").video and not family("Kwai-Kolors/Kolors").video


# --- the catalog -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def http():
    return make_http(4)


@pytest.fixture
def catalog_of(fake, http):
    """`catalog_of(configured, **kwargs)`: a ModelCatalog asking the fake SiliconFlow as the service does."""
    made: list[ModelCatalog] = []

    def fetch() -> list[str]:
        return image_models(http, fake.url, "sk-good-fam1", 5) + video_models(http, fake.url, "sk-good-fam1", 5)

    def make(configured=None, **kwargs) -> ModelCatalog:
        made.append(ModelCatalog(configured, fetch, **kwargs))
        return made[-1]

    yield make
    for catalog in made:
        catalog.stop()


def _listings(fake) -> int:
    with fake.state.lock:
        return sum(1 for call in fake.state.calls if call.path == "/v1/models")


def test_the_operators_list_is_offered_exactly_and_siliconflow_is_not_asked(fake, catalog_of):
    catalog = catalog_of(("Qwen/Qwen-Image", "my/private-model"))
    assert catalog.models() == ("Qwen/Qwen-Image", "my/private-model")
    assert _listings(fake) == 0


def test_siliconflows_list_is_offered_ours_first_in_our_order_then_the_rest_sorted(fake, catalog_of):
    fake.state.extra_models = ("zeta/new-model", "alpha/new-model")
    models = catalog_of().models()
    ours = [m for m in (*DEFAULT_MODELS, *DEFAULT_VIDEO_MODELS) if m in models]
    assert list(models[: len(ours)]) == ours and models[0] == "Kwai-Kolors/Kolors"
    rest = list(models[len(ours) :])
    assert rest == sorted(rest) and {"alpha/new-model", "zeta/new-model", "black-forest-labs/FLUX.2-pro"} <= set(rest)
    assert "Wan-AI/Wan2.2-I2V-A14B" in models and "Qwen/Qwen2.5-7B-Instruct" not in models  # videos yes, chat no
    assert "stabilityai/stable-diffusion-2-base" not in models  # not served today: not offered


def test_the_built_in_list_until_siliconflow_answers_and_the_last_list_when_it_fails_again(fake, catalog_of, logged):
    fake.state.models_down = True
    catalog = catalog_of(refresh=0.05)
    assert catalog.models() == (*DEFAULT_MODELS, *DEFAULT_VIDEO_MODELS)
    assert logged.lines("could not be fetched .* offering the built-in list")
    fake.state.extra_models = ("zeta/new-model",)
    fake.state.models_down = False
    assert wait_until(lambda: "zeta/new-model" in catalog.models())  # the next refresh takes it up
    fake.state.models_down = True
    assert wait_until(lambda: logged.lines("offering the last list"))
    assert "zeta/new-model" in catalog.models()  # a failing refresh does not fall back to the built-in list


@pytest.mark.parametrize(
    "offered, default, editor",
    [
        (("Wan-AI/Wan2.2-T2V-A14B", "Qwen/Qwen-Image-Edit", "Qwen/Qwen-Image"), "Qwen/Qwen-Image", "Qwen/Qwen-Image-Edit"),
        (("my/private-model", "Kwai-Kolors/Kolors"), "Kwai-Kolors/Kolors", "Kwai-Kolors/Kolors"),
        (("Qwen/Qwen-Image-Edit-2509", "Tongyi-MAI/Z-Image-Turbo"), "Tongyi-MAI/Z-Image-Turbo", "Qwen/Qwen-Image-Edit-2509"),
        (("my/private-model", "other/model"), "my/private-model", None),
        (("Qwen/Qwen-Image-Edit-2509",), "Qwen/Qwen-Image-Edit-2509", "Qwen/Qwen-Image-Edit-2509"),
        (("Wan-AI/Wan2.2-T2V-A14B",), "Wan-AI/Wan2.2-T2V-A14B", None),
    ],
)
def test_a_request_that_names_no_model_gets_a_picture_model_that_answers(catalog_of, offered, default, editor):
    """The default draws from a prompt alone (no video, no edit model) where one is offered; an edit
    without a model goes to an edit model, else to one that takes a picture at all."""
    catalog = catalog_of(offered)
    assert catalog.default() == default and catalog.default_editor() == editor


# --- OpenAI's model names (MODEL_ALIASES) ---


def test_aliases_default_to_openais_names_and_take_the_operators_over_them():
    assert dict(parse_aliases("")) == DEFAULT_ALIASES
    assert set(DEFAULT_ALIASES) == {"gpt-image-1", "gpt-image-1-mini", "gpt-image-2", "dall-e-3", "dall-e-2", "sora-2"}
    assert all(family(model).video == (name == "sora-2") for name, model in DEFAULT_ALIASES.items())
    read = dict(parse_aliases(" gpt-image-1 = Kwai-Kolors/Kolors , my-painter=Tongyi-MAI/Z-Image-Turbo,"))
    assert read["gpt-image-1"] == "Kwai-Kolors/Kolors" and read["my-painter"] == "Tongyi-MAI/Z-Image-Turbo"
    assert read["dall-e-3"] == DEFAULT_ALIASES["dall-e-3"]  # the others stay
    assert parse_aliases("off") == ()


@pytest.mark.parametrize(
    "raw, says",
    [
        ("gpt-image-1", "is not name=model"),
        ("gpt-image-1=", "is not name=model"),
        ("=Qwen/Qwen-Image", "is not name=model"),
        ("gpt image=Qwen/Qwen-Image", "is not name=model"),
        ("gpt-image-1=Qwen/Qwen Image", "is not name=model"),
        ("a=Qwen/Qwen-Image,a=Kwai-Kolors/Kolors", "given twice"),
        ("Kwai-Kolors/Kolors=Qwen/Qwen-Image", "a model's own id"),
        ("mine=gpt-image-1", "not an alias"),
        ("loop=loop", "not an alias"),
    ],
)
def test_a_malformed_alias_is_refused_naming_the_entry(raw, says):
    with pytest.raises(ValueError, match=says):
        parse_aliases(raw)
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"MODEL_ALIASES": raw})
    assert "MODEL_ALIASES" in str(caught.value)


def test_an_alias_the_operator_wrote_must_name_a_model_models_offers():
    with pytest.raises(ConfigError, match="MODEL_ALIASES: gpt-image-1=Qwen/Qwen-Image-Edit names a model"):
        Settings.from_env({"MODELS": "Kwai-Kolors/Kolors", "MODEL_ALIASES": "gpt-image-1=Qwen/Qwen-Image-Edit"})
    # the built-in ones are not held to MODELS: one whose model is not offered answers a 400 when asked for
    assert Settings.from_env({"MODELS": "Kwai-Kolors/Kolors"}).aliases["gpt-image-1"] == "Qwen/Qwen-Image"
