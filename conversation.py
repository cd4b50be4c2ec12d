"""What a chat conversation asks of the service besides a new picture.

Chat UIs send their background tasks (a title, tags, follow-up suggestions, a summary, ...) to the
chat's model as ordinary chat requests. They are recognised by the shape of each UI's own template
(see `housekeeping`), answered in the shape that UI parses, and never drawn: no image call, no
image budget. A message that only looks like a template (a user pasting "### Task:") does not have
that shape and is drawn.

A turn that changes the last picture ("换成蓝色", "再来一张", "make it 16:9") is drawn from that
picture, which the service's own previous answer describes in its visible lines (the prompt, the
size, the count, the model): nothing hidden is needed, and what was carried over shows in the new
answer's prompt line. A new subject starts afresh.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import wording
from models import family
from openai_wire import ApiError
from parsing import DrawRequest, accepts_negative_prompt, parse, pick_size

# --- reading messages --------------------------------------------------------------------------------


# Open WebUI (native tool calling, its default) puts the files of a message before its text, for
# its tools: `<attached_files>\n<file type="file" id=… name="cat.png"/>\n</attached_files>\n\n`.
# The pictures themselves come as image_url parts; the block is not something to draw.
_ATTACHED_FILES = re.compile(r"\A\s*<attached_files>\s*(?:<file\b[^<>]*/>\s*)*</attached_files>\s*")


def message_text(content: Any, index: int) -> str:
    """The text of a message's content: a string, or the `text` parts of a list."""
    if content is None or isinstance(content, str):
        return _ATTACHED_FILES.sub("", content or "", count=1)
    if isinstance(content, list):
        texts = [_ATTACHED_FILES.sub("", part["text"], count=1) for part in content
                 if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)]
        return "\n".join(text for text in texts if text)
    raise ApiError(400, f"messages[{index}].content must be a string or a list of content parts.", param="messages")


MAX_PART_NOTES = 5  # one line each for the first few parts that cannot be used, then a count


@dataclass(frozen=True)
class ImageRef:
    """An input picture: where it is (a data: URI or an http(s) link) or its bytes, and how the
    answer names it."""

    label: str  # "附图 1", "上一张图片"
    url: str | None = None
    data: bytes | None = None  # already in hand (an upload)


def turn_images(messages: Any) -> tuple[tuple[ImageRef, ...], tuple[str, ...]]:
    """The pictures attached to the current turn's user messages (`image_url` parts), in order,
    and a note for each part that cannot be used. Nothing here fails the request: what is not
    understood is said, and the rest is drawn."""
    turn: list[Any] = []
    for message in messages:
        if message.get("role") == "assistant":
            turn = []
        elif message.get("role") == "user" and isinstance(message.get("content"), list):
            turn.extend(message["content"])
    refs: list[ImageRef] = []
    notes: list[str] = []
    unusable = 0
    for part in turn:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            continue
        if kind != "image_url":
            unusable += 1
            if unusable <= MAX_PART_NOTES:
                notes.append(f"消息里有一段无法使用的内容（{str(kind)[:40] if kind else '没有 type'}），已忽略；"
                             "只有文字和 image_url 图片能用")
            continue
        image = part.get("image_url")
        url = image.get("url") if isinstance(image, dict) else image
        label = f"附图 {len(refs) + 1}"
        if not isinstance(url, str) or not url.strip():
            notes.append(f"{label} 没有图片地址（image_url.url），已忽略")
            continue
        refs.append(ImageRef(label, url.strip()))
    if unusable > MAX_PART_NOTES:
        notes.append(f"另有 {unusable - MAX_PART_NOTES} 段无法使用的内容，已忽略")
    return tuple(refs), tuple(notes)


def read_messages(messages: Any) -> list[tuple[str, str]]:
    """(role, text) of each message. Raises ApiError for shapes the OpenAI API does not allow."""
    if messages is None:
        example = '[{"role": "user", "content": "画一只猫"}]'
        raise ApiError(400, f"'messages' is required: a list like {example}.", param="messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty list of {\"role\", \"content\"} objects.", param="messages")
    read = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise ApiError(400, f"messages[{i}] must be an object with a 'role' string and a 'content'.", param="messages")
        read.append((message["role"], message_text(message.get("content"), i)))
    return read


def current_turn(messages: list[tuple[str, str]]) -> str:
    """The text to draw from: the current turn's user messages.

    Chat UIs resend the whole history; earlier turns were already answered, so only the
    messages after the last assistant reply count. User messages are preferred over system
    ones (a UI's system prompt is not something to draw). Raises ApiError when there is none.
    """
    turn: list[tuple[str, str]] = []
    for role, text in messages:
        if role == "assistant":
            turn = []
        else:
            turn.append((role, text))
    user_texts = [text for role, text in turn if role == "user" and text.strip()]
    texts = user_texts or [text for _, text in turn if text.strip()]
    text = "\n".join(texts).strip()
    if not text:
        raise ApiError(
            400,
            "Nothing to draw: the last user message has no text. Describe the picture, e.g. '画一只可爱的猫咪，9:16比例 pic:2'.",
            param="messages",
        )
    return text


# --- housekeeping ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Task:
    """A chat UI's background task."""

    ui: str  # who asks, for the log
    kind: str  # title | tags | follow_ups | queries | autocomplete | image_prompt | emoji | summary | tools |
    #            memory | check | image_done | image_failed
    json: bool  # the UI parses a JSON object out of the answer (Open WebUI); else plain text
    requests: tuple[str, ...]  # the user's messages the task quotes, oldest first
    detail: str = ""  # image_failed: the error the UI asks to pass on; image_done: "edited" after an edit


# Open WebUI's task templates all start "### Task:" and quote the chat in <chat_history> tags; the
# key of the first JSON object they show says which task it is (a custom template keeps that shape).
_OWUI_KEY = re.compile(r'\{\s*"(\w+)"\s*:')
_OWUI_KINDS = {"title": "title", "tags": "tags", "follow_ups": "follow_ups", "queries": "queries", "text": "autocomplete",
               "prompt": "image_prompt"}
# X-OpenWebUI-Task, when an operator adds it to the connection (OPENAI_API_CONFIGS headers "{{TASK}}").
_OWUI_HEADER_KINDS = {
    "title_generation": "title", "tags_generation": "tags", "follow_up_generation": "follow_ups",
    "query_generation": "queries", "autocomplete_generation": "autocomplete", "image_prompt_generation": "image_prompt",
    "emoji_generation": "emoji", "function_calling": "tools", "memory_review": "memory",
    "context_compaction": "summary", "moa_response_generation": "summary",
}
_OWUI_ROLE_LINE = re.compile(r"^(USER|ASSISTANT|SYSTEM): ?", re.M)

# The opening words of other UIs' title and summary prompts (system or last user message).
_LOBE_TITLE = ("You are a professional conversation summarizer. Generate a concise title",
               "你是一名擅长会话的助理，你需要将用户的会话总结为")
_LOBE_SUMMARY = ("You're an assistant who's good at extracting key takeaways from conversations",
                 "You are a conversation context compressor.")
_NEXTCHAT_TITLE = ("Please generate a four to five word title summarizing our conversation",
                   "使用四到五个字直接返回这句话的简要主题", "使用四到五個字直接返回這句話的簡要主題")
_NEXTCHAT_SUMMARY = ("Summarize the discussion briefly in 200 words or less to use as a prompt for future context",
                     "简要总结一下对话内容，用作后续的上下文提示 prompt", "簡要總結一下對話內容，用作後續的上下文提示 prompt")
_LIBRE_TITLE = ("Provide a concise, 5-word-or-less title for the conversation",
                "Analyze this conversation and provide:\n1. The detected language of the conversation")
_CHERRY_TITLE = ("Summarize the conversation into a title in ", "总结给出的会话，将其总结为语言为",
                 "You are an assistant skilled in conversation. You need to summarize the user's conversation into a title")


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
            return Task("Open WebUI", kind, kind != "summary", _owui_requests(text))
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
_OWUI_IMAGE_DONE = ("<context>The requested image has been created by the system successfully",
                    "<context>The requested image has been edited and created")
_OWUI_IMAGE_FAILED = re.compile(r"\A<context>Image generation was attempted but failed.{0,200}?the following error "
                                r"occurred: ?(.{0,2000}?)</context>", re.S)


def _owui_image_context(system: str) -> tuple[str, str] | None:
    if system.startswith(_OWUI_IMAGE_DONE):
        return "image_done", "edited" if system.startswith(_OWUI_IMAGE_DONE[1]) else ""
    if failed := _OWUI_IMAGE_FAILED.match(system):
        return "image_failed", wording.md(wording.one_line(failed[1], 300))
    return None


def _owui_requests(template: str) -> tuple[str, ...]:
    """The USER lines of the <chat_history> an Open WebUI template quotes (a message may span lines)."""
    history = template.split("<chat_history>", 1)[-1].split("</chat_history>", 1)[0]
    parts = _OWUI_ROLE_LINE.split(history)
    return tuple(text.strip() for role, text in zip(parts[1::2], parts[2::2], strict=False)
                 if role == "USER" and text.strip())


def _lines_requests(text: str, user: str, others: tuple[str, ...]) -> tuple[str, ...]:
    """`role: text` lines (LobeChat's title request): the user's, continuation lines included."""
    found: list[str] = []
    current: list[str] | None = None
    for line in text.splitlines():
        if line.startswith(user):
            current = [line[len(user):]]
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
    return tuple(str(item.get("mainText", "")).strip() for item in items
                 if item.get("role") == "user" and str(item.get("mainText", "")).strip())


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
    key = {"title": "title", "tags": "tags", "follow_ups": "follow_ups", "queries": "queries",
           "autocomplete": "text", "image_prompt": "prompt", "tools": "tool_calls", "memory": "operations"}[task.kind]
    return json.dumps({key: made}, ensure_ascii=False)


def _from_model(task: Task, ask: Ask, model: str | None) -> str | list[str] | None:
    zh = _is_chinese(task.requests)
    requests = "\n".join(f"- {request[:300]}" for request in task.requests[-5:])
    language = "Chinese" if zh else "the same language as the requests"
    if task.kind == "title":
        text = ask(f"Give a short title for a chat in which the user asked an image generator to draw the requests "
                   f"below: at most 6 words (12 Chinese characters), in {language}, no quotes, no punctuation. "
                   f"Answer with the title alone.", requests)
        lines = text.strip().splitlines()
        title = _clean(lines[0], 60) if len(lines) == 1 else ""
        # A model that echoes or rambles has not made a title: a title is short.
        short = len(title) <= 16 if _is_chinese([title]) else len(title.split()) <= 8 and len(title) <= 50
        return title if title and short and not any(request in title for request in task.requests) else None
    if task.kind == "tags":
        text = ask(f"Give 1 to 3 broad tags (one or two words each, in {language}) for a chat in which the user "
                   f'asked an image generator to draw the requests below. Answer with JSON: {{"tags": ["..."]}}',
                   requests)
        tags = _json_list(text, "tags", 3, 24)
        return tags or None
    shapes = _shapes(model)
    ratio = "another aspect ratio such as 16:9, " if "wide" in shapes else "another aspect ratio such as 9:16, " \
        if "tall" in shapes else ""
    text = ask(f"Suggest 3 short next messages the user could send to the image generator to change or continue "
               f"the last picture: a style, a colour, a detail, {ratio}or pic:2 for two "
               f"pictures. In {language}, each a request to draw, under 20 words. "
               f'Answer with JSON: {{"follow_ups": ["..."]}}', requests)
    # A chat model suggests shapes whatever it is told: keep those the model can draw.
    made = [s for s in _json_list(text, "follow_ups", 5, 120) if _shape_of(s, model) in shapes | {None}]
    if not made:
        return None
    return made + [s for s in follow_ups(task.requests, zh, model) if s not in made][: max(3 - len(made), 0)]


def _json_list(text: str, key: str, most: int, longest: int) -> list[str]:
    try:
        value = json.loads(text[text.index("{"): text.rindex("}") + 1]).get(key)
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
    zh = _is_chinese(requests)
    if task.kind == "title":
        return title(requests[0] if requests else "", zh)
    if task.kind == "tags":
        return tags(requests, zh)
    if task.kind == "follow_ups":
        return follow_ups(requests, zh, model)
    if task.kind == "image_prompt":
        return requests[-1] if requests else ""
    if task.kind == "emoji":
        return "🎨"
    if task.kind == "summary":
        drawn = "；".join(_subject(request)[:60] for request in requests[-10:])
        return f"用户请本服务画了这些图：{drawn}" if zh else f"The user asked this image service to draw: {drawn}"
    if task.kind == "check":
        return "OK"
    if task.kind == "image_done":
        if task.detail == "edited":
            return "图片已经改好，就在上面。" if zh else "Your picture is changed, shown above."
        return "图片已经画好，就在上面。" if zh else "Your picture is ready, shown above."
    if task.kind == "image_failed":
        reason = task.detail or ("没有说明原因" if zh else "no reason given")
        return f"图片没有画成：{reason}" if zh else f"The picture could not be made: {reason}"
    if task.kind == "autocomplete":
        return ""
    return []  # queries, tool calls, memory operations: none


def _is_chinese(texts: tuple[str, ...] | list[str]) -> bool:
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


def title(request: str, zh: bool) -> str:
    subject = _subject(request)
    if not subject:
        return "AI 绘画" if zh else "Image Generation"
    if zh:
        return subject[:12]
    return " ".join(word.capitalize() for word in subject.split()[:6])


_STYLES = (("水彩", "watercolor", "水彩"), ("油画", "oil painting", "油画"), ("动漫", "anime", "动漫"),
           ("二次元", "anime", "动漫"), ("像素", "pixel", "像素风"), ("写实", "photo", "写实"),
           ("素描", "sketch", "素描"), ("赛博朋克", "cyberpunk", "赛博朋克"), ("插画", "illustration", "插画"))


def tags(requests: tuple[str, ...], zh: bool) -> list[str]:
    found = ["AI 绘画" if zh else "Image Generation"]
    joined = " ".join(requests).lower()
    for chinese, english, tag in _STYLES:
        if chinese in joined or english in joined:
            found.append(tag if zh else english.title())
    subject = title(requests[-1], zh) if requests else ""
    if subject and len(subject) <= 12 and subject not in found:
        found.append(subject)
    return list(dict.fromkeys(found))[:3]


_NEXT_STYLES = (("水彩", "watercolor", "换成水彩风格", "Make it a watercolor"),
                ("油画", "oil painting", "换成油画风格", "Make it an oil painting"),
                ("赛博朋克", "cyberpunk", "换成赛博朋克风格", "Make it cyberpunk"),
                ("像素", "pixel", "换成像素风", "Make it pixel art"),
                ("动漫", "anime", "换成动漫风格", "Make it anime style"))


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


def follow_ups(requests: tuple[str, ...] | list[str], zh: bool, model: str | None = None) -> list[str]:
    """Three real next drawing requests that move on from what was asked so far: a style not
    used yet, another shape the model can draw (a detail instead when it has none: an edit model
    keeps the input's size; Kolors draws no landscape), and more pictures or another angle."""
    said = " ".join(requests).lower()
    style = next(((chinese, english) for key_zh, key_en, chinese, english in _NEXT_STYLES
                  if key_zh not in said and key_en not in said), ("换个角度", "Show it from another angle"))
    shape = None
    for request in reversed(requests):
        shape = parse(request, "Kwai-Kolors/Kolors", 16).asked_shape or shape
        if shape:
            break
    now, shapes = _orientation(shape) if shape else "square", _shapes(model)
    tall, wide = ("改成 9:16 竖图", "Make it 9:16"), ("改成 16:9 横图", "Make it 16:9")
    other_shape = next((words for orientation, words in (("wide", wide), ("tall", tall))
                        if orientation in shapes and orientation != now),
                       ("把背景换成海边", "Change the background to a beach"))
    last = requests[-1] if requests else ""
    more = ("换个角度", "Show it from another angle") if _AGAIN.search(last.strip()) or "pic" in last.lower() \
        else ("再画两张 pic:2", "Two more pic:2")
    picked = [style, other_shape, more if more != style else ("再来一张", "Draw it again")]
    return [chinese if zh else english for chinese, english in picked]


# --- follow-ups: the last picture, changed ----------------------------------------------------------


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
_IMAGE_LINE = re.compile(r"!\[image\d{1,3}\|[^\]\n]*\]\((https?://[^)\s]+)\)")


def _unescape(text: str) -> str:
    """The text `wording.md` escaped, as it was."""
    return _ESCAPED.sub(r"\1", text.replace("\u200b", "")).strip()


def _size_line(line: str) -> tuple[tuple[int, int] | None, int, str] | None:
    """(size or None for "follows the input", count, model) of a size line, or None if it is not one.

    Read with `str.find` from one label to the next, never a regex over the whole line: a forged
    answer of repeated labels must cost its length, not its square.
    """
    rest = line[len(wording.SIZE_LABEL):]
    size_match = _SIZE.match(rest)
    if size_match is None and not rest.startswith(wording.FOLLOWS_INPUT):
        return None
    count_at = rest.find(wording.COUNT_LABEL)
    model_at = rest.find(wording.MODEL_LABEL, count_at) if count_at >= 0 else -1
    count = _COUNT.fullmatch(rest[count_at + len(wording.COUNT_LABEL):model_at]) if model_at >= 0 else None
    if count is None:
        return None
    model = rest[model_at + len(wording.MODEL_LABEL):].split(" ", 1)[0].split("·", 1)[0]
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
            prompt = line[len(wording.PROMPT_LABEL):]
        elif negative is None and line.startswith(wording.NEGATIVE_LABEL):
            negative = line[len(wording.NEGATIVE_LABEL):]
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


_AGAIN = re.compile(
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
_NEW_SUBJECT = re.compile(r"^(?:请|帮我|给我)?\s*(?:画|绘制|生成)\s*(?:一|1|两|2|几)?\s*(?:只|个|张|幅|副|位|条|头|匹|棵|座|片)"
                          r"|^(?:please\s+)?(?:draw|paint|generate|create)\s+(?:an?|the|some)\b", re.IGNORECASE)
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
    tokens_only = parsed.asked_shape is not None or parsed.asked_count is not None or parsed.seed is not None \
        or parsed.negative_prompt is not None
    if not change:  # only tokens ("16:9 pic:2"): the same picture, so changed; nothing at all: again
        return Refinement(picture, "", again=not tokens_only)
    if _AGAIN.search(change) and len(change) <= 20:
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
    note = ("再来一张：沿用上一张的描述、尺寸和模型" if change.again
            else "沿用上一张的描述、尺寸、数量和模型，按这次的要求修改")
    return replace(parsed, prompt=change.change, size=size, asked_size=asked_size, asked_shape=asked_shape,
                   count=count, negative_prompt=negative, notes=(note, *parsed.notes))
