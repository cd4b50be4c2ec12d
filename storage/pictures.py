"""Where pictures (and, later, videos) are kept: the built-in store on a disk, or S3-compatible
object storage shared by every instance. One interface, whichever keeps them:

| method | does |
|---|---|
| `put(name, source, content_type)` | keeps the bytes (or a file read in pieces) under `name`; raises UploadError |
| `keep(picture)` | `put` under the picture's content-addressed name; returns the name |
| `open(name)` | the kept object to serve (`Kept`: a readable body, size, type), or None |
| `link(name, public_base)` | the URL a client loads it from, or None when none can be made |
| `delete(name)` | removes it (a deleted video's clip); one not there is no error; raises UploadError |
| `describe()` | for /health and the start-up log: kind, where, state (`ok`/`failing` and why) |

Names are content hashes (`STORED_NAME`), so the same picture is kept once and may be cached for
ever. A failure is an UploadError whose reason says why in words (drawing/reasons.py); the caller keeps
the upstream's link, so a failing keeper costs a line in the answer, never the picture.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import stat
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol
from urllib.parse import urlsplit

from core.errors import Reason, UploadError

log = logging.getLogger("siliconflow_proxy.pictures")

# File name extension for each image type we keep; anything else is not an image to us.
EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp", "image/gif": "gif"}
MIMETYPES = {ext: mime for mime, ext in EXTENSIONS.items()} | {"mp4": "video/mp4"}  # kept videos too
_MAGIC = ((b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff", "image/jpeg"), (b"GIF8", "image/gif"))
STORED_NAME = re.compile(r"[0-9a-f]{64}\.(?:png|jpg|webp|gif|mp4)")


@dataclass(frozen=True)
class Picture:
    """A picture's bytes and their type, named by their hash when kept."""

    data: bytes
    mimetype: str

    @property
    def name(self) -> str:
        """Content-addressed file name: the same image is stored once."""
        return f"{hashlib.sha256(self.data).hexdigest()}.{EXTENSIONS[self.mimetype]}"


def sniff(data: bytes) -> str | None:
    for magic, mimetype in _MAGIC:
        if data.startswith(magic):
            return mimetype
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def dimensions(data: bytes) -> tuple[int, int] | None:
    """(width, height) of a PNG, JPEG, GIF or WebP picture, read from its header; None when the
    header cannot be read (the size an answer says is then the one asked)."""
    try:
        if data.startswith(b"\x89PNG\r\n\x1a\n") and data[12:16] == b"IHDR":
            return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        if data.startswith(b"GIF8") and len(data) >= 10:
            return int.from_bytes(data[6:8], "little"), int.from_bytes(data[8:10], "little")
        if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            return _webp_dimensions(data)
        if data.startswith(b"\xff\xd8"):
            return _jpeg_dimensions(data)
    except IndexError:
        return None
    return None


def _webp_dimensions(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":  # a lossy key frame
        return int.from_bytes(data[26:28], "little") & 0x3FFF, int.from_bytes(data[28:30], "little") & 0x3FFF
    if chunk == b"VP8L" and data[20] == 0x2F:  # lossless: 14-bit sides less one
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X" and len(data) >= 30:  # extended: 24-bit sides less one
        return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
    return None


def _jpeg_dimensions(data: bytes) -> tuple[int, int] | None:
    """The frame header's size: segments walked from the start (bounded by the data's length)."""
    at = 2
    while at + 9 <= len(data):
        if data[at] != 0xFF:
            return None
        marker = data[at + 1]
        if marker == 0xFF:  # fill bytes before a marker
            at += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # markers without a length
            at += 2
            continue
        length = int.from_bytes(data[at + 2 : at + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # a start of frame
            return int.from_bytes(data[at + 7 : at + 9], "big"), int.from_bytes(data[at + 5 : at + 7], "big")
        if length < 2:
            return None
        at += 2 + length
    return None


CACHE_FOREVER = "public, max-age=31536000, immutable"  # names are content hashes
PIECE = 1024 * 1024  # how much of a file source is read at a time


@dataclass
class Kept:
    """A kept object opened to be served."""

    body: BinaryIO  # read() and close(); a local file is also seekable (ranges)
    size: int
    content_type: str
    modified: float | None = None
    seekable: bool = False


class Keeper(Protocol):
    kind: str

    def put(self, name: str, source: bytes | BinaryIO, content_type: str) -> None: ...

    def keep(self, picture: Picture) -> str: ...

    def open(self, name: str) -> Kept | None: ...

    def link(self, name: str, public_base: str | None) -> str | None: ...

    def delete(self, name: str) -> None: ...

    def own_name(self, url: str) -> str | None: ...

    def describe(self) -> dict[str, Any]: ...


def _served_name(url: str) -> str | None:
    """The kept name in one of this service's own links (`…/images/<name>`), or None."""
    try:
        path = urlsplit(url).path
    except ValueError:
        return None
    head, _, name = path.rpartition("/")
    return name if head.endswith("/images") and STORED_NAME.fullmatch(name) else None


class _State:
    """Whether the last attempt worked, and why not: said by /health, logged once per change."""

    def __init__(self, what: str) -> None:
        self._what = what
        self._lock = threading.Lock()
        self.failing: Reason | None = None
        self.since: float | None = None

    def failed(self, reason: Reason, detail: str, *, logged: bool = False) -> None:
        """`logged`: the caller says it in a line of its own (the start-up check)."""
        with self._lock:
            changed = self.failing != reason
            self.failing, self.since = reason, self.since if not changed else time.time()
        if changed and not logged:
            log.warning("%s is failing: %s; answers link the upstream's pictures until it works again", self._what, detail)

    def worked(self) -> None:
        with self._lock:
            was, self.failing, self.since = self.failing, None, None
        if was is not None:
            log.info("%s works again", self._what)

    def describe(self) -> dict[str, Any]:
        failing = self.failing
        if failing is None:
            return {"state": "ok"}
        return {"state": "failing", "why": failing, "since": self.since}


# --- the built-in store: a directory --------------------------------------------------------------


class LocalKeeper:
    """Kept on this server's disk under their content hash, served at /images/<name>.

    Bounded: past `max_bytes` the oldest go first (down to 90 % of the cap, so that a full store is
    not counted on every save); the one just kept always stays. Several worker processes may share
    the directory: each recounts it from disk every `RECOUNT_EVERY` saves and whenever its own
    count passes the cap.
    """

    kind = "local"
    RECOUNT_EVERY = 50
    STALE_INCOMING_SECONDS = 3600

    def __init__(self, directory: str | os.PathLike[str], max_bytes: int):
        """Raises OSError when the directory cannot be created or written: found at start-up,
        not at the first image."""
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.directory.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=self.directory, prefix=".incoming-")
        os.close(fd)
        os.unlink(probe)
        self._lock = threading.Lock()
        self._counted: int | None = None
        self._saves = 0
        self._state = _State("the image store")
        self._remove_stale_incoming()

    def keep(self, picture: Picture) -> str:
        self.put(picture.name, picture.data, picture.mimetype)
        return picture.name

    def put(self, name: str, source: bytes | BinaryIO, content_type: str) -> None:
        target = self.directory / name
        if target.exists():
            try:
                os.utime(target)  # asked for again: it is among the newest now
            except OSError:
                pass
            return
        temporary = None
        size = 0
        try:
            # Write then rename, so a reader never sees half a file.
            fd, temporary = tempfile.mkstemp(dir=self.directory, prefix=".incoming-")
            with os.fdopen(fd, "wb") as handle:
                if isinstance(source, bytes | bytearray | memoryview):
                    handle.write(source)
                    size = len(source)
                else:
                    while piece := source.read(PIECE):
                        handle.write(piece)
                        size += len(piece)
            os.replace(temporary, target)
            temporary = None
        except OSError as exc:
            self._state.failed(Reason.of("store_write"), exc.strerror or "write failed")
            raise UploadError(Reason.of("store_write")) from None
        finally:
            if temporary is not None:
                try:
                    os.unlink(temporary)
                except OSError:
                    pass
        self._state.worked()
        self._account(size, name)

    def open(self, name: str) -> Kept | None:
        """Only exact stored names of regular files, never a symlink or anything else on disk."""
        if not STORED_NAME.fullmatch(name):
            return None
        try:
            fd = os.open(self.directory / name, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError:
            return None
        info = os.fstat(fd)  # of the file opened, not of whatever the path names now
        if not stat.S_ISREG(info.st_mode):
            os.close(fd)
            return None
        return Kept(os.fdopen(fd, "rb"), info.st_size, MIMETYPES[name.rsplit(".", 1)[1]], info.st_mtime, seekable=True)

    def link(self, name: str, public_base: str | None) -> str | None:
        return f"{public_base}/images/{name}" if public_base else None

    def delete(self, name: str) -> None:
        if not STORED_NAME.fullmatch(name):
            return
        path = self.directory / name
        try:
            size = path.lstat().st_size
            path.unlink()
        except FileNotFoundError:
            return  # never kept, or trimmed as the oldest
        except OSError as exc:
            self._state.failed(Reason.of("store_remove"), exc.strerror or "remove failed")
            raise UploadError(Reason.of("store_remove")) from None
        with self._lock:
            if self._counted is not None:
                self._counted = max(0, self._counted - size)

    def own_name(self, url: str) -> str | None:
        return _served_name(url)

    def describe(self) -> dict[str, Any]:
        used = {"used_mb": round(self._counted / 2**20, 1)} if self._counted is not None else {}
        return {
            "kind": self.kind,
            "where": str(self.directory),
            "cap_mb": self.max_bytes // 2**20,
            **used,
            **self._state.describe(),
        }

    def _account(self, size: int, keep: str) -> None:
        with self._lock:
            self._saves += 1
            if self._counted is not None and self._saves % self.RECOUNT_EVERY and self._counted + size <= self.max_bytes:
                self._counted += size
                return
            self._counted = self._trim(keep)

    def _trim(self, keep: str) -> int:
        """Count the store on disk and remove the oldest while it is over the cap. The total left."""
        kept = []
        with os.scandir(self.directory) as entries:
            for entry in entries:
                if STORED_NAME.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
                    try:
                        info = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    kept.append((info.st_mtime, entry.name, info.st_size))
        total = sum(size for _, _, size in kept)
        if total <= self.max_bytes:
            return total
        target = int(self.max_bytes * 0.9)
        removed = 0
        for _, name, size in sorted(kept):
            if total <= target:
                break
            if name == keep:
                continue
            try:
                os.unlink(self.directory / name)
            except OSError:
                continue
            total -= size
            removed += 1
        log.info("image store over %d MB: removed the %d oldest file(s)", self.max_bytes // 2**20, removed)
        return total

    def _remove_stale_incoming(self) -> None:
        """Half-written files a killed worker left behind."""
        cutoff = time.time() - self.STALE_INCOMING_SECONDS
        for path in self.directory.glob(".incoming-*"):
            try:
                if path.lstat().st_mtime < cutoff:
                    path.unlink()
            except OSError:
                pass


# --- S3-compatible object storage -----------------------------------------------------------------

# What an S3 error means for the operator, by the error's code (AWS, R2, MinIO, B2 and moto agree on these).
_S3_CODES = {
    "NoSuchBucket": "s3_no_bucket",
    "InvalidAccessKeyId": "s3_credentials",
    "SignatureDoesNotMatch": "s3_credentials",
    "AccessDenied": "s3_credentials",
    "InvalidToken": "s3_credentials",
    "ExpiredToken": "s3_credentials",
    "403": "s3_credentials",
    "404": "s3_no_bucket",
    "QuotaExceeded": "s3_full",
    "InsufficientStorage": "s3_full",
    "StorageQuotaExceeded": "s3_full",
    "XMinioStorageFull": "s3_full",
    "507": "s3_full",
    "EntityTooLarge": "s3_full",
}
# The variable an operator fixes for each.
_S3_FIX = {
    "s3_no_bucket": "S3_BUCKET (and AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL, if the bucket is not on AWS)",
    "s3_credentials": "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (the key needs read and write on the bucket)",
    "s3_no_credentials": "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
    "s3_unreachable": "AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL (and AWS_REGION)",
    "s3_full": "the bucket's quota with your storage provider",
    "s3_error": "the bucket's settings with your storage provider",
}


class S3Keeper:
    """Kept as objects `<prefix><name>` in one bucket, shared by every instance.

    boto3 reads credentials, region and endpoint from its own standard variables
    (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT_URL_S3` or
    `AWS_ENDPOINT_URL`). Objects carry their Content-Type and a cache-for-ever header; no ACL is
    set (R2 ignores them, and a public bucket or a CDN is the operator's choice): with
    `public_base_url` the links point there, without it this service serves `/images/<name>` from
    the bucket, so any instance answers for any picture. The client is made per process (gunicorn
    forks after the app is built, and a connection must not be shared across a fork).
    """

    kind = "s3"

    def __init__(self, bucket: str, prefix: str = "", public_base_url: str | None = None, timeout: float = 30.0):
        import boto3  # only when S3 is configured: its import costs a worker ~20 MB
        from botocore.config import Config

        self.bucket, self.prefix, self.public_base_url = bucket, prefix, public_base_url
        self._boto3 = boto3
        self._config = Config(
            # Two attempts (a dropped connection, a 503 SlowDown), together within UPLOAD_TIMEOUT.
            connect_timeout=min(timeout / 2, 5.0),
            read_timeout=timeout / 2,
            retries={"max_attempts": 2, "mode": "standard"},
            # Checksums are sent only when an operation needs one: many S3-compatible servers (older
            # MinIO, B2, R2 in places) refuse the newer default trailing checksums.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        self._client_of: tuple[int, Any] | None = None
        self._lock = threading.Lock()
        self._state = _State(f"the S3 bucket {bucket}")
        self._known: set[str] = set()  # names this process has kept or seen kept

    def _client(self) -> Any:
        pid = os.getpid()
        with self._lock:
            if self._client_of is None or self._client_of[0] != pid:
                self._client_of = (pid, self._boto3.session.Session().client("s3", config=self._config))
            return self._client_of[1]

    @property
    def endpoint(self) -> str:
        return str(self._client().meta.endpoint_url)

    def check(self) -> tuple[Reason, str] | None:
        """Is the bucket there and may we use it? None, or why not and what to fix (logged once)."""
        try:
            self._client().head_bucket(Bucket=self.bucket)
        except Exception as exc:  # noqa: BLE001 - botocore raises many kinds; each becomes words
            reason, detail = self._why(exc)
            self._state.failed(reason, detail, logged=True)
            return reason, f"{detail}: check {_S3_FIX.get(reason.code, 'the S3 settings')}"
        self._state.worked()
        return None

    def keep(self, picture: Picture) -> str:
        self.put(picture.name, picture.data, picture.mimetype)
        return picture.name

    def put(self, name: str, source: bytes | BinaryIO, content_type: str) -> None:
        if name in self._known:
            return  # content-addressed: kept already
        extra = {"ContentType": content_type, "CacheControl": CACHE_FOREVER}
        try:
            client = self._client()
            if isinstance(source, bytes | bytearray | memoryview):
                client.put_object(Bucket=self.bucket, Key=self.prefix + name, Body=bytes(source), **extra)
            else:
                # A file is sent in parts as it is read (large videos): never whole in memory.
                client.upload_fileobj(source, self.bucket, self.prefix + name, ExtraArgs=extra)
        except Exception as exc:  # noqa: BLE001
            reason, detail = self._why(exc)
            self._state.failed(reason, detail)
            raise UploadError(reason) from None
        self._state.worked()
        self._remember(name)

    def open(self, name: str) -> Kept | None:
        if not STORED_NAME.fullmatch(name):
            return None
        try:
            answer = self._client().get_object(Bucket=self.bucket, Key=self.prefix + name)
        except Exception as exc:  # noqa: BLE001
            reason, detail = self._why(exc)
            if reason.code != "s3_missing":
                self._state.failed(reason, detail)
                raise UploadError(reason) from None
            return None
        self._state.worked()
        self._remember(name)
        modified = answer.get("LastModified")
        return Kept(
            answer["Body"],
            int(answer.get("ContentLength") or 0),
            answer.get("ContentType") or MIMETYPES[name.rsplit(".", 1)[1]],
            modified.timestamp() if modified else None,
        )

    def link(self, name: str, public_base: str | None) -> str | None:
        if self.public_base_url:
            return f"{self.public_base_url}/{self.prefix}{name}"
        return f"{public_base}/images/{name}" if public_base else None

    def delete(self, name: str) -> None:
        if not STORED_NAME.fullmatch(name):
            return
        # Forgotten first: a put of this name after the delete must send the bytes again, not
        # believe them kept. (Another process's memory may still hold it: names that are ever
        # deleted, videos', are made once per job, so nothing puts them again.)
        self._known.discard(name)
        try:
            self._client().delete_object(Bucket=self.bucket, Key=self.prefix + name)  # S3 answers 204 for a missing one too
        except Exception as exc:  # noqa: BLE001
            reason, detail = self._why(exc)
            self._state.failed(reason, detail)
            raise UploadError(reason) from None
        self._state.worked()

    def own_name(self, url: str) -> str | None:
        if self.public_base_url and url.startswith(f"{self.public_base_url}/{self.prefix}"):
            name = url[len(self.public_base_url) + 1 + len(self.prefix) :]
            return name if STORED_NAME.fullmatch(name) else None
        return _served_name(url)

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "where": f"s3://{self.bucket}/{self.prefix}",
            "links": self.public_base_url or "this service's /images/",
            **self._state.describe(),
        }

    def _remember(self, name: str) -> None:
        if len(self._known) > 100_000:
            self._known.clear()
        self._known.add(name)

    def _why(self, exc: Exception) -> tuple[Reason, str]:
        """The reason (for the answer) and a detail naming what happened (for the log)."""
        from botocore import exceptions as errors

        if isinstance(exc, errors.ClientError):
            error = exc.response.get("Error", {})
            code = str(error.get("Code") or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
            if code in ("NoSuchKey", "404") and exc.operation_name == "GetObject":
                return Reason.of("s3_missing"), "no such object"
            kind = _S3_CODES.get(code, "s3_error")
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            return Reason.of(kind, bucket=self.bucket, error=code), f"{code} (HTTP {status}) for bucket {self.bucket}"
        if isinstance(exc, errors.NoCredentialsError | errors.PartialCredentialsError):
            return Reason.of("s3_no_credentials"), "no credentials found"
        if isinstance(exc, errors.BotoCoreError | OSError):
            return Reason.of("s3_unreachable"), f"{type(exc).__name__} reaching the endpoint"
        return Reason.of("s3_error", bucket=self.bucket, error=type(exc).__name__), type(exc).__name__
