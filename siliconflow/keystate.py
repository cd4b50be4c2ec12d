"""Where the key pool keeps what every worker must agree on: a SQLite file, or Redis.

Facts, each with an expiry, named like Redis keys:

| fact | value | lives |
|---|---|---|
| `dead:<key id>` | why | until the operator enables or tests the key (a 401 key) |
| `broke:<key id>` | "1", or "probe" while one call tries it | the key's rest after a refusal for balance; a probe's time |
| `backoff:<key id>` | the last rest, seconds | until a call with the key succeeds (its next rest doubles) |
| `cool:<key id>` | "1" | the cool-down after failures in a row |
| `rest:<account>:<model>` | "1" | after a 429: until the account's window frees |
| `cap:<account>:<model>` | calls per window that got through before a 429 | an hour, then learned again |
| `wave:<model>` | the least cap learned in the current wave of 429s | `WAVE_SECONDS` (or the rest, if shorter) |
| `acct:<key id>` | the SiliconFlow account (`/v1/user/info` data.id, where it still answers) | a week |
| `gone:user_info` | its status (410) | a day: nobody asks `/v1/user/info` again meanwhile |
| `lock:<name>` | "1" | who does a periodic job next |

and, per account and model, the calls made within the budget's window (refused calls are taken
out again, so that what is left when a 429 comes is what the account really gets). Keys are
named by a hash (`key_id`), never by their secret. Two stores, one interface:

- `LocalStore` (keystate_sqlite.py): a SQLite file (stdlib). The gunicorn master creates it before forking, so the
  Procfile's workers share one view without Redis; also the single process of the development
  server and the tests. Transactions make a budget reservation atomic across processes.
- `RedisStore` (keystate_redis.py, REDIS_URL): every worker of every instance. One Lua script checks a key's facts
  and reserves its account's budget in one round trip, atomically.
- `MemoryStore`: the same tables in one process's memory, shared with nobody.

`FallbackStore` puts a store in front of another that takes over while the first fails, and hands
back when it works again: Redis in front of the LocalStore (Redis unreachable), the LocalStore in
front of a MemoryStore (its file full or damaged). So a local fault never fails a request, and is
never reported as SiliconFlow's.

Why not the `limits` package (moving windows over memory or Redis): it checks one limit per call
and knows nothing of keys, accounts or cool-downs, so choosing a key would take a round trip per
candidate and two limits (2/60s with 400/1d) could not be reserved together; it also has no store
that forked workers share. The sliding log below is a few lines in SQL and in Lua.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

log = logging.getLogger("siliconflow_proxy.keystate")


CAP_SECONDS = 3600.0  # a learned cap is forgotten after this, so that a bigger allowance is found again
WAVE_SECONDS = 5.0  # how long after a 429 a burst's other refusals are still on the way
WAVE_HOLD = 0.05  # how soon a choice that passed over a busy account in a wave looks again


@dataclass(frozen=True)
class Limit:
    """At most `count` image calls per account and model in any `seconds`."""

    count: int
    seconds: float

    def __str__(self) -> str:
        return f"{self.count}/{self.seconds:g}s"


@dataclass(frozen=True)
class Candidate:
    key_id: str
    account: str
    busy: bool = False  # a call on this key has not answered yet (in this process)


class Fact(StrEnum):
    """The kinds of fact a store keeps, each named `<fact>:<who>` (the table above)."""

    DEAD = "dead"
    BROKE = "broke"
    COOL = "cool"
    REST = "rest"
    CAP = "cap"
    WAVE = "wave"  # wave:<model>: an account was just refused this model; the least cap learned
    ACCOUNT = "acct"
    LOCK = "lock"
    BACKOFF = "backoff"  # backoff:<key id>: a key refused for balance; its next try is a probe
    GONE = "gone"  # gone:user_info: SiliconFlow no longer answers /v1/user/info


# The facts a key choice reads (LocalStore selects them in one query by their first letters).
_CHOICE_FACTS = (Fact.DEAD, Fact.BROKE, Fact.COOL, Fact.REST, Fact.CAP, Fact.WAVE, Fact.BACKOFF)
_CHOICE_GLOB = "[" + "".join(sorted({fact[0] for fact in _CHOICE_FACTS})) + "]*"

Known = tuple[str, float | None]  # (value, seconds left; None: no expiry)

TURN_GRACE = 2.0  # a waiting request's turn is kept this long past when it said it would ask again
YIELD_SECONDS = 0.01  # how soon a request that gave way asks again
# A request not served yet ranks before every request served already (round-robin: each waiting
# request one image a round), and among the not yet served by when they came.
NOT_SERVED_YET = 1e9


@dataclass(frozen=True)
class Ask:
    """One question to the store: may one of `candidates` draw `model` now?"""

    candidates: Sequence[Candidate]
    model: str
    limits: Sequence[Limit] = ()  # the configured budgets
    learn_seconds: float = 60.0  # the window of an account's learned cap, and of the call log
    request: str | None = None  # who asks, for turns between requests (None: no turn-taking)
    force: bool = False  # take a free slot even when a request served longer ago is waiting
    probe_seconds: float = 150.0  # a key whose rest for balance is over goes to one call at a time, for this long


@dataclass(frozen=True)
class Answer:
    key_id: str | None = None  # the key granted
    ticket: str | None = None  # its call's place in its account's window
    wait: float | None = None  # without a key: seconds until one may be free; None: never
    yielded: bool = False  # a key was free, but another request waiting longer had the turn
    probing: bool = False  # the key granted rested for balance: this call tries it, and no other may meanwhile


class Store:
    """The interface both stores offer. Durations are seconds; None means "never expires"."""

    kind = "store"

    def acquire(self, ask: Ask) -> Answer:
        """The first candidate that may draw the model now, its call logged in its account's window.

        An account's learned cap (see `refused`) counts as one more budget, over `learn_seconds`.
        Just after a refusal (the `wave` fact, `WAVE_SECONDS`), an account with no cap of its own
        that has a call in flight (`Candidate.busy`) and as many calls in its window as the least
        cap learned is passed over until that call answers: it was most likely sent in the same
        burst, and its own refusal is on the way, so a refused picture retried there would be
        refused again. Nothing is capped by another account's limit: an idle account, or one
        whose calls answered, is chosen as before, so a bigger allowance is still found.
        A key refused for balance (`backoff`) whose rest (`broke`) is over is granted to this one
        call as a probe: `broke` is set again for `probe_seconds` in the same step, so that no
        other call, of any process, tries it before this one answers.
        Turns: a request that has to wait is kept with the time it was last served (a request not
        served yet ranks first). While as many requests that have waited longer as there are free
        calls are waiting, a free key is left to them (`yielded`) unless `force`; the caller forces
        after a moment, so a request that cannot use that key starves no one.
        """
        raise NotImplementedError

    def refused(self, account: str, model: str, ticket: str, rest: float, learn_seconds: float) -> int:
        """A call was refused with 429: take it out of the window, rest the account for `rest`
        seconds, and keep as its cap the calls left in the last `learn_seconds` (the lowest such
        count, at least one). Returns the cap."""
        raise NotImplementedError

    def get(self, names: Sequence[str]) -> dict[str, Known]:
        """The live facts among `names`."""
        raise NotImplementedError

    def live(self, prefix: str) -> dict[str, Known]:
        """Every live fact whose name starts with `prefix`."""
        raise NotImplementedError

    def put(self, name: str, value: str, seconds: float | None) -> None:
        raise NotImplementedError

    def drop(self, name: str) -> None:
        raise NotImplementedError

    def claim(self, name: str, seconds: float) -> bool:
        """True for the one caller that sets `name` while it is not set (a lock that expires)."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        raise NotImplementedError

    def ping(self) -> None:
        """Raises when the store cannot be reached."""


class FallbackStore(Store):
    """`primary` while it works; `fallback` while it fails. No request fails for it.

    Redis in front of this instance's LocalStore (Redis unreachable); a LocalStore in front of a
    MemoryStore (its file full or damaged). After a failure the primary is left alone for
    `retry_seconds`, then tried again with the next call, /health's included. The facts written to
    the fallback meanwhile stay there: the primary's view is the one shared again.
    """

    def __init__(
        self,
        primary: Store,
        fallback: Store,
        *,
        retry_seconds: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.primary, self.fallback = primary, fallback
        self.kind = primary.kind
        self.clock = clock  # when to try the primary again (tests set it)
        self._retry_seconds = retry_seconds
        self._down_since: float | None = None
        self._problem = ""
        self._retry_at = 0.0
        self._lock = threading.Lock()

    def _call(self, method: str, *args: Any) -> Any:
        if self._down_since is None or self.clock() >= self._retry_at:
            try:
                result = getattr(self.primary, method)(*args)
            except self.primary.failures as exc:
                self._went_down(exc)
            else:
                if self._down_since is not None:
                    with self._lock:
                        if self._down_since is not None:
                            self._came_back(self.clock() - self._down_since)
                            self._down_since = None
                return result
        return getattr(self.fallback, method)(*args)

    def _went_down(self, exc: Exception) -> None:
        with self._lock:
            self._retry_at = self.clock() + self._retry_seconds
            if self._down_since is None:
                self._down_since = self.clock()
                self._problem = self.primary.failure(exc)
                if self.primary.kind == "redis":
                    level = logging.WARNING if "cannot be reached" in self._problem else logging.ERROR
                    log.log(
                        level,
                        "%s: drawing goes on with this instance's own key state until it %s",
                        self._problem,
                        "is back" if level == logging.WARNING else "answers properly",
                    )
                else:
                    log.error(
                        "%s: this process draws on with key state in its own memory, not shared with the "
                        "other workers, until the file works again (tried every %g s)",
                        self._problem,
                        self._retry_seconds,
                    )

    def _came_back(self, seconds: float) -> None:
        if self.primary.kind == "redis":
            log.warning("Redis is reachable again after %.0f s: keys are shared again", seconds)
        else:
            log.warning("%s works again after %.0f s: this instance's workers share keys again", self.primary.name, seconds)

    @property
    def reachable(self) -> bool:
        return self._down_since is None

    def acquire(self, ask: Ask) -> Answer:
        return self._call("acquire", ask)

    def refused(self, account: str, model: str, ticket: str, rest: float, learn_seconds: float) -> int:
        return self._call("refused", account, model, ticket, rest, learn_seconds)

    def get(self, names: Sequence[str]) -> dict[str, Known]:
        return self._call("get", names)

    def live(self, prefix: str) -> dict[str, Known]:
        return self._call("live", prefix)

    def put(self, name: str, value: str, seconds: float | None) -> None:
        self._call("put", name, value, seconds)

    def drop(self, name: str) -> None:
        self._call("drop", name)

    def claim(self, name: str, seconds: float) -> bool:
        return self._call("claim", name, seconds)

    def describe(self) -> dict[str, Any]:
        self._call("ping")  # /health asks: look (within the retry interval) rather than guess
        described = self.primary.describe()
        described["reachable"] = self.reachable
        if not self.reachable:
            described["problem"] = self._problem
            described["using"] = (
                "this instance's local state until Redis is back"
                if self.primary.kind == "redis"
                else "this process's own memory until the file works again"
            )
            inner = self.fallback.describe()
            if inner.get("reachable") is False:
                described["fallback"] = inner
        return described

    def remove(self) -> None:
        for store in (self.primary, self.fallback):
            if hasattr(store, "remove"):
                store.remove()
