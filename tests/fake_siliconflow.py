"""A fake SiliconFlow: a real local HTTP server speaking the bytes of CONTRACTS.md section 1.

Keys misbehave on purpose, chosen by prefix:

| key prefix   | answer to an image call                                            |
|--------------|--------------------------------------------------------------------|
| sk-dead      | 401, the bare JSON string "Invalid token"                          |
| sk-revoked   | 401 to image calls, though /v1/user/info still answers (revoked for images) |
| sk-broke     | 403 {"code":30001,"message":"Sorry, your account balance is insufficient",...} |
| sk-limited   | 429 rate limit message                                             |
| sk-retry     | 429 with `Retry-After: <state.retry_after>`                        |
| sk-once      | 429 with `Retry-After` on its first call, then like a good key     |
| sk-overload  | 503 {"code":50505,...}                                             |
| sk-gateway   | 504 with a bare string                                             |
| sk-html      | 200 with an HTML body (not JSON)                                   |
| sk-empty     | 200 with "images": []                                              |
| sk-hang      | waits `hang_seconds` before answering                              |
| sk-datauri   | 200 with the image inline as a data: URI                           |
| sk-notimage  | 200 with a URL that serves an HTML page                            |
| sk-bigimage  | 200 with a URL that serves a 3 MB "PNG"                            |
| sk-huge      | 200 with a JSON answer of `state.huge_bytes` (padding after a good image) |
| sk-drip      | 200 with a Content-Length, then the body a byte every `drip_interval` s |
| sk-headdrip  | the status line and headers a byte every `drip_interval` s          |
| sk-redirect  | 200 with a URL on this server that redirects to `state.redirect_to` |
| sk-echo      | 400 whose message echoes the key as a Bearer header, a Markdown link, an image and HTML |
| sk-htmldata  | 200 with a `data:text/html` "image"                                |
| sk-verbose   | 400 whose message is "token", 300,000 spaces and a comma (a regex trap)  |
| sk-slowlink  | 200 with a URL on this server that sends its PNG a byte every `drip_interval` s |
| sk-keyinurl  | 200 with a URL that carries the caller's key in its query (a video's clip link too) |
| sk-elsewhere | 200 with `state.redirect_to` itself as the image URL (another host)   |
| anything else| 200 with one image URL served by this same server (a real PNG)     |

A key in `state.funded` answers like a good one (a topped-up account).

Pictures take time to download, as from SiliconFlow's storage far away: the first byte after
`state.picture_first_byte` (0.05 s), then `state.picture_bytes_per_second` (2 MB/s); with
`state.picture_bytes` the PNG is padded to that size (1.5 MB is a 1024x1024 PNG).

`/v1/user/info` answers 410, as SiliconFlow's does since it stopped the endpoint (CONTRACTS.md
section 1); with `state.user_info = True` it answers as it used to (another deployment): the
account in `data.id` and the balance.

Accounts: a key holding `-acct<X>-` belongs to account X (`sk-good-acctA-1`, `sk-good-acctA-2`
share account A); any other key is its own account. With `state.rate_limit = (N, seconds)` every
account may make N image calls per model in
any window of that many seconds (a sliding window, counted when a call arrives); more are refused
with SiliconFlow's 429, counted in `state.refused`.
Unknown models answer 400 code 20012; sizes that Kolors and Qwen-Image do not list, 400 code 20015.

Run alone for a demo (`python -m tests.fake_siliconflow --port 9000`), or with `--demo` to also start
the service against it.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import re
import secrets
import socket
import struct
import threading
import time
import zlib
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

# The image models served today, by sub_type, as GET /v1/models?type=image&sub_type=… lists them;
# sizes where the model checks them; edit models and the input fields each takes (CONTRACTS.md 1).
IMAGE_MODELS = {
    "Kwai-Kolors/Kolors": ("1024x1024", "960x1280", "768x1024", "720x1440", "720x1280"),
    "Qwen/Qwen-Image": ("1328x1328", "1664x928", "928x1664", "1472x1140", "1140x1472", "1584x1056", "1056x1584"),
    "Tongyi-MAI/Z-Image-Turbo": ("512x512", "768x1024", "1024x576", "576x1024"),
    "black-forest-labs/FLUX.2-pro": ("512x512", "768x1024", "1024x768", "576x1024", "1024x576"),
}
TEXT_TO_IMAGE = (*IMAGE_MODELS, "black-forest-labs/FLUX.1-schnell", "black-forest-labs/FLUX.1-dev")
EDIT_MODELS = {
    "Qwen/Qwen-Image-Edit": ("image",),
    "Qwen/Qwen-Image-Edit-2509": ("image", "image2", "image3"),
    "black-forest-labs/FLUX.1-Kontext-dev": ("image",),
    "black-forest-labs/FLUX.1-Kontext-pro": ("input_image",),
}
IMAGE_TO_IMAGE = (*EDIT_MODELS, "Kwai-Kolors/Kolors")
_DATA_IMAGE = re.compile(r"data:image/(?:png|jpeg|webp);base64,([A-Za-z0-9+/=]+)")
CHAT_MODELS = {"Qwen/Qwen2.5-7B-Instruct", "deepseek-ai/DeepSeek-R1"}
VIDEO_MODELS = {"text-to-video": ("Wan-AI/Wan2.2-T2V-A14B",), "image-to-video": ("Wan-AI/Wan2.2-I2V-A14B",)}
VIDEO_MODELS_ALL = (*VIDEO_MODELS["text-to-video"], *VIDEO_MODELS["image-to-video"])
# A real H.264 MP4 (2 s, 320x180, made once with ffmpeg's test source): what a finished job links.
CLIP = (Path(__file__).with_name("data") / "clip.mp4").read_bytes()
RATE_LIMIT_MESSAGE = (
    "Request was rejected due to rate limiting. If you want more, please contact contact@siliconflow.cn. "
    "Details:TPM limit reached."
)


@dataclass
class Call:
    path: str
    key: str
    body: Any
    start: float
    end: float = 0.0
    status: int = 0  # what it was answered


@dataclass
class FakeState:
    image_latency: float = 0.0
    expansion_latency: float = 0.0
    # ok | fail | hang | think | garbage | huge | long | markdown | surrogate | secret | helpful
    expansion_mode: str = "ok"
    huge_bytes: int = 20 * 2**20
    drip_interval: float = 0.2
    redirect_to: str = ""
    rate_limit: tuple[int, float] | None = None
    models_down: bool = False
    extra_models: tuple[str, ...] = ()  # listed as text-to-image too (hostile ids, for the model list)
    refused: int = 0
    refused_at: list[float] = field(default_factory=list)
    windows: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    hang_seconds: float = 5.0
    # A picture download as SiliconFlow's storage serves one to a server abroad: the first byte this
    # late, then this many bytes a second (0: at once), the PNG padded to `picture_bytes` (0: as made).
    picture_first_byte: float = 0.05
    picture_bytes_per_second: float = 2 * 2**20
    picture_bytes: int = 0
    picture_downloads: int = 0  # how many picture downloads were answered 200
    picture_gate: threading.Event | None = None  # closed: a picture download sends its headers, then waits
    picture_cut: int = 0  # > 0: a picture download hangs up after this many bytes of its body
    picture_names: list[str] = field(default_factory=list)  # each picture link's file name, as made
    picture_lies: bool = False  # a picture link answers an HTML page as image/png (a storage's error page)
    picture_no_length: bool = False  # a picture download says no Content-Length (and ends when it closes)
    retry_after: str = "1"
    expired: bool = False  # the image links have expired (SiliconFlow's last an hour): 403 for every one
    videos: dict[str, dict] = field(default_factory=dict)  # requestId -> the job (video contract)
    video_queue_seconds: float = 0.2  # a job waits this long InQueue, then
    video_seconds: float = 0.6  # this long InProgress, then Succeeds (or Fails: video_fail)
    video_fail: str = ""  # a job's reason to fail, e.g. content moderation
    video_submit_latency: float = 0.0  # a submit is taken (and billed) at once, then answered this late
    video_link_seconds: float = 600.0  # a clip's link answers this long after it succeeded, then 403
    video_bytes: int = 0  # > 0: the clip is padded to this many bytes (a large download)
    downloads: list[str] = field(default_factory=list)  # the requestIds whose clip was fetched, in order
    funded: set[str] = field(default_factory=set)
    user_info: bool = False  # /v1/user/info answers 200 (an older deployment) instead of 410
    limited_once: set[str] = field(default_factory=set)
    calls: list[Call] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    # Closed (an Event not set): image calls and clip downloads wait for it to open (at most a
    # minute), and `arrived` is set as the first one starts waiting: a test can hold a request in
    # flight for as long as it needs.
    gate: threading.Event | None = None
    arrived: threading.Event = field(default_factory=threading.Event)

    def reset(self) -> None:
        with self.lock:
            self.calls.clear()
        self.image_latency = self.expansion_latency = 0.0
        self.expansion_mode = "ok"
        self.huge_bytes = 20 * 2**20
        self.drip_interval = 0.2
        self.picture_first_byte, self.picture_bytes_per_second, self.picture_bytes = 0.05, 2 * 2**20, 0
        self.picture_downloads = 0
        self.picture_gate, self.picture_cut = None, 0
        self.picture_names = []
        self.picture_lies = self.picture_no_length = False
        self.redirect_to = ""
        self.rate_limit = None
        self.models_down = False
        self.expired = False
        self.videos = {}
        self.video_queue_seconds, self.video_seconds, self.video_fail = 0.2, 0.6, ""
        self.video_link_seconds, self.video_bytes = 600.0, 0
        self.video_submit_latency = 0.0
        self.downloads = []
        self.extra_models = ()
        self.refused = 0
        self.refused_at = []
        self.windows = {}
        self.hang_seconds = 5.0
        self.retry_after = "1"
        self.funded = set()
        self.user_info = False
        self.limited_once = set()
        if self.gate is not None:
            self.gate.set()  # nothing stays waiting behind a test that ended
        self.gate, self.arrived = None, threading.Event()

    def admit(self, account: str, model: str) -> bool:
        """True when `account` may make another call to `model` now (and it is counted)."""
        if self.rate_limit is None:
            return True
        count, seconds = self.rate_limit
        now = time.monotonic()
        with self.lock:
            window = [t for t in self.windows.get((account, model), []) if t > now - seconds]
            if len(window) >= count:
                self.refused += 1
                self.refused_at.append(now)
                self.windows[(account, model)] = window
                return False
            self.windows[(account, model)] = window + [now]
            return True

    def drawing_calls(self) -> list[Call]:
        """Image and chat calls: what costs money (account look-ups do not)."""
        with self.lock:
            return [c for c in self.calls if c.path in ("/v1/images/generations", "/v1/chat/completions")]

    def image_calls(self) -> list[Call]:
        with self.lock:
            return [c for c in self.calls if c.path == "/v1/images/generations"]

    def chat_calls(self) -> list[Call]:
        with self.lock:
            return [c for c in self.calls if c.path == "/v1/chat/completions"]


def png(width: int, height: int, seed: bytes) -> bytes:
    """A real PNG: a two-colour gradient picked from `seed`."""
    digest = hashlib.sha256(seed).digest()
    a, b = digest[:3], digest[3:6]
    rows = []
    for y in range(height):
        t = y / max(height - 1, 1)
        pixel = bytes(int(a[i] * (1 - t) + b[i] * t) for i in range(3))
        rows.append(b"\x00" + pixel * width)
    raw = zlib.compress(b"".join(rows), 6)

    def part(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + part(b"IHDR", header) + part(b"IDAT", raw) + part(b"IEND", b"")


def padded(picture: bytes, size: int) -> bytes:
    """A PNG grown to `size` bytes by a private ancillary chunk before its end: still a valid picture."""
    missing = size - len(picture) - 12
    if missing <= 0:
        return picture
    end = picture.rindex(b"IEND") - 4
    data = bytes(missing)
    chunk = struct.pack(">I", len(data)) + b"prVt" + data + struct.pack(">I", zlib.crc32(b"prVt" + data) & 0xFFFFFFFF)
    return picture[:end] + chunk + picture[end:]


BIG_PNG = b"\x89PNG\r\n\x1a\n" + bytes(3 * 2**20)


def _first_frame(image: Any) -> bool:
    """An I2V job's `image`: a data URI of a PNG, JPEG or WebP picture."""
    match = _DATA_IMAGE.fullmatch(image) if isinstance(image, str) else None
    try:
        return bool(match) and base64.b64decode(match[1], validate=True).startswith((b"\x89PNG", b"\xff\xd8\xff", b"RIFF"))
    except ValueError:
        return False


def _edit_problem(body: dict) -> str | None:
    """What an edit (or image-to-image) call does wrong, as SiliconFlow's 400 would say; None if fine."""
    model, fields = body["model"], EDIT_MODELS.get(body["model"])
    given = [name for name in ("image", "image2", "image3", "input_image") if name in body]
    if fields is None:
        if given and (model != "Kwai-Kolors/Kolors" or given != ["image"]):
            return f"The parameter is invalid: {model} takes no {given[0]}."
        fields = ("image",) if given else ()
    elif fields[0] not in given:
        return f"The parameter is invalid: {fields[0]} is required."
    elif "image_size" in body:
        return "The parameter is invalid: image_size is not accepted, the output follows the input image."
    for name in given:
        if name not in fields:
            return f"The parameter is invalid: {model} takes no {name}."
        match = _DATA_IMAGE.fullmatch(str(body[name]))
        try:
            if match is None or not base64.b64decode(match[1], validate=True).startswith((b"\x89PNG", b"\xff\xd8\xff", b"RIFF")):
                return f"The parameter is invalid: {name} must be a data:image/…;base64 URI of an image."
        except ValueError:
            return f"The parameter is invalid: {name} is not base64."
    return None


def _count(items) -> dict:
    counts: dict = {}
    for item in items:
        counts[item] = counts.get(item, 0) + 1
    return counts


def account_of(key: str) -> str:
    """The account a fake key belongs to: `-acct<X>-` in the key names it, else the key is its own."""
    marker = key.find("-acct")
    if marker < 0:
        return key
    return key[marker + 5 :].split("-", 1)[0]


class FakeSiliconFlow(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024  # the benchmark opens hundreds of connections at once

    def __init__(self, port: int = 0):
        self.state = FakeState()
        self.stopping = threading.Event()
        super().__init__(("127.0.0.1", port), _Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def start(self) -> FakeSiliconFlow:
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that timed out and hung up is part of the tests, not news

    def stop(self) -> None:
        self.stopping.set()
        self.shutdown()
        self.server_close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FakeSiliconFlow

    def setup(self) -> None:
        super().setup()
        # Headers and body go out as two writes; without this, Nagle plus the client's delayed ACK
        # add 40 ms to every answer, which a real server would not.
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:  # quiet in tests
        pass

    # -- plumbing --
    def _send(
        self, status: int, body: bytes, content_type: str = "application/json; charset=utf-8", headers: dict | None = None
    ) -> None:
        if getattr(self, "call", None) is not None:
            self.call.status = status
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("x-siliconcloud-trace-id", secrets.token_hex(8))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, obj: Any, headers: dict | None = None) -> None:
        # ensure_ascii only where it must: a lone surrogate can be sent escaped, not as UTF-8.
        try:
            data = json.dumps(obj, ensure_ascii=False).encode()
        except UnicodeEncodeError:
            data = json.dumps(obj).encode()
        self._send(status, data, headers=headers)

    def _key(self) -> str:
        return self.headers.get("Authorization", "").removeprefix("Bearer ").strip()

    def _wait(self, seconds: float) -> None:
        self.server.stopping.wait(seconds)

    # -- routes --
    def do_GET(self) -> None:
        self.call = None  # a connection kept alive: the last POST's call is not this answer's
        path = unquote(urlsplit(self.path).path)
        if path.startswith("/videos/") and path.endswith(".mp4"):
            state, request_id = self.server.state, path[len("/videos/") : -len(".mp4")]
            job = state.videos.get(request_id)
            if job is None or time.monotonic() > job.get("expires_mono", 0):
                self._send(
                    403, b"<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>", "application/xml"
                )
            else:
                with state.lock:
                    state.downloads.append(request_id)
                if (gate := state.gate) is not None:
                    state.arrived.set()
                    gate.wait(60)
                clip = CLIP + bytes(max(0, self.server.state.video_bytes - len(CLIP)))
                self._send(200, clip, "video/mp4")
        elif path.startswith("/outputs/") and self.server.state.expired:
            self._send(403, b"<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>", "application/xml")
        elif path.startswith("/outputs/") and path.endswith("-slow.png"):
            body = png(64, 64, path.encode())
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self._drip(body)
        elif path.startswith("/outputs/") and "redirect" in path:
            self.send_response(302)
            self.send_header("Location", self.server.state.redirect_to)
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif path.startswith("/outputs/") and path.endswith("big.png"):
            self._send(200, BIG_PNG, "image/png")
        elif path.startswith("/outputs/") and path.endswith(".html"):
            self._send(200, b"<html><body>AccessDenied</body></html>", "text/html")
        elif path.startswith("/outputs/") and path.endswith(".png"):
            name = path.rsplit("/", 1)[-1]
            picture = padded(png(64, 64, name.encode()), self.server.state.picture_bytes)
            if self.server.state.picture_lies:
                picture = b"<html><body>" + b"x" * (len(picture) - 26) + b"</body></html>"
            self._paced_picture(picture)
        elif path == "/fake/stats":  # the benchmark's counters, not SiliconFlow's
            state = self.server.state
            with state.lock:
                self._json(
                    200,
                    {
                        "refused": state.refused,
                        "image_calls": len([c for c in state.calls if c.path == "/v1/images/generations"]),
                        "video_polls": sum(job["polls"] for job in state.videos.values()),
                        # image calls answered 200, by the key's last four characters ("0a0a-ok")
                        "by_key": {
                            f"{tail}-ok": n
                            for tail, n in _count(
                                c.key[-4:] for c in state.calls if c.path == "/v1/images/generations" and c.status == 200
                            ).items()
                        },
                    },
                )
        elif path == "/v1/models":
            state = self.server.state
            with state.lock:
                state.calls.append(Call(path, self._key(), self.path, time.monotonic(), time.monotonic()))
            if not self._key() or self._key().startswith("sk-dead"):  # auth on every call
                self._json(401, "Invalid token")
                return
            if state.models_down:
                self._json(503, {"code": 50505, "message": "Model service overloaded. Please try again later.", "data": None})
                return
            query = parse_qs(urlsplit(self.path).query)
            kind, sub_type = query.get("type", [""])[0], query.get("sub_type", [""])[0]
            listed = (
                {"text-to-image": (*TEXT_TO_IMAGE, *state.extra_models), "image-to-image": IMAGE_TO_IMAGE}.get(sub_type)
                if kind == "image"
                else VIDEO_MODELS.get(sub_type, VIDEO_MODELS_ALL)
                if kind == "video"
                else sorted(CHAT_MODELS)
                if kind == "text"
                else (*TEXT_TO_IMAGE, *EDIT_MODELS, *sorted(CHAT_MODELS))
            )
            if kind == "image" and not sub_type:
                listed = (*TEXT_TO_IMAGE, *EDIT_MODELS)
            data = [{"id": m, "object": "model", "created": 0, "owned_by": ""} for m in listed or ()]
            self._json(200, {"object": "list", "data": data})
        elif path == "/v1/user/info":
            with self.server.state.lock:
                self.server.state.calls.append(Call(path, self._key(), None, time.monotonic(), time.monotonic()))
            if not self.server.state.user_info:  # stopped by SiliconFlow (about 2026-08)
                self._json(410, {"code": 410, "message": "This API is no longer available.", "data": None})
                return
            if self._key().startswith("sk-dead"):
                self._json(401, "Invalid token")
                return
            broke = self._key().startswith("sk-broke") and self._key() not in self.server.state.funded
            balance = "0.00" if broke else "14.00"
            data = {
                "id": account_of(self._key()),
                "name": "username",
                "balance": balance,
                "status": "normal",
                "chargeBalance": "0.00",
                "totalBalance": balance,
            }
            self._json(200, {"code": 20000, "message": "OK", "status": True, "data": data})
        else:
            self._send(404, b"404 page not found", "text/plain; charset=utf-8")

    def do_POST(self) -> None:
        path = urlsplit(self.path).path
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        call = self.call = Call(path, self._key(), body, time.monotonic())
        with self.server.state.lock:
            self.server.state.calls.append(call)
        try:
            if path == "/v1/images/generations":
                self._image(body)
            elif path == "/v1/video/submit":
                self._video_submit(body)
            elif path == "/v1/video/status":
                self._video_status(body)
            elif path == "/v1/chat/completions":
                self._chat(body)
            elif path == "/fake/rate" and isinstance(body, dict):  # the benchmark's knob: meter accounts
                state = self.server.state
                with state.lock:
                    state.windows, state.refused, state.refused_at = {}, 0, []
                    state.calls.clear()
                count, seconds = body.get("count"), body.get("seconds")
                state.rate_limit = (int(count), float(seconds)) if count else None
                self._json(200, {"rate_limit": state.rate_limit})
            elif path == "/fake/fund" and isinstance(body, dict):  # the benchmark's knob: an account topped up
                self.server.state.funded.add(str(body.get("key")))
                self._json(200, {"funded": True})
            elif path == "/fake/pictures" and isinstance(body, dict):  # the benchmark's knob: a download's pace
                state = self.server.state
                state.picture_first_byte = float(body.get("first_byte", state.picture_first_byte))
                state.picture_bytes_per_second = float(body.get("bytes_per_second", state.picture_bytes_per_second))
                state.picture_bytes = int(body.get("bytes", state.picture_bytes))
                self._json(200, {"first_byte": state.picture_first_byte, "bytes_per_second": state.picture_bytes_per_second})
            elif path == "/fake/video" and isinstance(body, dict):  # the video benchmark's knob
                state = self.server.state
                state.video_queue_seconds = float(body.get("queue", state.video_queue_seconds))
                state.video_seconds = float(body.get("seconds", state.video_seconds))
                state.video_bytes = int(body.get("bytes", state.video_bytes))
                self._json(200, {"queue": state.video_queue_seconds, "seconds": state.video_seconds, "bytes": state.video_bytes})
            elif path == "/fake/latency" and isinstance(body, dict):  # the benchmark's knob, not SiliconFlow's
                self.server.state.image_latency = float(body.get("image", 0))
                self.server.state.expansion_latency = float(body.get("expansion", 0))
                self._json(200, {"image": self.server.state.image_latency, "expansion": self.server.state.expansion_latency})
            else:
                self._send(404, b"404 page not found", "text/plain; charset=utf-8")
        finally:
            call.end = time.monotonic()

    def _video_submit(self, body: Any) -> None:
        """CONTRACTS.md: video. Keys fail as for images; a job is kept with its account."""
        state, key = self.server.state, self._key()
        if key.startswith(("sk-dead", "sk-revoked")) or not key:
            self._json(401, "Invalid token")
        elif key.startswith("sk-broke") and key not in state.funded:
            self._json(403, {"code": 30001, "message": "Sorry, your account balance is insufficient", "data": None})
        elif not isinstance(body, dict) or not isinstance(body.get("prompt"), str) or body.get("model") not in VIDEO_MODELS_ALL:
            self._json(400, {"code": 20012, "message": "Model does not exist. Please check it carefully.", "data": None})
        elif body.get("image_size") not in ("1280x720", "720x1280", "960x960"):
            self._json(400, {"code": 20015, "message": "The parameter is invalid. Please check again.", "data": None})
        elif ("I2V" in body["model"]) != bool(body.get("image")) or (body.get("image") and not _first_frame(body["image"])):
            self._json(400, {"code": 20015, "message": "The parameter is invalid: image.", "data": None})
        else:
            request_id = secrets.token_hex(12)
            with state.lock:
                state.videos[request_id] = {"account": account_of(key), "at": time.monotonic(), "body": body, "polls": 0}
            self._wait(state.video_submit_latency)
            state.videos[request_id]["answered"] = True
            self._json(200, {"requestId": request_id})

    def _video_status(self, body: Any) -> None:
        state, key = self.server.state, self._key()
        job = state.videos.get(body.get("requestId")) if isinstance(body, dict) else None
        if job is None:
            self._json(400, {"code": 20015, "message": "The requestId is invalid.", "data": None})
            return
        if account_of(key) != job["account"]:  # another account's key: refused, as SiliconFlow does
            self._json(403, {"code": 30003, "message": "No permission to access this request.", "data": None})
            return
        with state.lock:
            job["polls"] += 1
        age = time.monotonic() - job["at"]
        if age < state.video_queue_seconds:
            self._json(200, {"status": "InQueue", "reason": "", "position": 3, "results": None})
        elif age < state.video_queue_seconds + state.video_seconds:
            self._json(200, {"status": "InProgress", "reason": "", "results": None})
        elif state.video_fail:
            self._json(200, {"status": "Failed", "reason": state.video_fail, "results": None})
        else:
            expires = int(time.time() + state.video_link_seconds)
            job.setdefault("expires_mono", time.monotonic() + state.video_link_seconds)
            url = f"{self.server.url}/videos/{body['requestId']}.mp4?Expires={expires}&Signature=fake"
            if key.startswith("sk-keyinurl"):
                url += f"&token={key}"
            self._json(
                200,
                {
                    "status": "Succeed",
                    "reason": "",
                    "results": {"videos": [{"url": url}], "timings": {"inference": 42}, "seed": 4242},
                },
            )

    def _image(self, body: Any) -> None:
        state, key = self.server.state, self._key()
        if not key:
            self._json(401, "Invalid token")
            return
        if key.startswith("sk-hang"):
            self._wait(state.hang_seconds)
        if key.startswith(("sk-dead", "sk-revoked")):
            self._json(401, "Invalid token")
        elif key.startswith("sk-broke") and key not in state.funded:
            self._json(403, {"code": 30001, "message": "Sorry, your account balance is insufficient", "data": None})
        elif key.startswith("sk-limited") or (
            isinstance(body, dict) and not state.admit(account_of(key), str(body.get("model")))
        ):
            self._json(429, {"message": RATE_LIMIT_MESSAGE, "data": None})
        elif key.startswith("sk-once") and key not in state.limited_once:
            state.limited_once.add(key)
            self._json(429, {"message": RATE_LIMIT_MESSAGE, "data": None}, {"Retry-After": state.retry_after})
        elif key.startswith("sk-retry"):
            self._json(429, {"message": RATE_LIMIT_MESSAGE, "data": None}, {"Retry-After": state.retry_after})
        elif key.startswith("sk-overload"):
            self._json(503, {"code": 50505, "message": "Model service overloaded. Please try again later.", "data": None})
        elif key.startswith("sk-gateway"):
            self._json(504, "upstream request timeout")
        elif key.startswith("sk-htmldata"):
            self._json(200, {"images": [{"url": "data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg=="}]})
        elif key.startswith("sk-html"):
            self._send(200, b"<html><body>502 Bad Gateway</body></html>", "text/html")
        elif key.startswith("sk-echo"):
            message = (
                f"Invalid request for Authorization: Bearer {key} -- see [the docs](http://attacker.example/) "
                "<img src=x onerror=alert(1)> ![x](http://attacker.example/p.png) http://attacker.example/bare"
            )
            self._json(400, {"code": 20015, "message": message, "data": None})
        elif key.startswith("sk-verbose"):
            self._json(400, {"code": 20015, "message": "token" + " " * 300_000 + ",", "data": None})
        elif key.startswith("sk-huge"):
            self._huge(self._image_url(int(time.time()), key))
        elif key.startswith("sk-drip"):
            self._drip_body(self._image_url(int(time.time()), key))
        elif key.startswith("sk-headdrip"):
            self._drip_headers(self._image_url(int(time.time()), key))
        elif not isinstance(body, dict) or not isinstance(body.get("prompt"), str) or not body.get("model"):
            self._json(400, {"code": 20015, "message": "The parameter is invalid. Please check again.", "data": None})
        elif body["model"] not in (*TEXT_TO_IMAGE, *EDIT_MODELS) and not body["model"].startswith(
            ("black-forest-labs/", "stabilityai/")
        ):
            self._json(400, {"code": 20012, "message": "Model does not exist. Please check it carefully.", "data": None})
        elif (problem := _edit_problem(body)) is not None:
            self._json(400, {"code": 20015, "message": problem, "data": None})
        elif body["model"] in IMAGE_MODELS and body.get("image_size") not in IMAGE_MODELS[body["model"]]:
            self._json(400, {"code": 20015, "message": "The parameter is invalid. Please check again.", "data": None})
        else:
            if (gate := state.gate) is not None:
                state.arrived.set()
                gate.wait(60)
            self._wait(state.image_latency)
            created = int(time.time())
            images = [] if key.startswith("sk-empty") else [{"url": self._image_url(created, key)}]
            self._json(
                200,
                {
                    "images": images,
                    "data": images,
                    "timings": {"inference": state.image_latency},
                    "seed": body.get("seed", 12345),
                    "shared_id": "0",
                    "created": created,
                },
            )

    def _huge(self, url: str) -> None:
        head = json.dumps({"images": [{"url": url}], "pad": ""})[:-2].encode()
        size = self.server.state.huge_bytes
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(head) + size + 2))
        self.end_headers()
        self.wfile.write(head)
        piece = b"x" * 2**20
        for start in range(0, size, len(piece)):
            self.wfile.write(piece[: size - start])
        self.wfile.write(b'"}')

    def _drip_body(self, url: str) -> None:
        body = json.dumps({"images": [{"url": url}], "pad": " " * 200}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self._drip(body)

    def _drip_headers(self, url: str) -> None:
        body = json.dumps({"images": [{"url": url}]}).encode()
        head = (
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Padding: "
            + b"p" * 200
            + b"\r\nContent-Length: "
            + str(len(body)).encode()
            + b"\r\n\r\n"
        )
        self._drip(head)
        self.wfile.write(body)

    def _paced_picture(self, body: bytes) -> None:
        """A picture as a storage far away serves it: the first byte late, then at a pace."""
        state = self.server.state
        with state.lock:
            state.picture_downloads += 1
        self._wait(state.picture_first_byte)
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        if state.picture_no_length:
            self.close_connection = True  # the end of the body is the end of the connection
        else:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if (gate := state.picture_gate) is not None:
            self.wfile.flush()
            state.arrived.set()
            gate.wait(60)
        rate, started, sent = state.picture_bytes_per_second, time.monotonic(), 0
        while sent < len(body) and not self.server.stopping.is_set():
            if state.picture_cut and sent >= state.picture_cut:
                self.close_connection = True
                return  # hung up part-way
            piece = body[sent : sent + min(64 * 1024, state.picture_cut or 64 * 1024)]
            try:
                self.wfile.write(piece)
                self.wfile.flush()
            except OSError:
                return  # the downloader hung up
            sent += len(piece)
            if rate > 0:
                self._wait(started + sent / rate - time.monotonic())

    def _drip(self, data: bytes) -> None:
        for i in range(len(data)):
            if self.server.stopping.is_set():
                return
            self.wfile.write(data[i : i + 1])
            self.wfile.flush()
            self._wait(self.server.state.drip_interval)

    def _image_url(self, created: int, key: str) -> str:
        name = secrets.token_hex(5)
        if key.startswith("sk-datauri"):
            return "data:image/png;base64," + base64.b64encode(png(32, 32, name.encode())).decode()
        if key.startswith("sk-notimage"):
            name += ".html"
        elif key.startswith("sk-bigimage"):
            name += "-big.png"
        elif key.startswith("sk-redirect"):
            name += "-redirect.png"
        elif key.startswith("sk-slowlink"):
            name += "-slow.png"
        elif key.startswith("sk-keyinurl"):
            name += f".png?token={key}"
        elif key.startswith("sk-elsewhere"):
            return self.server.state.redirect_to
        else:
            name += ".png"
        self.server.state.picture_names.append(name)
        return (
            f"{self.server.url}/outputs%2F20251024%2F{name}?Expires={created + 3600}"
            f"&OSSAccessKeyId=LTAIfake&Signature={secrets.token_urlsafe(20)}"
        )

    def _chat(self, body: Any) -> None:
        state = self.server.state
        self._wait(state.expansion_latency)
        if not self._key() or self._key().startswith("sk-dead"):
            self._json(401, "Invalid token")
            return
        if not isinstance(body, dict) or body.get("model") not in CHAT_MODELS:
            self._json(400, {"code": 20012, "message": "Model does not exist. Please check it carefully.", "data": None})
            return
        mode = state.expansion_mode
        if mode == "fail":
            self._json(503, {"code": 50505, "message": "Model service overloaded. Please try again later.", "data": None})
            return
        if mode == "hang":
            self._wait(state.hang_seconds)
        if mode == "garbage":
            self._send(200, b"not json at all", "text/plain")
            return
        user = body["messages"][-1]["content"]
        system = body["messages"][0]["content"] if body["messages"][0]["role"] == "system" else ""
        content = f"A detailed illustration of {user}, soft light, rich colours, high detail"
        if mode == "helpful":  # a chat model that does what it is asked
            if user.startswith("Previous prompt: "):
                previous, change = user.removeprefix("Previous prompt: ").split("\nChange: ", 1)
                content = f"{previous}, rewritten so that: {change}"
            elif '"tags"' in system:
                content = '{"tags": ["动物", "插画"]}'
            elif '"follow_ups"' in system:
                content = '{"follow_ups": ["把猫换成橘色", "加一顶帽子 pic:2", "改成 16:9 横图"]}'
            elif "title" in system:
                content = "可爱橘猫"
        if mode == "think":
            content = "<think>\nThe user wants a picture.\n</think>\n\n" + content
        elif mode == "huge":
            content = "a cat " * (state.huge_bytes // 6)
        elif mode == "long":
            content = "a very fluffy cat " * 4000
        elif mode == "markdown":
            content = (
                f"{content} ![stolen](http://attacker.example/p.png) [click here](http://attacker.example/) "
                "<img src=x onerror=alert(1)> www.attacker.example"
            )
        elif mode == "surrogate":
            content = f"{content} \ud800"
        elif mode == "secret":
            content = f"{content}, Authorization: Bearer {self._key()}, and the key {self._key()}"
        self._json(
            200,
            {
                "id": secrets.token_hex(16),
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 100, "completion_tokens": 40, "total_tokens": 140},
                "system_fingerprint": "",
            },
        )


def _demo(port: int, service_port: int) -> None:
    import logging
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from config import Settings
    from siliconflow_proxy import create_app

    fake = FakeSiliconFlow(port).start()
    fake.state.image_latency = 1.0
    settings = Settings.from_env(
        {}, api_base_url=fake.url, api_keys=("sk-demo-one", "sk-demo-two", "sk-demo-three"), port=service_port
    )
    app = create_app(settings)
    banner = (
        "\n"
        + "=" * 72
        + "\n  DEMO MODE: images come from the bundled FAKE SiliconFlow at "
        + fake.url
        + "\n  They are coloured gradients, not real drawings. No real key is used."
        + f"\n  Try: curl -N http://127.0.0.1:{service_port}/v1/chat/completions "
        "-H 'Content-Type: application/json' \\"
        '\n        -d \'{"stream":true,"messages":[{"role":"user","content":"画一只猫 pic:2"}]}\''
        "\n" + "=" * 72
    )
    logging.getLogger("siliconflow_proxy").warning(banner)
    app.run(host="127.0.0.1", port=service_port, threaded=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Fake SiliconFlow for tests and demos.")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--demo", action="store_true", help="also run the service against the fake")
    parser.add_argument("--service-port", type=int, default=7860)
    parser.add_argument("--image-latency", type=float, default=0.0, help="seconds per image call")
    parser.add_argument("--expansion-latency", type=float, default=0.0, help="seconds per expansion call")
    args = parser.parse_args()
    if args.demo:
        _demo(args.port, args.service_port)
    else:
        server = FakeSiliconFlow(args.port)
        server.state.image_latency, server.state.expansion_latency = args.image_latency, args.expansion_latency
        print(f"fake SiliconFlow on {server.url}", flush=True)
        server.serve_forever()
