"""Why things fail: the kinds of failure, the typed reasons, and the one exception tree.

Every failure the service raises is a `ServiceError`: it carries the kind of failure (whose
problem it is) and a `Reason`, a code and its parameters that the words (drawing/reasons.py) say
in Chinese for chat and in English for the APIs and logs. None carries a Python exception's text
or a secret. The surfaces map a failure to an HTTP status in one place (api/errors.py).

    ServiceError                 kind: Failure, reason: Reason
    ├── UpstreamError            a call to SiliconFlow failed (siliconflow/client.py); status, retry_after
    ├── UploadError              fetching, keeping or re-hosting a picture failed; unsafe: never offer the link
    ├── AddressRefused           a link leads where the address rule forbids (siliconflow/outbound.py)
    ├── TooLarge                 an answer or a body was longer than its cap
    ├── Busy                     the worker holds all the large bodies it may (api/bodies.py): retry later
    ├── ConfigError              a setting cannot be used: stops the start, naming every bad variable
    └── ApiError                 what a request is answered with: status, message, param, code

This module imports nothing of this project: every floor may use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class Failure(StrEnum):
    """What kind of thing went wrong, and so whose problem it is."""

    AUTH = "auth"  # 401: the key is revoked or mistyped
    BALANCE = "balance"  # 402/403: the account has no money
    RATE_LIMIT = "rate_limit"  # 429: the account used up its budget for this model
    FORBIDDEN = "forbidden"  # 403 otherwise: the model is disabled for this account
    BAD_REQUEST = "bad_request"  # 400: the request itself is wrong; another key would say the same
    INPUT = "input"  # the request cannot be drawn as it is (no picture to edit, nothing to change): found here
    SERVER = "server"  # 5xx
    TIMEOUT = "timeout"
    NETWORK = "network"
    BAD_RESPONSE = "bad_response"  # not JSON, too large, no image, a link that is not one
    NO_KEYS = "no_keys"  # no key could be had (all out, or not before the deadline)
    CANCELLED = "cancelled"  # the client left
    INTERNAL = "internal"  # a bug here, or a local fault (not the upstream's)


@dataclass(frozen=True)
class Reason:
    """Why: a code (drawing/reasons.py has the words for each, in Chinese and English) and its parameters.

    Parameters are plain values, or Reasons and lists of Reasons themselves (a failure after
    several attempts carries the last one's reason).
    """

    code: str
    params: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def of(cls, code: str, **params: Any) -> Reason:
        return cls(code, tuple(params.items()))

    @property
    def args(self) -> dict[str, Any]:
        return dict(self.params)

    def get(self, name: str, default: Any = None) -> Any:
        return self.args.get(name, default)

    def __str__(self) -> str:  # for logs: the code and the parameters, never a key (none is ever one)
        return self.code if not self.params else f"{self.code}{self.args}"


INTERNAL = Reason.of("internal")


class ServiceError(Exception):
    """The base of every failure this service raises: its kind and a reason safe to show."""

    def __init__(self, kind: Failure = Failure.INTERNAL, reason: Reason = INTERNAL, message: str | None = None):
        super().__init__(message if message is not None else str(reason))
        self.kind = kind
        self.reason = reason


class UpstreamError(ServiceError):
    """A call to SiliconFlow failed: `kind` says whose problem it is, `reason` why."""

    def __init__(self, kind: Failure, reason: Reason, status: int | None = None, retry_after: float | None = None):
        super().__init__(kind, reason)
        self.status = status
        self.retry_after = retry_after


class UploadError(ServiceError):
    """Fetching, re-hosting or shortening a picture failed; `reason` says why."""

    def __init__(self, reason: Reason, *, unsafe: bool = False):
        super().__init__(Failure.BAD_RESPONSE, reason)
        self.unsafe = unsafe  # the link leads where the address rule forbids: never offer it


class AddressRefused(ServiceError):
    """A connection was refused by the address rule before anything was sent; `reason` says why."""

    def __init__(self, reason: Reason, *, unresolved: bool = False):
        super().__init__(Failure.BAD_RESPONSE, reason)
        self.unresolved = unresolved  # the host's name did not resolve here


class TooLarge(ServiceError):
    """A body was longer than the cap it was read with."""

    def __init__(self, message: str = "too large"):
        super().__init__(Failure.BAD_RESPONSE, Reason.of("over_cap"), message)


class Busy(ServiceError):
    """The worker holds as much of large bodies as it may; the request is to be retried later."""

    def __init__(self, held: int, budget: int):
        super().__init__(Failure.INTERNAL, Reason.of("busy"), f"{held} of {budget} bytes held")
        self.held, self.budget = held, budget


class ConfigError(ServiceError, ValueError):
    """Raised by `Settings.from_env` (and at start-up) with one line per bad variable."""

    def __init__(self, message: str):
        super().__init__(Failure.INTERNAL, Reason.of("configuration"), message)


class ApiError(ServiceError):
    """An error answered as OpenAI-shaped JSON (api/site.error_response): its status and words."""

    def __init__(
        self, status: int, message: str, *, param: str | None = None, code: str | None = None, retry_after: int | None = None
    ):
        kind = Failure.BAD_REQUEST if status < 500 else Failure.INTERNAL
        super().__init__(kind, Reason.of("answered", status=status), message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.retry_after = retry_after  # seconds, sent as Retry-After (the OpenAI clients wait that long)
