"""What request bodies may cost a worker: which bytes count as pictures, and the memory large bodies hold.

Two rules, both here so that the routes only ask:
- `picture_bytes(raw)`: how much of a JSON body is pictures' data: URIs. Only a string that is
  one, with a payload of plain base64 (a serializer may escape its slashes, nothing else) whose
  first bytes are a PNG, JPEG, WebP or GIF, counts; `\\uXXXX` escapes spell text, and text is what
  the 1 MB limit is for.
- `BodyBudget`: a worker process holds at most PICTURE_BODIES_MB of bodies over 1 MB at once (a
  request keeps its share until its answer is closed: its pictures live that long). Past that a
  request is refused with a 503 to retry instead of growing the worker: eight chat edits of
  three 18 MB pictures at once took the two workers to 1.4 GB.
"""

from __future__ import annotations

import binascii
import re
import threading

from uploaders import sniff

# A JSON string that is a picture's data: URI. The payload is base64 with `\/` the only escape
# allowed (PHP's json_encode escapes slashes); a `\uXXXX` ends the match, and the string with it.
_DATA_URI_IN_JSON = re.compile(
    rb'(?<!\\)"data:image(?:/|\\/)[A-Za-z0-9.+-]{1,40};base64,([A-Za-z0-9+/=]*(?:\\/[A-Za-z0-9+/=]*)*)"'
)


def picture_bytes(raw: bytes | bytearray) -> int:
    """Bytes of `raw` that are pictures' data: URIs: valid base64 whose first bytes are a picture."""
    counted = 0
    for match in _DATA_URI_IN_JSON.finditer(raw):
        start, end = match.span(1)
        if _is_picture(raw, start, end):
            counted += match.end() - match.start()
    return counted


def _is_picture(raw: bytes | bytearray, start: int, end: int) -> bool:
    # Counted without copying the payload: its length without escapes, where its padding starts.
    escapes = raw.count(b"\\/", start, end)
    length = end - start - escapes
    padding = raw.find(b"=", start, end)
    if length % 4 or (padding >= 0 and (end - padding > 2 or raw.count(b"=", padding, end) != end - padding)):
        return False  # not base64: a length that is no multiple of 4, "=" other than at the end
    head = bytes(raw[start : start + 48]).replace(b"\\/", b"/")[:24]
    try:
        first = binascii.a2b_base64(head, strict_mode=True)
    except binascii.Error:
        return False
    return sniff(first) is not None


class Busy(Exception):
    """The worker holds as much of large bodies as it may; the request is to be retried later."""

    def __init__(self, held: int, budget: int):
        super().__init__(f"{held} of {budget} bytes held")
        self.held, self.budget = held, budget


class BodyBudget:
    """Bytes of large request bodies one worker process holds at once, at most `budget`.

    One request is always let in when the worker holds none: a body larger than the budget on its
    own can still be served, one at a time.
    """

    def __init__(self, budget: int):
        self.budget = budget
        self.held = 0
        self._lock = threading.Lock()

    def take(self, size: int) -> Hold:
        """A hold on `size` more bytes. Raises Busy when the worker cannot take them now."""
        hold = Hold(self)
        hold.grow(size)
        return hold

    def _grow(self, own: int, size: int) -> None:
        with self._lock:
            if self.held > own and self.held + size > self.budget:
                raise Busy(self.held, self.budget)
            self.held += size

    def _shrink(self, size: int) -> None:
        with self._lock:
            self.held -= size


class Hold:
    """One request's share of a `BodyBudget`: grows as its body arrives, given back once."""

    def __init__(self, budget: BodyBudget):
        self._budget = budget
        self.size = 0

    def grow(self, size: int) -> None:
        """Raises Busy (holding what it held before) when the budget has no room for `size` more."""
        self._budget._grow(self.size, size)
        self.size += size

    def release(self) -> None:
        size, self.size = self.size, 0
        if size:
            self._budget._shrink(size)
