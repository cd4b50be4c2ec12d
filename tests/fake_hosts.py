"""Fake Lsky Pro and Sink servers: real local HTTP, speaking CONTRACTS.md sections 2 and 3.

Lsky Pro behaves by token (Authorization: Bearer <token>):

| token       | answer to POST /api/v1/upload                                                  |
|-------------|--------------------------------------------------------------------------------|
| 1|good...   | 200 status true, links.url served by this server                               |
| 1|quota     | 200 status false "每分钟内你最多可以上传 20 张图片"                             |
| 1|nospace   | 200 status false "储存空间不足"                                                 |
| 1|disabled  | 403 status false "管理员未启用 API"                                             |
| 1|busy      | 429 "Too Many Attempts."                                                       |
| 1|huge      | 413 with an HTML body from the web server                                      |
| 1|garbage   | 200 with a non-JSON body                                                       |
| 1|leaky...  | 200 status false, the message echoing the token, a Markdown image and HTML      |
| 1|hang      | waits `hang_seconds`                                                           |
| anything else | 401 JSON with Accept: application/json, else a 302 to the HTML login page    |

With `always_redirect` set, every upload is a 302 (a proxy in front of Lsky that lost the header).

Sink: POST /api/link/create with a token of at least 8 characters; slugs already taken answer 409
(`taken`), `clash_next` forces that many 409s first, `fail` answers 500.
"""

from __future__ import annotations

import json
import re
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit


@dataclass
class Upload:
    token: str
    accept: str
    filename: str
    mimetype: str
    data: bytes
    strategy_id: str | None
    start: float
    end: float = 0.0


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, handler: type[BaseHTTPRequestHandler]):
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        super().__init__(("127.0.0.1", 0), handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def start(self):
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self.shutdown()
        self.server_close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        # Headers and body go out as two writes; without this, Nagle plus the client's delayed ACK
        # add 40 ms to every answer, which a real server would not.
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, body: bytes, content_type: str, headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, obj: Any, indent: int | None = None) -> None:
        self._send(status, json.dumps(obj, ensure_ascii=False, indent=indent).encode(), "application/json")

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _token(self) -> str:
        return self.headers.get("Authorization", "").removeprefix("Bearer ").strip()


# --- Lsky Pro --------------------------------------------------------------------------------------


class FakeLsky(_Server):
    def __init__(self) -> None:
        self.uploads: list[Upload] = []
        self.files: dict[str, tuple[str, bytes]] = {}
        self.latency = 0.0
        self.hang_seconds = 5.0
        self.always_redirect = False
        self.slow_first = 0.0  # extra wait for the first upload only: one slow host answer
        self.begun = 0  # uploads whose request line and headers came (their body may still be on its way)
        super().__init__(_LskyHandler)

    def reset(self) -> None:
        with self.lock:
            self.uploads.clear()
        self.latency, self.hang_seconds, self.always_redirect, self.slow_first = 0.0, 5.0, False, 0.0
        self.begun = 0


def _lsky_failure(message: str, status: int = 200) -> tuple[int, dict]:
    return status, {"status": False, "message": message, "data": {}}


class _LskyHandler(_Handler):
    server: FakeLsky

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path.startswith("/i/") and path[3:] in self.server.files:
            mimetype, data = self.server.files[path[3:]]
            self._send(200, data, mimetype)
        elif path == "/login":
            self._send(200, b"<!DOCTYPE html><html><body>Login</body></html>", "text/html; charset=UTF-8")
        else:
            self._send(404, b"<html><body>404 Not Found</body></html>", "text/html")

    def do_POST(self) -> None:
        if urlsplit(self.path).path != "/api/v1/upload":
            self._send(404, b"<html><body>404 Not Found</body></html>", "text/html")
            return
        with self.server.lock:
            self.server.begun += 1
        raw = self._body()
        upload = self._parse(raw)
        with self.server.lock:
            self.server.uploads.append(upload)
            first = len(self.server.uploads) == 1
        if first:
            self.server.stopping.wait(self.server.slow_first)
        try:
            self._answer(upload)
        finally:
            upload.end = time.monotonic()

    def _parse(self, raw: bytes) -> Upload:
        message = BytesParser(policy=HTTP).parsebytes(
            f"Content-Type: {self.headers.get('Content-Type', '')}\r\n\r\n".encode() + raw
        )
        filename = mimetype = ""
        data, strategy = b"", None
        for part in message.iter_parts() if message.is_multipart() else []:
            name = part.get_param("name", header="content-disposition")
            if name == "file":
                filename = part.get_filename() or ""
                mimetype = part.get_content_type()
                data = part.get_payload(decode=True) or b""
            elif name == "strategy_id":
                strategy = (part.get_payload(decode=True) or b"").decode()
        return Upload(self._token(), self.headers.get("Accept", ""), filename, mimetype, data, strategy, time.monotonic())

    def _answer(self, upload: Upload) -> None:
        server, token = self.server, upload.token
        server.stopping.wait(server.hang_seconds if token == "1|hang" else server.latency)
        if server.always_redirect or (not token.startswith("1|") and "application/json" not in upload.accept):
            self._send(302, b"", "text/html; charset=UTF-8", {"Location": f"{server.url}/login"})
            return
        failures = {
            "1|quota": _lsky_failure("每分钟内你最多可以上传 20 张图片"),
            "1|nospace": _lsky_failure("储存空间不足"),
            "1|disabled": _lsky_failure("管理员未启用 API", 403),
            "1|busy": (429, {"message": "Too Many Attempts."}),
        }
        if token in failures:
            self._json(*failures[token])
        elif token.startswith("1|leaky"):
            self._json(*_lsky_failure(f"token {token} rejected ![x](http://attacker.example/p.png) <b onclick=x>hi</b>"))
        elif token == "1|huge":
            self._send(413, b"<html><head><title>413 Request Entity Too Large</title></head></html>", "text/html")
        elif token == "1|garbage":
            self._send(200, b"<br />\n<b>Fatal error</b>: Allowed memory size exhausted", "text/html")
        elif not token.startswith("1|good"):
            self._json(401, {"status": False, "message": "Authentication failed.", "data": {}})
        elif not upload.data:
            self._json(*_lsky_failure("服务异常，请稍后再试"))
        else:
            extension = upload.filename.rsplit(".", 1)[-1]
            name = f"2025/03/28/{secrets.token_hex(6)}.{extension}"
            server.files[name] = (upload.mimetype, upload.data)
            url = f"{server.url}/i/{name}"
            self._json(
                200,
                {
                    "status": True,
                    "message": "上传成功",
                    "data": {
                        "key": secrets.token_urlsafe(4),
                        "name": name.rsplit("/", 1)[-1],
                        "pathname": name,
                        "origin_name": upload.filename,
                        "size": round(len(upload.data) / 1024, 2),
                        "mimetype": upload.mimetype,
                        "extension": extension,
                        "md5": "",
                        "sha1": "",
                        "links": {
                            "url": url,
                            "html": f'&lt;img src="{url}" /&gt;',
                            "bbcode": f"[img]{url}[/img]",
                            "markdown": f"![{upload.filename}]({url})",
                            "markdown_with_link": f"[![{upload.filename}]({url})]({url})",
                            "thumbnail_url": f"{server.url}/thumbnails/x.png",
                        },
                    },
                },
            )


# --- Sink ------------------------------------------------------------------------------------------

SLUG = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$", re.IGNORECASE)


class FakeSink(_Server):
    def __init__(self) -> None:
        self.created: list[dict] = []
        self.attempts = 0
        self.taken: set[str] = set()
        self.clash_next = 0
        self.fail = False
        self.hang_seconds = 0.0
        super().__init__(_SinkHandler)

    def reset(self) -> None:
        with self.lock:
            self.created.clear()
            self.taken.clear()
        self.attempts, self.clash_next, self.fail, self.hang_seconds = 0, 0, False, 0.0


class _SinkHandler(_Handler):
    server: FakeSink

    def _error(self, status: int, message: str) -> None:
        self._json(
            status,
            {
                "error": True,
                "url": f"{self.server.url}/api/link/create",
                "statusCode": status,
                "statusMessage": message,
                "message": "",
            },
            indent=2,
        )

    def do_POST(self) -> None:
        server = self.server
        body = self._body()
        with server.lock:
            server.attempts += 1
        server.stopping.wait(server.hang_seconds)
        if urlsplit(self.path).path != "/api/link/create":
            self._error(404, "Not Found")
            return
        if len(self._token()) < 8:
            self._error(401, "Unauthorized")
            return
        if server.fail:
            self._error(500, "Internal Server Error")
            return
        try:
            data = json.loads(body)
        except ValueError:
            data = None
        url = data.get("url") if isinstance(data, dict) else None
        slug = (data.get("slug") or secrets.token_hex(3)) if isinstance(data, dict) else ""
        if not isinstance(url, str) or not url.startswith(("http://", "https://")) or len(url) > 2048:
            self._error(400, "Invalid url")
            return
        if not SLUG.match(slug):
            self._error(400, "Invalid slug")
            return
        slug = slug.lower()
        with server.lock:
            clash = server.clash_next > 0 or slug in server.taken
            if server.clash_next > 0:
                server.clash_next -= 1
            if not clash:
                server.taken.add(slug)
                now = int(time.time())
                link = {"id": secrets.token_hex(5), "url": url, "slug": slug, "createdAt": now, "updatedAt": now}
                server.created.append(link)
        if clash:
            self._error(409, "Link already exists")
            return
        self._json(201, {"link": link, "shortLink": f"{server.url}/{slug}"})


class InternalHost(ThreadingHTTPServer):
    """Something on this machine that must not be reached through an image link: it records every
    GET (path and headers), so a test sees whether anything got through. Paths choose the answer:
    `/missing…` 404, `/bad-length…` a picture with `Content-Length: abc`, `/bad-redirect…` a
    redirect to `http://[::1` (no closing bracket); anything else a picture."""

    daemon_threads = True

    def __init__(self):
        from tests.fake_siliconflow import png

        self.hits: list[str] = []
        self.headers_seen: list[dict[str, str]] = []
        picture = png(16, 16, b"internal")
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                server.hits.append(self.path)
                server.headers_seen.append(dict(self.headers))
                if self.path.startswith("/missing"):
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if self.path.startswith("/bad-redirect"):
                    self.send_response(302)
                    self.send_header("Location", "http://[::1")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", "abc" if self.path.startswith("/bad-length") else str(len(picture)))
                self.end_headers()
                self.wfile.write(picture)
                self.close_connection = True

            def log_message(self, *args):
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"


class ForwardProxy(ThreadingHTTPServer):
    """A plain HTTP forward proxy (absolute-form requests, no CONNECT), recording each URL asked:
    what HTTP_PROXY points at in the tests that check the address rule still holds behind one."""

    daemon_threads = True

    def __init__(self):
        import http.client

        self.asked: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _forward(self):
                server.asked.append(self.path)
                parts = urlsplit(self.path)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                upstream = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("proxy-connection", "connection")}
                upstream.request(self.command, parts.path + (f"?{parts.query}" if parts.query else ""), body, headers)
                answer = upstream.getresponse()
                data = answer.read()
                self.send_response(answer.status)
                for name, value in answer.getheaders():
                    if name.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                upstream.close()

            do_GET = do_POST = _forward

            def log_message(self, *args):
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
