"""Every connection this service opens: wall-clock deadlines, byte caps and an address rule.

Three things urllib3 and requests do not do on their own:

- **Deadlines.** Their timeouts bound each socket read, not the call: an upstream that drips a
  byte every few seconds holds a call for ever. A call made inside `deadline(at)` has every socket
  it uses watched by one thread per process, which shuts the socket down at `at`; the blocked read
  ends at once (threads and gevent alike) and `scope.expired` tells the caller why.
- **Caps.** `read_capped` reads a body up to a number of bytes and refuses the rest.
- **Where a URL may lead.** A URL someone else chose (an upstream's image link, a redirect, a
  user's picture) must not reach this machine or its network. Under `address_rule(rule)` a new
  connection resolves the host, refuses when any address is loopback, private, link-local, CGNAT,
  multicast or reserved, and connects to the very address it checked, so DNS cannot change the
  answer between the check and the connection.
"""

from __future__ import annotations

import contextvars
import heapq
import ipaddress
import itertools
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit
from urllib.request import getproxies

import requests
import requests.adapters
import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError
from urllib3.util import connection as util_connection

from core.errors import AddressRefused, Reason, TooLarge

# --- deadlines ------------------------------------------------------------------------------------


class Scope:
    """The sockets of one call and the moment they are cut. `expired` is True once they were."""

    def __init__(self, at: float, how: int = socket.SHUT_RDWR):
        self.at = at
        self.how = how  # SHUT_RD: the reading stops, and an answer can still be written
        self.expired = False
        self.active = True
        self._sockets: list[Any] = []
        self._lock = threading.Lock()

    def watch(self, sock: Any) -> None:
        with self._lock:
            if any(s is sock for s in self._sockets):
                return
            self._sockets.append(sock)
            fire_now = self.expired
        if fire_now:
            _shut(sock, self.how)

    def fire(self) -> None:
        with self._lock:
            if not self.active:
                return
            self.expired = True
            sockets = list(self._sockets)
        for sock in sockets:
            _shut(sock, self.how)

    def close(self) -> None:
        with self._lock:
            self.active = False
            self._sockets.clear()


def _shut(sock: Any, how: int = socket.SHUT_RDWR) -> None:
    try:
        sock.shutdown(how)
    except (OSError, AttributeError, ValueError):
        pass  # already closed, or a wrapper without shutdown


class _Watchdog:
    """One thread per process that fires scopes at their deadline (started on first use: gunicorn forks)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Scope]] = []
        self._order = itertools.count()
        self._condition = threading.Condition()
        self._pid: int | None = None

    def add(self, scope: Scope) -> None:
        with self._condition:
            if self._pid != os.getpid():
                self._heap.clear()
                threading.Thread(target=self._run, name="deadline-watchdog", daemon=True).start()
                self._pid = os.getpid()
            heapq.heappush(self._heap, (scope.at, next(self._order), scope))
            if self._heap[0][2] is scope:
                self._condition.notify()

    def _run(self) -> None:
        with self._condition:
            while True:
                now = time.monotonic()
                due = []
                while self._heap and (self._heap[0][0] <= now or not self._heap[0][2].active):
                    due.append(heapq.heappop(self._heap)[2])
                if not due:
                    self._condition.wait(self._heap[0][0] - now if self._heap else None)
                    continue
                self._condition.release()
                try:
                    for scope in due:
                        scope.fire()
                finally:
                    self._condition.acquire()


_WATCHDOG = _Watchdog()
_SCOPE: contextvars.ContextVar[Scope | None] = contextvars.ContextVar("outbound_scope", default=None)


@contextmanager
def deadline(at: float, how: int = socket.SHUT_RDWR) -> Iterator[Scope]:
    """Calls made inside are cut at `at` (time.monotonic), however slowly the other side answers;
    `how=socket.SHUT_RD` cuts only the reading (a client's body: the answer says why)."""
    scope = Scope(at, how)
    if at <= time.monotonic():
        scope.expired = True
    else:
        _WATCHDOG.add(scope)
    token = _SCOPE.set(scope)
    try:
        yield scope
    finally:
        _SCOPE.reset(token)
        scope.close()


@contextmanager
def requests_deadline(at: float) -> Iterator[Scope]:
    """deadline(at) for calls through requests: a call the deadline cut raises requests.Timeout,
    whatever error its closed socket happened to give."""
    with deadline(at) as scope:
        try:
            yield scope
        except requests.RequestException:
            if scope.expired:
                raise requests.Timeout from None
            raise


def remaining(at: float, cap: float) -> float:
    """Seconds for a socket timeout: what is left before `at`, at most `cap`, never zero."""
    return max(min(cap, at - time.monotonic()), 0.001)


# --- the address rule -----------------------------------------------------------------------------


@dataclass(frozen=True)
class AddressRule:
    """Which addresses a URL someone else chose may lead to.

    `trusted` are origins (host, port) the operator configured, such as API_BASE_URL's: an upstream
    on a LAN or on this machine serves its images from there. Everything else must be public,
    unless `allow_private` (ALLOW_PRIVATE_IMAGE_URLS) lifts the rule for LAN set-ups.
    """

    allow_private: bool = False
    trusted: frozenset[tuple[str, int]] = field(default_factory=frozenset)

    @classmethod
    def trusting(cls, *urls: str | None, allow_private: bool = False) -> AddressRule:
        origins = set()
        for url in urls:
            if url:
                parts = urlsplit(url)
                if parts.hostname:
                    origins.add((parts.hostname.lower(), parts.port or (443 if parts.scheme == "https" else 80)))
        return cls(allow_private, frozenset(origins))

    def check_peer(self, host: str, port: int, sock: Any) -> None:
        """A kept-alive connection, made earlier for another purpose, is about to be reused under
        this rule: the address it is connected to must pass. Raises AddressRefused."""
        if self.allow_private or (host.lower().rstrip("."), port) in self.trusted:
            return
        try:
            peer = sock.getpeername()[0]
        except (OSError, IndexError, AttributeError):
            return  # not connected: a new connection will be checked in _new_conn
        if why := refusal(peer):
            raise AddressRefused(Reason.of("address_refused", host=host[:80], place=why))

    def address_for(self, host: str, port: int) -> str | None:
        """The checked address to connect to, or None to connect as usual. Raises AddressRefused."""
        if self.allow_private or (host.lower().rstrip("."), port) in self.trusted:
            return None
        try:
            # Encoded here: a name IDNA cannot encode fails inside gevent's resolver with a traceback
            # on stderr for each request, which any client could send.
            name = host if host.isascii() else host.encode("idna").decode("ascii")
            infos = socket.getaddrinfo(name, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError):
            raise AddressRefused(Reason.of("unresolved", host=host[:80]), unresolved=True) from None
        addresses = [info[4][0] for info in infos]
        for address in addresses:
            if why := refusal(address):
                raise AddressRefused(Reason.of("address_refused", host=host[:80], place=why))
        if not addresses:
            raise AddressRefused(Reason.of("unresolved", host=host[:80]), unresolved=True)
        return addresses[0]


def refusal(address: str) -> str | None:
    """What kind of address `address` is when it is not a public one (invalid, reserved, loopback,
    link_local, cgnat, private: drawing/reasons.py has the words), or None when it is public."""
    try:
        ip = ipaddress.ip_address(address.split("%")[0])
    except ValueError:
        return "invalid"
    if isinstance(ip, ipaddress.IPv6Address):
        # IPv6 forms that carry an IPv4 address, reached through a relay or translator: the IPv4
        # address is where the connection ends (::ffff:127.0.0.1, 2002:7f00:1::, 64:ff9b::7f00:1).
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            ip = embedded
    if ip.is_unspecified:
        return "reserved"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link_local"
    if isinstance(ip, ipaddress.IPv4Address) and ip in _CGNAT:
        return "cgnat"
    if ip.is_private:
        return "private"
    if ip.is_multicast or ip.is_reserved or ip.is_unspecified or not ip.is_global:
        return "reserved"
    return None


_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_RULE: contextvars.ContextVar[AddressRule | None] = contextvars.ContextVar("outbound_rule", default=None)


@contextmanager
def address_rule(rule: AddressRule | None) -> Iterator[None]:
    """New connections made inside follow `rule` (None: no rule, for hosts the operator configured)."""
    token = _RULE.set(rule)
    try:
        yield
    finally:
        _RULE.reset(token)


# --- the connection classes every client here uses ----------------------------------------------


class _Guarded:
    """Mixed into urllib3's connections: the address rule on connect, the deadline on every use."""

    def _new_conn(self) -> socket.socket:
        rule = _RULE.get()
        address = None
        if rule is not None and not getattr(self, "proxy", None):  # behind a proxy, the proxy connects
            address = rule.address_for(self._dns_host, self.port)  # type: ignore[attr-defined]
        if address is None:
            sock = super()._new_conn()  # type: ignore[misc]
        else:
            try:
                sock = util_connection.create_connection(
                    (address, self.port),
                    self.timeout,  # type: ignore[attr-defined]
                    source_address=self.source_address,  # type: ignore[attr-defined]
                    socket_options=self.socket_options,  # type: ignore[attr-defined]
                )
            except TimeoutError as exc:
                raise ConnectTimeoutError(self, f"Connection to {self.host} timed out.") from exc  # type: ignore[attr-defined]
            except OSError as exc:
                raise NewConnectionError(self, f"Failed to establish a new connection: {exc}") from exc  # type: ignore[arg-type]
        if (scope := _SCOPE.get()) is not None:
            scope.watch(sock)
        return sock

    def request(self, *args: Any, **kwargs: Any) -> None:
        scope, rule = _SCOPE.get(), _RULE.get()
        if rule is not None and self.sock is not None and not getattr(self, "proxy", None):  # type: ignore[attr-defined]
            rule.check_peer(self._dns_host, self.port, self.sock)  # type: ignore[attr-defined]
        if scope is not None and self.sock is not None:  # type: ignore[attr-defined]
            scope.watch(self.sock)  # type: ignore[attr-defined]
        super().request(*args, **kwargs)  # type: ignore[misc]
        if scope is not None and self.sock is not None:  # type: ignore[attr-defined]
            scope.watch(self.sock)  # type: ignore[attr-defined]  # after TLS, the wrapped socket


class GuardedHTTPConnection(_Guarded, HTTPConnection):
    pass


class GuardedHTTPSConnection(_Guarded, HTTPSConnection):
    pass


class _Pool(urllib3.HTTPConnectionPool):
    ConnectionCls = GuardedHTTPConnection


class _SecurePool(urllib3.HTTPSConnectionPool):
    ConnectionCls = GuardedHTTPSConnection


_POOL_CLASSES = {"http": _Pool, "https": _SecurePool}


def _guarded(manager: urllib3.PoolManager) -> urllib3.PoolManager:
    manager.pool_classes_by_scheme = _POOL_CLASSES  # type: ignore[assignment]
    return manager


def make_http(pool_size: int) -> urllib3.PoolManager:
    """The client for SiliconFlow's JSON API, its connection pool sized for the worker threads.

    urllib3 directly, not requests: these calls are on every image's path, and requests'
    per-call preparation cost 0.3 ms of CPU each (measured in bench/), a tenth of a request.
    HTTPS_PROXY / HTTP_PROXY are honoured; NO_PROXY is not.
    """
    proxies = getproxies()
    proxy = proxies.get("https") or proxies.get("http")
    if proxy:
        return _guarded(urllib3.ProxyManager(proxy, num_pools=4, maxsize=pool_size, retries=False))
    return _guarded(urllib3.PoolManager(num_pools=4, maxsize=pool_size, retries=False))


class _GuardedAdapter(requests.adapters.HTTPAdapter):
    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        _guarded(self.poolmanager)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> urllib3.PoolManager:
        return _guarded(super().proxy_manager_for(proxy, **proxy_kwargs))

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
        """Every hop, redirects included. Through a proxy the proxy connects, so the address rule
        is applied here, to the address the URL's host has from this machine, before the proxy is
        asked (a name this machine cannot resolve is left to the proxy)."""
        proxies = kwargs.get("proxies") or {}
        url = request.url or ""
        if proxies and requests.utils.should_bypass_proxies(url, no_proxy=None):
            kwargs["proxies"] = proxies = {}
        rule = _RULE.get()
        if rule is not None and proxies and requests.utils.select_proxy(url, proxies):
            parts = urlsplit(url)
            try:
                rule.address_for(parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80))
            except AddressRefused as refused:
                if not refused.unresolved:
                    raise
        return super().send(request, *args, **kwargs)


def make_session(pool_size: int) -> requests.Session:
    """The client for image hosts and image downloads, its pool sized for the worker threads.

    It reads HTTP(S)_PROXY, NO_PROXY and a CA bundle (REQUESTS_CA_BUNDLE) from the environment,
    but not ~/.netrc: links someone else chose must never carry the operator's logins.
    """
    session = requests.Session()
    session.trust_env = False  # no netrc (requests would add its logins to every hop, redirects too)
    session.proxies = {scheme: url for scheme, url in getproxies().items() if scheme in ("http", "https", "all")}
    session.verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
    adapter = _GuardedAdapter(pool_connections=4, pool_maxsize=pool_size)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def read_capped(response: urllib3.BaseHTTPResponse, limit: int) -> bytes:
    """The body of `response`, at most `limit` bytes. Raises TooLarge (and drops the connection)."""
    declared = response.headers.get("Content-Length")
    if declared and declared.isdigit() and int(declared) > limit:
        response.close()
        raise TooLarge
    data = bytearray()
    for piece in response.stream(64 * 1024):
        data += piece
        if len(data) > limit:
            response.close()
            raise TooLarge
    response.release_conn()
    return bytes(data)
