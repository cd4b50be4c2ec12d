"""Pictures being kept: the lasting link promised the moment SiliconFlow answers, the bytes served
while they arrive.

`Keeping.promise(source, fetch)` names the picture at once (a random name of the keepers' own
form, its extension guessed from the link) and keeps it on a thread of its own: `fetch(sink)`
downloads SiliconFlow's link into a spool file, and whoever asks for the name meanwhile reads that
same file as it grows (`Keeping.read`): one download, not two. Only a whole picture becomes the
kept object (`Keeper.put` from the finished spool), so a keep that fails part-way leaves nothing
behind the name; the name then leads to SiliconFlow's own link while it lasts (an hour).

The spool lives in a directory the instance's workers share (under DATA_DIR), beside two small
files: `<name>.src` holds SiliconFlow's link and becomes `<name>.done` or `<name>.failed` when the
keep ends, and `<name>.len` holds the length the download declared. So any worker of the instance
can serve a picture another is keeping: the keeping process wakes its own readers at each piece,
another process's readers look again every `POLL` seconds. Another instance (S3, sharing only the
bucket) finds the object there once it is kept; `api/site.py` waits briefly for it.

| file in the spool | means |
|---|---|
| `<name>.part` | the bytes so far; removed when the keep ends (readers keep their handle) |
| `<name>.len` | the download's declared length, once its headers came |
| `<name>.src` | being kept; the text is SiliconFlow's link |
| `<name>.done` | kept: the keeper has it |
| `<name>.failed` | not kept; the text is the link to send people to (empty: none) |
"""

from __future__ import annotations

import itertools
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlsplit

from core.errors import Reason, UploadError
from storage.pictures import EXTENSIONS, MIMETYPES, Keeper, sniff

log = logging.getLogger("siliconflow_proxy.pictures")

POLL = 0.02  # seconds between looks at another process's spool: no condition crosses processes
STALE_SECONDS = 3600  # SiliconFlow's links last an hour: a record older than that leads nowhere
PIECE = 64 * 1024


@dataclass(frozen=True)
class Reading:
    """A picture being kept, to serve: its bytes as they arrive, or where to send people instead."""

    content_type: str = ""
    length: int | None = None  # as the download declared it: a cut answer is then seen as cut
    chunks: Iterator[bytes] | None = None
    elsewhere: str | None = None  # the keep failed: SiliconFlow's link while it lasts


class Spool:
    """The sink `fetch` writes into, waking this process's readers at each piece."""

    def __init__(self, directory: Path, name: str) -> None:
        self.path = directory / f"{name}.part"
        self._len_path = directory / f"{name}.len"
        self._handle = open(self.path, "wb")  # noqa: SIM115 - closed in finish()
        self.changed = threading.Condition()
        self.size = 0
        self.head = b""

    def declare(self, length: int | None) -> None:
        """The download's headers came: its declared length (None: not said)."""
        _write(self._len_path, "" if length is None else str(length))
        with self.changed:
            self.changed.notify_all()

    def write(self, piece: bytes) -> None:
        if len(self.head) < 16:
            self.head += piece[: 16 - len(self.head)]
            if len(self.head) >= 16 and sniff(self.head) is None:  # an error page: not one byte more
                raise UploadError(Reason.of("not_a_picture"))
        self._handle.write(piece)
        self._handle.flush()
        with self.changed:
            self.size += len(piece)
            self.changed.notify_all()

    def wait(self, seconds: float) -> None:
        with self.changed:
            self.changed.wait(seconds)

    def close(self) -> None:
        self._handle.close()


class Keeping:
    """The pictures this instance is keeping, by name. One per process; the spool directory is
    the instance's. `promise` never blocks on the network; `read` serves what is there."""

    def __init__(self, directory: str | os.PathLike[str], store: Keeper, workers: int = 8, wait_seconds: float = 60.0):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._store = store
        self._wait_seconds = wait_seconds  # a reader waits at most this long for the next piece
        self._spools: dict[str, Spool] = {}
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="keeping")
        self._promised = 0
        self._remove_stale()

    def promise(self, source: str, fetch: Callable[[Spool], None]) -> str:
        """A lasting name for the picture at `source`, kept from now on by `fetch(spool)`, which
        writes its bytes into the spool as they arrive and raises UploadError when it cannot."""
        name = new_name(source)
        spool = Spool(self.directory, name)
        _write(self.directory / f"{name}.src", source)
        with self._lock:
            self._spools[name] = spool
            self._promised += 1
            sweep = self._promised % 100 == 0
        self._executor.submit(self._keep, name, spool, source, fetch)
        if sweep:
            self._executor.submit(self._remove_stale)
        return name

    def _keep(self, name: str, spool: Spool, source: str, fetch: Callable[[Spool], None]) -> None:
        elsewhere: str | None = source
        try:
            fetch(spool)
            spool.close()
            mimetype = sniff(spool.head)
            if mimetype is None:
                raise UploadError(Reason.of("not_a_picture"))
            if not _whole(spool.path, mimetype):
                raise UploadError(Reason.of("download_failed"))  # it ended before the picture did
            with open(spool.path, "rb") as whole:
                self._store.put(name, whole, MIMETYPES[name.rsplit(".", 1)[1]])
        except UploadError as exc:
            if exc.unsafe:
                elsewhere = None  # a link that leads where the address rule forbids is never offered
            self._end(name, spool, failed=elsewhere if elsewhere is not None else "")
            log.warning("picture %s not kept: %s", name[:12], exc.reason.code)
        except Exception:  # a bug costs this picture's keeping, never the worker
            log.exception("picture %s not kept", name[:12])
            self._end(name, spool, failed=source)
        else:
            self._end(name, spool, failed=None)

    def _end(self, name: str, spool: Spool, failed: str | None) -> None:
        spool.close()
        src = self.directory / f"{name}.src"
        if failed is None:
            os.replace(src, self.directory / f"{name}.done")
        else:
            _write(self.directory / f"{name}.failed", failed)
            _unlink(src)
        _unlink(spool.path)
        _unlink(self.directory / f"{name}.len")
        with spool.changed:
            spool.changed.notify_all()
        with self._lock:
            self._spools.pop(name, None)

    def read(self, name: str) -> Reading | None:
        """The picture `name` while this instance keeps it, or where to send people when its keep
        failed; None when this instance knows nothing of it (kept already, or never promised here).

        Bytes go out as they arrive only when the download declared its length, and the last piece
        only once the picture is kept: a keep that fails is then a cut answer (the client saw fewer
        bytes than announced), never a finished one. Without a declared length it is waited for."""
        spool = self._spools.get(name)
        try:
            handle = open(self.directory / f"{name}.part", "rb")  # noqa: SIM115 - closed by the chunks
        except FileNotFoundError:
            return self._ended(name)
        wait = spool.wait if spool is not None else _pause
        length = self._declared(name, wait)
        if not length:  # not said (or nothing came): the whole keep is waited for, then the store answers
            handle.close()
            self._until_ended(name, wait)
            return self._ended(name)
        chunks = self._tail(name, handle, wait)
        first = next(chunks, None)  # the headers wait for the first bytes, or for the keep to fail
        if first is None:
            return self._ended(name)
        return Reading(MIMETYPES[name.rsplit(".", 1)[1]], length, itertools.chain((first,), chunks))

    def _ended(self, name: str) -> Reading | None:
        failed = _text(self.directory / f"{name}.failed")
        return Reading(elsewhere=failed) if failed is not None else None

    def _until_ended(self, name: str, wait: Callable[[float], None]) -> None:
        deadline = time.monotonic() + self._wait_seconds
        while (self.directory / f"{name}.src").exists() and time.monotonic() < deadline:
            wait(POLL)

    def _declared(self, name: str, wait: Callable[[float], None]) -> int | None:
        """The declared length once the download's headers came; None when not said, or when
        the keep ended first."""
        deadline = time.monotonic() + self._wait_seconds
        while time.monotonic() < deadline:
            text = _text(self.directory / f"{name}.len")
            if text is not None:
                return int(text) if text.isdigit() else None
            if not (self.directory / f"{name}.src").exists():
                return None
            wait(POLL)
        return None

    def _tail(self, name: str, handle: BinaryIO, wait: Callable[[float], None]) -> Iterator[bytes]:
        """The spool's bytes as they come, the latest piece held back until the keep has ended:
        all of it when kept, nothing more when not (the answer then ends short of its length)."""
        done, failed = self.directory / f"{name}.done", self.directory / f"{name}.failed"
        held = b""
        try:
            idle_since = time.monotonic()
            while True:
                piece = handle.read(PIECE)
                if piece:
                    idle_since = time.monotonic()
                    if held:
                        yield held
                    held = piece
                elif done.exists():
                    yield held + handle.read()  # what came after the last look: the picture is whole
                    return
                elif failed.exists() or time.monotonic() - idle_since > self._wait_seconds:
                    return  # not kept: the last piece is never sent, so no client has it whole
                else:
                    wait(POLL)
        finally:
            handle.close()

    def close(self) -> None:
        """Stop taking new pictures and wait for those being kept: their links are shown already."""
        self._executor.shutdown(wait=True)

    def _remove_stale(self) -> None:
        """Records and spools older than SiliconFlow's links, left by ended keeps or killed workers."""
        cutoff = time.time() - STALE_SECONDS
        try:
            with os.scandir(self.directory) as entries:
                for entry in entries:
                    try:
                        if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                            os.unlink(entry.path)
                    except OSError:
                        continue
        except OSError:
            pass


def _whole(path: Path, mimetype: str) -> bool:
    """Whether the picture in `path` ends as its format ends: a download cut short without a
    declared length must not be kept as if whole."""
    with open(path, "rb") as picture:
        size = picture.seek(0, os.SEEK_END)
        picture.seek(max(0, size - 12))
        tail = picture.read()
        picture.seek(4)
        riff = picture.read(4)
    if mimetype == "image/png":
        return tail.endswith(b"IEND\xaeB`\x82")
    if mimetype == "image/jpeg":
        return tail.rstrip(b"\x00").endswith(b"\xff\xd9")
    if mimetype == "image/gif":
        return tail.endswith(b";")
    return int.from_bytes(riff, "little") + 8 == size  # WebP: RIFF says its own size


def new_name(source: str) -> str:
    """A name of the kept names' form for the picture at `source`, before its bytes are known:
    random, its extension the link's own (SiliconFlow's end in .png or .jpeg), else png."""
    return f"{secrets.token_hex(32)}.{_extension(source)}"


def _extension(source: str) -> str:
    try:
        suffix = urlsplit(source).path.rsplit(".", 1)[-1].lower()
    except ValueError:
        suffix = ""
    suffix = {"jpeg": "jpg"}.get(suffix, suffix)
    return suffix if suffix in EXTENSIONS.values() else "png"


def _text(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _write(path: Path, text: str) -> None:
    """Written whole or not at all: another process reading it never sees it half written."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    temporary.write_text(text)
    os.replace(temporary, path)


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


def _pause(seconds: float) -> None:
    """Another process keeps this picture: look again shortly (waiting for its bytes, not pacing ours)."""
    threading.Event().wait(seconds)
