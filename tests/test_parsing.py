"""The prompt mini-language: table-driven, pure, and never raising (hypothesis)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.text import markdown_safe
from drawing.reasons import zh
from parsing import (
    SEED_MAX,
    accepts_negative_prompt,
    find_banned,
    parse,
)
from siliconflow.families import DEFAULT_MODELS, FREE_MAX_PIXELS
from siliconflow.families import family as size_rule

KOLORS, QWEN, SDXL, SCHNELL, OTHER = (
    "Kwai-Kolors/Kolors",
    "Qwen/Qwen-Image",
    "stabilityai/stable-diffusion-xl-base-1.0",
    "black-forest-labs/FLUX.1-schnell",
    "prompthero/openjourney",
)
EDIT = "Qwen/Qwen-Image-Edit-2509"


@pytest.mark.parametrize(
    "text, count",
    [
        ("pic:3 画一只猫", 3),
        ("画一只猫 pic:3", 3),
        ("画一只pic:3猫", 3),
        ("画一只猫 pic：3", 3),
        ("画一只猫 pic: 3", 3),
        ("a cat PIC:2", 2),
        ("a cat Pic : 2 at night", 2),
        ("a cat", 1),
        ("a cat pic:0", 1),
        ("a cat pic:9", 4),
        ("a cat pic:99999999999999999999", 4),
        ("a cat pic:" + "9" * 5000, 4),
        ("an epic:2 battle", 1),  # "epic:" is not "pic:"
    ],
)
def test_count(text, count):
    assert parse(text, OTHER, 4).count == count


def test_count_clamp_is_said():
    assert tuple(map(zh, parse("a cat pic:10", OTHER, 4).notes)) == ("每次最多 4 张，已按 4 张生成",)
    assert parse("a cat pic:2", OTHER, 4).notes == ()


@pytest.mark.parametrize(
    "text, size",
    [
        ("a cat 1024x768", "1024x768"),
        ("a cat 1024X768", "1024x768"),
        ("a cat 1024×768", "1024x768"),
        ("a cat 1024*768", "1024x768"),
        ("1024 x 768 a cat", "1024x768"),
        ("画一只1024x768的猫", "1024x768"),
        ("a cat 576x1024", "576x1024"),
        ("a 10x10 grid", "1024x1024"),  # not a resolution
    ],
)
def test_explicit_resolution(text, size):
    assert parse(text, OTHER, 4).size == size


@pytest.mark.parametrize(
    "text, size",
    [
        ("16:9 a cat", "1024x576"),
        ("a cat 16:9", "1024x576"),
        ("a 16:9 cat", "1024x576"),
        ("a cat 16：9", "1024x576"),
        ("画一只可爱的猫咪，9:16比例", "576x1024"),
        ("9:16比例的猫", "576x1024"),
        ("比例9:16的猫", "576x1024"),
        ("比例为 9：16 的猫", "576x1024"),
        ("猫3:4", "768x1024"),
        ("猫 4:3", "1024x768"),
        ("猫 3:2", "768x512"),
        ("猫 2:3", "512x768"),
        ("猫 1:1", "1024x1024"),
        ("猫 2:1", "1024x512"),
        ("猫 1:2", "512x1024"),
        ("猫 21:9", "1024x512"),  # nearest supported shape
        ("猫 5:4", "1024x768"),
        ("猫 0:9", "1024x1024"),  # not a ratio
    ],
)
def test_ratio(text, size):
    assert parse(text, OTHER, 4).size == size


@pytest.mark.parametrize(
    "text, size, prompt",
    [
        ("square, a fox", "1024x1024", "a fox"),
        ("square avatar of a fox", "1024x1024", "square avatar of a fox"),
        ("a fox, square", "1024x1024", "a fox"),
        ("正方形头像", "1024x1024", "头像"),
        ("方图 一只狐狸", "1024x1024", "一只狐狸"),
        ("landscape 城市夜景", "1024x576", "城市夜景"),
        ("city at night, WIDE", "1024x576", "city at night"),
        ("横向 城市", "1024x576", "城市"),
        ("城市横屏", "1024x576", "城市"),
        ("横版海报", "1024x576", "海报"),
        ("宽屏 山水", "1024x576", "山水"),
        ("portrait 少女", "576x1024", "少女"),
        ("纵向 少女", "576x1024", "少女"),
        ("竖屏少女", "576x1024", "少女"),
        ("竖版 海报", "576x1024", "海报"),
        ("星空手机壁纸", "576x1024", "星空"),
        ("横图 城市夜景", "1024x576", "城市夜景"),
        ("竖图 少女", "576x1024", "少女"),
        ("改成 16:9 横图", "1024x576", "改成"),  # the shape word beside the ratio goes with it
        # An English word inside a phrase sets the shape and stays in the prompt.
        ("a portrait of an old man", "576x1024", "a portrait of an old man"),
        ("a wide river", "1024x576", "a wide river"),
        ("widescreen sunset", "1024x1024", "widescreen sunset"),  # not the word "wide"
    ],
)
def test_keywords(text, size, prompt):
    parsed = parse(text, OTHER, 4)
    assert (parsed.size, parsed.prompt) == (size, prompt)


def test_explicit_size_beats_ratio_beats_keyword():
    assert parse("横屏 9:16 猫", OTHER, 4).size == "576x1024"
    assert parse("16:9 512x1024 猫", OTHER, 4).size == "512x1024"


@pytest.mark.parametrize(
    "text, prompt",
    [
        ("画一只可爱的猫咪，9:16比例 pic:3", "画一只可爱的猫咪"),
        ("画一只猫，16:9，要可爱", "画一只猫，要可爱"),
        ("  a  cat   pic:2  ", "a  cat"),
        ("a cat pic:2 on a mat", "a cat on a mat"),
        ("a red cat 1024x768 seed:7 pic:2 on a mat", "a red cat on a mat"),
        ("pic:2 seed:7 16:9 --no blur", ""),
    ],
)
def test_tokens_are_removed_and_the_rest_is_kept_as_typed(text, prompt):
    assert parse(text, OTHER, 4).prompt == prompt


@pytest.mark.parametrize(
    "text, seed",
    [("a cat seed:12345", 12345), ("seed：7 猫", 7), ("a cat SEED=0", 0), (f"a cat seed:{SEED_MAX}", SEED_MAX)],
)
def test_seed(text, seed):
    parsed = parse(text, OTHER, 4)
    assert parsed.seed == seed and "seed" not in parsed.prompt.lower()


def test_seed_out_of_range_is_dropped_and_said():
    parsed = parse(f"a cat seed:{SEED_MAX + 1}", OTHER, 4)
    assert parsed.seed is None and parsed.prompt == "a cat"
    assert any("种子" in zh(note) for note in parsed.notes)


@pytest.mark.parametrize(
    "text, negative, prompt",
    [
        ("a cat --no text, watermark", "text, watermark", "a cat"),
        ("a cat, negative: blur, low quality", "blur, low quality", "a cat"),
        ("a cat negative_prompt：blur", "blur", "a cat"),
        ("画一只猫 负面提示词：模糊，水印", "模糊，水印", "画一只猫"),
        ("a cat --no blur\nat night 16:9", "blur", "a cat\nat night"),
        ("a cat --no", None, "a cat"),
        ("a cat--no blur", None, "a cat--no blur"),  # --no must start a word
    ],
)
def test_negative_prompt(text, negative, prompt):
    parsed = parse(text, KOLORS, 4)
    assert (parsed.negative_prompt, parsed.prompt) == (negative, prompt)


def test_negative_prompt_is_dropped_with_a_note_for_models_that_take_none():
    parsed = parse("a cat --no text", QWEN, 4)
    assert parsed.negative_prompt is None
    assert tuple(map(zh, parsed.notes)) == ("Qwen/Qwen-Image 不支持负面提示词，已忽略：text",)
    assert accepts_negative_prompt(KOLORS) and accepts_negative_prompt(SDXL) and not accepts_negative_prompt(SCHNELL)


@pytest.mark.parametrize(
    "model, text, size, adjusted",
    [
        (QWEN, "猫 16:9", "1664x928", False),
        (QWEN, "猫 9:16", "928x1664", False),
        (QWEN, "猫 4:3", "1472x1140", False),
        (QWEN, "猫 3:2", "1584x1056", False),
        (QWEN, "猫", "1328x1328", False),
        (QWEN, "猫 1000x1000", "1328x1328", True),
        (KOLORS, "猫 9:16", "720x1280", False),
        (KOLORS, "猫 3:4", "960x1280", False),
        (KOLORS, "猫 1:2", "720x1440", False),
        (KOLORS, "猫 16:9", "1024x1024", True),  # Kolors has no landscape size
        (SCHNELL, "猫 16:9", "1024x576", False),
        (SCHNELL, "猫 1000x1000", "1024x1024", True),
        (SDXL, "猫 1000x1000", "1000x1000", False),  # free sizes up to 2,359,296 pixels
        (SDXL, "猫 2048x2048", "1024x1024", True),  # over the pixel budget
        (SDXL, "猫 16:9", "1024x576", False),
        ("stabilityai/stable-diffusion-2-1", "猫", "512x512", False),
        (EDIT, "猫 16:9", None, False),
    ],
)
def test_size_per_model(model, text, size, adjusted):
    parsed = parse(text, model, 4)
    assert (parsed.size, parsed.size_adjusted) == (size, adjusted)


@pytest.mark.parametrize(
    "text, banned",
    [
        ("a NUDE figure", "nude"),
        ("sexy pose", "sex"),
        ("Essex countryside", None),
        ("血腥场面", "血腥"),
        ("a cat", None),
    ],
)
def test_find_banned(text, banned):
    assert find_banned(text, ("nude", "sex", "血腥")) == banned


def test_markdown_safe_keeps_one_line_without_link_syntax():
    safe = markdown_safe("a](http://x) ![b|c\n\nd (e)")
    assert "\n" not in safe and not set("[]()|") & set(safe)


# --- properties ----------------------------------------------------------------------------------

MODELS = [*DEFAULT_MODELS, EDIT, "stabilityai/stable-diffusion-2-1", "some/unknown-model"]
TOKENS = st.sampled_from(
    [
        "pic:",
        "pic：",
        "seed:",
        "--no ",
        "negative:",
        "x",
        "×",
        "*",
        ":",
        "：",
        "比例",
        "横屏",
        "portrait",
        "square",
        "16",
        "9",
        "1024",
        "768",
        "0",
        "99999999999",
        " ",
        "，",
        "\n",
        "猫",
        "a cat",
    ]
)
TEXTS = st.one_of(st.text(max_size=300), st.lists(TOKENS, max_size=40).map("".join))


@settings(max_examples=400, deadline=None)
@given(text=TEXTS, model=st.sampled_from(MODELS), max_images=st.integers(1, 16))
def test_parse_never_raises_and_stays_in_range(text, model, max_images):
    parsed = parse(text, model, max_images)
    assert 1 <= parsed.count <= max_images
    rule = size_rule(model)
    if not rule.sizes:
        assert parsed.size is None
    elif parsed.size not in rule.sizes:
        w, h = (int(v) for v in parsed.size.split("x"))
        assert rule.max_free_pixels and w * h <= FREE_MAX_PIXELS
    assert parsed.seed is None or 0 <= parsed.seed <= SEED_MAX
    assert len(parsed.prompt) <= len(text)


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=300))
def test_markdown_safe_never_leaves_link_syntax(text):
    safe = markdown_safe(text)
    assert not set("[]()|\n\r") & set(safe) and len(safe) <= 200
