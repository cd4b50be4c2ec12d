"""What the key pool hands out: a key for one call (`Lease`), or why none came; and how keys and
accounts are named in stores and logs (a hash, and a shortened account), never by their secret."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from core.errors import Reason


def key_id(key: str) -> str:
    """How stores and logs name a key: a hash, useless to a thief."""
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def mask_account(account: str) -> str:
    return account if len(account) <= 6 else f"{account[:3]}…{account[-3:]}"


@dataclass(frozen=True)
class Lease:
    """A key handed out for one call: give it back with `KeyPool.report` (or `release`)."""

    key: str = field(repr=False)
    model: str | None = None  # the image model called; None for a chat call
    ticket: str | None = None  # the call's place in its account's window
    probing: bool = False  # the one call that tries a key resting for balance


@dataclass(frozen=True)
class Acquired:
    """What the store said to a request for a key: a lease, or when one may be free."""

    lease: Lease | None
    wait: float | None = None  # seconds until a key may be free; None with no lease: never
    yielded: bool = False  # a free key was left to a request that has waited longer


@dataclass(frozen=True)
class Taken:
    """A key from the line, or why none came."""

    lease: Lease | None
    why_not: Reason | None = None
