"""A turn that changes the last picture ("换成蓝色", "再来一张", "make it 16:9").

Such a turn is drawn from that picture, which the service's own previous answer describes in its
visible lines (the prompt, the size, the count, the model; wording.py's labels): nothing hidden is
needed, and what was carried over shows in the new answer's prompt line. A new subject starts
afresh. Reading an earlier answer is linear in its length and looks only at its first lines.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

import wording
from events import Reason
from parsing import DrawRequest, accepts_negative_prompt, pick_size


@dataclass(frozen=True)
class Picture:
    """The last picture, as the service's own answer describes it."""

    prompt: str
    size: tuple[int, int] | None
    count: int
    model: str | None
    negative: str | None
    url: str | None = None  # the first picture's own link, as the answer shows it


ANSWER_READ = 32 * 1024  # of each earlier answer: the lines that describe a drawing come first
_SIZE = re.compile(r"(\d{2,5})x(\d{2,5})")
_COUNT = re.compile(r"\d{1,3}")
_ESCAPED = re.compile(r"\\([\\\[\]<])")
# wording's picture line, only its web links (a picture to edit next is fetched from there).
_IMAGE_LINE = re.compile(rf"{re.escape(wording.IMAGE_MARK)}\d{{1,3}}\|[^\]\n]*\]\((https?://[^)\s]+)\)")


def _unescape(text: str) -> str:
    """The text `wording.md` escaped, as it was."""
    return _ESCAPED.sub(r"\1", text.replace("\u200b", "")).strip()


def _size_line(line: str) -> tuple[tuple[int, int] | None, int, str] | None:
    """(size or None for "follows the input", count, model) of a size line, or None if it is not one.

    Read with `str.find` from one label to the next, never a regex over the whole line: a forged
    answer of repeated labels must cost its length, not its square.
    """
    rest = line[len(wording.SIZE_LABEL) :]
    size_match = _SIZE.match(rest)
    if size_match is None and not rest.startswith(wording.FOLLOWS_INPUT):
        return None
    count_at = rest.find(wording.COUNT_LABEL)
    model_at = rest.find(wording.MODEL_LABEL, count_at) if count_at >= 0 else -1
    count = _COUNT.fullmatch(rest[count_at + len(wording.COUNT_LABEL) : model_at]) if model_at >= 0 else None
    if count is None:
        return None
    model = rest[model_at + len(wording.MODEL_LABEL) :].split(" ", 1)[0].split("·", 1)[0]
    if not model:
        return None
    size = (int(size_match[1]), int(size_match[2])) if size_match else None
    return size, int(count[0]), model


def _read_answer(text: str) -> Picture | None:
    """The drawing an answer of this service describes, from its own lines (the first of each
    kind), read line by line: linear in the answer's length, and only its first ANSWER_READ chars."""
    prompt = negative = url = None
    size_line = None
    for line in text[:ANSWER_READ].split("\n"):
        if prompt is None and line.startswith(wording.PROMPT_LABEL):
            prompt = line[len(wording.PROMPT_LABEL) :]
        elif negative is None and line.startswith(wording.NEGATIVE_LABEL):
            negative = line[len(wording.NEGATIVE_LABEL) :]
        elif size_line is None and line.startswith(wording.SIZE_LABEL):
            size_line = _size_line(line)
        elif url is None and line.startswith(wording.IMAGE_MARK) and (image := _IMAGE_LINE.fullmatch(line)):
            url = image[1]
    if not prompt or size_line is None:
        return None
    size, count, model = size_line
    return Picture(_unescape(prompt), size, count, _unescape(model), _unescape(negative) if negative else None, url)


def last_picture(messages: list[tuple[str, str]]) -> Picture | None:
    """The picture the service's last answer in this conversation drew (or tried to), if any."""
    for role, text in reversed(messages[:-1]):
        if role == "assistant" and (picture := _read_answer(text)) is not None:
            return picture
    return None


AGAIN = re.compile(
    r"^(?:再来|再画|再生成|重新生成|重新画|重画|再出|再要)(?:一|1|个)?(?:张|幅|次|个|遍)?(?:吧|呗|呀|啊)?"
    r"|^(?:(?:draw|do|make|try)\s+(?:it|one)\s+)?(?:again|one more(?: time)?|another(?: one)?|redo|retry)(?:\s+please)?$",
    re.IGNORECASE,
)
_CHANGE = re.compile(
    r"换成|改成|变成|换个|换一个|换一下|改为|改一下|加上|加个|加一|去掉|删掉|删除|不要|把它|把这|让它|让画面|它的|"
    r"更[大小亮暗多少高低宽窄近远]|再大|再小|大一点|小一点|亮一点|暗一点|颜色|风格|背景|色调|视角|角度|构图|"
    r"\b(?:make it|make the|change|turn it|add|remove|without|instead|but|same|bigger|smaller|brighter|darker|"
    r"style|colou?r|background|angle|version|zoom)\b",
    re.IGNORECASE,
)
_NEW_SUBJECT = re.compile(
    r"^(?:请|帮我|给我)?\s*(?:画|绘制|生成)\s*(?:一|1|两|2|几)?\s*(?:只|个|张|幅|副|位|条|头|匹|棵|座|片)"
    r"|^(?:please\s+)?(?:draw|paint|generate|create)\s+(?:an?|the|some)\b",
    re.IGNORECASE,
)
MAX_CHANGE_CHARS = 60  # longer than this, a turn describes a picture of its own


@dataclass(frozen=True)
class Refinement:
    picture: Picture
    change: str  # the instruction, tokens removed ("换成蓝色"); "" to draw the same again
    again: bool  # "再来一张": one more picture of the same


def refinement(parsed: DrawRequest, picture: Picture | None) -> Refinement | None:
    """Whether this turn changes `picture`, and how; None when it asks for a picture of its own."""
    if picture is None:
        return None
    change = parsed.prompt.strip(" ，,。.!！?？~～")
    tokens_only = (
        parsed.asked_shape is not None
        or parsed.asked_count is not None
        or parsed.seed is not None
        or parsed.negative_prompt is not None
    )
    if not change:  # only tokens ("16:9 pic:2"): the same picture, so changed; nothing at all: again
        return Refinement(picture, "", again=not tokens_only)
    if AGAIN.search(change) and len(change) <= 20:
        return Refinement(picture, "", again=True)
    if len(change) > MAX_CHANGE_CHARS or _NEW_SUBJECT.search(change):
        return None
    if _CHANGE.search(change):
        return Refinement(picture, change, again=False)
    return None


def carried_over(parsed: DrawRequest, change: Refinement, model: str, max_images: int) -> DrawRequest:
    """The drawing a change asks for: the last picture's size, count and negative prompt, with
    whatever this turn states explicitly winning, and "again" one picture unless it says more."""
    picture = change.picture
    size, asked_size, asked_shape = parsed.size, parsed.asked_size, parsed.asked_shape
    if asked_shape is None and picture.size is not None:
        size = pick_size(model, picture.size, explicit=True)
    if parsed.asked_count is not None:
        count = parsed.count
    else:
        count = 1 if change.again else min(max(picture.count, 1), max_images)
    negative = parsed.negative_prompt
    if negative is None and picture.negative and accepts_negative_prompt(model):
        negative = picture.negative
    note = Reason.of("again" if change.again else "refined")
    return replace(
        parsed,
        prompt=change.change,
        size=size,
        asked_size=asked_size,
        asked_shape=asked_shape,
        count=count,
        negative_prompt=negative,
        notes=(note, *parsed.notes),
    )
