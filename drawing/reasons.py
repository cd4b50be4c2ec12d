"""Every reason in words: each `Reason` code (core/errors.py) in Chinese for chat answers
(`zh(reason)`) and in English for the Images, Videos and admin APIs, JSON errors and logs
(`en(reason)`). The drawing core and the stores say why as typed reasons; only this table words them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from core.errors import Reason
from core.text import seconds
from drawing import events as ev

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
    if ref.source == "field":  # SiliconFlow's own fields: image, image2, image3
        name = "image" if ref.number <= 1 else f"image{ref.number}"
        return f"字段 {name} 的图片" if zh else f"'{name}'"
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
