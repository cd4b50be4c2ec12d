"""The prompt mini-language: table-driven, pure."""

from __future__ import annotations

import pytest

from parsing import find_banned, markdown_safe, parse

KOLORS, QWEN, SDXL, OTHER = "Kwai-Kolors/Kolors", "Qwen/Qwen-Image", "stabilityai/stable-diffusion-xl-base-1.0", "x/y"


@pytest.mark.parametrize(
    "text, model, prompt, count, size",
    [
        ("画一只可爱的猫咪，9:16比例", OTHER, "画一只可爱的猫咪", 1, "576x1024"),
        ("画一只可爱的猫咪，9:16比例 pic:3", KOLORS, "画一只可爱的猫咪", 3, "720x1280"),
        ("比例9:16的小狗", OTHER, "的小狗", 1, "576x1024"),
        ("a cat 16：9", QWEN, "a cat", 1, "1664x928"),
        ("pic：2 a cat", OTHER, "a cat", 2, "1024x1024"),
        ("a cat PIC: 2", OTHER, "a cat", 2, "1024x1024"),
        ("a cat 1024x768", OTHER, "a cat", 1, "1024x768"),
        ("a cat 1024×768 please", OTHER, "a cat please", 1, "1024x768"),
        ("a cat 1000x1000", QWEN, "a cat", 1, "1328x1328"),
        ("a cat 1000*1000", SDXL, "a cat", 1, "1000x1000"),
        ("横屏 城市夜景", OTHER, "城市夜景", 1, "1024x576"),
        ("手机壁纸 星空", KOLORS, "星空", 1, "720x1280"),
        ("正方形头像", OTHER, "头像", 1, "1024x1024"),
        ("a cat", OTHER, "a cat", 1, "1024x1024"),
        ("a cat pic:0", OTHER, "a cat", 1, "1024x1024"),
        ("a cat pic:99999999999999999999", OTHER, "a cat", 4, "1024x1024"),
        ("a cat 3:2", OTHER, "a cat", 1, "768x512"),
        ("a cat 21:9", OTHER, "a cat", 1, "1024x512"),
    ],
)
def test_parse(text, model, prompt, count, size):
    parsed = parse(text, model, 4)
    assert (parsed.prompt, parsed.count, parsed.size) == (prompt, count, size)


def test_seed_and_negative_prompt():
    parsed = parse("a cat seed:42 --no text, watermark", KOLORS, 4)
    assert (parsed.prompt, parsed.seed, parsed.negative_prompt) == ("a cat", 42, "text, watermark")


def test_size_adjustment_is_reported_only_when_the_shape_changes():
    assert parse("a cat 16:9", KOLORS, 4).size_adjusted  # Kolors has no landscape size
    assert not parse("a cat 9:16", KOLORS, 4).size_adjusted
    assert parse("a cat 1000x1000", QWEN, 4).size_adjusted
    assert not parse("a cat", QWEN, 4).size_adjusted


def test_edit_models_get_no_size():
    assert parse("a cat 16:9", "Qwen/Qwen-Image-Edit-2509", 4).size is None


@pytest.mark.parametrize(
    "text, banned",
    [("a NUDE figure", "nude"), ("sexy pose", "sex"), ("Essex countryside", None), ("血腥场面", "血腥"), ("a cat", None)],
)
def test_find_banned(text, banned):
    assert find_banned(text, ("nude", "sex", "血腥")) == banned


def test_markdown_safe_keeps_one_line_without_link_syntax():
    safe = markdown_safe("a](http://x) ![b|c\n\nd (e)")
    assert "\n" not in safe and not set("[]()|") & set(safe)
