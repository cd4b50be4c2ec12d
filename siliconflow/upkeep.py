"""What SiliconFlow's /v1/user/info still tells, where it answers: each key's account and
whether it has money, learned in the background (the Upkeep thread of each process)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from core.background import Background
from core.errors import Failure, UpstreamError
from core.text import mask_key
from siliconflow.client import AccountInfo
from siliconflow.keystate import Fact
from siliconflow.leases import Lease
from siliconflow.pool import KeyPool

log = logging.getLogger("siliconflow_proxy.keypool")

GONE_SECONDS = 86_400  # /v1/user/info answered 410: not asked again for a day, by any process


class Upkeep:
    """Per process: what `/v1/user/info` says of the keys, where it still answers.

    SiliconFlow stopped it (410, since about 2026-08). The first answer of 410 or 404 ends the
    asking: one log line per process, and a fact in the store (GONE_SECONDS) so that the other
    processes do not ask at all; keys then heal by use (KeyPool) and accounts are the operator's
    to declare. Where it answers 200 (another deployment), each key's account is learned at start
    and keys refused for balance are looked at again every `interval` seconds, by one process of
    all that share the store.

    Its thread starts on first use in each process: gunicorn forks workers after loading the app,
    and a thread started before the fork would not exist in them.
    """

    def __init__(self, pool: KeyPool, info: Callable[[str], AccountInfo], interval: float):
        self._pool, self._info, self._interval = pool, info, interval
        self._loop = Background("key-upkeep", self._run)
        self.gone = False  # /v1/user/info answered 410 or 404: SiliconFlow tells no accounts or balances

    def ensure_running(self) -> None:
        self._loop.start(before=self._pool.accounts_known.clear)

    def stop(self) -> None:
        self._loop.stop()

    def _run(self, stopping: threading.Event) -> None:
        try:
            self._pool.load_accounts()
            self._check(self._pool.unknown_keys())
        except Exception:
            log.exception("learning the keys' accounts failed; each key counts as its own account")
        finally:
            self._pool.accounts_known.set()
        while not stopping.wait(self._interval):
            try:
                if self._is_gone():
                    continue  # nothing to ask: keys heal by use
                if self._pool.store.claim(f"{Fact.LOCK}:recheck", self._interval * 0.9):
                    self._check(list(dict.fromkeys(self._pool.broke_keys() + self._pool.unknown_keys())))
                else:
                    self._pool.load_accounts()
            except Exception:
                log.exception("key re-check failed")

    def _is_gone(self) -> bool:
        if not self.gone and self._pool.store.get([f"{Fact.GONE}:user_info"]):
            self._went("another process found it")
        return self.gone

    def _went(self, how: str) -> None:
        if not self.gone:
            self.gone = True
            log.info(
                "SiliconFlow no longer tells accounts or balances (/v1/user/info is gone: %s): accounts are the ones "
                "declared as NAME/key (a key without one is its own account), and a key refused for balance rests, "
                "then is tried again by a real call",
                how,
            )

    def _check(self, keys: list[str]) -> None:
        if not keys or self._is_gone():
            return
        first = self._ask(keys[0])  # alone: if the endpoint is gone, one call says so
        outcomes = [first]
        if not self._gone_by(first) and len(keys) > 1:
            with ThreadPoolExecutor(min(8, len(keys) - 1), thread_name_prefix="user-info") as executor:
                outcomes += list(executor.map(self._ask, keys[1:]))
        for key, outcome in zip(keys, outcomes, strict=False):
            if self._gone_by(outcome):
                self._pool.store.put(f"{Fact.GONE}:user_info", str(outcome.status), GONE_SECONDS)  # type: ignore[union-attr]
                self._went(f"it answers {outcome.status}")  # type: ignore[union-attr]
                return
            if isinstance(outcome, AccountInfo):
                was_broke = key in self._pool.broke_keys()
                self._pool.learn(key, outcome)
                if was_broke and outcome.funded:
                    log.info("key %s has a balance again; back in use", mask_key(key))
            elif outcome.kind is Failure.AUTH:
                self._pool.report(Lease(key), outcome)
            else:
                log.info("user info for key %s failed: %s", mask_key(key), outcome.kind)

    @staticmethod
    def _gone_by(outcome: AccountInfo | UpstreamError) -> bool:
        return isinstance(outcome, UpstreamError) and outcome.status in (404, 410)

    def _ask(self, key: str) -> AccountInfo | UpstreamError:
        try:
            return self._info(key)
        except UpstreamError as exc:
            return exc
