"""The pool of upstream keys: which key draws the next image, and the queue of images waiting.

SiliconFlow meters image models per ACCOUNT and model and says so only with a 429, and since it
stopped `/v1/user/info` (410) it tells neither a key's account nor its balance. So the operator
declares accounts (`NAME/sk-…` in API_KEYS or on the operator's page: keys with one NAME share
one budget; a key without one is its own account), the pool keeps each account within
IMAGE_RATE_LIMIT when one is set, and rests an account for a model after a 429 (Retry-After, else
RATE_LIMIT_REST) either way. Keys heal by use: a key refused for balance rests (KEY_RECHECK_SECONDS,
doubling with each refusal up to REST_CAP_SECONDS), then one real call at a time, across every
worker and instance, probes it; a success brings it back. A 401 key is dead until the operator
says otherwise. Where `/v1/user/info` still answers (another deployment), accounts and balances
are still learned from it (Upkeep).

What every worker and instance must agree on lives in a store (keystate.py, over
keystate_sqlite.py or keystate_redis.py: SQLite shared by one instance's workers, or Redis); what
is only a preference (failures in a row, calls in flight, last use) stays in each process. With a
roster (storage/upstream_keys.py: keys changed on the operator's
page), each process takes up its changes within SYNC_SECONDS.

Images that find no key wait in `KeyQueue`: served round-robin by request, so a later pic:1 is
not held behind all of an earlier pic:8, each as soon as an account has budget, none past its
request's deadline. Prompt expansion (a chat model) takes any usable key and no image budget.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from core.errors import Failure, Reason, UpstreamError
from core.text import mask_key
from siliconflow.client import AccountInfo
from siliconflow.keystate import Ask, Candidate, Fact, Limit, Store
from siliconflow.leases import Acquired, Lease, key_id, mask_account
from siliconflow.queue import KeyQueue

log = logging.getLogger("siliconflow_proxy.keypool")

REST_CAP_SECONDS = 6 * 3600  # the longest a key refused for balance rests before it is tried again
ACCOUNT_SECONDS = 7 * 86_400
TRANSIENT_COOL_AFTER = 2  # failures in a row (5xx, timeouts) before a key cools down
OUT_CACHE_SECONDS = 1.0  # how long a process trusts its list of keys that are out, for chat calls
SYNC_SECONDS = 2.0  # how often a process looks whether the roster changed
PROBE = "probe"  # the broke fact's value while one call probes a resting key


def _with_slack(seconds: float) -> float:
    return seconds * 1.02 + 0.05


@dataclass(frozen=True)
class Entry:
    """One configured key: its account as declared (None: its own), whether the operator
    disabled it, and its id on the roster (None: from API_KEYS without a roster)."""

    key: str = field(repr=False)
    account: str | None = None
    disabled: bool = False
    roster_id: str | None = None

    @classmethod
    def parse(cls, entry: str) -> Entry:
        account, _, key = entry.rpartition("/")  # NAME/sk-… (checked by config.key_entries)
        return cls(key, account or None)


@dataclass
class _Key:
    """This process's view of one key: its configuration and preferences; facts are in the store."""

    key: str = field(repr=False)
    kid: str
    entry: Entry
    failure_streak: int = 0
    in_flight: int = 0
    last_used: float = 0.0


class KeyPool:
    """Hands out keys for image calls (budgeted, queued) and for chat calls, and records how they went."""

    def __init__(
        self,
        keys: Sequence[str | Entry],
        store: Store,
        *,
        limits: Sequence[Limit] = (),
        rest_seconds: float = 60.0,
        recheck_seconds: float = 600.0,
        probe_seconds: float = 150.0,
        roster: Any = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._keys: dict[str, _Key] = {}
        self._by_id: dict[str, _Key] = {}
        self._accounts: dict[str, str] = {}  # key id -> account, as learned from /v1/user/info
        self.store = store
        self.roster = roster  # upstream_keys.Roster: keys changed while the service runs, or None
        self.configured_limits = tuple(limits)
        # The service counts a call when it sends it, SiliconFlow when it arrives; a little slack on
        # every window keeps the two counts from disagreeing at the edge.
        self.limits = tuple(Limit(limit.count, _with_slack(limit.seconds)) for limit in limits)
        self.rest_seconds = rest_seconds
        self.recheck_seconds = recheck_seconds
        self.probe_seconds = probe_seconds  # a probe that never answers frees the key after this
        self._learn_seconds = _with_slack(rest_seconds)
        self._clock = clock
        self._lock = threading.Lock()
        self._choosing = threading.Lock()
        self._out_cache: tuple[float, dict[str, str]] | None = None
        self._synced_at = -math.inf
        self._version: int | None = None
        self._sync_failing = False
        self.on_call: Callable[[str, bool], None] | None = None  # (key id, ok) after every call: the ledger counts them
        # Closed while this process learns the keys' accounts (Upkeep), so that the first images
        # are counted against the right accounts; open otherwise.
        self.accounts_known = threading.Event()
        self.accounts_known.set()
        self.queue = KeyQueue(self)
        self._install([entry if isinstance(entry, Entry) else Entry.parse(entry) for entry in keys])
        if roster is not None:
            self.sync(force=True)

    # --- the keys, as configured ----------------------------------------------------------------

    def _install(self, entries: Sequence[Entry]) -> None:
        """Take up `entries` as the keys, keeping this process's preferences for keys kept."""
        with self._lock:
            kept = self._keys
            self._keys = {}
            for entry in entries:
                if entry.key in self._keys:
                    continue
                state = kept.get(entry.key) or _Key(entry.key, key_id(entry.key), entry)
                state.entry = entry
                self._keys[entry.key] = state
            self._by_id = {state.kid: state for state in self._keys.values()}
        self._out_cache = None

    def sync(self, *, force: bool = False) -> None:
        """Take up the roster's changes (keys added, disabled, renamed, removed), looked at no
        more than every SYNC_SECONDS. A roster that cannot be read leaves the keys as they were."""
        if self.roster is None or (not force and time.monotonic() - self._synced_at < SYNC_SECONDS):
            return
        self._synced_at = time.monotonic()
        try:
            version = self.roster.version()
            if version != self._version:
                records = self.roster.all()
                self._install([Entry(r.key, r.account, r.disabled, r.id) for r in records])
                self._version = version
        except Exception as exc:  # noqa: BLE001 - the roster's store failing must not fail a request
            if not self._sync_failing:
                log.warning("the upstream keys' roster cannot be read now (%s); drawing goes on with the keys known", exc)
            self._sync_failing = True
        else:
            if self._sync_failing:
                log.info("the upstream keys' roster can be read again")
            self._sync_failing = False

    def _usable(self) -> list[_Key]:
        with self._lock:
            return [state for state in self._keys.values() if not state.entry.disabled]

    def __len__(self) -> int:
        """The keys that may draw (not disabled by the operator)."""
        self.sync()
        return len(self._usable())

    @property
    def keys(self) -> list[str]:
        """Every configured key, disabled ones too: what must never be shown or followed."""
        with self._lock:
            return list(self._keys)

    def entries(self) -> list[tuple[str, Entry]]:
        """(key id, entry) of every configured key, in order."""
        self.sync()
        with self._lock:
            return [(state.kid, state.entry) for state in self._keys.values()]

    def key_for(self, kid: str) -> str | None:
        """The key a store names by `kid` (a video job's, whose account must poll it), if it is still configured."""
        self.sync()
        state = self._by_id.get(kid)
        return state.key if state is not None else None

    def account_of(self, kid: str) -> str:
        """The key's account: as the operator declared it, else as SiliconFlow told it, else the key alone."""
        state = self._by_id.get(kid)
        if state is not None and state.entry.account:
            return state.entry.account
        return self._accounts.get(kid) or f"key-{kid}"

    # --- handing out --------------------------------------------------------------------------

    def try_acquire(self, model: str, exclude: Collection[str] = (), request: str | None = None, force: bool = False) -> Acquired:
        """A lease for a key that may draw `model` now, its account's budget taken, untried keys
        first; else when one may, and whether a free key was left to a request that has waited
        longer (see keystate.Store.acquire). A key resting for balance is handed out to one call
        at a time once its rest is over: the probe (`Lease.probing`)."""
        self.sync()
        # One at a time in this process: choosing by calls in flight and marking the one chosen must
        # be one step, or two images that ask together both get the same idle key.
        with self._choosing:
            order = sorted(self._usable(), key=lambda s: (s.key in exclude, s.failure_streak, s.in_flight, s.last_used))
            candidates = [Candidate(state.kid, self.account_of(state.kid), state.in_flight > 0) for state in order]
            if not candidates:
                return Acquired(None)
            ask = Ask(candidates, model, self.limits, self._learn_seconds, request, force, self.probe_seconds)
            answer = self.store.acquire(ask)
            if answer.key_id is None:
                return Acquired(None, answer.wait, answer.yielded)
            state = self._by_id[answer.key_id]
            with self._lock:
                state.in_flight += 1
                state.last_used = self._clock()
            if answer.probing:
                log.info("key %s rested for balance: one call tries it now", mask_key(state.key))
            return Acquired(Lease(state.key, model, answer.ticket, answer.probing))

    def any_key(self) -> Lease | None:
        """A key for a chat call (prompt expansion): not dead, broke, cooling or disabled; no budget taken.

        Which keys are out is read from the store at most once a second per process: a stale
        answer costs at most one failed expansion, which falls back to the user's text.
        """
        self.sync()
        now = time.monotonic()
        if self._out_cache is None or now - self._out_cache[0] > OUT_CACHE_SECONDS:
            self._out_cache = (now, self._out())
        out = self._out_cache[1]
        usable = [s for s in self._usable() if s.kid not in out]
        if not usable:
            return None
        with self._lock:
            state = min(usable, key=lambda s: (s.failure_streak, s.in_flight, s.last_used))
            state.in_flight += 1
            state.last_used = self._clock()
            return Lease(state.key)

    def peek_key(self) -> str | None:
        """A usable key for a call that says nothing of keys (listing models): the rotation is left as it is."""
        self.sync()
        out = self._out()
        return next((s.key for s in self._usable() if s.kid not in out), None)

    def _out(self, facts: dict[str, Any] | None = None) -> dict[str, str]:
        """Key id -> why it cannot be used now (dead, broke, cool), from the store (or `facts` read from it)."""
        out: dict[str, str] = {}
        for name in self._out_facts() if facts is None else facts:
            kind, kid = name.split(":", 1)
            if kind == Fact.BACKOFF:
                continue
            if out.get(kid) not in (Fact.DEAD, Fact.BROKE):
                out[kid] = kind
        return out

    def _out_facts(self) -> dict[str, Any]:
        with self._lock:
            kids = [state.kid for state in self._keys.values()]
        kinds = (Fact.DEAD, Fact.BROKE, Fact.COOL, Fact.BACKOFF)
        return self.store.get([f"{kind}:{kid}" for kid in kids for kind in kinds])

    def key_states(self) -> list[dict[str, Any]]:
        """Each key masked, with its state and account: the operator's page and admin API.

        States: ok, cooling (after failures in a row), resting (refused for balance: `next_try`
        seconds, or being tried now), dead (refused 401: until the operator says otherwise),
        disabled (by the operator)."""
        self.sync()
        facts = self._out_facts()
        out = self._out(facts)
        with self._lock:
            states = list(self._keys.values())
        shown = []
        for state in states:
            kid = state.kid
            why = out.get(kid)
            broke = facts.get(f"{Fact.BROKE}:{kid}")
            cool = facts.get(f"{Fact.COOL}:{kid}")
            name = (
                "disabled"
                if state.entry.disabled
                else {Fact.DEAD: "dead", Fact.BROKE: "resting", Fact.COOL: "cooling"}.get(why, "ok")
            )
            shown.append(
                {
                    "id": state.entry.roster_id,
                    "key": mask_key(state.key),
                    "account": state.entry.account or mask_account(self.account_of(kid)),
                    "account_declared": bool(state.entry.account),
                    "state": name,
                    "next_try": math.ceil(broke[1]) if broke and broke[0] != PROBE and broke[1] is not None else None,
                    "probing": bool(broke and broke[0] == PROBE),
                    "rest_seconds": int(float(facts[f"{Fact.BACKOFF}:{kid}"][0])) if f"{Fact.BACKOFF}:{kid}" in facts else None,
                    "cooling_seconds": math.ceil(cool[1] or 0) if cool else 0,
                    "last_failure": cool[0] if cool else ("key_invalid" if why == Fact.DEAD else "no_balance" if broke else None),
                    "calls_in_flight": state.in_flight,
                    "key_id": kid,
                }
            )
        return shown

    def keys_out(self) -> int:
        """How many keys are dead, broke or cooling now."""
        return len(self._out())

    @contextmanager
    def using(self, lease: Lease) -> Iterator[Lease]:
        """`with pool.using(lease):` one call with the key: an UpstreamError raised inside is
        learned from (and raised on), a clean exit is a success, anything else hands the key back."""
        try:
            yield lease
        except UpstreamError as exc:
            self.report(lease, exc)
            raise
        except BaseException:
            self.release(lease)
            raise
        self.report(lease, None)

    def release(self, lease: Lease) -> None:
        """Hand back a key whose call says nothing about it."""
        with self._lock:
            state = self._keys.get(lease.key)
            if state is not None and state.in_flight:
                state.in_flight -= 1

    # --- learning -----------------------------------------------------------------------------

    def report(self, lease: Lease, error: UpstreamError | None) -> None:
        """Hand back the lease and record how its call went (None: it succeeded). A chat call's 429s
        and hiccups say nothing of image budgets: only a dead or broke key is news from it."""
        self.release(lease)
        state = self._keys.get(lease.key)
        if state is None:
            return
        if self.on_call is not None:
            try:
                self.on_call(state.kid, error is None)
            except Exception:  # the ledger failing must not fail the call's picture
                log.exception("counting a call failed")
        if error is None:
            with self._lock:
                state.failure_streak = 0
            if lease.probing:
                self.revive(state.kid)
                log.info("key %s drew again after resting for balance: back in use", mask_key(lease.key))
            return
        kind, model = error.kind, lease.model
        self._out_cache = None
        if kind is Failure.AUTH:
            self.store.put(f"{Fact.DEAD}:{state.kid}", "401", None)
            log.warning("key %s is invalid (401): out of use until the operator enables or tests it", mask_key(lease.key))
        elif kind is Failure.BALANCE:
            self._rest(state)
        elif model is None:
            return
        elif kind is Failure.RATE_LIMIT:
            account = self.account_of(state.kid)
            rest = error.retry_after or self.rest_seconds
            cap = self.store.refused(account, model, lease.ticket or "", rest, self._learn_seconds)
            log.info(
                "account %s refused (429) for %s: rests %.0f s, now at most %d call(s) per %g s",
                mask_account(account),
                model,
                rest,
                cap,
                self.rest_seconds,
            )
        elif kind is not Failure.BAD_REQUEST:
            with self._lock:
                state.failure_streak += 1
                streak = state.failure_streak
            if streak >= TRANSIENT_COOL_AFTER:  # the cause is kept, for the words of the next refusal
                self.store.put(f"{Fact.COOL}:{state.kid}", str(kind), min(10.0 * 2 ** (streak - TRANSIENT_COOL_AFTER), 300.0))

    def _rest(self, state: _Key) -> None:
        """Refused for balance: rest KEY_RECHECK_SECONDS, or twice the last rest (at most
        REST_CAP_SECONDS); then a real call tries the key (a refused call costs nothing)."""
        last = self.store.get([f"{Fact.BACKOFF}:{state.kid}"]).get(f"{Fact.BACKOFF}:{state.kid}")
        rest = self.recheck_seconds if last is None else min(float(last[0]) * 2, max(REST_CAP_SECONDS, self.recheck_seconds))
        self.store.put(f"{Fact.BACKOFF}:{state.kid}", f"{rest:g}", None)
        self.store.put(f"{Fact.BROKE}:{state.kid}", "1", rest)
        log.warning("key %s has no balance: rests %.0f s, then one call tries it again", mask_key(state.key), rest)

    def revive(self, kid: str) -> None:
        """The key works (a probe drew, the operator tested or enabled it): every mark against it goes."""
        for kind in (Fact.DEAD, Fact.BROKE, Fact.BACKOFF, Fact.COOL):
            self.store.drop(f"{kind}:{kid}")
        state = self._by_id.get(kid)
        if state is not None:
            with self._lock:
                state.failure_streak = 0
        self._out_cache = None

    def learn(self, key: str, info: AccountInfo) -> None:
        """What /v1/user/info said of `key` (where it still answers): its account, and whether it has money."""
        state = self._keys.get(key)
        if state is None:
            return
        if info.account:
            self._accounts[state.kid] = info.account
            self.store.put(f"{Fact.ACCOUNT}:{state.kid}", info.account, ACCOUNT_SECONDS)
        if info.funded:
            self.store.drop(f"{Fact.BROKE}:{state.kid}")
            self.store.drop(f"{Fact.BACKOFF}:{state.kid}")
        elif f"{Fact.BROKE}:{state.kid}" not in self.store.get([f"{Fact.BROKE}:{state.kid}"]):
            self._rest(state)

    def load_accounts(self) -> None:
        """The accounts other processes already learned."""
        facts = self.store.get([f"{Fact.ACCOUNT}:{state.kid}" for state in self._keys.values()])
        for name, (account, _) in facts.items():
            self._accounts[name.split(":", 1)[1]] = account

    def unknown_keys(self) -> list[str]:
        """Keys whose account is neither declared nor learned."""
        return [s.key for s in self._usable() if not s.entry.account and s.kid not in self._accounts]

    def broke_keys(self) -> list[str]:
        out = self._out()
        return [s.key for s in self._usable() if out.get(s.kid) == Fact.BROKE]

    # --- telling ------------------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        """Keys and accounts by state, for /health: no key material."""
        self.sync()
        facts = self._out_facts()
        out = self._out(facts)
        usable = self._usable()
        counts = {kind: sum(1 for s in usable if out.get(s.kid) == kind) for kind in (Fact.DEAD, Fact.BROKE, Fact.COOL)}
        accounts = {self.account_of(s.kid) for s in usable}
        resting = []
        for name, (_, seconds) in sorted(self.store.live(f"{Fact.REST}:").items()):
            account, model = name.split(":", 2)[1:]
            if account in accounts:
                resting.append({"account": mask_account(account), "model": model, "seconds": math.ceil(seconds or 0)})
        with self._lock:
            in_flight = sum(s.in_flight for s in self._keys.values())
            disabled = sum(1 for s in self._keys.values() if s.entry.disabled)
        return {
            "keys": {
                "total": len(usable) + disabled,
                "healthy": len(usable) - sum(counts.values()),
                "cooling": counts[Fact.COOL],
                "dead": counts[Fact.DEAD],
                "resting": counts[Fact.BROKE],
                "disabled": disabled,
                "calls_in_flight": in_flight,
            },
            "accounts": {
                "total": len(accounts),
                "declared": len({s.entry.account for s in usable if s.entry.account}),
                "keys_with_unknown_account": len(self.unknown_keys()),
                "resting": resting,
            },
        }

    def outage(self, wait: float | None = None) -> Reason:
        """Why no key can draw right now; `wait`: when one may (from `try_acquire`)."""
        usable = self._usable()
        if not usable:
            return Reason.of("no_upstream_keys")
        out = self._out()
        out = {kid: why for kid, why in out.items() if kid in {s.kid for s in usable}}
        counts = {kind: sum(1 for why in out.values() if why == kind) for kind in (Fact.DEAD, Fact.BROKE, Fact.COOL)}
        cooling = [kid for kid, why in out.items() if why == Fact.COOL]
        causes = tuple(sorted({value for value, _ in self.store.get([f"{Fact.COOL}:{kid}" for kid in cooling]).values()}))
        return Reason.of(
            "keys_out",
            total=len(usable),
            dead=counts[Fact.DEAD],
            broke=counts[Fact.BROKE],
            cooling=counts[Fact.COOL],
            causes=causes,
            budget=len(usable) - len(out),
            wait=math.ceil(wait) if wait is not None else None,
        )
