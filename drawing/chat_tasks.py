"""Chat UIs' background tasks: recognised by the shape of each UI's own template, answered in its shape.

Chat UIs send their background tasks (a title, tags, follow-up suggestions, a summary, ...) to the
chat's model as ordinary chat requests. They are recognised by the shape of each UI's own template
(see `housekeeping`), answered in the shape that UI parses, and never drawn: no image call, no
image budget. A message that only looks like a template (a user pasting "### Task:") does not have
that shape and is drawn.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from core.text import md, one_line
from drawing.chat_words import SUMMARY_LINE
from drawing.followups import AGAIN, Picture, refinement
from drawing.ui_words import NEXT_STYLES, STYLE_TAGS, SUGGEST, task_words
from parsing import parse
from siliconflow.families import family


@dataclass(frozen=True)
class Task:
    """A chat UI's background task."""

    ui: str  # who asks, for the log
    kind: str  # title | tags | follow_ups | queries | autocomplete | image_prompt | emoji | summary | tools |
    #            memory | check | image_done | image_failed
    json: bool  # the UI parses a JSON object out of the answer (Open WebUI); else plain text
    requests: tuple[str, ...]  # the user's messages the task quotes, oldest first
    detail: str = ""  # image_failed: the error the UI asks to pass on; image_done: "edited" after an edit
    answered: str | None = None  # the last answer the task quotes (follow-ups: what it drew), None if unknown


# Open WebUI's task templates all start "### Task:" and quote the chat in <chat_history> tags; the
# key of the first JSON object they show says which task it is (a custom template keeps that shape).
_OWUI_KEY = re.compile(r'\{\s*"(\w+)"\s*:')
_OWUI_KINDS = {
    "title": "title",
    "tags": "tags",
    "follow_ups": "follow_ups",
    "queries": "queries",
    "text": "autocomplete",
    "prompt": "image_prompt",
}
# X-OpenWebUI-Task, when an operator adds it to the connection (OPENAI_API_CONFIGS headers "{{TASK}}").
_OWUI_HEADER_KINDS = {
    "title_generation": "title",
    "tags_generation": "tags",
    "follow_up_generation": "follow_ups",
    "query_generation": "queries",
    "autocomplete_generation": "autocomplete",
    "image_prompt_generation": "image_prompt",
    "emoji_generation": "emoji",
    "function_calling": "tools",
    "memory_review": "memory",
    "context_compaction": "summary",
    "moa_response_generation": "summary",
}
_OWUI_ROLE_LINE = re.compile(r"^(USER|ASSISTANT|SYSTEM): ?", re.M)

# The opening words of other UIs' title and summary prompts (system or last user message).
_LOBE_TITLE = (
    "You are a professional conversation summarizer. Generate a concise title",
    "你是一名擅长会话的助理，你需要将用户的会话总结为",
)
_LOBE_SUMMARY = (
    "You're an assistant who's good at extracting key takeaways from conversations",
    "You are a conversation context compressor.",
)
_NEXTCHAT_TITLE = (
    "Please generate a four to five word title summarizing our conversation",
    "使用四到五个字直接返回这句话的简要主题",
    "使用四到五個字直接返回這句話的簡要主題",
)
_NEXTCHAT_SUMMARY = (
    "Summarize the discussion briefly in 200 words or less to use as a prompt for future context",
    "简要总结一下对话内容，用作后续的上下文提示 prompt",
    "簡要總結一下對話內容，用作後續的上下文提示 prompt",
)
_LIBRE_TITLE = (
    "Provide a concise, 5-word-or-less title for the conversation",
    "Analyze this conversation and provide:\n1. The detected language of the conversation",
)
_CHERRY_TITLE = (
    "Summarize the conversation into a title in ",
    "总结给出的会话，将其总结为语言为",
    "You are an assistant skilled in conversation. You need to summarize the user's conversation into a title",
)


def housekeeping(messages: list[tuple[str, str]], task_header: str | None = None) -> Task | None:
    """The chat UI's background task this request is, or None for a drawing request."""
    if not messages:
        return None
    role, last = messages[-1]
    systems = [text for r, text in messages if r == "system"]
    others = [(r, text) for r, text in messages if r != "system"]
    first_system = systems[0].strip() if systems else ""

    if role == "user" and messages[0][0] == "system" and (done := _owui_image_context(messages[0][1])):
        return Task("Open WebUI", done[0], False, (last,), done[1])
    if task_header and task_header in _OWUI_HEADER_KINDS:
        kind = _OWUI_HEADER_KINDS[task_header]
        return Task("Open WebUI", kind, kind not in ("emoji", "summary"), _owui_requests(last))
    if role == "user" and len(others) == 1:
        text = last.lstrip()
        if text.startswith("### Task:") and "<chat_history>" in text and "</chat_history>" in text:
            head = text.split("<chat_history>", 1)[0]
            if "Summarize the conversation history" in head:
                return Task("Open WebUI", "summary", False, _owui_requests(text))
            key = _OWUI_KEY.search(head)
            kind = _OWUI_KINDS.get(key.group(1), "summary") if key else "summary"
            return Task("Open WebUI", kind, kind != "summary", _owui_requests(text), answered=_owui_answered(text))
        if text.startswith("Your task is to reflect the speaker's likely facial expression through a fitting emoji"):
            return Task("Open WebUI", "emoji", False, ())
        if text.startswith(_LIBRE_TITLE) and "\nUser: " in text:
            return Task("LibreChat", "title", False, _libre_requests(text))
        if first_system.startswith("Available Tools:") and text.startswith(("Query:", "History:")):
            return Task("Open WebUI", "tools", True, ())
    if first_system == "You are Open WebUI's private memory reviewer. Return only valid JSON.":
        return Task("Open WebUI", "memory", True, ())
    if role == "user" and first_system.startswith(_LOBE_TITLE) and re.search(r"^user: ", last, re.M):
        return Task("LobeChat", "title", False, _lines_requests(last, "user: ", ("assistant: ", "system: ")))
    if first_system.startswith(_LOBE_SUMMARY):
        return Task("LobeChat", "summary", False, ())
    if role == "user" and last.strip().startswith(_NEXTCHAT_TITLE):
        return Task("NextChat", "title", False, tuple(t for r, t in messages[:-1] if r == "user"))
    if role == "system" and last.strip().startswith(_NEXTCHAT_SUMMARY):
        return Task("NextChat", "summary", False, tuple(t for r, t in messages if r == "user"))
    if role == "user" and first_system.startswith(_CHERRY_TITLE) and (requests := _cherry_requests(last)) is not None:
        return Task("Cherry Studio", "title", False, requests)
    if role == "user" and first_system == "test" and last.strip() == "hi" and len(messages) == 2:
        return Task("Cherry Studio", "check", False, ())
    return None


# Open WebUI's own image generation (its "Image" switch with Function Calling "Legacy") calls the
# Images API itself, shows the picture, then asks the chat model to tell the user, with this
# system message first. Drawing again would give a second picture, and spend a second call.
_OWUI_IMAGE_DONE = (
    "<context>The requested image has been created by the system successfully",
    "<context>The requested image has been edited and created",
)
_OWUI_IMAGE_FAILED = re.compile(
    r"\A<context>Image generation was attempted but failed.{0,200}?the following error "
    r"occurred: ?(.{0,2000}?)</context>",
    re.S,
)


def _owui_image_context(system: str) -> tuple[str, str] | None:
    if system.startswith(_OWUI_IMAGE_DONE):
        return "image_done", "edited" if system.startswith(_OWUI_IMAGE_DONE[1]) else ""
    if failed := _OWUI_IMAGE_FAILED.match(system):
        return "image_failed", md(one_line(failed[1], 300))
    return None


def _owui_requests(template: str) -> tuple[str, ...]:
    """The USER lines of the <chat_history> an Open WebUI template quotes (a message may span lines)."""
    history = template.split("<chat_history>", 1)[-1].split("</chat_history>", 1)[0]
    parts = _OWUI_ROLE_LINE.split(history)
    return tuple(text.strip() for role, text in zip(parts[1::2], parts[2::2], strict=False) if role == "USER" and text.strip())


def _owui_answered(template: str) -> str | None:
    """The last ASSISTANT message an Open WebUI template quotes, None when it quotes none."""
    history = template.split("<chat_history>", 1)[-1].split("</chat_history>", 1)[0]
    parts = _OWUI_ROLE_LINE.split(history)
    answers = [text.strip() for role, text in zip(parts[1::2], parts[2::2], strict=False) if role == "ASSISTANT"]
    return answers[-1] if answers else None


def _lines_requests(text: str, user: str, others: tuple[str, ...]) -> tuple[str, ...]:
    """`role: text` lines (LobeChat's title request): the user's, continuation lines included."""
    found: list[str] = []
    current: list[str] | None = None
    for line in text.splitlines():
        if line.startswith(user):
            current = [line[len(user) :]]
            found.append("")
        elif line.startswith(others):
            current = None
            continue
        elif current is not None:
            current.append(line)
        else:
            continue
        found[-1] = "\n".join(current).strip()
    return tuple(request for request in found if request)


def _libre_requests(text: str) -> tuple[str, ...]:
    conversation = text.split("Conversation:", 1)[-1] if "Conversation:" in text else text
    user = conversation.split("\nUser: ", 1)[-1].split("\nAI:", 1)[0].strip()
    return (user,) if user else ()


def _cherry_requests(text: str) -> tuple[str, ...] | None:
    """Cherry Studio quotes the chat as a JSON array of {"role", "mainText"}; None if it does not."""
    try:
        items = json.loads(text)
    except (ValueError, RecursionError):
        return None
    if not isinstance(items, list) or not all(isinstance(item, dict) and "role" in item for item in items):
        return None
    return tuple(
        str(item.get("mainText", "")).strip()
        for item in items
        if item.get("role") == "user" and str(item.get("mainText", "")).strip()
    )


# --- answering housekeeping ----------------------------------------------------------------------

Ask = Callable[[str, str], str]  # (system, user) -> the chat model's answer; raises when it has none


def answer(task: Task, ask: Ask | None, *, model: str | None = None) -> str:
    """The task's answer in the shape the UI parses: from the chat model when it answers in that
    shape, else made here from the user's drawing requests."""
    made = None
    if ask is not None and task.kind in ("title", "tags", "follow_ups") and task.requests:
        try:
            made = _from_model(task, ask, model)
        except Exception:  # the chat model is a nicety: any failure means the local answer
            made = None
    if made is None:
        made = _local(task, model)
    if not task.json:
        return made if isinstance(made, str) else ""
    key = {
        "title": "title",
        "tags": "tags",
        "follow_ups": "follow_ups",
        "queries": "queries",
        "autocomplete": "text",
        "image_prompt": "prompt",
        "tools": "tool_calls",
        "memory": "operations",
    }[task.kind]
    return json.dumps({key: made}, ensure_ascii=False)


def _from_model(task: Task, ask: Ask, model: str | None) -> str | list[str] | None:
    zh = is_chinese(task.requests)
    requests = "\n".join(f"- {request[:300]}" for request in task.requests[-5:])
    language = "Chinese" if zh else "the same language as the requests"
    if task.kind == "title":
        text = ask(
            f"Give a short title for a chat in which the user asked an image generator to draw the requests "
            f"below: at most 6 words (12 Chinese characters), in {language}, no quotes, no punctuation. "
            f"Answer with the title alone.",
            requests,
        )
        lines = text.strip().splitlines()
        title = _clean(lines[0], 60) if len(lines) == 1 else ""
        # A model that echoes or rambles has not made a title: a title is short.
        short = len(title) <= 16 if is_chinese([title]) else len(title.split()) <= 8 and len(title) <= 50
        return title if title and short and not any(request in title for request in task.requests) else None
    if task.kind == "tags":
        text = ask(
            f"Give 1 to 3 broad tags (one or two words each, in {language}) for a chat in which the user "
            f'asked an image generator to draw the requests below. Answer with JSON: {{"tags": ["..."]}}',
            requests,
        )
        # A tag copied out of the request ("把图1的人物放进图2的场") is not a tag.
        said = [_plain(request) for request in task.requests]
        tags = [
            tag for tag in _json_list(text, "tags", 3, 24) if not (len(_plain(tag)) > 6 and any(_plain(tag) in r for r in said))
        ]
        return tags or None
    if model is not None and family(model).needs_input and not _drew(task.answered):
        return []  # nothing to change: every edit it could suggest would fail as the last one did
    shapes = _shapes(model)
    ratio = (
        "another aspect ratio such as 16:9, "
        if "wide" in shapes
        else "another aspect ratio such as 9:16, "
        if "tall" in shapes
        else ""
    )
    # An edit model changes the picture it is given: no shapes, no "two more" (README, suggestions).
    more = "" if model is not None and family(model).needs_input else f", {ratio}or pic:2 for two pictures"
    text = ask(
        f"Suggest 3 short next messages the user could send to the image generator to change or continue "
        f"the last picture: a style, a colour, a detail{more}. In {language}, each a request to draw, under 20 words. "
        f'Answer with JSON: {{"follow_ups": ["..."]}}',
        requests,
    )
    # A chat model suggests shapes whatever it is told: keep those the model can draw.
    made = [s for s in _json_list(text, "follow_ups", 5, 120) if _shape_of(s, model) in shapes | {None}]
    made = [s for s in made if _followable(s, model) and not _done(s, task.requests)]
    if not made:
        return None
    local = follow_ups(task.requests, zh, model, task.answered)
    return made + [s for s in local if s not in made][: max(3 - len(made), 0)]


def _drew(answered: str | None) -> bool:
    """Whether the last answer drew a picture (True when unknown). Open WebUI quotes our answer
    without its pictures: its summary line says what was drawn."""
    summary = SUMMARY_LINE.search(answered or "")
    return summary is None or int(summary[1]) > 0


def _followable(suggestion: str, model: str | None) -> bool:
    """Whether `model` can carry the suggestion out: an edit model makes changes, not more of the same."""
    if model is None or not family(model).needs_input:
        return True
    parsed = parse(suggestion, model, 16)
    return parsed.asked_count is None and parsed.asked_shape is None and not AGAIN.search(suggestion)


def _done(suggestion: str, requests: tuple[str, ...] | list[str]) -> bool:
    """Whether the suggestion is what was just asked."""
    said = {_plain(request) for request in requests[-2:]}
    return _plain(suggestion) in said


def _plain(text: str) -> str:
    return re.sub(r"[\s\W_]+", "", text.lower())


def _json_list(text: str, key: str, most: int, longest: int) -> list[str]:
    try:
        value = json.loads(text[text.index("{") : text.rindex("}") + 1]).get(key)
    except (ValueError, AttributeError, RecursionError):
        return []
    if not isinstance(value, list):
        return []
    items = [_clean(item, longest) for item in value if isinstance(item, str)]
    return list(dict.fromkeys(item for item in items if item))[:most]


_QUOTES_AND_MARKS = re.compile(r"[\"'`‘’“”《》「」*#\[\]{}<>]")


def _clean(text: str, longest: int) -> str:
    """One line without quotes (Open WebUI's title parser breaks on them) or Markdown marks."""
    text = _QUOTES_AND_MARKS.sub("", " ".join(str(text).split())).strip(" ,.;:!?，。；：！？、")
    return text[:longest].strip()


def _local(task: Task, model: str | None = None) -> str | list[str] | list[Any]:
    requests = task.requests
    zh = is_chinese(requests)
    if task.kind == "title":
        return title(requests[0] if requests else "", zh, requests[1:])
    if task.kind == "tags":
        return tags(requests, zh)
    if task.kind == "follow_ups":
        return follow_ups(requests, zh, model, task.answered)
    if task.kind == "image_prompt":
        return image_prompt(requests)
    if task.kind == "emoji":
        return "🎨"
    if task.kind == "summary":
        drawn = "；".join(_subject(request)[:60] for request in requests[-10:])
        return task_words("summary", zh, drawn=drawn)
    if task.kind == "check":
        return "OK"
    if task.kind == "image_done":
        return task_words("edited" if task.detail == "edited" else "ready", zh)
    if task.kind == "image_failed":
        return task_words("failed", zh, reason=task.detail or task_words("no_reason", zh))
    if task.kind == "autocomplete":
        return ""
    return []  # queries, tool calls, memory operations: none


_PIC_TOKEN = re.compile(r"\s*\bpic\s*[:：]\s*\d+", re.IGNORECASE)


def image_prompt(requests: tuple[str, ...] | list[str]) -> str:
    """The prompt for a UI's own image button (Open WebUI's image-prompt task): the user's last
    request, and when that is a follow-up of the one before ("换成水彩风格", "再来两张"), the
    request it follows with the change, so the subject, its ratio and count are not lost. The
    Images API reads the mini-language in it (`pic:N`, ratios) as the chat would."""
    prompt = ""
    for request in requests:
        earlier = parse(prompt, _ANY_MODEL, MAX_COUNT) if prompt else None
        picture = Picture(earlier.prompt, None, earlier.count, None, None) if earlier and earlier.prompt else None
        change = refinement(parse(request, _ANY_MODEL, MAX_COUNT), picture)
        if change is None:
            prompt = request
            continue
        if change.again:
            prompt = f"{_PIC_TOKEN.sub('', prompt).strip()} pic:{change.count or 1}"
        if change.change:
            prompt = f"{prompt}，{change.change}"
    return prompt


_ANY_MODEL = "Kwai-Kolors/Kolors"  # only the words are read here: any text-to-image model will do
MAX_COUNT = 16


def is_chinese(texts: tuple[str, ...] | list[str]) -> bool:
    joined = "".join(texts)
    return not joined or sum(1 for ch in joined if "\u4e00" <= ch <= "\u9fff") * 4 >= len(joined.strip()) * 0.5


_DRAW_VERB = re.compile(
    r"^(?:请|帮我|给我|麻烦)?\s*(?:画|绘制|生成|来)\s*(?:一|1|两|2|几)?\s*(?:只|个|张|幅|副|位|条|头|匹|棵|座|片|份)?\s*"
    r"|^(?:please\s+)?(?:draw|paint|generate|create|make|render)(?:\s+me)?(?:\s+(?:an?|the|some))?\s+",
    re.IGNORECASE,
)


def _subject(request: str) -> str:
    """What a drawing request is of: its text without tokens, drawing verbs or punctuation."""
    text = parse(request, "Kwai-Kolors/Kolors", 16).prompt
    text = _DRAW_VERB.sub("", text.strip())
    return _clean(text, 200)


# An instruction to change a picture ("把图1的人物放进图2的场景", "make it blue"), not a subject.
_INSTRUCTION = re.compile(
    r"^(?:把|将|给它|让它|让|换成|改成|变成|去掉|删掉|删除|加上|加一|替换|移除)"
    r"|^(?:make it|make the|change|replace|put|add|remove|turn|swap)\b",
    re.IGNORECASE,
)
# Where a Chinese phrase may end: before these, or at punctuation.
_BREAK_BEFORE = "的在和与及，,。、；;：:！!？?（("
_EN_TAIL = {"a", "an", "the", "of", "with", "in", "on", "and", "to", "at", "for", "by", "from", "into", "is"}
TITLE_CHARS = 12


def _instruction(request: str) -> bool:
    text = parse(request, "Kwai-Kolors/Kolors", 16).prompt.strip()
    return bool(_INSTRUCTION.search(text) or _INSTRUCTION.search(_subject(request)))


def _phrase(subject: str, longest: int = TITLE_CHARS) -> str:
    """Chinese `subject` cut to `longest` characters where a phrase ends, never inside a word."""
    subject = re.split(r"[，,。.;；!！?？\n]", subject, maxsplit=1)[0].strip()
    if len(subject) <= longest:
        return subject
    ends = [at for at in range(2, longest + 1) if subject[at] in _BREAK_BEFORE]
    return subject[: ends[-1]].strip() if ends else ""


def title(request: str, zh: bool, requests: tuple[str, ...] = ()) -> str:
    """A title of whole words: the subject of the first request that names one; an instruction's
    conversation is an editing one."""
    for asked in (request, *requests):
        subject = _subject(asked)
        if not subject or _instruction(asked):
            continue
        if zh:
            if phrase := _phrase(subject):
                return phrase
            continue
        words = subject.split()[:6]
        while len(words) > 1 and words[-1].lower() in _EN_TAIL:
            words.pop()
        return " ".join(word.capitalize() for word in words)
    edited = any(_instruction(asked) for asked in (request, *requests) if asked)
    return task_words("edit_title" if edited else "default_title", zh)


def tags(requests: tuple[str, ...], zh: bool) -> list[str]:
    found = [task_words("default_title", zh)]
    joined = " ".join(requests).lower()
    if any(_instruction(request) for request in requests):
        found.append(task_words("edit_title", zh))
    for chinese, english, tag in STYLE_TAGS:
        if chinese in joined or english in joined:
            found.append(tag if zh else english.title())
    subject = title(requests[-1], zh) if requests else ""
    if not zh:
        words = subject.split()
        words = words[1:] if len(words) > 1 and words[0].lower() in ("a", "an", "the") else words
        subject = " ".join(words[:2])  # a tag is a word or two
    if subject and len(subject) <= TITLE_CHARS * 2 and subject not in found:
        found.append(subject)
    return list(dict.fromkeys(found))[:3]


def _orientation(shape: tuple[int, int]) -> str:
    return "wide" if shape[0] > shape[1] else "tall" if shape[1] > shape[0] else "square"


def _shapes(model: str | None) -> set[str]:
    """The orientations `model` draws: of its sizes (or ratios); none for an edit model."""
    if model is None:
        return {"wide", "tall", "square"}
    return {_orientation(tuple(int(v) for v in re.split("[x:]", size))) for size in family(model).sizes}


def _shape_of(suggestion: str, model: str | None) -> str | None:
    shape = parse(suggestion, model or "Kwai-Kolors/Kolors", 16).asked_shape
    return _orientation(shape) if shape else None


def follow_ups(
    requests: tuple[str, ...] | list[str], zh: bool, model: str | None = None, answered: str | None = None
) -> list[str]:
    """Three real next requests this model can carry out, none of them what was just asked or
    what just failed.

    A text-to-image model: a style not used yet, another shape it draws (a detail instead when it
    has none: Kolors draws no landscape), and more pictures or another angle. An edit model
    changes a picture: a style, the background, a detail; none when its last answer drew nothing
    (it had no picture to change: every edit would fail the same way).
    """
    said = " ".join(requests).lower()
    drew = _drew(answered)
    edit = model is not None and family(model).needs_input
    if edit and not drew:
        return []
    styles = [(chinese, english) for key_zh, key_en, chinese, english in NEXT_STYLES if key_zh not in said and key_en not in said]
    style = styles[0] if styles else SUGGEST["angle"]
    if edit:
        picked = [style, SUGGEST["background"], SUGGEST["detail"]]
    else:
        shape = None
        for request in reversed(requests):
            shape = parse(request, "Kwai-Kolors/Kolors", 16).asked_shape or shape
            if shape:
                break
        now, shapes = _orientation(shape) if shape else "square", _shapes(model)
        tall, wide = SUGGEST["tall"], SUGGEST["wide"]
        other_shape = next(
            (words for orientation, words in (("wide", wide), ("tall", tall)) if orientation in shapes and orientation != now),
            SUGGEST["background"],
        )
        last = requests[-1] if requests else ""
        # More of the same after "again", or after nothing was drawn, would repeat what was just done.
        again = bool(AGAIN.search(last.strip())) or "pic" in last.lower() or not drew
        more = SUGGEST["angle"] if again else SUGGEST["two_more"]
        picked = [style, other_shape, more]
    spare = [SUGGEST["angle"], SUGGEST["detail"], SUGGEST["background"], *styles[1:]]
    chosen: list[str] = []
    for chinese, english in [*picked, *spare]:
        words = chinese if zh else english
        if len(chosen) < 3 and words not in chosen and not _done(words, requests) and words.lower() not in said:
            chosen.append(words)
    return chosen
