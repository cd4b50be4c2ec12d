"""A turn that changes the last picture ("换成蓝色", "再来一张", "make it 16:9").

Such a turn is drawn from that picture, which the service's own previous answer describes in its
visible lines (the prompt, the size, the count, the model; chat_words.py's labels): nothing hidden is
needed, and what was carried over shows in the new answer's prompt line. A new subject starts
afresh. Reading an earlier answer is linear in its length and looks only at its first lines.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from core.errors import Reason
from drawing import chat_words
from parsing import DrawRequest, accepts_negative_prompt, pick_size
from siliconflow.families import family


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
# chat_words' picture line, only its web links (a picture to edit next is fetched from there).
_IMAGE_LINE = re.compile(rf"{re.escape(chat_words.IMAGE_MARK)}\d{{1,3}}\|[^\]\n]*\]\((https?://[^)\s]+)\)")


def _unescape(text: str) -> str:
    """The text `text.md` escaped, as it was."""
    return _ESCAPED.sub(r"\1", text.replace("\u200b", "")).strip()


def _size_line(line: str) -> tuple[tuple[int, int] | None, int, str] | None:
    """(size or None for "follows the input", count, model) of a size line, or None if it is not one.

    Read with `str.find` from one label to the next, never a regex over the whole line: a forged
    answer of repeated labels must cost its length, not its square.
    """
    rest = line[len(chat_words.SIZE_LABEL) :]
    size_match = _SIZE.match(rest)
    if size_match is None and not rest.startswith(chat_words.FOLLOWS_INPUT):
        return None
    count_at = rest.find(chat_words.COUNT_LABEL)
    model_at = rest.find(chat_words.MODEL_LABEL, count_at) if count_at >= 0 else -1
    count = _COUNT.fullmatch(rest[count_at + len(chat_words.COUNT_LABEL) : model_at]) if model_at >= 0 else None
    if count is None:
        return None
    model = rest[model_at + len(chat_words.MODEL_LABEL) :].split(" ", 1)[0].split("·", 1)[0]
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
        if prompt is None and line.startswith(chat_words.PROMPT_LABEL):
            prompt = line[len(chat_words.PROMPT_LABEL) :]
        elif negative is None and line.startswith(chat_words.NEGATIVE_LABEL):
            negative = line[len(chat_words.NEGATIVE_LABEL) :]
        elif size_line is None and line.startswith(chat_words.SIZE_LABEL):
            size_line = _size_line(line)
        elif url is None and line.startswith(chat_words.IMAGE_MARK) and (image := _IMAGE_LINE.fullmatch(line)):
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


# A count in words, as people type it after "again" ("再来两张", "two more").
_NUMBERS = {
    **dict(zip("一二两俩三仨四五六七八九十", (1, 2, 2, 2, 3, 3, 4, 5, 6, 7, 8, 9, 10), strict=True)),
    "几": 3,
    **{w: i for i, w in enumerate("one two three four five six seven eight nine ten".split(), 1)},
    "a couple of": 2,
    "a couple": 2,
    "a few": 3,
}
_ZH_N = r"\d{1,3}|十[一二三四五六]?|[一二两俩三仨四五六七八九几]"
_EN_N = r"\d{1,3}|one|two|three|four|five|six|seven|eight|nine|ten|a couple(?: of)?|a few"
_PICTURES = r"张|幅|副|次|遍|版|份|组"  # a measure of pictures: the same subject
_THINGS = r"个|只|头|条|位|匹|棵|座|朵|件|辆"  # a measure of things: what follows may be a new one
_ZH_VERB = r"来|画|生成|出|要|做|绘制|弄|搞|整|给|发"


def _again_forms() -> re.Pattern[str]:
    """ "Again" as a phrase anywhere in the turn; groups n<i> hold its count, m<i> its measure."""
    forms = []

    def form(pattern: str, i: int) -> str:
        """`pattern` with V a verb, N (its count, group n<i>) and M (its measure, group m<i>)."""
        number = "(?P<n" + str(i) + ">" + _ZH_N + ")"
        measure = "(?P<m" + str(i) + ">" + _PICTURES + "|" + _THINGS + ")"
        return pattern.replace("V", "(?:" + _ZH_VERB + ")").replace("N", number).replace("M", measure)

    # (A recognition table, not words: each form is a pattern built from the parts above.)
    forms.append(form(r"(?:再|还要|还想要?)\s*V\s*N?\s*M?", 1))
    forms.append(form(r"再\s*N\s*M", 2))  # "再一张"; "再大一点" is a change
    forms.append(form(r"重新\s*V?\s*N?\s*M?", 3))
    forms.append(form(r"重(?:画|来|做|绘)\s*N?\s*M?", 4))
    forms.append(form(r"多\s*V\s*N?\s*M?", 5))
    forms.append(form(r"(?<![再重多])来\s*N\s*M", 6).replace("|" + _THINGS, ""))  # "来两张"
    forms.append(r"换(?:一)?(?:张|幅)(?=$|[，,。.！!？?\s])|重试|再试一次")
    forms.append(
        r"\b(?:(?:draw|do|make|generate|create|paint|render|give me|show me|try)\s+)?"
        r"(?:(?:it|that|this|one)\s+)?(?:again|once more)\b"
    )
    forms.append(r"\bone more(?: time)?\b")
    forms.append(rf"\b(?P<n7>{_EN_N})\s+more\b(?:\s+(?:of (?:it|them|those|these)|times?|pictures?|images?|ones?|versions?))?")
    forms.append(
        r"\banother\b(?:\s+(?P<n8>\d{1,3}|two|three|four|five|six|seven|eight|nine|ten))?"
        r"(?:\s+(?:one|ones|picture|pictures|image|images|version|versions|take|try))?"
    )
    forms.append(r"\b(?:redo|retry|regenerate)\b")
    return re.compile("|".join(f"(?:{form})" for form in forms), re.IGNORECASE)


AGAIN = _again_forms()
# Words that ask politely or fill (可以…吗, please): not what is to be drawn.
_FILLER_START = re.compile(
    r"^(?:同样的|一样的|相同的|一模一样的|照样|照着?(?:这个|上一张)|the same\b|same\b|"
    r"请你?|麻烦(?:你|您)?|帮(?:我|忙)?|给我|你能不能|你能|你可以|能不能|能否|可以|可不可以|我想要?|我要|我希望|那就|那|好的?|嗯|"
    r"ok(?:ay)?\b|please\b|pls\b|could you\b|can you\b|would you\b|will you\b|kindly\b|i(?:'d| would) like\b|"
    r"i want\b|give me\b|show me\b|"
    r"let'?s\b|now\b|and\b|then\b|also\b)\s*",
    re.IGNORECASE,
)
_FILLER_END = re.compile(
    r"\s*(?:同样的|一样的|相同的|一模一样的|的同款|同款|好吗|好不好|可以吗|行吗|行不行|吗|吧|呢|呀|啊|哦|嘛|啦|谢谢(?:你|您)?|多谢|"
    r"\bplease|\bpls|\bthanks|\bthank you|\bfor me|\bok)$",
    re.IGNORECASE,
)
_JOINERS = " \t\n，,。.!！?？~～、；;：:"
_JOIN_WORDS = re.compile(
    r"^(?:并且|然后|而且|但是|但|同时|和|并|and\b|but\b|then\b|also\b)\s*|\s*(?:并且|然后|而且|和|并|\band|\bbut|\bthen)$",
    re.IGNORECASE,
)
_CHANGE = re.compile(
    r"换成|改成|变成|换个|换一个|换一下|改为|改一下|加上|加个|加一|去掉|删掉|删除|不要|把它|把这|让它|让画面|它的|"
    r"更[大小亮暗多少高低宽窄近远]|再大|再小|大一点|小一点|亮一点|暗一点|颜色|风格|背景|色调|视角|角度|构图|细节|"
    r"\b(?:make it|make the|give it|give the|put a|let it|change|turn it|add|remove|without|instead|but|same|"
    r"bigger|smaller|brighter|darker|style|colou?r|background|angle|version|zoom)\b|^(?:in|as)\s",
    re.IGNORECASE,
)
_NEW_SUBJECT = re.compile(
    r"^(?:请|帮我|给我)?\s*(?:画|绘制|生成)\s*(?:一|1|两|2|几)?\s*(?:只|个|张|幅|副|位|条|头|匹|棵|座|片)"
    r"|^(?:please\s+)?(?:draw|paint|generate|create)\s+(?:an?|the|some)\b",
    re.IGNORECASE,
)
MAX_CHANGE_CHARS = 60  # longer than this, a turn describes a picture of its own
# What a chat UI's own buttons send as the next user message (Open WebUI's regenerate menu sends
# the label, in the UI's language), and the change each asks of the last picture.
UI_ACTIONS = {
    "添加详情": "添加更多细节，细节丰富",
    "add details": "add more details, highly detailed",
    "精炼表达": "画面更简洁，元素更少",
    "more concise": "simpler, cleaner composition with fewer elements",
}


@dataclass(frozen=True)
class Refinement:
    picture: Picture
    change: str  # the instruction, tokens and "again" removed ("换成蓝色"); "" to draw the same again
    again: bool  # "再来一张": more pictures of it (`count` of them), changed when `change` says how
    count: int | None = None  # the count the turn said in words ("两张", "two more"); None if it said none


def _trim(text: str) -> str:
    """`text` without polite or filler words and joining punctuation at its ends."""
    while True:
        before = text
        text = _JOIN_WORDS.sub("", text.strip(_JOINERS)).strip(_JOINERS)
        text = _FILLER_END.sub("", _FILLER_START.sub("", text))
        if text == before:
            return text


def _number(word: str | None) -> int | None:
    if not word:
        return None
    word = word.lower()
    if word.isdigit():
        return int(word)
    if word.startswith("十"):
        return 10 + (_NUMBERS[word[1]] if len(word) > 1 else 0)
    return _NUMBERS.get(word)


def refinement(parsed: DrawRequest, picture: Picture | None) -> Refinement | None:
    """Whether this turn changes `picture`, and how; None when it asks for a picture of its own.

    All of the turn is read: an "again" phrase anywhere ("再来两张", "one more") gives the count,
    what is left after it and the polite words is the change ("换成蓝色"), so "再来一张，换成蓝色"
    and "one more, make it blue" both keep the change.
    """
    if picture is None:
        return None
    typed = parsed.prompt.strip()
    text = _trim(typed)
    tokens_only = (
        parsed.asked_shape is not None
        or parsed.asked_count is not None
        or parsed.seed is not None
        or parsed.negative_prompt is not None
    )
    if not text:  # only tokens ("16:9 pic:2"): the same picture, so changed; nothing at all: again
        return Refinement(picture, "", again=not tokens_only)
    if (action := UI_ACTIONS.get(text.lower())) is not None:
        return Refinement(picture, action, again=False)
    if len(text) > MAX_CHANGE_CHARS * 2:
        return None
    count, things, rest, found = None, False, text, False
    for match in AGAIN.finditer(text):
        found = True
        said = next((v for g, v in match.groupdict().items() if g[0] == "n" and v), None)
        count = count or _number(said)
        measure = next((v for g, v in match.groupdict().items() if g[0] == "m" and v), None)
        things = things or bool(measure and re.fullmatch(_THINGS, measure))
        rest = rest.replace(match[0], " ", 1)
    if found:
        change = _trim(rest)
        if change and things and not _CHANGE.search(change) and not change.endswith("的"):
            return None  # "再画一只狗": another thing, a picture of its own
        if len(change) > MAX_CHANGE_CHARS or (change and _NEW_SUBJECT.search(change)):
            return None
        return Refinement(picture, change, again=True, count=count)
    if len(text) > MAX_CHANGE_CHARS or _NEW_SUBJECT.search(text):
        return None
    if _CHANGE.search(text):
        return Refinement(picture, text, again=False)
    return None


def instruction(parsed: DrawRequest, max_images: int) -> DrawRequest:
    """An edit model's instruction as the turn gives it, without "again" words or polite ones
    ("再画两张，换成蓝色" is "换成蓝色", two pictures): those are not an edit. Nothing left is
    nothing to change, which the pipeline says."""
    text = _trim(parsed.prompt.strip())
    if (action := UI_ACTIONS.get(text.lower())) is not None:
        return replace(parsed, prompt=action)
    count = None
    for match in AGAIN.finditer(text):
        said = next((v for g, v in match.groupdict().items() if g[0] == "n" and v), None)
        count = count or _number(said)
        text = text.replace(match[0], " ", 1)
    if count is not None and parsed.asked_count is None:
        parsed = replace(parsed, count=min(max(count, 1), max_images))
    return replace(parsed, prompt=_trim(text))


def carried_over(parsed: DrawRequest, change: Refinement, model: str, max_images: int) -> DrawRequest:
    """The drawing a change asks for: the last picture's size, count and negative prompt, with
    whatever this turn states explicitly winning, and "again" one picture unless it says more."""
    picture = change.picture
    size, asked_size, asked_shape = parsed.size, parsed.asked_size, parsed.asked_shape
    if asked_shape is None and picture.size is not None:
        size = pick_size(model, picture.size, explicit=True)
    if parsed.asked_count is not None:
        count = parsed.count
    elif change.again:
        count = min(max(change.count or 1, 1), max_images)
    else:
        count = min(max(picture.count, 1), max_images)
    negative = parsed.negative_prompt
    if negative is None and picture.negative and accepts_negative_prompt(model):
        negative = picture.negative
    if change.again:
        code = "again_changed" if change.change else "again"
        note = Reason.of(f"{code}_video" if family(model).video else code, count=count)
    else:
        note = Reason.of("refined")
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
