"""Every sentence a person reads: the chat answer's lines in Chinese, and the reasons in both languages.

The drawing core says what happened as events and typed reasons (events.py); this module words
them: `zh(reason)` for chat answers, `en(reason)` for the Images API and JSON errors. Chat UIs
render the answer as Markdown: only the lines built here carry Markdown images and links, and only
to the service's own pictures; text from anyone else goes through `text.md()` first.

The labels of the answer's lines (提示词, 尺寸, the image marker) are constants here, and the
follow-up reader (followups.py) reads an earlier answer back by the same constants.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from core.errors import Reason
from core.text import markdown_safe, md, md_url, one_line, seconds
from drawing import events as ev
from siliconflow.families import family

# --- reasons ----------------------------------------------------------------------------------------

_PLACES = {
    "invalid": ("无效地址", "an invalid address"),
    "reserved": ("保留地址", "a reserved address"),
    "loopback": ("本机地址", "this machine (loopback)"),
    "link_local": ("链路本地地址（含云服务器元数据地址）", "a link-local address (cloud metadata included)"),
    "cgnat": ("运营商内网地址", "a carrier-grade NAT address"),
    "private": ("内网地址", "a private network"),
}
_HOSTS = {"lsky": ("图床", "the image host (Lsky Pro)"), "sink": ("短链接服务", "the short-link service (Sink)")}
_COOL = {
    "server": ("上游服务出错", "server errors"),
    "timeout": ("上游超时", "timeouts"),
    "network": ("连不上上游", "connection errors"),
    "bad_response": ("上游回答无效", "unreadable answers"),
    "forbidden": ("模型对该账户不可用", "the model is not open to the account"),
}

# code -> (Chinese, English): a format string over the reason's parameters, or a function of them.
# Parameters named `seconds` or `wait` are said in whole seconds; Reasons inside are worded too.
Words = str | Callable[..., str]
REASONS: dict[str, tuple[Words, Words]] = {
    # SiliconFlow's answers
    "no_image": ("上游没有返回图片", "SiliconFlow returned no image"),
    "bad_image_link": ("上游返回的图片地址无效", "SiliconFlow returned an invalid image link"),
    "key_in_link": ("上游返回的图片地址里含有 API 密钥，已拒绝", "SiliconFlow's image link carried an API key; refused"),
    "video_key_in_link": ("上游返回的视频地址里含有 API 密钥，已拒绝", "SiliconFlow's video link carried an API key; refused"),
    "unreadable_models": ("模型列表无法解析", "the model list could not be read"),
    "unreadable_account": ("余额查询返回了无法解析的内容", "the account lookup answered something unreadable"),
    "expansion_empty": ("提示词扩充没有返回内容", "the chat model returned no prompt"),
    "answer_too_large": ("上游的回答超过 {kb} KB，已放弃", "SiliconFlow's answer was larger than {kb} KB"),
    "upstream_timeout": ("上游在 {seconds} 秒内没有响应", "SiliconFlow did not answer within {seconds} s"),
    "upstream_unreachable": ("无法连接上游服务", "SiliconFlow could not be reached"),
    "not_json": ("上游返回了无法解析的内容（不是 JSON）", "SiliconFlow's answer was not JSON"),
    "key_invalid": ("上游 API 密钥无效或已被吊销（401）", "the upstream API key is invalid or revoked (401)"),
    "no_balance": ("上游账户余额不足", "the upstream account has no balance left"),
    "forbidden": (
        lambda detail="": f"上游拒绝访问（403）：{detail or '模型已禁用或需要实名认证'}",
        lambda detail="": f"SiliconFlow refused access (403): {detail or 'the model is disabled or needs identity verification'}",
    ),
    "rate_limited": ("上游限流：该账户请求过于频繁（429）", "SiliconFlow rate-limited the account (429)"),
    "wrong_base_url": ("上游地址不存在（404），请检查 API_BASE_URL", "SiliconFlow answered 404: check API_BASE_URL"),
    "model_gone": (
        "这个模型已下线或不存在（SiliconFlow 20012），请换一个模型：GET /v1/models 列出现在能用的",
        "this model is withdrawn or does not exist (SiliconFlow 20012); GET /v1/models lists the models offered now",
    ),
    "upstream_refused": (
        lambda status, detail="": f"上游拒绝了请求（{status}）：{detail or '参数无效'}",
        lambda status, detail="": f"SiliconFlow refused the request ({status}): {detail or 'invalid parameters'}",
    ),
    "gateway_timeout": ("上游处理超时（504）", "SiliconFlow timed out (504)"),
    "upstream_unavailable": ("上游服务暂时不可用（{status}）", "SiliconFlow is unavailable right now ({status})"),
    "after_attempts": (
        lambda last, attempts, keys, also=None: f"{last}（共尝试 {attempts} 次，{keys} 个密钥）" + (f"；{also}" if also else ""),
        lambda last, attempts, keys, also=None: (
            f"{last} (after {attempts} attempts on {keys} keys)" + (f"; {also}" if also else "")
        ),
    ),
    # the key pool
    "no_upstream_keys": ("没有配置上游 API 密钥（API_KEYS）", "this service has no upstream keys (API_KEYS)"),
    "keys_out": (lambda **p: _keys_out(p, zh=True), lambda **p: _keys_out(p, zh=False)),
    "too_late": (
        lambda wait=None, out=None: (
            "在请求时限（REQUEST_TIMEOUT）内没有等到上游名额"
            + (f"（下一个名额约 {wait} 秒后才空出）" if wait else "")
            + f"：{out or '所有账户本时段的限额已用完或正在限流冷却'}"
        ),
        lambda wait=None, out=None: (
            "no upstream key was free within REQUEST_TIMEOUT"
            + (f" (the next frees in about {wait} s)" if wait else "")
            + f": {out or 'every account has used its budget for now or is resting after a 429'}"
        ),
    ),
    "cancelled": ("客户端已断开", "the client disconnected"),
    "internal": ("服务内部错误", "internal error in this service"),
    # fetching, keeping and shortening pictures
    "download_timeout": ("下载图片超时（{seconds} 秒）", "downloading the picture timed out ({seconds} s)"),
    "too_many_redirects": ("下载图片时重定向次数过多", "too many redirects while downloading the picture"),
    "download_failed": ("下载图片失败（连接出错）", "the picture could not be downloaded (connection error)"),
    "download_invalid": ("下载图片失败（对方的回答无效）", "the picture could not be downloaded (invalid answer)"),
    "download_status": ("下载图片失败（HTTP {status}）", "the picture could not be downloaded (HTTP {status})"),
    "unsafe_link": ("图片链接不安全：{why}", "the picture's link is not safe to follow: {why}"),
    "address_refused": (
        lambda host, place: f"{host} 指向{_PLACES[place][0]}，出于安全不予访问",
        lambda host, place: f"{host} leads to {_PLACES[place][1]}, which is not followed",
    ),
    "unresolved": ("无法解析主机名 {host}", "the host name {host} does not resolve"),
    "invalid_link": ("图片链接无效", "the picture's link is invalid"),
    "not_http": ("图片链接不是 http(s) 地址", "the picture's link is not http(s)"),
    "scheme_refused": (
        "只能使用 http(s) 图片链接或 data: 图片（file:、ftp:、gopher: 等链接不会被打开）",
        "only http(s) links and data: pictures are used (file:, ftp:, gopher: and others are never opened)",
    ),
    "not_a_picture": ("不是 PNG、JPEG、WebP 或 GIF 图片", "not a PNG, JPEG, WebP or GIF picture"),
    "not_image_type": ("链接返回的不是图片（{type}）", "the link answered something that is not a picture ({type})"),
    "too_large": ("图片超过 {mb} MB", "the picture is larger than {mb} MB"),
    "bad_data_uri": ("无法识别的 data: 图片", "an unreadable data: picture"),
    "bad_base64": ("data: 图片的 base64 无效", "the data: picture's base64 is invalid"),
    "host_timeout": (
        lambda host, seconds: f"{_HOSTS[host][0]}在 {seconds} 秒内没有响应",
        lambda host, seconds: f"{_HOSTS[host][1]} did not answer within {seconds} s",
    ),
    "host_unreachable": (lambda host: f"无法连接{_HOSTS[host][0]}", lambda host: f"{_HOSTS[host][1]} could not be reached"),
    "lsky_login": (
        "图床要求登录（HTTP {status}），请检查 LSKY_PRO_TOKEN",
        "the image host asks for a login (HTTP {status}): check LSKY_PRO_TOKEN",
    ),
    "lsky_too_large": ("图片太大，图床拒收（413）", "the image host refused the picture as too large (413)"),
    "lsky_token": ("图床令牌无效（401），请检查 LSKY_PRO_TOKEN", "the image host's token is invalid (401): check LSKY_PRO_TOKEN"),
    "lsky_busy": ("图床请求过于频繁（429）", "the image host is rate limiting (429)"),
    "lsky_refused": (
        lambda status, message="": f"图床拒绝上传（HTTP {status}）" + (f"：{message}" if message else ""),
        lambda status, message="": f"the image host refused the upload (HTTP {status})" + (f": {message}" if message else ""),
    ),
    "lsky_unreadable": ("图床返回了无法解析的内容", "the image host answered something unreadable"),
    "lsky_said": (
        lambda message="": f"图床拒绝上传：{message or '未说明原因'}",
        lambda message="": f"the image host refused the upload: {message or 'no reason given'}",
    ),
    "lsky_no_link": ("图床没有返回图片链接", "the image host returned no link"),
    "link_too_long": ("链接太长，短链接服务不接受", "the link is too long for the short-link service"),
    "sink_refused": ("短链接服务拒绝（HTTP {status}）", "the short-link service refused (HTTP {status})"),
    "sink_clash": ("短链接的名字多次冲突", "the short link's name clashed several times"),
    "store_write": (
        "保存到本机图片目录失败（磁盘已满或没有写权限）",
        "saving to the image store failed (disk full or not writable)",
    ),
    "store_remove": ("从本机图片目录删除文件失败（没有写权限）", "removing a file from the image store failed (not writable)"),
    "quota_left": (
        "这个密钥今天的额度只剩 {left} 个（这次要了 {asked} 个），只生成 {left} 个；额度在 {resets} 重置",
        "this key has only {left} left today ({asked} asked): {left} made; the quota resets at {resets}",
    ),
    "video_submit_unsure": (
        "上游没有确认是否接收了视频任务（{why}）；它可能已在生成并计费，为免重复计费没有再次提交",
        "SiliconFlow did not confirm whether it took the video job ({why}); it may be making (and billing) it, "
        "so it was not sent again",
    ),
    "over_cap": ("内容超过了允许的大小", "it was larger than allowed"),
    "busy": ("服务正忙，请稍后再试", "the service is busy; try again shortly"),
    "configuration": ("服务配置有误", "the service's configuration cannot be used"),
    "answered": ("请求未被接受（{status}）", "the request was not taken ({status})"),
    "videos_off": ("本服务没有开启视频（DATA_DIR 不可写）", "video is off on this service (DATA_DIR is not writable)"),
    "video_still_running": (
        "视频还在生成，这次回答等不到它了：稍后用 GET /v1/videos/{video_id} 查看",
        "the video is still being made: ask GET /v1/videos/{video_id} later",
    ),
    "video_not_kept": (
        "视频未能转存，上游链接一小时内有效：{why}",
        "the video could not be kept; SiliconFlow's link lasts an hour: {why}",
    ),
    "video_timeout": (
        "视频在 {seconds} 秒（VIDEO_TIMEOUT）内没有完成",
        "the video was not finished within {seconds} s (VIDEO_TIMEOUT)",
    ),
    "video_key_gone": (
        "提交这个视频任务的密钥已不在 API_KEYS 中，无法查询它的进度",
        "the key that submitted this video is no longer in API_KEYS, so its job cannot be asked about",
    ),
    "video_refused": ("SiliconFlow 没有生成这个视频：{why}", "SiliconFlow did not make the video: {why}"),
    "no_request_id": ("上游没有返回任务编号", "SiliconFlow returned no job id"),
    "unreadable_status": ("上游返回的任务状态无法读取", "SiliconFlow's job status could not be read"),
    "s3_no_bucket": (
        "图片未能保存到对象存储：存储桶 {bucket} 不存在（S3_BUCKET）",
        "the picture could not be kept in object storage: the bucket {bucket} does not exist (S3_BUCKET)",
    ),
    "s3_credentials": (
        "图片未能保存到对象存储：存储服务拒绝了凭据（AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY）",
        "the picture could not be kept in object storage: the credentials were refused (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)",
    ),
    "s3_no_credentials": (
        "图片未能保存到对象存储：没有设置凭据（AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY）",
        "the picture could not be kept in object storage: no credentials are set (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)",
    ),
    "s3_unreachable": (
        "图片未能保存到对象存储：存储服务暂时无法连接",
        "the picture could not be kept in object storage: it could not be reached",
    ),
    "s3_full": ("图片未能保存到对象存储：存储空间已满", "the picture could not be kept in object storage: it is full"),
    "s3_error": (
        "图片未能保存到对象存储：存储服务出错（{error}）",
        "the picture could not be kept in object storage: it answered an error ({error})",
    ),
    "s3_missing": ("对象存储中没有这个文件", "object storage has no such file"),
    "no_public_base": (
        "图片未保存到本机：无法从请求的 Host 得出本服务的公开地址，请设置 PUBLIC_BASE_URL",
        "the picture was not stored: no public address could be made from the request's Host; set PUBLIC_BASE_URL",
    ),
    "not_kept": ("图片未能转存：{why}", "the picture could not be kept: {why}"),
    "not_fetched": ("图片未能取回：{why}", "the picture could not be fetched: {why}"),
    "lsky_failed": ("蓝空图床上传失败：{why}", "uploading to Lsky Pro failed: {why}"),
    "shortlink_failed": ("短链接生成失败：{why}", "the short link could not be made: {why}"),
    "link_withheld": ("上游返回的图片链接没有提供：{why}", "SiliconFlow's link is withheld: {why}"),
    "inline_only": (
        "上游以内联数据（data:）返回了图片，聊天中无法显示；请开启图片保存（IMAGE_STORE_DIR、S3_BUCKET 或蓝空图床）",
        "SiliconFlow sent the picture inline (data:), which has no link; turn keeping on (IMAGE_STORE_DIR, S3_BUCKET or Lsky Pro)",
    ),
    # the drawing
    "shutting_down": (
        "服务正在重启或关闭，这张图片没能完成，请稍后重试",
        "the service is restarting; this picture was not finished, please retry",
    ),
    "request_timeout": ("超过 {seconds} 秒（REQUEST_TIMEOUT）仍未完成", "not finished within {seconds} s (REQUEST_TIMEOUT)"),
    "no_key_for_expansion": ("暂无可用密钥", "no usable key"),
    "expansion_echoed": ("对话模型没有改写提示词", "the chat model did not rewrite the prompt"),
    "nothing_to_change": (
        "没有要修改的内容：请说明要怎样改（例如“换成蓝色”）；要改比例请换用文生图模型",
        'nothing to change: say what to change ("make it blue"); to change the shape use a text-to-image model',
    ),
    "needs_picture": (
        "{model} 需要一张输入图片：请在消息里附上图片，或先画一张再让它修改",
        "{model} needs an input picture: attach one, or draw one first and then ask for the change",
    ),
    "inputs_not_taken": ("{model} 不接受输入图片，{pictures}没有使用", "{model} takes no input picture; {pictures} not used"),
    "inputs_over": ("{pictures}没有使用：{model} 最多接受 {most} 张图片", "{pictures} not used: {model} takes at most {most}"),
    "inputs_tried": (
        "{pictures}没有使用：前面的图片已试过 {tried} 张",
        "{pictures} not used: {tried} pictures were tried already",
    ),
    "input_unusable": ("{pictures}没有使用：{why}", "{pictures} not used: {why}"),
    "input_error": ("{pictures}没有使用：读取图片时出错", "{pictures} not used: reading it failed"),
    "edit_from": ("按{pictures}修改", "editing {pictures}"),
    "drawn_from": ("以{pictures}为底图", "drawing from {pictures}"),
    # the request as parsed
    "text_cut": ("描述过长，只读取了前 {chars} 个字符", "the description is long: only its first {chars} characters were read"),
    "count_capped": ("每次最多 {most} 张，已按 {most} 张生成", "at most {most} pictures per request; {most} drawn"),
    "seed_range": ("种子须在 0 到 {most} 之间，已忽略", "a seed must be from 0 to {most}; ignored"),
    "no_negative": ("{model} 不支持负面提示词，已忽略：{negative}", "{model} takes no negative prompt; ignored: {negative}"),
    "size_follows_input": (
        "{model} 画出的图跟随输入图片的尺寸，{asked} 没有使用",
        "{model} follows the input picture's size; {asked} not used",
    ),
    "prompt_cut": ("提示词过长，只使用了前 {chars} 个字符", "the prompt is long: only its first {chars} characters were used"),
    "part_unusable": (
        "消息里有一段无法使用的内容（{kind}），已忽略；只有文字和 image_url 图片能用",
        "a part of the message could not be used ({kind}); only text and image_url parts are",
    ),
    "parts_more": ("另有 {count} 段无法使用的内容，已忽略", "{count} more parts could not be used"),
    "no_image_url": ("{pictures} 没有图片地址（image_url.url），已忽略", "{pictures} has no image_url.url; ignored"),
    "again": ("再画 {count} 张：沿用上一张的描述、尺寸和模型", "{count} more: the last picture's description, size and model"),
    "again_changed": (
        "再画 {count} 张：沿用上一张的描述、尺寸和模型，按这次的要求修改",
        "{count} more: the last picture's description, size and model, changed as asked",
    ),
    "again_video": (
        "再做 {count} 个视频：沿用上一个的描述、尺寸和模型",
        "{count} more: the last video's description, size and model",
    ),
    "again_changed_video": (
        "再做 {count} 个视频：沿用上一个的描述、尺寸和模型，按这次的要求修改",
        "{count} more: the last video's description, size and model, changed as asked",
    ),
    "refined": (
        "沿用上一张的描述、尺寸、数量和模型，按这次的要求修改",
        "the last picture's description, size, count and model, changed as asked",
    ),
}


def _keys_out(p: dict[str, Any], *, zh: bool) -> str:
    """Why no key can draw: how many keys, and how many are out for what."""
    causes = "、".join(dict.fromkeys(_COOL.get(c, ("上游出错", "errors"))[0 if zh else 1] for c in p.get("causes", ())))
    if zh:
        cooling = "连续出错后冷却中" + (f"（{causes}）" if causes else "")
        parts = [
            f"{p[kind]} 个{label}"
            for kind, label in (("dead", "无效（401）"), ("broke", "余额不足"), ("cooling", cooling))
            if p.get(kind)
        ]
        if p.get("budget"):
            parts.append(f"{p['budget']} 个所在账户已用完本时段的限额或限流冷却中")
        later = f"，最早约 {p['wait']} 秒后恢复" if p.get("wait") else ""
        return f"全部 {p['total']} 个上游密钥暂不可用：{'、'.join(parts)}{later}"
    cooling = "cooling down after " + (causes.replace("、", ", ") if causes else "errors")
    parts = [
        f"{p[kind]} {label}"
        for kind, label in (("dead", "invalid (401)"), ("broke", "without balance"), ("cooling", cooling))
        if p.get(kind)
    ]
    if p.get("budget"):
        parts.append(f"{p['budget']} whose account has used its budget for now or is resting after a 429")
    later = f"; the first may be back in about {p['wait']} s" if p.get("wait") else ""
    return f"none of the {p['total']} upstream keys can draw now: {', '.join(parts)}{later}"


def _pictures(refs: Any, *, zh: bool) -> str:
    """「附图 1、附图 2 」: the pictures' names, spaced from the Chinese that follows when they end in a digit."""
    names = [picture_name(ref, zh=zh) for ref in refs]
    if len(names) > 3:
        names = [*names[:2], f"…{names[-1]}（共 {len(names)} 张）" if zh else f"… {names[-1]} ({len(names)} in all)"]
    joined = ("、" if zh else ", ").join(names)
    return f"{joined} " if zh and joined[-1:].isascii() else joined


def picture_name(ref: ev.ImageRef, *, zh: bool = True) -> str:
    if ref.source == "last":
        return "上一张图片" if zh else "the last picture"
    if ref.source == "upload":
        return f"上传的图片 {ref.number}" if zh else f"'image' file {ref.number}"
    return f"附图 {ref.number}" if zh else f"attached picture {ref.number}"


def _word(reason: Reason, zh: bool) -> str:
    words = REASONS.get(reason.code)
    if words is None:
        return reason.code
    params = {}
    for name, value in reason.params:
        if isinstance(value, Reason):
            value = _word(value, zh)
        elif name == "pictures":
            value = _pictures(value, zh=zh)
        elif name in ("seconds", "wait") and isinstance(value, int | float):
            value = seconds(value)
        params[name] = value
    template = words[0 if zh else 1]
    return template(**params) if callable(template) else template.format(**params)


def zh(reason: Reason) -> str:
    """The reason in Chinese, for chat answers (plain text: escape it with `md` before Markdown)."""
    return _word(reason, True)


def en(reason: Reason) -> str:
    """The reason in English, for the Images API and JSON errors."""
    return _word(reason, False)


# --- the answer's lines ------------------------------------------------------------------------

# The labels of the lines that describe a drawing. The follow-up reader (followups.py) reads the
# last answer back by these same constants, so renaming one cannot break follow-ups.
PROMPT_LABEL = "🎨 提示词："
NEGATIVE_LABEL = "🚫 负面提示词："
SIZE_LABEL = "📐 尺寸："
COUNT_LABEL = " · 数量："
MODEL_LABEL = " · 模型："
SEED_LABEL = " · 种子："
FOLLOWS_INPUT = "跟随输入图片"
IMAGE_MARK = "![image"
# An answer's picture, as the playground and the tests find it: (number, alt text, URL).
IMAGE_LINE = re.compile(rf"^{re.escape(IMAGE_MARK)}(\d+)\|([^\]\n]*)\]\((\S+?)\)$", re.M)


def refusal(keyword: str) -> str:
    return f"抱歉，您的请求包含不允许的内容（“{md(keyword)}”），无法生成图片。请修改描述后重试。"


def expansion_skipped(reason: Reason) -> str:
    return f"（提示词扩充跳过：{md(zh(reason))}；已使用原始描述）\n"


def expansion_failed(reason: Reason) -> str:
    return f"（提示词扩充失败：{md(zh(reason))}；已使用原始描述）\n"


def seeds_text(seeds: list[int]) -> str:
    if len(seeds) == 1:
        return str(seeds[0])
    if seeds[-1] < seeds[0]:  # past the largest seed, the count starts again at 0
        return "、".join(str(seed) for seed in seeds)
    return f"{seeds[0]}–{seeds[-1]}（每张 +1）"


def prompt_info(
    model: str,
    prompt: str,
    *,
    size: str | None,
    asked_size: str | None,
    size_adjusted: bool,
    count: int,
    seeds: list[int] | None,
    negative: str | None,
    notes: Iterable[Reason],
    expansion_note: str = "",
) -> str:
    """The lines before the images: the prompt used, size, count, model, seeds and notes."""
    if size is None:
        shown_size = FOLLOWS_INPUT
    elif size_adjusted:
        shown_size = f"{size}（{md(model)} 不支持 {md(asked_size or '')}，已使用最接近的尺寸）"
    else:
        shown_size = size
    extras = f"{SEED_LABEL}{seeds_text(seeds)}" if seeds else ""
    negative_line = f"{NEGATIVE_LABEL}{md(one_line(negative, 500))}\n" if negative else ""
    note_lines = "".join(f"ℹ️ {md(one_line(zh(note), 500))}\n" for note in notes)
    return (
        f"{expansion_note}{PROMPT_LABEL}{md(one_line(prompt, 2000))}\n{negative_line}"
        f"{SIZE_LABEL}{shown_size}{COUNT_LABEL}{count}{MODEL_LABEL}{md(model)}{extras}\n{note_lines}\n"
    )


def image_markdown(
    index: int,
    alt: str,
    image: str,
    download: str | None,
    permanent: str | None,
    notes: Iterable[Reason] = (),
    seed: int | None = None,
) -> str:
    """One picture: the image itself, its links, its seed, and what did not work for it.

    The image line stands alone on its line and starts with `![image<N>|`: that is the marker
    the seed's format promises UIs, and the one the playground looks for.
    """
    lines = [f"{IMAGE_MARK}{index}|{alt}]({md_url(image)})"]
    seed_part = f"{SEED_LABEL}{seed}" if seed is not None else ""
    if permanent and download:
        lines.append(f"[永久链接]({md_url(permanent)}) · [上游原图]({md_url(download)})（上游链接一小时后失效）{seed_part}")
    elif permanent:  # the upstream sent the picture inline: there is no upstream link to give
        lines.append(f"[永久链接]({md_url(permanent)}){seed_part}")
    else:
        lines.append(f"[下载第 {index} 张]({md_url(download or image)})（上游链接一小时后失效，请及时保存）{seed_part}")
    lines.extend(f"⚠️ {md(one_line(zh(note), 300))}" for note in notes)
    return "\n".join(lines) + "\n\n"


def image_failed(index: int, reason: Reason) -> str:
    return f"⚠️ 第 {index} 张图片生成失败：{md(zh(reason))}\n\n"


def queued(waiting: int, ahead: int, next_in: float | None, cooling: int = 0) -> str:
    """Images waiting for a key: how many, behind whom, when a key frees, and why they wait."""
    behind = f"，前面还有 {ahead} 个请求在排" if ahead else ""
    soon = f"，下一个名额约 {max(1, round(next_in))} 秒后空出" if next_in is not None else ""
    why = f"{cooling} 个密钥出错后冷却中或不可用，其余账户限额用完后按时段恢复" if cooling else "账户限额用完后按时段恢复"
    return f"⏳ 排队等候上游名额：本次还有 {waiting} 张在等{behind}{soon}（{why}）\n\n"


def preparing(expanding: bool, pictures: int) -> str:
    """The first line, said before the chat model or the input pictures are waited for."""
    if expanding and pictures:
        return "✍️ 正在读取输入图片并完善提示词…\n\n"
    return "✍️ 正在完善提示词…\n\n" if expanding else "📥 正在读取输入图片…\n\n"


SUMMARY_LABEL = "完成："  # the answer's last line; chat UIs' tasks quote it back (without the pictures)
SUMMARY_LINE = re.compile(rf"^{SUMMARY_LABEL}(\d+)/(\d+) ", re.M)


def summary(delivered: int, count: int, videos: bool = False) -> str:
    return f"{SUMMARY_LABEL}{delivered}/{count} {'个视频' if videos else '张图片'}生成成功。"


def video_submitted(index: int, link: str | None = None) -> str:
    later = f"中途断开也不会丢，做好后可在[这里取回]({md_url(link)})。" if link else ""
    return f"🎬 第 {index} 个视频已提交，通常需要几分钟，进度会在这里更新；{later}\n\n"


def video_progress(index: int, status: str, position: int | None, elapsed: float) -> str:
    if status == "queued":
        ahead = f"（前面还有 {position} 个）" if position else ""
        return f"⏳ 第 {index} 个视频排队中{ahead}，已等 {seconds(elapsed)} 秒\n\n"
    return f"⏳ 第 {index} 个视频生成中，已用 {seconds(elapsed)} 秒\n\n"


VIDEO_MARK = "🎞️ [▶️ 播放第 "  # a video line starts with it (the playground finds videos by it)


def video_ready(index: int, url: str, poster: str | None, seed: int | None, notes: tuple[Reason, ...]) -> str:
    """A link every chat UI shows; with a picture at hand, the picture, linking to the video."""
    lines = []
    if poster:
        lines.append(f"[![第 {index} 个视频的首帧]({md_url(poster)})]({md_url(url)})")
    extra = f" · 种子：{seed}" if seed is not None else ""
    lines.append(f"{VIDEO_MARK}{index} 个视频（MP4）]({md_url(url)}){extra}")
    lines += [f"⚠️ {md(zh(note))}" for note in notes]
    return "\n".join(lines) + "\n\n"


def video_page(status: str, progress: int, error: str) -> str:
    """`/videos/{id}` for a person whose chat ended before the video: both languages (plain text)."""
    return {
        "queued": "视频还在排队，请稍后刷新。 (queued: refresh later)",
        "in_progress": f"视频生成中（{progress}%），请稍后刷新。 (in progress: refresh later)",
        "failed": f"视频没有生成 (failed): {error}",
        "completed": "视频已过期：没有保存，上游链接已失效。 (expired: nothing kept it)",
    }[status]


def video_failed(index: int, reason: Reason) -> str:
    return f"⚠️ 第 {index} 个视频没有生成：{md(zh(reason))}\n\n"


INTERNAL_ERROR = "\n\n⚠️ 服务内部错误，回答不完整。"


def chat(events: Iterable[ev.Event]) -> Iterator[str | None]:
    """The drawing's events as the assistant's words, piece by piece (None: a keep-alive).
    Closing it closes the drawing."""
    try:
        yield from _chat(events)
    finally:
        ev.close(events)


def _chat(events: Iterable[ev.Event]) -> Iterator[str | None]:
    p = ev
    alt = ""
    generating = False  # "生成中" said, its ✅ not yet: anything else starts a line of its own
    for event in events:
        if isinstance(event, p.KeepAlive):
            yield None
            continue
        if generating and not isinstance(event, p.Submitted):
            yield "\n\n"
            generating = False
        if isinstance(event, p.Refused):
            yield refusal(event.keyword)
        elif isinstance(event, p.Preparing):
            yield preparing(event.expanding, event.pictures)
        elif isinstance(event, p.PromptReady):
            alt = markdown_safe(event.prompt, limit=300)
            yield _prompt_ready(event)
            yield "提交中" if family(event.job.model).video else "生成中"  # a video is submitted, then made
            generating = True
        elif isinstance(event, p.Submitted):
            yield "✅\n\n"
            generating = False
        elif isinstance(event, p.Queued):
            yield queued(event.waiting, event.ahead, event.next_in, event.cooling)
        elif isinstance(event, p.ImageReady):
            outcome = event.outcome
            links = outcome.links
            assert links is not None
            yield image_markdown(outcome.index, alt, links.image, links.download, links.permanent, links.notes, outcome.seed)
        elif isinstance(event, p.ImageFailed):
            yield image_failed(event.index, event.reason)
        elif isinstance(event, p.VideoSubmitted):
            yield video_submitted(event.index, event.link)
        elif isinstance(event, p.VideoProgress):
            yield video_progress(event.index, event.status, event.position, event.elapsed)
        elif isinstance(event, p.VideoReady):
            yield video_ready(event.index, event.url, event.poster, event.seed, event.notes)
        elif isinstance(event, p.VideoFailed):
            yield video_failed(event.index, event.reason)
        elif isinstance(event, p.Done):
            yield summary(event.delivered, event.count, event.videos)
        elif isinstance(event, p.Broken):
            yield INTERNAL_ERROR


def _prompt_ready(event) -> str:
    job, draw = event.job, event.job.draw
    expansion = event.expansion
    note = ""
    if expansion is not None and expansion.failed:
        note = expansion_failed(expansion.failed)
    elif expansion is not None and expansion.skipped:
        note = expansion_skipped(expansion.skipped)
    return prompt_info(
        job.model,
        event.prompt,
        size=draw.size,
        asked_size=draw.asked_size,
        size_adjusted=draw.size_adjusted,
        count=draw.count,
        seeds=event.seeds,
        negative=draw.negative_prompt,
        notes=event.notes,
        expansion_note=note,
    )


# --- chat UIs' background tasks (housekeeping.py answers them here, never drawing) -----------------
# Each is (Chinese, English): the UI's conversation decides which.

TASK_WORDS: dict[str, tuple[str, str]] = {
    "summary": ("用户请本服务画了这些图：{drawn}", "The user asked this image service to draw: {drawn}"),
    "edited": ("图片已经改好，就在上面。", "Your picture is changed, shown above."),
    "ready": ("图片已经画好，就在上面。", "Your picture is ready, shown above."),
    "failed": ("图片没有画成：{reason}", "The picture could not be made: {reason}"),
    "no_reason": ("没有说明原因", "no reason given"),
    "default_title": ("AI 绘画", "Image Generation"),
    "edit_title": ("图片编辑", "Image Editing"),
    "continued": (
        "这条回答已经完整，图片都在上面。想要改动请直接说（例如“换成蓝色”），想要更多请说“再来两张”。",
        'That answer is complete: its pictures are above. Say what to change ("make it blue"), or "two more".',
    ),
}

# (what a request says in Chinese, in English, the tag in Chinese); the English tag is title-cased.
STYLE_TAGS = (
    ("水彩", "watercolor", "水彩"),
    ("油画", "oil painting", "油画"),
    ("动漫", "anime", "动漫"),
    ("二次元", "anime", "动漫"),
    ("像素", "pixel", "像素风"),
    ("写实", "photo", "写实"),
    ("素描", "sketch", "素描"),
    ("赛博朋克", "cyberpunk", "赛博朋克"),
    ("插画", "illustration", "插画"),
)

# Suggested next requests: (a style already asked for in Chinese, in English, the suggestion in each).
NEXT_STYLES = (
    ("水彩", "watercolor", "换成水彩风格", "Make it a watercolor"),
    ("油画", "oil painting", "换成油画风格", "Make it an oil painting"),
    ("赛博朋克", "cyberpunk", "换成赛博朋克风格", "Make it cyberpunk"),
    ("像素", "pixel", "换成像素风", "Make it pixel art"),
    ("动漫", "anime", "换成动漫风格", "Make it anime style"),
)
SUGGEST = {
    "angle": ("换个角度", "Show it from another angle"),
    "tall": ("改成 9:16 竖图", "Make it 9:16"),
    "wide": ("改成 16:9 横图", "Make it 16:9"),
    "background": ("把背景换成海边", "Change the background to a beach"),
    "two_more": ("再画两张 pic:2", "Two more pic:2"),
    "again": ("再来一张", "Draw it again"),
    "detail": ("给它加一顶小帽子", "Give it a small hat"),
}


def task_words(key: str, zh: bool, **params: str) -> str:
    """One of TASK_WORDS in the conversation's language."""
    chinese, english = TASK_WORDS[key]
    return (chinese if zh else english).format(**params)
