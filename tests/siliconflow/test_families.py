"""What each model family takes (families.py), and OpenAI's model names read from MODEL_ALIASES."""

from __future__ import annotations

import pytest

from config import Settings
from core.errors import ConfigError
from siliconflow.families import DEFAULT_ALIASES, family, parse_aliases


def test_families_are_found_by_the_models_id():
    assert family("Qwen/Qwen-Image-Edit-2509").inputs == ("image", "image2", "image3")
    assert family("Qwen/Qwen-Image").inputs == () and not family("Qwen/Qwen-Image").needs_input
    assert family("Kwai-Kolors/Kolors").batch_size and family("Kwai-Kolors/Kolors").edits
    assert family("Wan-AI/Wan2.2-I2V-A14B").video and family("Wan-AI/Wan2.2-I2V-A14B").needs_input
    assert family("black-forest-labs/FLUX.1-Kontext-pro").size_field == "aspect_ratio"


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
