"""Links that last: Lsky Pro, the built-in image store, and Sink short links.

SiliconFlow's image URLs expire after one hour, so an image is fetched right after it is made and
re-hosted. Every failure here is an `UploadError` with a short reason for the user; the caller
keeps the upstream link, so an image is never lost because a host misbehaved.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import secrets
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
import requests.adapters

from config import Settings
from parsing import one_line

# File name extension for each image type we keep; anything else is not an image to us.
EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp", "image/gif": "gif"}
MIMETYPES = {ext: mime for mime, ext in EXTENSIONS.items()}
_MAGIC = ((b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff", "image/jpeg"), (b"GIF8", "image/gif"))
_DATA_URI = re.compile(r"data:(image/[a-z0-9.+-]+);base64,(.*)", re.IGNORECASE | re.DOTALL)
STORED_NAME = re.compile(r"[0-9a-f]{64}\.(?:png|jpg|webp|gif)")
SHORT_ENOUGH = 100  # links up to this long are not worth shortening


class UploadError(Exception):
    """Fetching, re-hosting or shortening failed; `message` is a short reason for the user."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class Picture:
    data: bytes
    mimetype: str

    @property
    def name(self) -> str:
        """Content-addressed file name: the same image is stored once."""
        return f"{hashlib.sha256(self.data).hexdigest()}.{EXTENSIONS[self.mimetype]}"


def make_session(pool_size: int) -> requests.Session:
    """The client for image hosts and image downloads, its pool sized for the worker threads."""
    session = requests.Session()
    adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=pool_size)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def sniff(data: bytes) -> str | None:
    for magic, mimetype in _MAGIC:
        if data.startswith(magic):
            return mimetype
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def fetch_picture(session: requests.Session, url: str, timeout: float, max_bytes: int) -> Picture:
    """The image behind `url` (http(s) or a data: URI), at most `max_bytes`. Raises UploadError."""
    if url.startswith("data:"):
        return _decode_data_uri(url, max_bytes)
    try:
        with session.get(url, timeout=(min(10.0, timeout), timeout), stream=True) as response:
            if response.status_code != 200:
                raise UploadError(f"下载图片失败（HTTP {response.status_code}）")
            declared = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
            if declared and not declared.startswith(("image/", "application/octet-stream", "binary/")):
                raise UploadError(f"上游链接返回的不是图片（{declared[:40]}）")
            if int(response.headers.get("Content-Length") or 0) > max_bytes:
                raise UploadError(f"图片超过 {max_bytes // 2**20} MB")
            data = bytearray()
            for piece in response.iter_content(64 * 1024):
                data += piece
                if len(data) > max_bytes:
                    raise UploadError(f"图片超过 {max_bytes // 2**20} MB")
    except requests.Timeout:
        raise UploadError(f"下载图片超时（{timeout:g} 秒）") from None
    except requests.RequestException:
        raise UploadError("下载图片失败（连接出错）") from None
    mimetype = sniff(bytes(data[:16]))
    if mimetype is None:
        raise UploadError("下载的内容不是 PNG、JPEG、WebP 或 GIF 图片")
    return Picture(bytes(data), mimetype)


def _decode_data_uri(url: str, max_bytes: int) -> Picture:
    match = _DATA_URI.fullmatch(url.strip())
    if not match:
        raise UploadError("无法识别的 data: 图片")
    if len(match[2]) * 3 // 4 > max_bytes:
        raise UploadError(f"图片超过 {max_bytes // 2**20} MB")
    try:
        data = base64.b64decode(match[2], validate=False)
    except (binascii.Error, ValueError):
        raise UploadError("data: 图片的 base64 无效") from None
    mimetype = sniff(data[:16])
    if mimetype is None:
        raise UploadError("data: 内容不是 PNG、JPEG、WebP 或 GIF 图片")
    return Picture(data, mimetype)


def upload_to_lsky(
    session: requests.Session, base_url: str, token: str, picture: Picture, timeout: float,
    strategy_id: int | None = None,
) -> str:
    """POST {base_url}/api/v1/upload; the permanent URL. Raises UploadError.

    Lsky Pro answers most failures with HTTP 200 and `"status": false`, and without
    `Accept: application/json` a bad token is a 302 to its HTML login page.
    """
    form = {"strategy_id": str(strategy_id)} if strategy_id else {}
    try:
        response = session.post(
            f"{base_url}/api/v1/upload",
            headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
            files={"file": (picture.name, picture.data, picture.mimetype)},
            data=form,
            timeout=(min(10.0, timeout), timeout),
            allow_redirects=False,
        )
    except requests.Timeout:
        raise UploadError(f"图床在 {timeout:g} 秒内没有响应") from None
    except requests.RequestException:
        raise UploadError("无法连接图床") from None
    status = response.status_code
    if 300 <= status < 400:
        raise UploadError(f"图床要求登录（HTTP {status}），请检查 LSKY_PRO_TOKEN")
    if status == 413:
        raise UploadError("图片太大，图床拒收（413）")
    body = _json_or_none(response)
    message = one_line(str(body.get("message") or ""), 120) if isinstance(body, dict) else ""
    if status == 401:
        raise UploadError("图床令牌无效（401），请检查 LSKY_PRO_TOKEN")
    if status == 429:
        raise UploadError("图床请求过于频繁（429）")
    if status != 200:
        raise UploadError(f"图床拒绝上传（HTTP {status}）{'：' + message if message else ''}")
    if not isinstance(body, dict):
        raise UploadError("图床返回了无法解析的内容")
    if body.get("status") is not True:
        raise UploadError(f"图床拒绝上传：{message or '未说明原因'}")
    try:
        url = body["data"]["links"]["url"]
    except (KeyError, TypeError):
        url = None
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise UploadError("图床没有返回图片链接")
    return url


def shorten(session: requests.Session, base_url: str, token: str, url: str, timeout: float, tries: int = 3) -> str:
    """A Sink short link for `url` (POST /api/link/create). Raises UploadError.

    Slugs are picked here, lower-case letters and digits as Sink requires; a clash (409) is
    retried with a new one.
    """
    if len(url) > 2048:
        raise UploadError("链接太长，短链接服务不接受")
    for _ in range(tries):
        slug = "".join(secrets.choice("abcdefghijkmnpqrstuvwxyz23456789") for _ in range(8))
        try:
            response = session.post(
                f"{base_url}/api/link/create",
                json={"url": url, "slug": slug},
                headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
                timeout=(min(10.0, timeout), timeout),
            )
        except requests.Timeout:
            raise UploadError(f"短链接服务在 {timeout:g} 秒内没有响应") from None
        except requests.RequestException:
            raise UploadError("无法连接短链接服务") from None
        if response.status_code == 409:
            continue
        if response.status_code not in (200, 201):
            raise UploadError(f"短链接服务拒绝（HTTP {response.status_code}）")
        body = _json_or_none(response)
        short = body.get("shortLink") if isinstance(body, dict) else None
        if isinstance(short, str) and short.startswith(("http://", "https://")):
            return short
        link = body.get("link") if isinstance(body, dict) else None
        slug = link.get("slug", slug) if isinstance(link, dict) else slug
        return f"{base_url}/{slug}"
    raise UploadError("短链接的名字多次冲突")


class ImageStore:
    """Images kept on this server's disk under their content hash, served at /images/<name>."""

    def __init__(self, directory: str | os.PathLike[str]):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def save(self, picture: Picture) -> str:
        """Store `picture` (once per content) and return its file name. Raises UploadError."""
        target = self.directory / picture.name
        if target.exists():
            return picture.name
        try:
            # Write then rename, so a reader never sees half a file.
            fd, temporary = tempfile.mkstemp(dir=self.directory, prefix=".incoming-")
            with os.fdopen(fd, "wb") as handle:
                handle.write(picture.data)
            os.replace(temporary, target)
        except OSError:
            raise UploadError("保存到本机图片目录失败") from None
        return picture.name

    def path_of(self, name: str) -> Path | None:
        """The file for a name from a URL, or None: only exact stored names, nothing else on disk."""
        if not STORED_NAME.fullmatch(name):
            return None
        path = self.directory / name
        return path if path.is_file() else None


def _json_or_none(response: requests.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


@dataclass(frozen=True)
class Links:
    image: str  # what the Markdown image shows: permanent when there is one
    download: str  # the upstream's temporary link, shortened when that is on
    permanent: str | None
    notes: tuple[str, ...]  # what did not work, in short words
    # The bytes when re-hosting fetched them, so that no one fetches them again.
    picture: Picture | None = field(default=None, repr=False, compare=False)


def lasting_links(
    session: requests.Session, settings: Settings, store: ImageStore | None, url: str, public_base: str | None
) -> Links:
    """Re-host the image at `url` as configured. Never raises: failures become notes."""
    permanent, notes, picture = None, [], None
    if settings.use_lsky_pro or store is not None:
        try:
            picture = fetch_picture(session, url, settings.upload_timeout, int(settings.max_image_mb * 2**20))
        except UploadError as exc:
            notes.append(f"图片未能转存：{exc.message}")
        else:
            if settings.use_lsky_pro:
                try:
                    permanent = upload_to_lsky(
                        session, settings.lsky_pro_url or "", settings.lsky_pro_token or "", picture,
                        settings.upload_timeout, settings.lsky_strategy_id,
                    )
                except UploadError as exc:
                    notes.append(f"蓝空图床上传失败：{exc.message}")
            if permanent is None and store is not None and public_base:
                try:
                    permanent = f"{public_base}/images/{store.save(picture)}"
                except UploadError as exc:
                    notes.append(exc.message)
    download = url
    if settings.use_shortlink and url.startswith(("http://", "https://")) and len(url) > SHORT_ENOUGH:
        try:
            download = shorten(
                session, settings.shortlink_base_url or "", settings.shortlink_api_key or "", url,
                settings.upload_timeout,
            )
        except UploadError as exc:
            notes.append(f"短链接生成失败：{exc.message}")
    return Links(image=permanent or url, download=download, permanent=permanent, notes=tuple(notes), picture=picture)
