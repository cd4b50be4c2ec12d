"""The prompt mini-language: what a user types into a chat box, read into a drawing request.

Pure: no Flask, no I/O. `parse` never raises on any string.

Regexes here avoid `\\b`: Python's `\\b` sees no boundary between `16` and `比` (both are word
characters), so "9:16比例" would not match. Digit and letter look-arounds are used instead.
"""

from __future__ import annotations

import functools
import math
import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache

from core.errors import Reason
from siliconflow.families import FREE_SIDE_RANGE, family

SEED_MAX = 9_999_999_999
# Longest prompt sent upstream. SiliconFlow documents no limit; its models' text encoders read a few
# hundred tokens at most (CLIP 77, Kolors' ChatGLM 256, T5 512), and a hostile or runaway expansion
# must not become a 100 MB request. 1,000 characters hold the ~100-word expansion with room to spare.
MAX_PROMPT_CHARS = 1000
MAX_TEXT_CHARS = 8000  # what parse reads of a message: a drawing request is never longer


def accepts_negative_prompt(model: str) -> bool:
    """Kolors and the Stable Diffusion family take `negative_prompt`; FLUX and Qwen-Image do not."""
    return family(model).negative_prompt


@dataclass(frozen=True)
class DrawRequest:
    """What the user asked for. `prompt` is their text with every recognised token removed."""

    prompt: str
    count: int
    size: str | None  # the size sent upstream; None when the model takes no size
    asked_size: str | None = None  # what the user typed ("16:9", "1000x1000", "横屏"), None if nothing
    asked_shape: tuple[int, int] | None = None  # (width, height) or a ratio, from `asked_size`
    seed: int | None = None
    negative_prompt: str | None = None  # None too when the model cannot take one (see `notes`)
    notes: tuple[Reason, ...] = ()  # what was asked but changed or left out, and why
    asked_count: int | None = None  # the count as typed (`pic:N`), None if nothing

    @property
    def size_adjusted(self) -> bool:
        """True when the size sent is not what the user typed: another resolution or shape."""
        if self.size is None or self.asked_shape is None:
            return False
        w, h = self.asked_shape
        sw, sh = (int(v) for v in re.split("[x:]", self.size))
        if self.asked_size and "x" in self.asked_size:
            return (sw, sh) != (w, h)
        # Documented sizes are approximate ("1472x1140 (4:3)" is 3 % off), so allow 5 %.
        return abs(sw / sh - w / h) > 0.05 * (w / h)


# Each pattern starts with a literal or a digit and checks what stands before it afterwards
# (`pic(?<![A-Za-z]pic)`): a leading look-behind would stop `re` from skipping ahead to candidates,
# which made a 2 kB message cost ten times more.
_COUNT = re.compile(r"pic(?<![A-Za-z]pic)\s*[:：]\s*(\d+)", re.IGNORECASE)
_SEED = re.compile(r"seed(?<![A-Za-z]seed)\s*[:：=]\s*(\d+)", re.IGNORECASE)
_NEGATIVE = re.compile(
    r"(?:--no(?<!\S--no)(?:[ \t]+|(?=\n)|$)|negative(?<![A-Za-z]negative)(?:[ _]prompt)?\s*[:：]\s*"
    r"|负面(?:提示词?)?\s*[:：]\s*)([^\n]*)",
    re.IGNORECASE,
)
_DIGIT = re.compile(r"\d")
_RESOLUTION = re.compile(r"(\d{3,5})\s*[xX×*]\s*(\d{3,5})(?![\d.])")
_RATIO = re.compile(r"(\d{1,2})\s*[:：]\s*(\d{1,2})(?![\d.:：])")
# One \s* on each side of the optional word, never two in a row: two could split the same run of
# spaces in n ways each, and 20 kB of spaces took seconds (a quadratic regex is a denial of service).
_RATIO_BEFORE = re.compile(r"比例\s*(?:[为是]\s*)?$")  # "比例9:16", "比例为 9：16"
_RATIO_AFTER = re.compile(r"\s*的?(?:比例|[横竖方]图|[横竖][屏版])")  # "9:16比例", "9:16的比例", "16:9 横图"


_SHAPE_WORDS: tuple[tuple[tuple[str, ...], tuple[str, ...], tuple[int, int]], ...] = (
    # (English words, Chinese words, shape)
    (("square",), ("正方形", "方图"), (1, 1)),
    (("landscape", "wide"), ("横向", "横屏", "横版", "横图", "宽屏"), (16, 9)),
    (("portrait",), ("纵向", "竖屏", "竖版", "竖图", "手机壁纸"), (9, 16)),
)
_KEYWORDS: tuple[tuple[tuple[str, ...], re.Pattern[str], tuple[int, int]], ...] = tuple(
    (
        english + chinese,
        re.compile("|".join([f"{w}(?<![A-Za-z]{w})(?![A-Za-z])" for w in english] + list(chinese)), re.IGNORECASE),
        shape,
    )
    for english, chinese, shape in _SHAPE_WORDS
)
_SEPARATORS = "，,、;；。"


def parse(text: str, model: str, max_images: int) -> DrawRequest:
    """Read count, size, seed and negative prompt out of `text` for `model`. Never raises.

    Each recognised token is cut out of the text in turn; the rest stays as typed.
    """
    max_images = max(max_images, 1)
    notes: list[Reason] = []
    if len(text) > MAX_TEXT_CHARS:
        text = text[:MAX_TEXT_CHARS]
        notes.append(Reason.of("text_cut", chars=MAX_TEXT_CHARS))
    # A lone carriage return ends a line for the user, and for a Markdown renderer: so here too.
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    # Substring tests are far cheaper than a case-insensitive regex scan; most messages hold no tokens.
    lowered = text.lower()

    count, asked_count = 1, None
    if "pic" in lowered and (m := _COUNT.search(text)):
        text = _cut(text, m.span())
        digits = m.group(1).lstrip("0") or "0"
        # int() of thousands of digits is slow (and refused past 4300): any long number is "too many".
        count = max_images + 1 if len(digits) > 6 else int(digits)
        asked_count = count
        if count > max_images:
            notes.append(Reason.of("count_capped", most=max_images))
    count = min(max(count, 1), max_images)

    seed = None
    if "seed" in lowered and (m := _SEED.search(text)):
        text = _cut(text, m.span())
        digits = m.group(1).lstrip("0") or "0"
        if len(digits) <= 10 and int(digits) <= SEED_MAX:
            seed = int(digits)
        else:
            notes.append(Reason.of("seed_range", most=SEED_MAX))

    asked: str | None = None
    shape: tuple[int, int] | None = None
    has_digits = _DIGIT.search(text) is not None
    if has_digits and (m := _first_resolution(text)):
        shape = (int(m.group(1)), int(m.group(2)))
        asked = f"{shape[0]}x{shape[1]}"
        text = _cut(text, m.span())
    elif has_digits and (m := _first_ratio(text)):
        shape = (int(m.group(1)), int(m.group(2)))
        asked = f"{shape[0]}:{shape[1]}"
        start, end = m.span()
        if before := _RATIO_BEFORE.search(text, 0, start):
            start = before.start()
        if after := _RATIO_AFTER.match(text, end):
            end = after.end()
        text = _cut(text, (start, end))
    else:
        for words, pattern, keyword_shape in _KEYWORDS:
            if any(w in lowered for w in words) and (m := pattern.search(text)):
                shape, asked = keyword_shape, m.group(0)
                # "a portrait of a man": an English word inside a phrase describes the picture too,
                # so it sets the shape but stays in the prompt.
                if not asked.isascii() or _standalone(text, m):
                    text = _cut(text, m.span())
                break

    negative = None
    if any(w in lowered for w in ("--no", "negative", "负面")) and (m := _NEGATIVE.search(text)):
        text = _cut(text, m.span())
        negative = m.group(1).strip(" " + _SEPARATORS) or None
        if negative and not accepts_negative_prompt(model):
            notes.append(Reason.of("no_negative", model=model, negative=negative))
            negative = None

    size = pick_size(model, shape, explicit=asked is not None and "x" in asked)
    if asked is not None and size is None:  # an edit model: its picture keeps the input's size
        notes.append(Reason.of("size_follows_input", model=model, asked=asked))
    return DrawRequest(
        prompt=text.strip().strip(_SEPARATORS).strip(),
        count=count,
        size=size,
        asked_size=asked,
        asked_shape=shape,
        seed=seed,
        negative_prompt=negative,
        notes=tuple(notes),
        asked_count=asked_count,
    )


def _number_at(text: str, pos: int, not_after: str = ".") -> bool:
    """True when a number can start at `pos`: not in the middle of another number."""
    before = text[pos - 1 : pos]
    return not (before.isdigit() or (before and before in not_after))


def _first_resolution(text: str) -> re.Match[str] | None:
    return next((m for m in _RESOLUTION.finditer(text) if _number_at(text, m.start())), None)


def _first_ratio(text: str) -> re.Match[str] | None:
    return next(
        (m for m in _RATIO.finditer(text) if _number_at(text, m.start(), ".:：") and int(m[1]) and int(m[2])),
        None,
    )


def _standalone(text: str, m: re.Match[str]) -> bool:
    """True when no English word stands right beside the match (spaces skipped)."""
    left, right = text[: m.start()].rstrip()[-1:], text[m.end() :].lstrip()[:1]
    return not any(ch.isascii() and ch.isalnum() for ch in (left, right))


def _cut(text: str, span: tuple[int, int]) -> str:
    """`text` without `span`, leaving no double space or doubled separator at the seam."""
    before, after = text[: span[0]], text[span[1] :]
    if before.endswith(" ") and after.startswith(" "):
        after = after[1:]
    if after[:1] in ("", "\n"):
        before = before.rstrip(" \t")
    if before.rstrip()[-1:] in tuple(_SEPARATORS) and after.lstrip()[:1] in tuple(_SEPARATORS):
        after = after.lstrip()[1:]
    return before + after


@lru_cache(maxsize=1024)
def pick_size(model: str, shape: tuple[int, int] | None, *, explicit: bool = False) -> str | None:
    """The size `model` accepts closest in aspect ratio to `shape` (default square): a `WxH`, or
    for a family that takes an aspect ratio, the nearest ratio; None when it takes neither."""
    rule = family(model)
    if not rule.sizes:
        return None
    w, h = shape if shape and shape[0] > 0 and shape[1] > 0 else (1, 1)
    low, high = FREE_SIDE_RANGE
    if explicit and rule.max_free_pixels and w * h <= rule.max_free_pixels and low <= min(w, h) and max(w, h) <= high:
        return f"{w}x{h}"
    want = math.log(w / h)

    def distance(size: str) -> tuple[float, float]:
        sw, sh = (int(v) for v in re.split("[x:]", size))
        # Ties on aspect go to the size closest in area to an explicit request, else the largest.
        area_gap = abs(sw * sh - w * h) if explicit else -sw * sh
        return (round(abs(math.log(sw / sh) - want), 9), area_gap)

    return min(rule.sizes, key=distance)


_INVISIBLE = re.compile("[\u00ad\u034f\u180e\u200b-\u200f\u202a-\u202e\u2060-\u206f\ufeff]")
# What the eye and a tokenizer read past in Latin text: combining marks (n̶u̶d̶e̶), variation
# selectors (nu\ufe0fde) and tag characters.
_UNSEEN = re.compile("[\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe00-\ufe0f\ufe20-\ufe2f\U000e0000-\U000e01ef]")
# Letters of other scripts drawn like Latin ones (nudе with a Cyrillic е), read as the Latin letter.
_LOOKALIKES = str.maketrans(
    "аеорсухіјѕԁԛԝһвкмнтɡαβεηικνορτυχϲ",
    "aeopcyxijsdqwhbkmhtgabenikvoptuxc",
)
# Letters spaced out the same way throughout ("n u d e", "n.u.d.e"): at most three marks between.
_SPACED = "(?P<gap>[^a-z]{{1,3}})"


def _latin_pattern(keyword: str) -> re.Pattern[str]:
    """A keyword as a word start (a letter before it would make it part of another word: "Essex"),
    whole or with its letters spaced evenly apart."""
    letters = [re.escape(ch) for ch in keyword]
    spaced = letters[0] + "".join(("(?P=gap)" if i > 1 else _SPACED.format()) + ch for i, ch in enumerate(letters[1:], 1))
    return re.compile(rf"(?<![a-z])(?:{''.join(letters)}|{spaced if len(letters) > 2 else ''.join(letters)})")


@functools.lru_cache(maxsize=64)
def _latin_patterns(keywords: tuple[str, ...]) -> tuple[tuple[str, re.Pattern[str]], ...]:
    return tuple((k, _latin_pattern(k.lower())) for k in keywords if k.isascii() and k[:1].isalnum())


def find_banned(text: str, keywords: tuple[str, ...]) -> str | None:
    """The first banned keyword in `text`, case-insensitively, or None.

    `text` is what goes to an upstream (a prompt, cut to what is sent): its cost is its length, so
    a caller never hands it a whole request body. ASCII keywords must start a word ("sexy" is
    caught, "Essex" is not; a digit before one does not hide it: "1nude" is read as "1 nude");
    others match anywhere, since CJK text has no spaces between words.
    """
    # Width and compatibility forms fold (ｎｕｄｅ is nude) and invisible format characters go
    # (nu\u200bde): the image model reads past both.
    if not text or not keywords:
        return None
    # A request checks the same prompt more than once (as asked, as sent): short ones are remembered.
    return _find_banned_cached(text, tuple(keywords)) if len(text) <= 4000 else _find_banned(text, tuple(keywords))


def _find_banned(text: str, keywords: tuple[str, ...]) -> str | None:
    lowered = _INVISIBLE.sub("", unicodedata.normalize("NFKC", text)).lower()
    latin = _latin_patterns(tuple(keywords))
    if latin:
        skeleton = _UNSEEN.sub("", unicodedata.normalize("NFD", lowered)).translate(_LOOKALIKES)
        for keyword, pattern in latin:
            if pattern.search(skeleton):
                return keyword
    for keyword in keywords:
        if not (keyword.isascii() and keyword[:1].isalnum()) and keyword.lower() in lowered:
            return keyword
    return None


_find_banned_cached = functools.lru_cache(maxsize=512)(_find_banned)


def fit_prompt(prompt: str, limit: int = MAX_PROMPT_CHARS) -> tuple[str, Reason | None]:
    """`prompt` cut to `limit` characters (at a word boundary when there is one), and a note if it was."""
    if len(prompt) <= limit:
        return prompt, None
    cut = prompt[:limit]
    space = cut.rfind(" ")
    if space > limit * 0.8:
        cut = cut[:space]
    return cut.rstrip(" ,，、;；"), Reason.of("prompt_cut", chars=len(cut))


def image_seeds(seed: int | None, count: int) -> list[int] | None:
    """One seed per picture: S, S+1, … so that `seed:S pic:N` draws N different, repeatable pictures."""
    if seed is None:
        return None
    return [(seed + i) % (SEED_MAX + 1) for i in range(count)]
