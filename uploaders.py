"""Links that last: fetching the upstream's pictures, Lsky Pro, a keeper (storage/pictures.py), Sink short links.

SiliconFlow's image URLs expire after one hour, so an image is fetched right after it is made and
re-hosted. Every failure here is an `UploadError` with a short reason for the user; the caller
keeps the upstream link, so an image is never lost because a host misbehaved.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import math
import re
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, BinaryIO
from urllib.parse import urlsplit

import requests
import urllib3

from config import Settings
from core.errors import AddressRefused, Reason, UploadError
from core.text import upstream_text
from siliconflow.outbound import AddressRule, address_rule, remaining, requests_deadline
from storage.keeping import new_name
from storage.pictures import MIMETYPES, Picture, sniff

if TYPE_CHECKING:
    from storage.keeping import Keeping, Spool
    from storage.pictures import Keeper

log = logging.getLogger("siliconflow_proxy.uploaders")

_DATA_URI = re.compile(r"data:(image/[a-z0-9.+-]+);base64,(.*)", re.IGNORECASE | re.DOTALL)
SHORT_ENOUGH = 100  # links up to this long are not worth shortening


def fetch_picture(
    session: requests.Session,
    url: str,
    timeout: float,
    max_bytes: int,
    rule: AddressRule | None = None,
    until: float | None = None,
) -> Picture:
    """The image behind `url` (http(s) or a data: URI), at most `max_bytes`. Raises UploadError.

    The whole download, redirects included, ends within `timeout` seconds (or at `until`, a
    time.monotonic(), when that is sooner). Under `rule`, every connection, the redirects' too,
    must lead where the rule allows.
    """
    if url.startswith("data:"):
        return _decode_data_uri(url, max_bytes)
    at = min(time.monotonic() + timeout, until or math.inf)
    with _fetching(at, rule):
        data = _download(session, url, at, max_bytes)
    mimetype = sniff(bytes(data[:16]))
    if mimetype is None:
        raise UploadError(Reason.of("not_a_picture"))
    return Picture(bytes(data), mimetype)


def _download(
    session: requests.Session,
    url: str,
    at: float,
    max_bytes: int,
    sink: BinaryIO | Spool | None = None,
    kind: str = "image/",
    on_length: Callable[[int | None], None] | None = None,
) -> bytearray:
    """The bytes at `url` (or, with `sink`, written there as they come: nothing held whole).
    `on_length` hears the length the answer declares (None: not said) once its headers came."""
    with _opened(session, url, at, max_bytes, kind) as response:
        if on_length is not None:
            on_length(_declared_length(response))
        data, size = bytearray(), 0
        for piece in response.iter_content(64 * 1024):  # a spool read while it fills gets its bytes as they come
            size += len(piece)
            if size > max_bytes:
                raise UploadError(Reason.of("too_large", mb=max_bytes // 2**20))
            if sink is None:
                data += piece
            else:
                sink.write(piece)
    return data


def _opened(session: requests.Session, url: str, at: float, max_bytes: int, kind: str = "image/") -> requests.Response:
    """The answer at `url`, its headers read and checked (status, type, declared length); its body
    is read by the caller, who closes it."""
    if not url.lower().startswith(("http://", "https://")):
        raise UploadError(Reason.of("not_http"))
    response = session.get(url, timeout=(remaining(at, 10.0), remaining(at, 60.0)), stream=True, allow_redirects=True)
    try:
        if response.status_code != 200:
            raise UploadError(Reason.of("download_status", status=response.status_code))
        declared = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if declared and not declared.startswith((kind, "application/octet-stream", "binary/")):
            raise UploadError(Reason.of("not_image_type", type=upstream_text(declared, 40)))
        length = _declared_length(response)
        if length is not None and length > max_bytes:  # a bad one: the bytes are counted anyway
            raise UploadError(Reason.of("too_large", mb=max_bytes // 2**20))
    except BaseException:
        response.close()
        raise
    return response


def _declared_length(response: requests.Response) -> int | None:
    value = response.headers.get("Content-Length") or ""
    return int(value) if value.isdigit() else None


def fetch_to_file(
    session: requests.Session, url: str, sink: BinaryIO, timeout: float, max_bytes: int, rule: AddressRule | None = None
) -> None:
    """A video at `url` written into `sink` as it arrives, at most `max_bytes`, within `timeout`,
    under the address rule as pictures are. Raises UploadError."""
    at = time.monotonic() + timeout
    with _fetching(at, rule):
        _download(session, url, at, max_bytes, sink, kind="video/")


@contextmanager
def _fetching(at: float, rule: AddressRule | None) -> Iterator[None]:
    """A download under the request's deadline `at` and the address rule, its failures as UploadErrors."""
    started = time.monotonic()
    try:
        with requests_deadline(at), address_rule(rule):
            yield
    except requests.Timeout:
        raise UploadError(Reason.of("download_timeout", seconds=at - started)) from None
    except requests.TooManyRedirects:
        raise UploadError(Reason.of("too_many_redirects")) from None
    except requests.RequestException:
        raise UploadError(Reason.of("download_failed")) from None
    except (ValueError, LookupError, urllib3.exceptions.HTTPError):  # a redirect to a broken URL, a broken answer
        raise UploadError(Reason.of("download_invalid")) from None
    except AddressRefused as exc:
        raise UploadError(Reason.of("unsafe_link", why=exc.reason), unsafe=not exc.unresolved) from None


def input_picture(
    session: requests.Session,
    settings: Settings,
    store: Keeper | None,
    url: str | None,
    data: bytes | None,
    until: float | None = None,
    keeping: Keeping | None = None,
) -> Picture:
    """A picture someone gave us to draw from: its bytes (an upload), a data: URI, or a link.
    Raises UploadError saying why it cannot be used.

    A link must be http(s); one to a picture this service keeps is read from its disk; any other
    is fetched under the address rule (public addresses only, checked on the address connected to
    and on every redirect, unless ALLOW_PRIVATE_IMAGE_URLS), at most MAX_IMAGE_MB, its type
    sniffed from the bytes, within UPLOAD_TIMEOUT and the request's deadline.
    """
    max_bytes = int(settings.max_image_mb * 2**20)
    if data is not None:
        if len(data) > max_bytes:
            raise UploadError(Reason.of("too_large", mb=f"{settings.max_image_mb:g}"))
        mimetype = sniff(data[:16])
        if mimetype is None:
            raise UploadError(Reason.of("not_a_picture"))
        return Picture(data, mimetype)
    url = (url or "").strip()
    if url.lower().startswith("data:"):
        return _decode_data_uri(url, max_bytes)
    try:
        parts = urlsplit(url)
    except ValueError:
        parts = None
    if parts is None or parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise UploadError(Reason.of("scheme_refused"))
    if store is not None and (name := store.own_name(url)) is not None and not name.endswith(".mp4"):
        if (picture := _kept_picture(store, name, max_bytes)) is not None:
            return picture
        reading = keeping.read(name) if keeping is not None else None
        if reading is not None and reading.chunks is not None:  # being kept: the same bytes, as they arrive
            return Picture(b"".join(reading.chunks)[:max_bytes], reading.content_type)
        if reading is not None and reading.elsewhere:
            url = reading.elsewhere  # not kept: SiliconFlow's link, while it lasts
        elif reading is None and (picture := _kept_picture(store, name, max_bytes)) is not None:
            return picture  # kept between the two looks
    rule = AddressRule.trusting(settings.api_base_url, settings.lsky_pro_url, allow_private=settings.allow_private_image_urls)
    return fetch_picture(session, url, settings.upload_timeout, max_bytes, rule, until)


def _kept_picture(store: Keeper, name: str, max_bytes: int) -> Picture | None:
    try:
        kept = store.open(name)
    except UploadError:
        return None  # the keeper fails now: the link itself may still answer
    if kept is None:
        return None
    with kept.body:
        return Picture(kept.body.read(max_bytes + 1)[:max_bytes], MIMETYPES[name.rsplit(".", 1)[1]])


def data_uri(picture: Picture) -> str:
    """How SiliconFlow takes an input image (CONTRACTS.md: send data URIs, not links)."""
    return f"data:{picture.mimetype};base64,{base64.b64encode(picture.data).decode()}"


def _decode_data_uri(url: str, max_bytes: int) -> Picture:
    match = _DATA_URI.fullmatch(url.strip())
    if not match:
        raise UploadError(Reason.of("bad_data_uri"))
    if (match.end(2) - match.start(2)) * 3 // 4 > max_bytes:
        raise UploadError(Reason.of("too_large", mb=max_bytes // 2**20))
    try:
        data = binascii.a2b_base64(match[2])  # from the str itself: b64decode would copy it to bytes first
    except (binascii.Error, ValueError):
        raise UploadError(Reason.of("bad_base64")) from None
    mimetype = sniff(data[:16])
    if mimetype is None:
        raise UploadError(Reason.of("not_a_picture"))
    return Picture(data, mimetype)


HOST_ANSWER_BYTES = 256 * 1024  # an image host's or Sink's JSON answer is a few hundred bytes


def _post(session: requests.Session, url: str, timeout: float, until: float | None, what: str, **kwargs: Any) -> tuple[int, Any]:
    """POST to a host the operator configured: (status, its JSON or None), all within `timeout`.

    Raises UploadError naming `what` for timeouts and connection errors.
    """
    at = min(time.monotonic() + timeout, until or math.inf)
    try:
        with (
            requests_deadline(at),
            session.post(
                url,
                timeout=(remaining(at, 10.0), remaining(at, timeout)),
                stream=True,
                allow_redirects=False,
                **kwargs,
            ) as response,
        ):
            return response.status_code, _json_or_none(response)
    except requests.Timeout:
        raise UploadError(Reason.of("host_timeout", host=what, seconds=timeout)) from None
    except requests.RequestException:
        raise UploadError(Reason.of("host_unreachable", host=what)) from None


def upload_to_lsky(
    session: requests.Session,
    base_url: str,
    token: str,
    picture: Picture | Arriving,
    timeout: float,
    strategy_id: int | None = None,
    until: float | None = None,
) -> str:
    """POST {base_url}/api/v1/upload; the permanent URL. Raises UploadError.

    Lsky Pro answers most failures with HTTP 200 and `"status": false`, and without
    `Accept: application/json` a bad token is a 302 to its HTML login page.
    """
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
    if isinstance(picture, Arriving):  # sent as it downloads: a multipart body of known length
        sent: dict[str, Any] = {"data": picture, "headers": {**headers, "Content-Type": picture.content_type}}
    else:
        form = {"strategy_id": str(strategy_id)} if strategy_id else {}
        sent = {"headers": headers, "files": {"file": (picture.name, picture.data, picture.mimetype)}, "data": form}
    status, body = _post(session, f"{base_url}/api/v1/upload", timeout, until, "lsky", **sent)
    if 300 <= status < 400:
        raise UploadError(Reason.of("lsky_login", status=status))
    if status == 413:
        raise UploadError(Reason.of("lsky_too_large"))
    message = upstream_text(str(body.get("message") or ""), 120, (token,)) if isinstance(body, dict) else ""
    if status == 401:
        raise UploadError(Reason.of("lsky_token"))
    if status == 429:
        raise UploadError(Reason.of("lsky_busy"))
    if status != 200:
        raise UploadError(Reason.of("lsky_refused", status=status, message=message))
    if not isinstance(body, dict):
        raise UploadError(Reason.of("lsky_unreadable"))
    if body.get("status") is not True:
        raise UploadError(Reason.of("lsky_said", message=message))
    try:
        url = body["data"]["links"]["url"]
    except (KeyError, TypeError):
        url = None
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise UploadError(Reason.of("lsky_no_link"))
    return url


def shorten(
    session: requests.Session,
    base_url: str,
    token: str,
    url: str,
    timeout: float,
    tries: int = 3,
    until: float | None = None,
) -> str:
    """A Sink short link for `url` (POST /api/link/create). Raises UploadError.

    Slugs are picked here, lower-case letters and digits as Sink requires; a clash (409) is
    retried with a new one.
    """
    if len(url) > 2048:
        raise UploadError(Reason.of("link_too_long"))
    for _ in range(tries):
        slug = "".join(secrets.choice("abcdefghijkmnpqrstuvwxyz23456789") for _ in range(8))
        status, body = _post(
            session,
            f"{base_url}/api/link/create",
            timeout,
            until,
            "sink",
            json={"url": url, "slug": slug},
            headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
        )
        if status == 409:
            continue
        if status not in (200, 201):
            raise UploadError(Reason.of("sink_refused", status=status))
        short = body.get("shortLink") if isinstance(body, dict) else None
        if isinstance(short, str) and short.startswith(("http://", "https://")):
            return short
        link = body.get("link") if isinstance(body, dict) else None
        slug = link.get("slug", slug) if isinstance(link, dict) else slug
        return f"{base_url}/{slug}"
    raise UploadError(Reason.of("sink_clash"))


def _json_or_none(response: requests.Response) -> Any:
    """The JSON of a streamed answer read up to HOST_ANSWER_BYTES, or None."""
    data = bytearray()
    for piece in response.iter_content(16 * 1024):
        data += piece
        if len(data) > HOST_ANSWER_BYTES:
            return None
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        return None


class Arriving:
    """A picture sent on as it downloads, the file of a multipart body (Lsky Pro's upload) whose
    length is known from the download's; nothing of it goes before its first bytes are a picture,
    and the bytes are kept as they pass (`picture()`), for the keeper when Lsky fails."""

    def __init__(self, response: requests.Response, length: int, max_bytes: int, strategy_id: int | None, name: str):
        boundary = secrets.token_hex(16)
        self.content_type = f"multipart/form-data; boundary={boundary}"
        mimetype = MIMETYPES.get(name.rsplit(".", 1)[-1], "image/png")
        field = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="strategy_id"\r\n\r\n{strategy_id}\r\n' if strategy_id else ""
        )
        self._head = (
            f'{field}--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
            f"Content-Type: {mimetype}\r\n\r\n"
        ).encode()
        self._tail = f"\r\n--{boundary}--\r\n".encode()
        self._response, self._length, self._max_bytes = response, length, max_bytes
        self._data = bytearray()
        self.failed: UploadError | None = None  # the download's own failure, not the host's

    def __len__(self) -> int:
        return len(self._head) + self._length + len(self._tail)

    def __iter__(self) -> Iterator[bytes]:
        try:
            for piece in self._response.iter_content(64 * 1024):
                if not self._data and sniff(bytes(piece[:16])) is None:
                    raise UploadError(Reason.of("not_a_picture"))
                if not self._data:
                    yield self._head
                self._data += piece
                if len(self._data) > min(self._length, self._max_bytes):
                    raise UploadError(Reason.of("too_large", mb=self._max_bytes // 2**20))
                yield piece
        except UploadError as exc:
            self.failed = exc
            raise
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError, ValueError):
            self.failed = UploadError(Reason.of("download_failed"))
            raise self.failed from None
        if len(self._data) != self._length:
            self.failed = UploadError(Reason.of("download_failed"))
            raise self.failed
        yield self._tail

    def picture(self) -> Picture | None:
        """The whole picture once it has passed, else None."""
        if self.failed is not None or len(self._data) != self._length:
            return None
        mimetype = sniff(bytes(self._data[:16]))
        return Picture(bytes(self._data), mimetype) if mimetype else None


@dataclass
class _SentOn:
    """What sending a picture to Lsky as it downloads came to."""

    link: str | None = None
    picture: Picture | None = None
    download_failed: UploadError | None = None
    lsky_failed: UploadError | None = None


def _to_lsky_as_it_arrives(
    session: requests.Session, settings: Settings, url: str, rule: AddressRule, until: float | None
) -> _SentOn | None:
    """The picture at `url` sent to Lsky Pro from its first bytes on; None when the download does
    not say its length (the picture is downloaded, then uploaded)."""
    max_bytes = int(settings.max_image_mb * 2**20)
    at = min(time.monotonic() + settings.upload_timeout, until or math.inf)
    try:
        with _fetching(at, rule):  # the address rule holds for the download's connection and redirects
            response = _opened(session, url, at, max_bytes)
    except UploadError as exc:
        return _SentOn(download_failed=exc)
    with response:
        length = _declared_length(response)
        if length is None:
            return None
        name = new_name(url)  # Lsky names the file its own way; this one only has to be a picture's
        arriving = Arriving(response, length, max_bytes, settings.lsky_strategy_id, name)
        try:
            with requests_deadline(at):  # the download's reads happen inside the upload's send
                link = upload_to_lsky(
                    session, settings.lsky_pro_url or "", settings.lsky_pro_token or "", arriving, settings.upload_timeout,
                    settings.lsky_strategy_id, until,
                )  # fmt: skip
        except UploadError as exc:
            if arriving.failed is not None:
                return _SentOn(download_failed=arriving.failed)
            return _SentOn(picture=arriving.picture(), lsky_failed=exc)
    return _SentOn(link=link, picture=arriving.picture())


@dataclass(frozen=True)
class Links:
    image: str  # what the Markdown image shows: permanent when there is one
    download: str | None  # the upstream's temporary link (shortened when that is on); None for inline data
    permanent: str | None
    notes: tuple[Reason, ...]  # what did not work
    # The bytes when re-hosting fetched them, so that no one fetches them again.
    picture: Picture | None = field(default=None, repr=False, compare=False)
    unsafe: Reason | None = None  # the upstream's link leads where the address rule forbids: why

    @property
    def showable(self) -> bool:
        """True when the image is at a web link a chat client can load (not an inline data: URI)."""
        return _web_link(self.image)


NO_PUBLIC_BASE = Reason.of("no_public_base")


def lasting_links(
    session: requests.Session,
    settings: Settings,
    store: Keeper | None,
    url: str,
    public_base: str | None,
    until: float | None = None,
    want_bytes: bool = False,
    keeping: Keeping | None = None,
) -> Links:
    """Re-host the image at `url` as configured. Never raises: failures become notes.

    `until` (time.monotonic()) is the request's deadline: no host is waited on past it. With
    `want_bytes` (an Images API call answering b64_json) the picture is fetched even when nothing
    keeps it, here, in parallel with the other images and within the deadline.

    Where this service serves its own links (the built-in store, S3 without S3_PUBLIC_BASE_URL)
    and `keeping` is given, the lasting link is promised at once and the picture kept behind it
    (storage/keeping.py): the answer waits for no download. Lsky Pro, a bucket's own public links
    and a keeper that is failing now keep first, then link.
    """
    permanent, notes, picture = None, [], None
    keeps = settings.use_lsky_pro or store is not None
    # The upstream's image link, and where it redirects, must be public, or on the upstream's own
    # host (API_BASE_URL): an upstream on a LAN serves its images from there. A link that is not
    # is never offered either: a browser, or a chat UI's server, would fetch it.
    rule = AddressRule.trusting(settings.api_base_url, allow_private=settings.allow_private_image_urls)
    if keeping is not None and store is not None and not want_bytes and _promisable(settings, store, url, public_base):
        if unsafe := _unsafe_link(url, rule):
            return Links(image=url, download=None, permanent=None, notes=(), unsafe=unsafe)
        max_bytes = int(settings.max_image_mb * 2**20)

        def fetch(spool: Spool) -> None:
            at = time.monotonic() + settings.upload_timeout
            with _fetching(at, rule):
                _download(session, url, at, max_bytes, spool, on_length=spool.declare)

        permanent = store.link(keeping.promise(url, fetch), public_base)
    elif keeps or want_bytes:
        sent_on = (
            _to_lsky_as_it_arrives(session, settings, url, rule, until) if settings.use_lsky_pro and _web_link(url) else None
        )
        try:
            if sent_on is not None and sent_on.download_failed is not None:
                raise sent_on.download_failed
            if sent_on is not None and sent_on.picture is not None:
                picture = sent_on.picture
            else:
                picture = fetch_picture(session, url, settings.upload_timeout, int(settings.max_image_mb * 2**20), rule, until)
        except UploadError as exc:
            if exc.unsafe:
                return Links(image=url, download=None, permanent=None, notes=(), unsafe=exc.reason)
            notes.append(Reason.of("not_kept" if keeps else "not_fetched", why=exc.reason))
        else:
            if sent_on is not None and (sent_on.link or sent_on.lsky_failed):
                permanent = sent_on.link
                if sent_on.lsky_failed is not None:
                    notes.append(Reason.of("lsky_failed", why=sent_on.lsky_failed.reason))
            elif settings.use_lsky_pro:
                try:
                    permanent = upload_to_lsky(
                        session,
                        settings.lsky_pro_url or "",
                        settings.lsky_pro_token or "",
                        picture,
                        settings.upload_timeout,
                        settings.lsky_strategy_id,
                        until,
                    )
                except UploadError as exc:
                    notes.append(Reason.of("lsky_failed", why=exc.reason))
            if permanent is None and store is not None:
                try:
                    permanent = store.link(store.keep(picture), public_base)
                except UploadError as exc:
                    notes.append(exc.reason)
                else:
                    if permanent is None:
                        notes.append(NO_PUBLIC_BASE)
    elif unsafe := _unsafe_link(url, rule):
        return Links(image=url, download=None, permanent=None, notes=(), unsafe=unsafe)
    download = url
    if settings.use_shortlink and url.startswith(("http://", "https://")) and len(url) > SHORT_ENOUGH:
        try:
            download = shorten(
                session,
                settings.shortlink_base_url or "",
                settings.shortlink_api_key or "",
                url,
                settings.upload_timeout,
                until=until,
            )
        except UploadError as exc:
            notes.append(Reason.of("shortlink_failed", why=exc.reason))
    return Links(
        image=permanent or url,
        download=download if _web_link(download) else None,
        permanent=permanent,
        notes=tuple(notes),
        picture=picture,
    )


def _promisable(settings: Settings, store: Keeper, url: str, public_base: str | None) -> bool:
    """Whether the link may be shown before the picture is kept: this service serves it (so it can
    answer while keeping), nothing else must have it first (Lsky Pro), and the keeper works now."""
    if settings.use_lsky_pro or not public_base or not _web_link(url):
        return False
    served_here = (store.link("x", public_base) or "").startswith(f"{public_base}/images/")
    return served_here and store.describe().get("state") != "failing"


def _unsafe_link(url: str, rule: AddressRule) -> Reason | None:
    """Why a link nothing fetches may not be offered (its host is a private address), or None."""
    if not _web_link(url):
        return None
    try:
        parts = urlsplit(url)
        rule.address_for(parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80))
    except ValueError:
        return Reason.of("invalid_link")
    except AddressRefused as exc:
        return None if exc.unresolved else Reason.of("unsafe_link", why=exc.reason)
    return None


def _web_link(url: str) -> bool:
    return url.startswith(("http://", "https://"))
