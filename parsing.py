"""The prompt mini-language: what a user types into a chat box, read into a drawing request.

Pure: no Flask, no I/O. `parse` never raises on any string.

Regexes here avoid `\\b`: Python's `\\b` sees no boundary between `16` and `比` (both are word
characters), so "9:16比例" would not match. Digit and letter look-arounds are used instead.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

SEED_MAX = 9_999_999_999

# The seed's own table, used for any model without a documented list of sizes.
SEED_SIZES: tuple[str, ...] = (
    "1024x1024", "512x1024", "1024x512", "768x512", "512x768",
    "768x1024", "1024x768", "1024x576", "576x1024",
)
KOLORS_SIZES = ("1024x1024", "960x1280", "768x1024", "720x1440", "720x1280")
QWEN_IMAGE_SIZES = ("1328x1328", "1664x928", "928x1664", "1472x1140", "1140x1472", "1584x1056", "1056x1584")
FLUX_SCHNELL_SIZES = ("1024x1024", "512x1024", "768x512", "768x1024", "1024x576", "576x1024")
SD21_SIZES = ("512x512", "512x1024", "768x512", "768x1024", "1024x576", "576x1024")
# FLUX.1-dev, Pro FLUX.1-schnell, SDXL, SD3-medium take their listed sizes "and others up to
# 2,359,296 pixels", so an explicit size within that budget is sent as typed.
FREE_SIZES = KOLORS_SIZES + ("1024x576", "1024x768", "768x512", "1024x512")
FREE_MAX_PIXELS = 2_359_296


@dataclass(frozen=True)
class SizeRule:
    sizes: tuple[str, ...]  # empty: the model's API takes no size
    max_free_pixels: int = 0  # > 0: explicit sizes within this many pixels pass unchanged


def size_rule(model: str) -> SizeRule:
    """The sizes `model` accepts, by model family (CONTRACTS.md section 1)."""
    m = model.lower()
    if "qwen-image-edit" in m:
        return SizeRule(())
    if "qwen-image" in m:
        return SizeRule(QWEN_IMAGE_SIZES)
    if "kolors" in m:
        return SizeRule(KOLORS_SIZES)
    if m.startswith("pro/") or any(k in m for k in ("flux.1-dev", "stable-diffusion-xl", "stable-diffusion-3-medium")):
        return SizeRule(FREE_SIZES, FREE_MAX_PIXELS)
    if "flux.1-schnell" in m or "stable-diffusion-3-5-large" in m:
        return SizeRule(FLUX_SCHNELL_SIZES)
    if "stable-diffusion-2-1" in m:
        return SizeRule(SD21_SIZES)
    return SizeRule(SEED_SIZES)


@dataclass(frozen=True)
class DrawRequest:
    """What the user asked for. `prompt` is their text with every recognised token removed."""

    prompt: str
    count: int
    size: str | None  # the size sent upstream; None when the model takes no size
    asked_size: str | None  # what the user typed ("16:9", "1000x1000", "横屏"), None if nothing
    asked_shape: tuple[int, int] | None = None  # (width, height) or a ratio, from `asked_size`
    seed: int | None = None
    negative_prompt: str | None = None

    @property
    def size_adjusted(self) -> bool:
        """True when the size sent is not what the user typed: another resolution or shape."""
        if self.size is None or self.asked_shape is None:
            return False
        w, h = self.asked_shape
        sw, sh = (int(v) for v in self.size.split("x"))
        if self.asked_size and "x" in self.asked_size:
            return (sw, sh) != (w, h)
        # Documented sizes are approximate ("1472x1140 (4:3)" is 3 % off), so allow 5 %.
        return abs(sw / sh - w / h) > 0.05 * (w / h)


_COUNT = re.compile(r"(?<![A-Za-z])pic\s*[:：]\s*(\d+)", re.IGNORECASE)
_SEED = re.compile(r"(?<![A-Za-z])seed\s*[:：=]\s*(\d{1,10})(?!\d)", re.IGNORECASE)
_NEGATIVE = re.compile(r"(?:(?<!\S)--no\s+|(?<![A-Za-z])negative\s*[:：]\s*)([^\n]+)", re.IGNORECASE)
_RESOLUTION = re.compile(r"(?<![\d.])(\d{2,5})\s*[xX×*]\s*(\d{2,5})(?![\d.])")
_RATIO = re.compile(
    r"(?:比例\s*(?:为|是)?\s*)?(?<![\d.])(\d{1,2})\s*[:：]\s*(\d{1,2})(?![\d.])(?:\s*(?:的)?比例)?"
)
_KEYWORDS: tuple[tuple[re.Pattern[str], tuple[int, int]], ...] = tuple(
    (re.compile("|".join(words), re.IGNORECASE), shape)
    for words, shape in (
        ((r"(?<![A-Za-z])square(?![A-Za-z])", "正方形", "方图"), (1, 1)),
        (
            (r"(?<![A-Za-z])(?:landscape|wide)(?![A-Za-z])", "横向", "横屏", "横版", "宽屏"),
            (16, 9),
        ),
        ((r"(?<![A-Za-z])portrait(?![A-Za-z])", "纵向", "竖屏", "竖版", "手机壁纸"), (9, 16)),
    )
)


def parse(text: str, model: str, max_images: int) -> DrawRequest:
    """Read count, size, seed and negative prompt out of `text` for `model`."""
    spans: list[tuple[int, int]] = []

    def take(match: re.Match[str]) -> None:
        spans.append(match.span())

    count = 1
    if m := _COUNT.search(text):
        take(m)
        digits = m.group(1).lstrip("0") or "0"
        count = max_images if len(digits) > 4 else int(digits)
    count = min(max(count, 1), max(max_images, 1))

    seed = None
    if m := _SEED.search(text):
        take(m)
        seed = int(m.group(1))

    negative = None
    if m := _NEGATIVE.search(text):
        take(m)
        negative = m.group(1).strip() or None

    asked: str | None = None
    shape: tuple[int, int] | None = None
    if m := _unclaimed(_RESOLUTION, text, spans):
        take(m)
        shape = (int(m.group(1)), int(m.group(2)))
        asked = f"{shape[0]}x{shape[1]}"
    elif m := _unclaimed(_RATIO, text, spans):
        w, h = int(m.group(1)), int(m.group(2))
        if w and h:
            take(m)
            shape = (w, h)
            asked = f"{w}:{h}"
    if shape is None:
        for pattern, keyword_shape in _KEYWORDS:
            if m := _unclaimed(pattern, text, spans):
                take(m)
                shape = keyword_shape
                asked = m.group(0)
                break

    return DrawRequest(
        prompt=_remove(text, spans),
        count=count,
        size=pick_size(model, shape, explicit=asked is not None and "x" in asked),
        asked_size=asked,
        asked_shape=shape,
        seed=seed,
        negative_prompt=negative,
    )


def pick_size(model: str, shape: tuple[int, int] | None, *, explicit: bool = False) -> str | None:
    """The size `model` accepts closest in aspect ratio to `shape` (default square)."""
    rule = size_rule(model)
    if not rule.sizes:
        return None
    w, h = shape if shape and shape[0] > 0 and shape[1] > 0 else (1, 1)
    if explicit and rule.max_free_pixels and w * h <= rule.max_free_pixels:
        return f"{w}x{h}"
    want = math.log(w / h)

    def distance(size: str) -> tuple[float, float]:
        sw, sh = (int(v) for v in size.split("x"))
        # Ties on aspect go to the size closest in area to an explicit request, else the largest.
        area_gap = abs(sw * sh - w * h) if explicit else -sw * sh
        return (round(abs(math.log(sw / sh) - want), 9), area_gap)

    return min(rule.sizes, key=distance)


def _unclaimed(pattern: re.Pattern[str], text: str, spans: list[tuple[int, int]]) -> re.Match[str] | None:
    """The first match of `pattern` that does not overlap a token already taken."""
    for m in pattern.finditer(text):
        if not any(m.start() < end and start < m.end() for start, end in spans):
            return m
    return None


def _remove(text: str, spans: list[tuple[int, int]]) -> str:
    out: list[str] = []
    pos = 0
    for start, end in sorted(spans):
        if start < pos:
            continue
        out.append(text[pos:start])
        pos = end
        # Removing a token between two spaces would leave a double space behind.
        if out[-1].endswith(" ") and text[pos:pos + 1] == " ":
            pos += 1
    out.append(text[pos:])
    return "".join(out).strip().strip("，,、;；").strip()


def find_banned(text: str, keywords: tuple[str, ...]) -> str | None:
    """The first banned keyword in `text`, case-insensitively, or None.

    ASCII keywords must start a word ("sexy" is caught, "Essex" is not); others match anywhere,
    since CJK text has no spaces between words.
    """
    lowered = text.lower()
    for keyword in keywords:
        if keyword.isascii() and keyword[:1].isalnum():
            if re.search(r"(?<![a-z0-9])" + re.escape(keyword), lowered):
                return keyword
        elif keyword in lowered:
            return keyword
    return None


def markdown_safe(text: str, limit: int = 200) -> str:
    """`text` on one line, safe inside `![...]`: no brackets, parentheses, pipes or newlines."""
    table = str.maketrans({"[": "【", "]": "】", "(": "（", ")": "）", "|": "｜", "\\": "＼", "<": "‹", ">": "›"})
    one_line = " ".join(text.split()).translate(table)
    return one_line if len(one_line) <= limit else one_line[: limit - 1] + "…"
